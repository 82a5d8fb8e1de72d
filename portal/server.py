"""``portal run``: the portal under gunicorn, with threaded workers."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from .extensions import db


class PortalServer(BaseApplication):
    """gunicorn, configured from ``portal run``'s options instead of a config file."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            # Settings that this gunicorn version does not know are left out.
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.application


def serve(app: Flask, *, host: str, port: int, workers: int, threads: int) -> None:
    """Run gunicorn until it is stopped."""
    # Connections opened by the master must not be shared with forked workers.
    db.engine.dispose()
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    PortalServer(
        app,
        {
            "bind": bind,
            "workers": workers,
            # Threads, so that one slow download never holds up other visitors.
            "worker_class": "gthread",
            "threads": threads,
            "timeout": 120,
            "graceful_timeout": 30,
            "keepalive": 5,
            # No access log: the portal keeps no participant's address.
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "portal",
            # No control socket in the home folder: several portals may run on one machine.
            "control_socket_disable": True,
        },
    ).run()
