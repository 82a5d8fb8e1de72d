"""Stream uploaded files straight into the storage's private temporary folder.

Werkzeug would first spool a large upload to the system's temporary folder and the
portal would then copy it; writing it once, hashed on the way, halves the disk work.
"""

from __future__ import annotations

import io
from typing import IO, Any

from flask import Flask, current_app, g
from flask.wrappers import Request
from werkzeug.exceptions import ServiceUnavailable

from .security import UPLOAD_ENDPOINTS
from .storage import StorageError

#: How much of an upload's body is asked of the server at once. Werkzeug's parser reads
#: 64 KiB at a time; gunicorn answers each such read by copying what it holds of a 1 MiB
#: receive buffer, so reading a 1 GiB body cost some 16 GiB of copies.
READ_SIZE = 1024 * 1024


class _ServerInput(io.RawIOBase):
    """The server's ``wsgi.input`` seen as a raw stream, so that it can be buffered."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class PortalRequest(Request):
    """A request whose uploaded files become the storage's incoming files."""

    def _load_form_data(self) -> None:
        if self.endpoint in UPLOAD_ENDPOINTS and "stream" not in self.__dict__:
            raw = _ServerInput(self.environ["wsgi.input"])
            self.environ["wsgi.input"] = io.BufferedReader(raw, READ_SIZE)
        super()._load_form_data()

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        if self.endpoint not in UPLOAD_ENDPOINTS:
            return super()._get_file_stream(
                total_content_length, content_type, filename, content_length
            )
        try:
            incoming = current_app.extensions["portal.storage"].incoming()
        except (StorageError, OSError) as error:
            raise ServiceUnavailable() from error
        g.setdefault("incoming_files", []).append(incoming)
        return incoming  # type: ignore[return-value]


def discard_incoming(_: BaseException | None = None) -> Any:
    """Remove the request's temporary files that no document took."""
    storage = current_app.extensions["portal.storage"]
    for incoming in g.pop("incoming_files", []):
        storage.discard(incoming)


def init_app(app: Flask) -> None:
    """Make the app use the streaming request class and clean up after each request."""
    app.request_class = PortalRequest
    app.teardown_request(discard_incoming)
