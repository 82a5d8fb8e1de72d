"""Blueprints, cut by audience, and what every template needs."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Flask, g, request
from flask_babel import get_locale
from sqlalchemy.exc import SQLAlchemyError

from ..access import can_administer, can_manage, safe_next
from ..extensions import db
from ..services.event import get_event
from ..timezones import to_local


def _template_context() -> dict[str, Any]:
    event = None
    if not g.get("database_down"):
        try:
            event = get_event()
        except SQLAlchemyError:
            db.session.rollback()
    return {
        "event": event,
        "can_manage": can_manage,
        "can_administer": can_administer,
        "locale": str(get_locale() or "fr"),
        "to_local": to_local,
        "url_in_language": url_in_language,
    }


def url_in_language(code: str) -> str:
    """Return the current page's address, filters kept, in the language ``code``."""
    args = [
        (k, v)
        for k, v in request.args.items(multi=True)
        if k != "lang" and (k != "next" or safe_next(v, "") == v)
    ]
    return f"{request.path}?{urlencode([*args, ('lang', code)])}"


def init_app(app: Flask) -> None:
    """Register every blueprint and the template helpers."""
    from . import admin, auth, gate, health, manage, programme, uploads_tus

    for module in (health, gate, auth, programme, manage, uploads_tus, admin):
        app.register_blueprint(module.bp)
    app.context_processor(_template_context)
