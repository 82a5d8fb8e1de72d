"""A participant's repeated request for a cached page, answered without Flask.

Participants go back and forth between the programme and their session's page, and their
browsers ask for each page again every time (``Cache-Control: private, no-cache``: a 304
when nothing changed). Through Flask, Flask-Login, Babel, the session and the hooks, such
a request costs several times what the page cache itself needs (``bench/run.py`` W1/W1b).

When the page cache answers a request (``page_cache._answer``), the answer is noted under
a key made of every part of the request that the way through Flask reads for such a page:
path and query, host and scheme, the whole Cookie header (session, language), the
languages and encodings the browser accepts, ``If-None-Match``, and the address and user
agent that Flask-Login's session protection hashes. When exactly the same request comes again, the
same answer is given only if everything else it depended on still holds, checked as the
Flask path checks it: the session cookie is still young enough; the event, read from the
database as on every request, still admits this participant (same password version,
window open); the page cache holds the same page for the current content version; the
secret keys have not changed. Anything else, and every request that is not a GET with a
cookie, goes through Flask.

A participant's downloads after the first one are answered the same way, by the request
parts but the path (``portal.download_replay``): the only thing written here is their count.

Only answers that set no cookie are noted, so a request whose session Flask would have
changed (flashed messages, Flask-Login's session protection, a language chosen in the
URL) is never answered here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from werkzeug.wsgi import wrap_file

from .access import participant_admitted
from .content_version import READ_EARLIER, EventState, read_event_state
from .download_replay import DocumentIndex, Template, answer_headers, plain_download, template
from .downloads import SENT_FILE
from .extensions import db
from .lru import BoundedLRU
from .page_cache import ANSWERED, PLACEHOLDER, Answered, PageCache
from .security import SIGNED_AT

#: The parts of a request that the Flask path reads when it answers from the page cache.
REQUEST_PARTS = (
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "HTTP_HOST",
    "wsgi.url_scheme",
    "HTTP_COOKIE",
    "HTTP_ACCEPT_LANGUAGE",
    "HTTP_ACCEPT_ENCODING",
    "HTTP_IF_NONE_MATCH",
    "HTTP_USER_AGENT",
    "REMOTE_ADDR",
    "HTTP_X_FORWARDED_FOR",
)
#: The parts that make a participant's download answer other than the file itself.
CLIENT_PARTS = tuple(
    part
    for part in REQUEST_PARTS
    if part not in {"PATH_INFO", "QUERY_STRING", "HTTP_IF_NONE_MATCH"}
)
#: Requests whose parts add up to more than this are never noted: a browser sends about
#: 1 KB of them, and the noted answers are bounded in number, not in size.
MAX_REQUEST_BYTES = 4096
StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class Noted:
    """How the Flask path answered one request from the page cache."""

    answered: Answered
    signed_at: int
    settings: tuple[Any, ...]
    status: str
    headers: list[tuple[str, str]]
    #: Where Content-Length is in ``headers`` (given again for the body sent).
    length_at: int | None
    #: The page was sent gzipped.
    gzipped: bool


@dataclass(frozen=True)
class NotedClient:
    """How the Flask path sent a participant a whole stored file."""

    password_version: int
    signed_at: int
    settings: tuple[Any, ...]
    headers: Template


def _settings(app: Flask) -> tuple[Any, ...]:
    """The configuration an answer depends on: keys, token and session lifetimes."""
    config = app.config
    return (
        app.secret_key,
        tuple(config.get("SECRET_KEY_FALLBACKS") or ()),
        config.get("WTF_CSRF_SECRET_KEY"),
        config.get("WTF_CSRF_TIME_LIMIT"),
        config.get("PERMANENT_SESSION_LIFETIME"),
        config.get("ACCEL_REDIRECT"),
    )


class Replay:
    """WSGI middleware in front of Flask's own application (inside ProxyFix, if any)."""

    def __init__(self, app: Flask, wsgi_app: Callable[..., Any], max_entries: int) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.noted: BoundedLRU[tuple[Any, ...], Noted] = BoundedLRU(max_entries)
        #: Participants sent a file by the Flask path, by the request parts they sent.
        self.clients: BoundedLRU[tuple[Any, ...], NotedClient] = BoundedLRU(max_entries)
        self.documents = DocumentIndex()
        #: Requests answered here (for tests and curious administrators).
        self.answered = 0
        self._engine: Any = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "GET" or "HTTP_COOKIE" not in environ:
            return self.wsgi_app(environ, start_response)
        document_id = plain_download(environ)
        if document_id is None:
            key = tuple(environ.get(part) for part in REQUEST_PARTS)
            noted = self.noted.get(key)
            answer = None if noted is None else self._again(noted, environ)
        else:
            key = tuple(environ.get(part) for part in CLIENT_PARTS)
            client = self.clients.get(key)
            answer = None if client is None else self._send(client, document_id, environ)
        if answer is not None:
            status, headers, body = answer
            start_response(status, headers)
            self.answered += 1
            return body
        seen: list[tuple[str, list[tuple[str, str]]]] = []

        def note_start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen.append((status, headers))
            return start_response(status, headers, exc_info)

        # As they were when the cookie was checked: keys changed meanwhile end the replay.
        settings = _settings(self.app)
        result = self.wsgi_app(environ, note_start)
        if seen and SIGNED_AT in environ and self._may_note(key, settings, *seen[-1]):
            signed_at = environ[SIGNED_AT]
            status, headers = seen[-1]
            answered = environ.get(ANSWERED)
            if answered is not None:
                names = [name.lower() for name, _ in headers]
                length_at = names.index("content-length") if "content-length" in names else None
                gzipped = "content-encoding" in names
                self.noted.put(
                    key,
                    Noted(answered, signed_at, settings, status, list(headers), length_at, gzipped),
                )
            elif document_id is not None and SENT_FILE in environ and status.startswith("200"):
                shared = template(headers)
                if shared is not None:
                    sent_to = environ[SENT_FILE]
                    self.clients.put(key, NotedClient(sent_to, signed_at, settings, shared))
        return result

    @staticmethod
    def _may_note(
        key: tuple[Any, ...], settings: tuple[Any, ...], status: str, headers: list[tuple[str, str]]
    ) -> bool:
        """An answer that the same request again would get from Flask, cookie for cookie."""
        if not status.startswith(("200", "304")):
            return False
        if any(name.lower() == "set-cookie" for name, _ in headers):
            return False
        if settings[3] is not None:
            return False  # form tokens that expire are signed anew on every page
        # Real browsers send far less; padded requests must not fill memory.
        return sum(len(part) for part in key if isinstance(part, str)) <= MAX_REQUEST_BYTES

    def _admitted(
        self, settings: tuple[Any, ...], signed_at: int, password_version: str, environ: dict
    ) -> EventState | None:
        """The event's state, if a participant's cookie would still let them in now."""
        app = self.app
        if settings != _settings(app):
            return None
        if not app.session_interface.young_enough(app, signed_at):  # type: ignore[attr-defined]
            return None
        try:
            state = read_event_state(self._database())
        except Exception:  # noqa: BLE001 - the Flask path reads again and shows its 503 page
            return None
        # Should the request go on to Flask, its loader uses this reading, not a second one.
        environ[READ_EARLIER] = state
        if state is None or not participant_admitted(state, password_version):
            return None
        return state

    def _again(
        self, noted: Noted, environ: dict[str, Any]
    ) -> tuple[str, list[tuple[str, str]], list[bytes]] | None:
        """The noted answer, if the Flask path would give it now; else None."""
        page_key = noted.answered.key
        state = self._admitted(
            noted.settings, noted.signed_at, str(page_key.password_version), environ
        )
        if state is None or state.content_version != page_key.content_version:
            return None
        pages: PageCache = self.app.extensions["portal.page_cache"]
        entry = pages.get(page_key, dt.datetime.now(dt.UTC))
        if entry is None or entry.tag != noted.answered.tag:
            return None
        body: bytes | None = b""
        if noted.status.startswith("200"):
            token = noted.answered.token
            body = entry.gzipped if noted.gzipped else entry.body.replace(PLACEHOLDER, token)
        if body is None:
            return None
        headers = list(noted.headers)
        if noted.length_at is not None:
            headers[noted.length_at] = (headers[noted.length_at][0], str(len(body)))
        return noted.status, headers, [body]

    def _send(
        self, client: NotedClient, document_id: int, environ: dict[str, Any]
    ) -> tuple[str, list[tuple[str, str]], Iterable[bytes]] | None:
        """A document's file as the Flask path would send it to this participant now."""
        state = self._admitted(
            client.settings, client.signed_at, str(client.password_version), environ
        )
        if state is None:
            return None
        engine = self._database()
        try:
            facts = self.documents.get(engine, state.content_version, document_id)
        except Exception:  # noqa: BLE001 - the Flask path shows its 503 page
            return None
        if facts is None:
            return None
        accel_prefix = self.app.config.get("ACCEL_REDIRECT")
        storage = self.app.extensions["portal.storage"]
        path = storage.local_path(facts.storage_key)
        body: Iterable[bytes] = [b""]
        try:
            if path is None or storage.size(facts.storage_key) != facts.size:
                return None  # the Flask path answers 503, and logs it
            if not accel_prefix:
                body = wrap_file(environ, open(path, "rb"))  # noqa: SIM115 - the server closes it
            self.app.extensions["portal.download_counts"].add(engine, document_id)
        except Exception:  # noqa: BLE001 - the Flask path tries again, or shows its error page
            close = getattr(body, "close", None)
            if close is not None:
                close()
            return None
        return "200 OK", answer_headers(client.headers, facts, accel_prefix), body

    def _database(self) -> Any:
        if self._engine is None:
            with self.app.app_context():
                self._engine = db.engine
        return self._engine


def init_app(app: Flask) -> None:
    """Put the replay in front of Flask's application, unless PAGE_REPLAY is false."""
    if not app.config.get("PAGE_REPLAY", True):
        return
    replay = Replay(app, app.wsgi_app, app.config.get("PAGE_REPLAY_ENTRIES", 2048))
    app.extensions["portal.replay"] = replay
    app.wsgi_app = replay  # type: ignore[method-assign]
