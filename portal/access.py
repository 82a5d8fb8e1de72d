"""Who may do what: the two kinds of principal, their loader, and the access checks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import abort, current_app, g, redirect, request, session, url_for
from flask_login import AnonymousUserMixin, current_user, login_user
from flask_wtf.csrf import generate_csrf

from .content_version import EventState, event_state
from .extensions import db, login_manager
from .models import Event, Facilitator
from .services.event import get_event

F = TypeVar("F", bound=Callable[..., Any])


class Participant:
    """Someone who typed the shared password: no account, no name, only the password's version."""

    is_authenticated = True
    is_active = True
    is_anonymous = False
    is_participant = True
    is_facilitator = False
    is_admin = False

    def __init__(self, password_version: int) -> None:
        self.password_version = password_version

    def get_id(self) -> str:
        return f"p:{self.password_version}"


class Anonymous(AnonymousUserMixin):
    """A visitor who has not unlocked the portal."""

    is_participant = False
    is_facilitator = False
    is_admin = False


def participant_admitted(event: EventState | Event, password_version: str) -> bool:
    """A participant who unlocked with ``password_version`` may still come in now."""
    return bool(
        (event.has_password if isinstance(event, EventState) else event.shared_password_hash)
        and password_version == str(event.password_version)
        and event.window_state() == "open"
    )


@login_manager.user_loader
def load_principal(user_id: str) -> Participant | Facilitator | None:
    """Turn the id kept in the session back into a principal, or None when it is stale."""
    kind, _, rest = user_id.partition(":")
    if kind == "p":
        event = event_state() or get_event()
        if participant_admitted(event, rest):
            return Participant(event.password_version)
        return None
    if kind == "f":
        raw_id, _, version = rest.partition(":")
        if not raw_id.isdigit():
            return None
        facilitator = db.session.get(Facilitator, int(raw_id))
        if facilitator and facilitator.enabled and version == str(facilitator.auth_version):
            return facilitator
    return None


def grant(principal: Participant | Facilitator) -> None:
    """Start a fresh session for ``principal``, dropping whatever the old one held."""
    session.clear()
    session.permanent = True
    login_user(principal)
    # The form token is part of the new session from the start: a later page that had to
    # add it would sign the cookie again and so restart the session's lifetime. The token
    # this request may already hold belonged to the session just cleared.
    g.pop(current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"), None)
    generate_csrf()


def is_unlocked(user: Any) -> bool:
    """A participant inside the window, or a facilitator."""
    return bool(user.is_authenticated)


def can_manage(user: Any) -> bool:
    """A logged-in facilitator."""
    return bool(user.is_authenticated and user.is_facilitator)


def can_administer(user: Any) -> bool:
    """A logged-in facilitator with the admin flag."""
    return can_manage(user) and bool(user.is_admin)


def safe_next(target: str | None, default: str) -> str:
    """Return ``target`` when it is a path on this site, else ``default``."""
    if not target or any(ch in target for ch in "\\\r\n\t\x00"):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return default
    return target


def _here() -> str:
    return request.full_path if request.query_string else request.path


def unlocked_required(view: F) -> F:
    """Send visitors who have not unlocked the portal to the gate."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not is_unlocked(current_user):
            return redirect(url_for("gate.access", next=_here()))
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def facilitator_required(view: F) -> F:
    """Send anyone but a logged-in facilitator to the login page."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not can_manage(current_user):
            return redirect(url_for("auth.login", next=_here()))
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def admin_required(view: F) -> F:
    """Refuse (403) facilitators without the admin flag."""

    @facilitator_required
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not can_administer(current_user):
            abort(403)
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


login_manager.anonymous_user = Anonymous
