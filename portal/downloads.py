"""HTTP responses that carry stored files: one document, or a session's ZIP.

The views decide who may have what; this module decides how the bytes leave: from local
storage with ``send_file`` (sendfile, Range, conditional requests) or through nginx with
``X-Accel-Redirect``; from object storage as a stream fetched range by range, or as a
redirect to a short-lived presigned link.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

from flask import Response, abort, current_app, redirect, request, send_file
from flask_login import current_user
from werkzeug.datastructures import Headers
from zipstream import ZIP_STORED, ZipStream

from .filetypes import INLINE_TYPES
from .models import Document
from .security import FILE_POLICY, INLINE_PDF_POLICY
from .services.documents import count_download
from .storage import Storage

#: Where ``file_response`` leaves, in the WSGI environ, the password version of a participant
#: it sent a whole file from the local disk (for ``portal.download_replay``).
SENT_FILE = "portal.downloads.sent_file"


def _storage() -> Storage:
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


CHUNK = 256 * 1024


def disposition(name: str, *, inline: bool) -> str:
    """``Content-Disposition`` as ``send_file`` writes it (RFC 6266, ``filename*`` if needed)."""
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        simple = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
        quoted = quote(name, safe="!#$&+-.^_`|~")
        names = {"filename": simple, "filename*": f"UTF-8''{quoted}"}
    else:
        names = {"filename": name}
    headers = Headers()
    headers.set("Content-Disposition", "inline" if inline else "attachment", **names)
    return headers["Content-Disposition"]


class _StoredBody:
    """A stored object's bytes, or just the range the response sends.

    The store is asked while the request is handled, so a failing store still gets the
    error page; the bytes are read as the response is sent. Werkzeug's range handling
    seeks the body to where it already starts.
    """

    def __init__(self, key: str) -> None:
        self.storage = _storage()
        self.key = key
        self.start = 0
        self.reader: Any = None

    def open(self, start: int, stop: int) -> None:
        self.start = start
        self.reader = self.storage.open(self.key, start, stop)

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset != self.start:
            raise OSError("the stored body starts elsewhere")
        return offset

    def tell(self) -> int:
        return self.start

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        chunk = self.reader.read(CHUNK) if self.reader is not None else b""
        if not chunk:
            raise StopIteration
        return chunk

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def _streamed_response(document: Document, *, inline: bool) -> Response:
    """Stream a file from a store that has no local path, with Range and revalidation."""
    body = _StoredBody(document.storage_key)
    response = Response(body, mimetype=document.content_type, direct_passthrough=True)
    response.headers["Content-Disposition"] = disposition(document.original_name, inline=inline)
    response.content_length = document.size
    response.last_modified = document.updated_at
    response.set_etag(document.sha256)
    # As send_file does for local files: revalidate every time.
    response.cache_control.no_cache = True
    response.cache_control.max_age = 0
    response.expires = time.time()
    response = response.make_conditional(
        request.environ, accept_ranges=True, complete_length=document.size
    )
    if request.method != "HEAD" and response.status_code in (200, 206):
        start, stop = 0, document.size
        if response.status_code == 206 and response.content_range:
            start, stop = response.content_range.start, response.content_range.stop
        body.open(start, stop)
    return response


def _presigned_response(document: Document, *, inline: bool) -> Response | None:
    url = _storage().download_url(
        document.storage_key,
        content_type=document.content_type,
        disposition=disposition(document.original_name, inline=inline),
    )
    if url is None:
        return None
    response = redirect(url, 302)
    # The link expires within minutes: nobody may keep the redirect.
    response.cache_control.no_store = True
    return response


def file_response(document: Document, *, inline: bool) -> Response:
    """Send a document's file, as an attachment unless ``inline`` and its type is safe."""
    check_stored([document])
    inline = inline and document.content_type in INLINE_TYPES
    path = _storage().local_path(document.storage_key)
    if path is None:
        response = _presigned_response(document, inline=inline) or _streamed_response(
            document, inline=inline
        )
    else:
        response = _local_response(document, path, inline=inline)
    response.cache_control.private = True
    if response.status_code != 302:
        response.cache_control.no_cache = True
    is_pdf = inline and document.content_type == "application/pdf"
    response.headers["Content-Security-Policy"] = INLINE_PDF_POLICY if is_pdf else FILE_POLICY
    if is_pdf:
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
    if response.status_code in (200, 206, 302) and _counts_as_download():
        try:
            count_download(document.id)
        except BaseException:
            response.close()  # the file it opened: no answer will send it
            raise
    if path is not None and not inline and response.status_code == 200:
        if getattr(current_user, "is_participant", False):
            request.environ[SENT_FILE] = current_user.password_version
    return response


def _local_response(document: Document, path: Any, *, inline: bool) -> Response:
    accel_prefix = current_app.config["ACCEL_REDIRECT"]
    response = send_file(
        path,
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


def _object_chunks(storage: Storage, key: str) -> Iterator[bytes]:
    # Runs while the response is sent, after the request's application context is gone.
    with storage.open(key) as reader:
        while chunk := reader.read(CHUNK):
            yield chunk


def archive_response(documents: Sequence[Document], filename: str) -> Response:
    """Stream a ZIP of ``documents``, built as it is sent."""
    check_stored(documents)
    storage = _storage()
    # Stored, not compressed: the length is known in advance, so browsers show progress.
    stream = ZipStream(compress_type=ZIP_STORED, sized=True)
    taken: set[str] = set()
    for document in documents:
        name = unique_member_name(document.original_name, taken)
        path = storage.local_path(document.storage_key)
        if path is not None:
            stream.add_path(str(path), arcname=name)
        else:
            # Fetched from the store only when the ZIP reaches this member.
            chunks = _object_chunks(storage, document.storage_key)
            stream.add(chunks, arcname=name, size=document.size)
    response = Response(stream, mimetype="application/zip", direct_passthrough=True)
    response.headers["Content-Length"] = str(len(stream))
    response.headers["Content-Security-Policy"] = FILE_POLICY
    response.headers.set("Content-Disposition", "attachment", filename=filename)
    response.cache_control.private = True
    response.cache_control.no_store = True
    return response
