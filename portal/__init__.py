"""Portail des supports: the documents of an online event week, behind one shared password."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import (
    assets,
    content_version,
    errors,
    i18n,
    page_cache,
    ratelimit,
    replay,
    security,
    uploads,
)
from .config import load_settings
from .download_counts import DownloadCounter
from .extensions import babel, csrf, db, login_manager, migrate
from .storage import storage_from_setting

PACKAGE_DIR = Path(__file__).parent


def _templates_dir() -> str:
    # Installed wheels carry the templates inside the package; a checkout has them at the root.
    inside = PACKAGE_DIR / "templates"
    return str(inside if inside.is_dir() else PACKAGE_DIR.parent / "templates")


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the portal's WSGI application."""
    app = Flask(__name__, template_folder=_templates_dir(), instance_relative_config=False)
    settings = load_settings(test_config)
    app.config.update(settings)
    # Flask has its own defaults for these two (31 days, refreshed on every request), so
    # setdefault would keep Flask's. A session lasts seven days from the unlock or login
    # that started it, not from the last visit: the cookie is signed again only when the
    # session changes, which spares every page a quarter of its cost (bench/run.py W1).
    for key, value in (
        ("PERMANENT_SESSION_LIFETIME", dt.timedelta(days=7)),
        ("SESSION_REFRESH_EACH_REQUEST", False),
    ):
        if key not in settings:
            app.config[key] = value
    app.instance_path = app.config["INSTANCE_DIR"]

    # Inside ProxyFix: the replay keys its answers on the request as ProxyFix corrected it.
    replay.init_app(app)
    if app.config["PROXY_FIX"]:
        hops = app.config["PROXY_FIX"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]

    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": {"timeout": 30}})
    else:
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": True})

    # The request guard (body limit, /manage gate, CSRF) must run before any other hook.
    security.init_app(app)
    db.init_app(app)
    migrate.init_app(app, db, directory=str(PACKAGE_DIR / "migrations"))
    login_manager.init_app(app)
    csrf.init_app(app)
    babel.init_app(
        app,
        locale_selector=i18n.select_locale,
        default_translation_directories=str(PACKAGE_DIR / "translations"),
    )
    ratelimit.init_app(app)
    i18n.init_app(app)
    assets.init_app(app)
    uploads.init_app(app)
    content_version.install()
    page_cache.init_app(app)
    app.extensions["portal.storage"] = storage_from_setting(
        app.config["STORAGE"],
        endpoint_url=app.config["S3_ENDPOINT_URL"],
        presigned=app.config["S3_PRESIGNED"],
    )
    app.extensions["portal.download_counts"] = DownloadCounter()

    from . import database, views

    database.init_app(app)
    views.init_app(app)
    errors.init_app(app)

    from .cli import register_commands

    register_commands(app)
    return app
