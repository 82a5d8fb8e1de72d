"""What `portal run` does once in the master so that no worker does it on its first pages."""

from __future__ import annotations

from babel import localedata
from conftest import fresh_app

from portal import server
from portal.i18n import LANGUAGES
from portal.warmup import warm_up


def compiled(app) -> set[str]:
    return {name for (_, name) in app.jinja_env.cache.keys()}


def test_warm_up_compiles_every_template_and_loads_each_language(app_config, app):
    with fresh_app(app_config) as application:
        names = set(application.jinja_env.list_templates())
        assert names and not names <= compiled(application)
        localedata.clear_caches()
        warm_up(application)
        assert names <= compiled(application)
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
