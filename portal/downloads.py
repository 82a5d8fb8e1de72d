"""HTTP responses that carry stored files: one document, or a session's ZIP.

The views decide who may have what; this module decides how the bytes leave: from local
storage with ``send_file`` (sendfile, Range, conditional requests), or through nginx with
``X-Accel-Redirect``. Storage back ends other than a local folder plug in here.
"""

from __future__ import annotations

from collections.abc import Sequence

from flask import Response, abort, current_app, request, send_file
from zipstream import ZIP_STORED, ZipStream

from .filetypes import INLINE_TYPES
from .models import Document
from .security import FILE_POLICY, INLINE_PDF_POLICY
from .services.documents import count_download


def _storage():  # type: ignore[no-untyped-def]
    return current_app.extensions["portal.storage"]


def _counts_as_download() -> bool:
    ranges = request.range
    return ranges is None or (bool(ranges.ranges) and ranges.ranges[0][0] == 0)


def check_stored(documents: Sequence[Document]) -> None:
    """Answer 503 when a document's stored file is missing or not the recorded size."""
    storage = _storage()
    for document in documents:
        if storage.size(document.storage_key) != document.size:
            current_app.logger.error(
                "stored file of document %s is missing or damaged", document.id
            )
            abort(503)


def file_response(document: Document, *, inline: bool) -> Response:
    """Send a document's file, as an attachment unless ``inline`` and its type is safe."""
    check_stored([document])
    inline = inline and document.content_type in INLINE_TYPES
    accel_prefix = current_app.config["ACCEL_REDIRECT"]
    response = send_file(
        _storage().local_path(document.storage_key),
        mimetype=document.content_type,
        as_attachment=not inline,
        download_name=document.original_name,
        # Behind nginx with X-Accel-Redirect, nginx answers ranges and revalidations itself.
        conditional=not accel_prefix,
        etag=document.sha256,
        last_modified=document.updated_at,
        max_age=0,
    )
    if accel_prefix:
        response.response.close()
        response.set_data(b"")
        response.headers["X-Accel-Redirect"] = f"{accel_prefix}{document.storage_key}"
    response.cache_control.private = True
    response.cache_control.no_cache = True
    is_pdf = inline and document.content_type == "application/pdf"
    response.headers["Content-Security-Policy"] = INLINE_PDF_POLICY if is_pdf else FILE_POLICY
    if is_pdf:
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
    if response.status_code in (200, 206) and _counts_as_download():
        count_download(document.id)
    return response


def unique_member_name(name: str, taken: set[str]) -> str:
    """Return ``name``, or ``name (2).ext``, ``name (3).ext``... not yet in ``taken``."""
    candidate, number = name, 2
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    while candidate.lower() in taken:
        candidate = f"{stem} ({number}).{ext}" if ext else f"{stem} ({number})"
        number += 1
    taken.add(candidate.lower())
    return candidate


def archive_response(documents: Sequence[Document], filename: str) -> Response:
    """Stream a ZIP of ``documents``, built as it is sent."""
    check_stored(documents)
    storage = _storage()
    # Stored, not compressed: the length is known in advance, so browsers show progress.
    stream = ZipStream(compress_type=ZIP_STORED, sized=True)
    taken: set[str] = set()
    for document in documents:
        stream.add_path(
            str(storage.local_path(document.storage_key)),
            arcname=unique_member_name(document.original_name, taken),
        )
    response = Response(stream, mimetype="application/zip", direct_passthrough=True)
    response.headers["Content-Length"] = str(len(stream))
    response.headers["Content-Security-Policy"] = FILE_POLICY
    response.headers.set("Content-Disposition", "attachment", filename=filename)
    response.cache_control.private = True
    response.cache_control.no_store = True
    return response
