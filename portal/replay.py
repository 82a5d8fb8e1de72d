"""A participant's repeated request for a cached page, answered without Flask.

Participants go back and forth between the programme and their session's page, and their
browsers ask for each page again every time (``Cache-Control: private, no-cache``: a 304
when nothing changed). Through Flask, Flask-Login, Babel, the session and the hooks, such
a request costs several times what the page cache itself needs (``bench/run.py`` W1/W1b).

When the page cache answers a request (``page_cache._answer``), the answer is noted under
a key made of every part of the request that the way through Flask reads for such a page:
path and query, host and scheme, the whole Cookie header (session, language), the
languages the browser accepts, ``If-None-Match``, and the address and user agent that
Flask-Login's session protection hashes. When exactly the same request comes again, the
same answer is given only if everything else it depended on still holds, checked as the
Flask path checks it: the session cookie is still young enough; the event, read from the
database as on every request, still admits this participant (same password version,
window open); the page cache holds the same page for the current content version; the
secret keys have not changed. Anything else, and every request that is not a GET with a
cookie, goes through Flask. Nothing here writes anything.

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

from .access import participant_admitted
from .content_version import READ_EARLIER, read_event_state
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
    "HTTP_IF_NONE_MATCH",
    "HTTP_USER_AGENT",
    "REMOTE_ADDR",
    "HTTP_X_FORWARDED_FOR",
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


def _settings(app: Flask) -> tuple[Any, ...]:
    """The configuration an answer depends on: keys, token and session lifetimes."""
    config = app.config
    return (
        app.secret_key,
        tuple(config.get("SECRET_KEY_FALLBACKS") or ()),
        config.get("WTF_CSRF_SECRET_KEY"),
        config.get("WTF_CSRF_TIME_LIMIT"),
        config.get("PERMANENT_SESSION_LIFETIME"),
    )


class Replay:
    """WSGI middleware in front of Flask's own application (inside ProxyFix, if any)."""

    def __init__(self, app: Flask, wsgi_app: Callable[..., Any], max_entries: int) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.noted: BoundedLRU[tuple[Any, ...], Noted] = BoundedLRU(max_entries)
        #: Requests answered here (for tests and curious administrators).
        self.answered = 0
        self._engine: Any = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "GET" or "HTTP_COOKIE" not in environ:
            return self.wsgi_app(environ, start_response)
        key = tuple(environ.get(part) for part in REQUEST_PARTS)
        noted = self.noted.get(key)
        if noted is not None:
            answer = self._again(noted, environ)
            if answer is not None:
                status, headers, body = answer
                start_response(status, headers)
                self.answered += 1
                return [body]
        seen: list[tuple[str, list[tuple[str, str]]]] = []

        def note_start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen.append((status, headers))
            return start_response(status, headers, exc_info)

        # As they were when the cookie was checked: keys changed meanwhile end the replay.
        settings = _settings(self.app)
        result = self.wsgi_app(environ, note_start)
        answered = environ.get(ANSWERED)
        if answered is not None and seen and SIGNED_AT in environ:
            self._note(key, settings, answered, environ[SIGNED_AT], *seen[-1])
        return result

    def _note(
        self,
        key: tuple[Any, ...],
        settings: tuple[Any, ...],
        answered: Answered,
        signed_at: int,
        status: str,
        headers: list[tuple[str, str]],
    ) -> None:
        names = [name.lower() for name, _ in headers]
        if "set-cookie" in names or not status.startswith(("200", "304")):
            return
        if settings[3] is not None:
            return  # form tokens that expire are signed anew on every page
        if sum(len(part) for part in key if isinstance(part, str)) > MAX_REQUEST_BYTES:
            return  # real browsers send far less; padded requests must not fill memory
        length_at = names.index("content-length") if "content-length" in names else None
        noted = Noted(answered, signed_at, settings, status, list(headers), length_at)
        self.noted.put(key, noted)

    def _again(
        self, noted: Noted, environ: dict[str, Any]
    ) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """The noted answer, if the Flask path would give it now; else None."""
        app = self.app
        if noted.settings != _settings(app):
            return None
        if not app.session_interface.young_enough(app, noted.signed_at):  # type: ignore[attr-defined]
            return None
        try:
            state = read_event_state(self._database())
        except Exception:  # noqa: BLE001 - the Flask path reads again and shows its 503 page
            return None
        # Should the request go on to Flask, its loader uses this reading, not a second one.
        environ[READ_EARLIER] = state
        page_key = noted.answered.key
        if (
            state is None
            or not participant_admitted(state, str(page_key.password_version))
            or state.content_version != page_key.content_version
        ):
            return None
        pages: PageCache = app.extensions["portal.page_cache"]
        entry = pages.get(page_key, dt.datetime.now(dt.UTC))
        if entry is None or entry.tag != noted.answered.tag:
            return None
        with_body = noted.status.startswith("200")
        body = entry.body.replace(PLACEHOLDER, noted.answered.token) if with_body else b""
        headers = list(noted.headers)
        if noted.length_at is not None:
            headers[noted.length_at] = (headers[noted.length_at][0], str(len(body)))
        return noted.status, headers, body

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
