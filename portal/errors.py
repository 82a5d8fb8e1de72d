"""Error pages: the portal's own, in the visitor's language, never a traceback."""

from __future__ import annotations

from flask import Flask, current_app, g, render_template
from flask.typing import ResponseReturnValue
from flask_babel import lazy_gettext as _l
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError

from .access import Anonymous
from .extensions import db
from .storage import StorageError, StorageFull

MESSAGES = {
    400: (_l("Bad request"), _l("The form could not be read. Reload the page and try again.")),
    401: (_l("Not signed in"), _l("You need to sign in to see this page.")),
    403: (_l("Access refused"), _l("You are not allowed to see this page.")),
    404: (_l("Page not found"), _l("This page or document does not exist, or no longer.")),
    405: (_l("Method not allowed"), _l("This address does not accept this kind of request.")),
    413: (
        _l("Too large"),
        _l("What you sent is larger than the portal accepts."),
    ),
    429: (
        _l("Too many attempts"),
        _l("Too many wrong attempts from your connection. Wait a minute, then try again."),
    ),
    500: (_l("Something went wrong"), _l("The portal could not answer. Try again in a moment.")),
    507: (
        _l("Storage full"),
        _l("The portal has no room left for this file. Nothing was saved; tell the administrator."),
    ),
    503: (
        _l("Temporarily unavailable"),
        _l("The portal or this document is temporarily unavailable. Try again in a moment."),
    ),
}


def render_error(code: int, detail: str | None = None) -> ResponseReturnValue:
    """Render the error page for ``code``."""
    title, message = MESSAGES.get(code, MESSAGES[400] if 400 <= code < 500 else MESSAGES[500])
    if code == 400 and detail:
        message = detail
    return render_template("errors/error.html", code=code, title=title, message=message), code


def _http_error(error: HTTPException) -> ResponseReturnValue:
    code = error.code or 500
    if code == 400 and "CSRF" in (error.description or ""):
        detail = str(
            _l("The form has expired or did not come from this portal. Reload the page and retry.")
        )
        return render_error(400, detail)
    body, _ = render_error(code)
    # Keep what the error itself says (Allow for 405, Content-Range for 416...).
    headers = [(k, v) for k, v in error.get_headers() if k.lower() != "content-type"]
    return body, code, headers


def _database_error(error: Exception) -> ResponseReturnValue:
    current_app.logger.warning("database unavailable: %s", str(error).splitlines()[0])
    db.session.rollback()
    g.database_down = True
    # The page must not ask the database who the visitor is: treat them as anonymous.
    g._login_user = Anonymous()
    return render_error(503)


def _storage_error(error: StorageError) -> ResponseReturnValue:
    return render_error(507 if isinstance(error, StorageFull) else 503)


def _unexpected(error: InternalServerError) -> ResponseReturnValue:
    original = getattr(error, "original_exception", None)
    if isinstance(original, OperationalError | DBAPIError):
        return _database_error(original)
    return render_error(500)


def init_app(app: Flask) -> None:
    """Register the error handlers."""
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(OperationalError, _database_error)
    app.register_error_handler(DBAPIError, _database_error)
    app.register_error_handler(StorageError, _storage_error)
    app.register_error_handler(InternalServerError, _unexpected)
