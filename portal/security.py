"""Protections every response and request gets: headers, cookies, body limits, CSRF order."""

from __future__ import annotations

import io
from typing import Any

from flask import Flask, Response, abort, redirect, request, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.wrappers import Request
from flask_login import current_user
from itsdangerous import BadSignature, URLSafeTimedSerializer

from .access import can_manage
from .extensions import csrf
from .lru import BoundedLRU

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Served files never run anything, even if a browser were talked into rendering one.
FILE_POLICY = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
#: Inline PDFs need the browser's viewer, which the sandbox directive would block.
INLINE_PDF_POLICY = "default-src 'none'; object-src 'self'; frame-ancestors 'self'"

#: Headers SPEC section 6 asks of every response, unless the view set its own.
EVERY_RESPONSE = (
    ("Content-Security-Policy", PAGE_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
)
#: Methods whose form a request may submit (Flask-WTF's and the CSRF check's list).
SUBMIT_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Endpoints whose requests may carry files; every other request body is kept small.
UPLOAD_ENDPOINTS = frozenset({"manage.upload", "manage.replace_document_file"})
#: The tus PATCH: a raw byte stream (never a form), written to disk by its view in chunks.
STREAM_ENDPOINTS = frozenset({"tus.upload"})
STREAM_MIMETYPE = "application/offset+octet-stream"
SMALL_BODY_LIMIT = 64 * 1024
#: Session values that no request can change in place (so a decoded session can be shared).
PLAIN = (str, int, float, bool, type(None))
#: Where ``open_session`` leaves the signing time (Unix seconds) of a session cookie that
#: holds only plain values, for ``portal.replay``.
SIGNED_AT = "portal.session_signed_at"
#: Blueprints for facilitators only: strangers are sent to the login page.
FACILITATOR_BLUEPRINTS = frozenset({"manage", "admin", "tus"})


class SessionInterface(SecureCookieSessionInterface):
    """Signed-cookie sessions whose cookie is ``Secure`` whenever the request came over HTTPS.

    Flask builds the cookie's serializer again for every request and checks the cookie's
    two HMACs and decodes its JSON each time: a third of what a page that renders nothing
    costs. The serializer is built once per set of keys, and a cookie already checked
    against those keys is not checked again: its contents and signing time are kept (only
    for contents made of plain values, which no request can change in place) and its age is
    compared with the session lifetime on every request, on itsdangerous's own clock.
    """

    _serializer: tuple[Any, URLSafeTimedSerializer | None] | None = None

    def __init__(self, max_verified: int = 2048) -> None:
        self._verified: BoundedLRU[tuple[int, str], tuple[dict[str, Any], int]] = BoundedLRU(
            max_verified
        )

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(request.is_secure) or super().get_cookie_secure(app)

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        keys = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        cached = self._serializer
        if cached is None or cached[0] != keys:
            serializer = super().get_signing_serializer(app)
            self._verified.clear()
            cached = self._serializer = (keys, serializer)
        return cached[1]

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        serializer = self.get_signing_serializer(app)
        if serializer is None:
            return None
        value = request.cookies.get(self.get_cookie_name(app))
        if not value:
            return self.session_class()
        key = (id(serializer), value)
        known = self._verified.get(key)
        if known is not None:
            data, signed_at = known
            if self.young_enough(app, signed_at):
                request.environ[SIGNED_AT] = signed_at
                return self.session_class(data)
            self._verified.pop(key)
            return self.session_class()
        max_age = int(app.permanent_session_lifetime.total_seconds())
        try:
            data, signed = serializer.loads(value, max_age=max_age, return_timestamp=True)
        except BadSignature:
            return self.session_class()
        if isinstance(data, dict) and all(isinstance(v, PLAIN) for v in data.values()):
            signed_at = int(signed.timestamp())
            self._verified.put(key, (data, signed_at))
            request.environ[SIGNED_AT] = signed_at
        return self.session_class(data)

    def young_enough(self, app: Flask, signed_at: int) -> bool:
        """A cookie signed at ``signed_at`` is within the session lifetime now.

        On itsdangerous's own clock, as ``serializer.loads(max_age=...)`` counts.
        """
        max_age = int(app.permanent_session_lifetime.total_seconds())
        age = URLSafeTimedSerializer.default_signer.get_timestamp(None) - signed_at  # type: ignore[arg-type]
        return 0 <= age <= max_age


def _buffer_small_body() -> None:
    """Read a body sent without Content-Length (chunked) and refuse it when too large.

    Werkzeug would silently cut such a body at the limit and parse what is left.
    """
    raw = request.environ["wsgi.input"].read(SMALL_BODY_LIMIT + 1)
    if len(raw) > SMALL_BODY_LIMIT:
        abort(413)
    request.environ["wsgi.input"] = io.BytesIO(raw)
    request.environ["CONTENT_LENGTH"] = str(len(raw))
    request.environ.pop("HTTP_TRANSFER_ENCODING", None)
    request.environ["wsgi.input_terminated"] = False


def guard_request() -> Response | None:
    """Limit the body, keep strangers out of /manage before reading it, then check CSRF."""
    streamed = request.endpoint in STREAM_ENDPOINTS and request.method == "PATCH"
    if request.endpoint not in UPLOAD_ENDPOINTS and not streamed:
        request.max_content_length = SMALL_BODY_LIMIT
        if request.content_length is None and request.method in {"POST", "PUT", "PATCH"}:
            _buffer_small_body()
    if request.blueprint in FACILITATOR_BLUEPRINTS and not can_manage(current_user):
        # Decided before the body is read: an anonymous upload never reaches the disk.
        code = 302 if request.method in {"GET", "HEAD"} else 303
        return redirect(url_for("auth.login", next=request.path), code)
    if "\x00" in request.path or any("\x00" in v for k, v in request.args.items() if k != "next"):
        # No database accepts NUL in text: refuse it here rather than as a database error.
        abort(400)
    if streamed and request.mimetype != STREAM_MIMETYPE:
        # Any other type could be parsed as a form by the CSRF check, without the small limit.
        abort(415)
    if request.routing_exception is None and request.method in SUBMIT_METHODS:
        # An unknown path or a wrong method gets its 404/405, not a CSRF error. Other
        # methods carry no form: neither Flask-WTF nor the views read one for them.
        csrf.protect()
        if request.endpoint not in UPLOAD_ENDPOINTS and any(
            "\x00" in v for k, v in request.form.items() if k != "next"
        ):
            abort(400)
    return None


def add_security_headers(response: Response) -> Response:
    """Add the headers SPEC section 6 asks of every response."""
    headers = response.headers
    # One pass over the headers the view set: Headers.setdefault scans them all per call.
    present = {name.lower() for name, _ in headers.items()}
    extra = [pair for pair in EVERY_RESPONSE if pair[0].lower() not in present]
    if request.is_secure and "strict-transport-security" not in present:
        extra.append(("Strict-Transport-Security", "max-age=31536000"))
    if response.mimetype == "text/html":
        if "cache-control" not in present:
            extra.append(("Cache-Control", "no-store"))
        response.vary.update(("Cookie", "Accept-Language"))
    headers.extend(extra)
    return response


def init_app(app: Flask) -> None:
    """Install the session interface, the request guard and the response headers."""
    app.session_interface = SessionInterface()
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME="portal_session",
    )
    app.before_request(guard_request)
    app.after_request(add_security_headers)
