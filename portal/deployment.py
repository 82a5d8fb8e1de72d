"""``portal check --deploy``: settings that are fine on a laptop but wrong in production."""

from __future__ import annotations

import stat
from pathlib import Path

from flask import Flask

from .storage import LocalStorage

WEAK_SECRETS = {"", "dev", "secret", "changeme", "change-me", "test", "password", "default"}
MIN_SECRET_LENGTH = 32


def _world_accessible(path: Path) -> bool:
    return bool(path.stat().st_mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IXOTH))


def deployment_problems(app: Flask) -> list[str]:
    """Return what would make this instance unsafe behind an HTTPS reverse proxy."""
    problems = []
    secret = app.config.get("SECRET_KEY") or ""
    if secret.lower() in WEAK_SECRETS or len(secret) < MIN_SECRET_LENGTH:
        problems.append(
            f"the secret key is missing, a default or shorter than {MIN_SECRET_LENGTH}"
            " characters: unset PORTAL_SECRET_KEY to use a generated one"
        )
    key_file = Path(app.config["INSTANCE_DIR"]) / "secret_key"
    if key_file.exists() and key_file.stat().st_mode & 0o077:
        problems.append(f"{key_file} is readable by other users: chmod 600 it")
    if app.debug:
        problems.append("debug mode is on: unset FLASK_DEBUG")
    instance = Path(app.config["INSTANCE_DIR"])
    if _world_accessible(instance):
        problems.append(f"the instance folder {instance} is open to every user: chmod o-rwx it")
    storage = app.extensions["portal.storage"]
    if isinstance(storage, LocalStorage):
        if not storage.root.is_dir():
            problems.append(f"the storage folder {storage.root} is missing: run portal init")
        elif _world_accessible(storage.root):
            problems.append(
                f"the storage folder {storage.root} is open to every user: chmod o-rwx it"
            )
    # Ask the application itself, through its proxy settings, as nginx would.
    response = app.test_client().get(
        "/access",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    cookies = response.headers.getlist("Set-Cookie")
    if not cookies or not all("Secure" in cookie for cookie in cookies):
        problems.append(
            "behind an HTTPS reverse proxy the cookies would not be Secure:"
            " set PORTAL_PROXY_FIX=1 (one proxy in front)"
        )
    return problems
