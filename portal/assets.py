"""Static files: a content hash in every URL, so browsers may keep them for a year.

Every ``url_for('static', filename=...)`` gets ``?v=<hash of the file>``. A request that
carries the current hash is answered with a one-year, immutable cache lifetime; any other
(no hash, an old hash) must revalidate, so a deployment never leaves a stale stylesheet behind.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, request

ONE_YEAR = 365 * 24 * 3600
HASH_LENGTH = 12


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(65536), b""):
            digest.update(block)
    return digest.hexdigest()[:HASH_LENGTH]


def hash_static_files(folder: Path) -> dict[str, str]:
    """Map each file under ``folder`` (a URL path, ``/``-separated) to its content hash."""
    if not folder.is_dir():
        return {}
    return {
        path.relative_to(folder).as_posix(): _digest(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    }


def _versions() -> dict[str, str]:
    return current_app.extensions["portal.assets"]


def _add_version(endpoint: str, values: dict[str, Any]) -> None:
    if endpoint == "static" and "v" not in values:
        version = _versions().get(values.get("filename", ""))
        if version:
            values["v"] = version


def _cache_headers(response: Response) -> Response:
    if request.endpoint != "static" or response.status_code not in (200, 206, 304):
        return response
    current = _versions().get(request.view_args.get("filename", "") if request.view_args else "")
    if current and request.args.get("v") == current:
        response.headers["Cache-Control"] = f"public, max-age={ONE_YEAR}, immutable"
    else:
        response.headers["Cache-Control"] = "no-cache"
    return response


def init_app(app: Flask) -> None:
    """Hash the static files once, version their URLs and cache versioned responses long."""
    folder = Path(app.static_folder) if app.static_folder else None
    app.extensions["portal.assets"] = hash_static_files(folder) if folder else {}
    app.url_defaults(_add_version)
    app.after_request(_cache_headers)
