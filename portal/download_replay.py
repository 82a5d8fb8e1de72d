"""What ``portal.replay`` needs to send a participant a stored file without Flask.

Once the Flask path has sent a participant a whole file from the local disk
(``downloads.file_response``), the same browser's next plain downloads (no range, no
revalidation, no query) get the same answer for their own document: the headers Flask
gave, with the document's own values put in (``send_file``'s, computed here by the same
werkzeug code), and the file through the server's file wrapper (sendfile). Through
Flask, such a download cost several times what sending 200 KB costs (``bench/run.py`` W2).

The documents' facts come from one query per content version: every change to a document
bumps it (``portal.content_version``), and the index is read after the version, so it is
never older than the version it is filed under.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Response
from sqlalchemy import Engine, select
from werkzeug.http import http_date

from .downloads import disposition
from .models import Document

#: A download's path (``programme.download``), with the document id as Flask reads it.
DOWNLOAD_PATH = re.compile(r"/documents/([1-9][0-9]{0,17})/[^/\x00]+")
#: Request headers that change the Flask path's answer (ranges, revalidation) or bring a
#: body: such requests always go through Flask.
OTHER_ANSWER = (
    "HTTP_RANGE",
    "HTTP_IF_RANGE",
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_TRANSFER_ENCODING",
)
#: Headers that carry the time the answer was made.
TIMED = frozenset({"date", "expires"})
#: Headers whose value is the answer's own: its document's, or its time's.
OWN = TIMED | {
    "content-disposition",
    "content-type",
    "content-length",
    "last-modified",
    "etag",
    "x-accel-redirect",
}
#: Headers the same for every document's answer (those send_file, the security headers and
#: the session set). An answer with any other is not noted: it might belong to its document.
SHARED = frozenset(
    {
        "cache-control",
        "accept-ranges",
        "content-security-policy",
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
        "cross-origin-opener-policy",
        "permissions-policy",
        "strict-transport-security",
        "vary",
    }
)
#: Different templates kept at most (one per set of settings, in practice).
MAX_TEMPLATES = 64


def plain_download(environ: dict[str, Any]) -> int | None:
    """The document id of a plain download request, else None."""
    found = DOWNLOAD_PATH.fullmatch(environ.get("PATH_INFO", ""))
    if found is None or environ.get("QUERY_STRING"):
        return None
    if environ.get("CONTENT_LENGTH") not in (None, "", "0"):
        return None
    if any(name in environ for name in OTHER_ANSWER):
        return None
    return int(found.group(1))


@dataclass(frozen=True)
class Facts:
    """What the answer for one document depends on."""

    storage_key: str
    size: int
    #: The document's own headers, as ``send_file`` writes them, by lower-case name.
    headers: dict[str, str]


def _facts(row: Any) -> Facts:
    # The same properties send_file sets, so the same formatting.
    response = Response(mimetype=row.content_type)
    response.content_length = row.size
    response.last_modified = row.updated_at
    response.set_etag(row.sha256)
    own = {name.lower(): value for name, value in response.headers.items()}
    own["content-disposition"] = disposition(row.original_name, inline=False)
    return Facts(row.storage_key, row.size, own)


class DocumentIndex:
    """Every document's facts, for the newest content version seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version: int | None = None
        self._facts: dict[int, Facts] = {}

    def get(self, engine: Engine, content_version: int, document_id: int) -> Facts | None:
        """The document's facts as of ``content_version`` or later; None if there is none.

        A request that read an older version than the index's gets None (Flask answers it).
        The table is read outside the lock: a reload never holds up the other downloads.
        """
        with self._lock:
            version, facts = self._version, self._facts
        if version is not None and content_version < version:
            return None
        if content_version != version:
            facts = self._load(engine)  # read after the version: never older than it
            with self._lock:
                if self._version is None or content_version > self._version:
                    self._version, self._facts = content_version, facts
        return facts.get(document_id)

    @staticmethod
    def _load(engine: Engine) -> dict[int, Facts]:
        table = Document.__table__
        query = select(
            table.c.id,
            table.c.original_name,
            table.c.content_type,
            table.c.size,
            table.c.sha256,
            table.c.storage_key,
            table.c.updated_at,
        )
        with engine.connect() as connection:
            return {row.id: _facts(row) for row in connection.execute(query)}


#: A noted answer's headers: each a value, or None where the answer's own one goes.
Template = tuple[tuple[str, str | None], ...]
_templates: dict[Template, Template] = {}
_templates_lock = threading.Lock()


def template(headers: list[tuple[str, str]]) -> Template | None:
    """The headers of an answer sending a file, with its document's and its time's left out.

    None when the answer has a header that is neither known to be shared nor the
    document's own. Participants get the same template: one copy is kept for them all.
    """
    names = {name.lower() for name, _ in headers}
    if not names <= SHARED | OWN:
        return None
    # Behind nginx (X-Accel-Redirect) the answer has no body: its length stays 0.
    own = OWN - {"content-length"} if "x-accel-redirect" in names else OWN
    found = tuple((name, None if name.lower() in own else value) for name, value in headers)
    with _templates_lock:
        if len(_templates) > MAX_TEMPLATES:
            _templates.clear()
        return _templates.setdefault(found, found)


def answer_headers(
    noted: Template, facts: Facts, accel_prefix: str | None
) -> list[tuple[str, str]]:
    """The noted answer's headers, for ``facts``'s document, now."""
    stamp = http_date(int(time.time()))
    headers = []
    for name, value in noted:
        if value is None:
            lower = name.lower()
            if lower == "x-accel-redirect":
                value = f"{accel_prefix}{facts.storage_key}"
            elif lower in TIMED:
                value = stamp
            else:
                value = facts.headers[lower]
        headers.append((name, value))
    return headers
