"""Use cases for credentials: the shared password and facilitator accounts."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from flask_babel import lazy_gettext as _l
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..models import Facilitator, utcnow
from .event import get_event

EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MIN_PASSWORD_LENGTH = 8


#: The shared password, once argon2id has found it right, kept only in this process's memory
#: as an HMAC under a key made at start, next to the stored hash it was checked against.
#: When a session starts, everybody types that same password within a minute: each right
#: try then costs a microsecond instead of one argon2id hash (tens of milliseconds of CPU
#: and 19 MiB), while every wrong try still pays the full hash and counts towards the rate
#: limit. A new shared password means a new stored hash, so a remembered one never matches.
_MEMORY_KEY = os.urandom(32)
_known_right: dict[str, bytes] = {}
_known_right_lock = threading.Lock()


def _keyed(password: str) -> bytes:
    return hmac.new(_MEMORY_KEY, password.encode(), hashlib.sha256).digest()


class AccountError(Exception):
    """A change to credentials that the data refuses; the message is for the user."""


def _hasher() -> PasswordHasher:
    return PasswordHasher(**current_app.config["PASSWORD_HASH"])


def hash_password(password: str) -> str:
    """Return a salted argon2id hash of ``password``."""
    return _hasher().hash(password)


def _verify(stored_hash: str | None, password: str) -> bool:
    hasher = _hasher()
    if not stored_hash:
        # Spend the same time as a real check, so timing tells nothing.
        hasher.hash(password)
        return False
    try:
        return hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def set_shared_password(password: str) -> None:
    """Set the participants' password and sign every participant out."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(_l("The password must have at least 8 characters."))
    event = get_event()
    try:
        event.shared_password_hash = hash_password(password)
        event.password_version = (event.password_version or 0) + 1
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise


def check_shared_password(password: str) -> int | None:
    """Return the password's version when ``password`` is the shared password."""
    event = get_event()
    stored = event.shared_password_hash
    remembered = _known_right.get(stored) if stored else None
    if remembered is not None and hmac.compare_digest(remembered, _keyed(password)):
        return event.password_version
    if _verify(stored, password):
        with _known_right_lock:
            _known_right.clear()
            _known_right[stored] = _keyed(password)
        return event.password_version
    return None


def normalise_email(email: str) -> str:
    """Return the e-mail as it is stored: trimmed and lower-case."""
    return email.strip().lower()


def create_facilitator(
    email: str, password: str, *, name: str = "", is_admin: bool = False
) -> Facilitator:
    """Create a facilitator account."""
    email = normalise_email(email)
    if not EMAIL_PATTERN.fullmatch(email) or len(email) > 254:
        raise AccountError(_l("This e-mail address is not valid."))
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(_l("The password must have at least 8 characters."))
    facilitator = Facilitator(
        email=email,
        name=name.strip()[:120],
        password_hash=hash_password(password),
        is_admin=is_admin,
    )
    try:
        db.session.add(facilitator)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise AccountError(_l("An account with this e-mail address already exists.")) from None
    except BaseException:
        db.session.rollback()
        raise
    return facilitator


def authenticate_facilitator(email: str, password: str) -> Facilitator | None:
    """Return the enabled facilitator with these credentials, or None."""
    facilitator = db.session.scalars(
        db.select(Facilitator).where(func.lower(Facilitator.email) == normalise_email(email))
    ).first()
    if not _verify(facilitator.password_hash if facilitator else None, password):
        return None
    if not facilitator or not facilitator.enabled:
        return None
    try:
        facilitator.last_login_at = utcnow()
        if _hasher().check_needs_rehash(facilitator.password_hash):
            facilitator.password_hash = hash_password(password)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return facilitator


def sign_out_everywhere(facilitator: Facilitator) -> None:
    """Invalidate every login cookie of this facilitator."""
    try:
        facilitator.auth_version = (facilitator.auth_version or 0) + 1
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise


def update_facilitator(
    facilitator: Facilitator, *, acting: Facilitator, enabled: bool, is_admin: bool
) -> None:
    """Enable, disable, grant or remove admin rights; never on one's own account."""
    if facilitator.id == acting.id and (not enabled or not is_admin):
        raise AccountError(_l("You cannot disable your own account or remove your own rights."))
    try:
        if facilitator.enabled and not enabled:
            facilitator.auth_version = (facilitator.auth_version or 0) + 1
        facilitator.enabled = enabled
        facilitator.is_admin = is_admin
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise


def admin_exists() -> bool:
    """Say whether at least one enabled admin account exists."""
    return (
        db.session.scalar(
            db.select(func.count(Facilitator.id)).where(Facilitator.is_admin, Facilitator.enabled)
        )
        or 0
    ) > 0
