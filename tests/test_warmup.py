"""What `portal run` does once in the master so that no worker does it on its first pages."""

from __future__ import annotations

from babel import localedata
from conftest import fresh_app
from flask_babel import get_domain
from sqlalchemy.orm import configure_mappers

from portal import server, warmup
from portal.i18n import LANGUAGES
from portal.warmup import warm_up


def compiled(app) -> set[str]:
    return {name for (_, name) in app.jinja_env.cache.keys()}


def test_warm_up_compiles_templates_configures_mappers_and_loads_each_language(
    app_config, app, monkeypatch
):
    configured: list[bool] = []
    monkeypatch.setattr(
        warmup, "configure_mappers", lambda: configured.append(True) or configure_mappers()
    )
    with fresh_app(app_config) as application:
        names = set(application.jinja_env.list_templates())
        assert names and not names <= compiled(application)
        localedata.clear_caches()
        warm_up(application)
        assert names <= compiled(application)
        assert configured == [True]
        with application.app_context():
            messages = get_domain().cache
            assert {(language, "messages") for language in LANGUAGES} <= set(messages)
    # The calendar data of each language, loaded by formatting a date.
    loaded = set(localedata._cache)
    assert all(any(key.split("_")[0] == language for key in loaded) for language in LANGUAGES)


def test_portal_run_warms_up_before_the_workers_start(app_config, app, monkeypatch):
    seen: dict[str, bool] = {}

    def run(self) -> None:  # gunicorn would fork its workers here
        seen["warm"] = set(self.application.jinja_env.list_templates()) <= compiled(
            self.application
        )

    monkeypatch.setattr(server.PortalServer, "run", run)
    with fresh_app(app_config) as application, application.app_context():
        server.serve(application, host="127.0.0.1", port=0, workers=1, threads=2)
    assert seen == {"warm": True}
