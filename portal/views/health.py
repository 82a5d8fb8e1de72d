"""Liveness for monitoring: the database and the storage both answer."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db
from ..storage import StorageError

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Answer 200 when the database and the storage work, else 503."""
    problems = {}
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
    except SQLAlchemyError:
        db.session.rollback()
        problems["database"] = "unreachable"
    try:
        current_app.extensions["portal.storage"].check()
    except (StorageError, OSError):
        problems["storage"] = "unavailable"
    if problems:
        return jsonify(status="error", **problems), 503
    return jsonify(status="ok")
