"""Stream uploaded files straight into the storage's private temporary folder.

Werkzeug would first spool a large upload to the system's temporary folder and the
portal would then copy it; writing it once, hashed on the way, halves the disk work.
"""

from __future__ import annotations

from typing import IO, Any

from flask import Flask, current_app, g
from flask.wrappers import Request
from werkzeug.exceptions import ServiceUnavailable

from .security import UPLOAD_ENDPOINTS
from .storage import StorageError


class PortalRequest(Request):
    """A request whose uploaded files become the storage's incoming files."""

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
