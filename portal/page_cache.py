"""Rendered participant pages, kept per process, never older than the database.

An entry is keyed by the page's address (path and query string, only when the query is in
its canonical form), the language and the event's ``content_version`` and password
version, both read from the database on every request by the participant's loader: a
change committed by any process changes the key everywhere at once. A page that highlights
the session under way carries the instants between which that highlight holds and is
dropped past them. The per-user parts never enter the cache: the CSRF token is stored as a
placeholder and replaced by the requester's own; a request with flashed messages, from a
facilitator or from a visitor goes straight to the view.

A page that holds no token (the participants' pages hold none) is also kept gzipped, and
sent so to browsers that accept it: the programme weighs a tenth on a phone's poor line.
"""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from flask import Flask, Response, current_app, g, make_response, request, session
from flask_babel import get_locale
from flask_login import current_user
from flask_wtf.csrf import generate_csrf

from .content_version import event_state
from .lru import BoundedLRU

F = TypeVar("F", bound=Callable[..., Any])

#: Jinja escapes ``<`` in every value it prints: no document or title can forge this.
PLACEHOLDER = b"<\x00portal-csrf\x00>"
CACHE_CONTROL = "private, no-cache"
#: Pages shorter than this are sent as they are: gzip would save less than a packet.
GZIP_FROM = 1400
#: The view's own headers worth replaying; the others (length, cookies) belong to one answer.
KEPT_HEADERS = frozenset({"content-type", "content-security-policy"})
#: How long a request waits for another one's rendering of the same page before it
#: renders the page itself (seconds).
RENDER_WAIT = 2.0


#: Where ``_answer`` says, in the WSGI environ, which cached page it answered with.
ANSWERED = "portal.page_cache.answered"


@dataclass(frozen=True)
class Answered:
    key: PageKey
    tag: str
    token: bytes


@dataclass(frozen=True)
class Entry:
    body: bytes
    headers: tuple[tuple[str, str], ...]
    valid_until: dt.datetime | None
    tag: str
    #: The body gzipped, when it holds no form token (see ``compressed``).
    gzipped: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzipped or b"")


class PageCache:
    """A small LRU, bounded in entries and in bytes, safe for a threaded worker."""

    def __init__(self, max_entries: int = 256, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[Any, ...], Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        #: Pages being rendered: the rendering thread, and the event set once it is over.
        self._rendering: dict[tuple[Any, ...], tuple[int, threading.Event]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._bytes

    def get(self, key: tuple[Any, ...], now: dt.datetime) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.valid_until is not None and now >= entry.valid_until:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple[Any, ...], entry: Entry) -> bool:
        """Keep ``entry`` under ``key``; False if it is too big to keep."""
        if entry.size > self.max_bytes // 8:
            return False
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = entry
            self._bytes += entry.size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
        return True

    def claim(self, key: tuple[Any, ...]) -> tuple[bool, threading.Event | None]:
        """Whether the caller is the one to render the page under ``key``, and the event
        set once that rendering is over (``release``); no event to wait for when this
        thread is rendering it already."""
        me = threading.get_ident()
        with self._lock:
            found = self._rendering.get(key)
            if found is not None:
                owner, done = found
                return False, None if owner == me else done
            done = threading.Event()
            self._rendering[key] = (me, done)
            return True, done

    def release(self, key: tuple[Any, ...], done: threading.Event) -> None:
        with self._lock:
            found = self._rendering.get(key)
            if found is not None and found[1] is done:
                del self._rendering[key]
        done.set()

    def rendering(self) -> int:
        """Pages being rendered now."""
        with self._lock:
            return len(self._rendering)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _drop(self, key: tuple[Any, ...]) -> None:
        self._bytes -= self._entries.pop(key).size


def window(boundaries: Iterable[dt.datetime], now: dt.datetime) -> None:
    """Tell the cache between which instants the page being rendered stays true.

    ``boundaries`` are the instants at which what the page says about "now" changes (the
    starts and ends of the sessions it highlights); a view that never calls this is not
    cached.
    """
    instants = sorted(boundaries)
    g.page_window = (
        max((b for b in instants if b <= now), default=None),
        min((b for b in instants if b > now), default=None),
    )


def cache() -> PageCache:
    return current_app.extensions["portal.page_cache"]


class PageKey(NamedTuple):
    """What a cached page is filed under."""

    script_root: str
    path: str
    query_string: bytes
    locale: str
    content_version: int
    password_version: int


def _key(canonical: Callable[[], bool]) -> PageKey | None:
    user = current_user
    if not (user.is_authenticated and user.is_participant):
        return None
    if "_flashes" in session or request.method != "GET" or not canonical():
        return None
    event = event_state()
    if event is None:
        return None
    return PageKey(
        request.script_root,
        request.path,
        request.query_string,
        str(get_locale()),
        event.content_version,
        event.password_version,
    )


class SignedTokens:
    """The signed form of each session's form token, signed once per process.

    Flask-WTF signs the session's token again on every request that shows a form (a
    serializer, JSON, zlib and an HMAC: a tenth of a cached page's cost). With no time
    limit on tokens, a signature made earlier is exactly as valid as a new one, so it is
    kept, keyed by the session's token, and placed where Flask-WTF looks for this request's.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._signed: BoundedLRU[str, str] = BoundedLRU(max_entries)
        self._key: Any = None

    def current(self) -> str:
        field = current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
        raw = session.get(field)
        if not isinstance(raw, str) or current_app.config.get("WTF_CSRF_TIME_LIMIT") is not None:
            return generate_csrf()
        # Signed with the current key only: Flask-WTF checks tokens against that key alone.
        key = current_app.config.get("WTF_CSRF_SECRET_KEY") or current_app.secret_key
        if key != self._key:
            self._signed.clear()
            self._key = key
        signed = None if field in g else self._signed.get(raw)
        if signed is None:
            signed = generate_csrf()  # this request's own, made now or by its view
        else:
            setattr(g, field, signed)
        self._signed.put(raw, signed)
        return signed


def _token() -> str:
    return current_app.extensions["portal.signed_tokens"].current()


def _store(key: tuple[Any, ...], response: Response) -> Entry | None:
    span = g.pop("page_window", None)
    if span is None or response.status_code != 200 or response.is_streamed:
        return None
    token = _token().encode()
    body = response.get_data().replace(token, PLACEHOLDER)
    digest = hashlib.sha256(repr((key, span)).encode()).hexdigest()[:20]
    headers = tuple((k, v) for k, v in response.headers.items() if k.lower() in KEPT_HEADERS)
    entry = Entry(body, headers, span[1], digest, compressed(body))
    return entry if cache().put(key, entry) else None


def _etag(entry: Entry) -> str:
    # The body carries this session's CSRF token: a browser may reuse it only in the same
    # session (leaving and unlocking again starts a new one). ``_answer`` has made sure the
    # session holds one.
    mine = hashlib.sha256(str(session.get("csrf_token", "")).encode()).hexdigest()[:12]
    return f"{entry.tag}-{mine}"


def compressed(body: bytes) -> bytes | None:
    """``body`` gzipped once for every participant, if that is safe and worth it.

    Never a page that holds a form token: compressing a secret beside text a visitor can
    choose (a search) lets an attacker who sees the sizes guess the secret (BREACH). The
    participants' pages hold none (their "Leave" is a link), and the same bytes go to all.
    """
    if PLACEHOLDER in body or len(body) < GZIP_FROM:
        return None
    return gzip.compress(body, compresslevel=6, mtime=0)


def _answer(key: PageKey, entry: Entry) -> Response:
    token = _token().encode()
    etag = _etag(entry)
    gzipped = entry.gzipped is not None and request.accept_encodings["gzip"] > 0
    if gzipped:
        etag += "-gzip"  # another representation: its own validator
    if request.if_none_match.contains_weak(etag):
        response = Response(status=304)
        response.headers["Content-Type"] = dict(entry.headers).get("Content-Type", "text/html")
    elif gzipped:
        response = Response(entry.gzipped, headers=list(entry.headers))
        response.headers["Content-Encoding"] = "gzip"
    else:
        response = Response(entry.body.replace(PLACEHOLDER, token), headers=list(entry.headers))
    if entry.gzipped is not None:
        response.vary.add("Accept-Encoding")
    response.set_etag(etag, weak=True)
    response.headers["Cache-Control"] = CACHE_CONTROL
    # The same request again may be answered without Flask (portal/replay.py).
    request.environ[ANSWERED] = Answered(key, entry.tag, token)
    return response


def cached_page(canonical: Callable[[], bool] = lambda: not request.args) -> Callable[[F], F]:
    """Serve the view's page from the cache when the requester may share it.

    ``canonical`` says whether the query string is already in the one form the view would
    link to; any other (extra or unnormalised parameters) is rendered but never stored,
    so arbitrary parameters cannot fill the cache.
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            key = _key(canonical)
            if key is None:
                return view(*args, **kwargs)
            pages = cache()
            entry = pages.get(key, dt.datetime.now(dt.UTC))
            if entry is not None:
                return _answer(key, entry)
            # One request renders a missing page; the others asking for it meanwhile wait
            # for that page instead of rendering it too. When a session starts, or after
            # an upload, dozens ask at once: each rendering it made everyone wait for all.
            first, done = pages.claim(key)
            if not first and done is not None:
                done.wait(RENDER_WAIT)
                entry = pages.get(key, dt.datetime.now(dt.UTC))
                if entry is not None:
                    return _answer(key, entry)
            try:
                g.pop("page_window", None)
                response = make_response(view(*args, **kwargs))
                entry = _store(key, response)
            finally:
                if first and done is not None:
                    pages.release(key, done)
            return response if entry is None else _answer(key, entry)

        return wrapped  # type: ignore[return-value]

    return decorate


def init_app(app: Flask) -> None:
    """Give the application its own cache (two apps in one process share nothing)."""
    app.extensions["portal.page_cache"] = PageCache(
        app.config.get("PAGE_CACHE_ENTRIES", 256),
        app.config.get("PAGE_CACHE_BYTES", 16 * 1024 * 1024),
    )
    app.extensions["portal.signed_tokens"] = SignedTokens()
