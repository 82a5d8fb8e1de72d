#!/usr/bin/env python3
"""How many requests per second a WSGI server gives on one core before any portal code runs.

    python bench/ceiling.py            # gunicorn as `portal run` configures it, and the
                                       # servers installed in bench/.servers (see README)

Two applications, each served on CPU 0 with two worker processes and loaded by wrk
(`-c32`, keep-alive) from CPU 1: a bare WSGI callable returning a 12 KB page, and the same
page from a one-route Flask app. What a server gives here bounds what the portal can give
on W1/W1b/W2 (`run.py`) however cheap its own request becomes. Prints a table and writes
`bench/results/ceiling-*.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from run import BENCH, HOST, LOAD_CPU, PINNING, SERVER_CPU, Server, free_port, wrk
from soak import source_revision

SIDE_VENV = BENCH / ".servers" / "bin"
APPS = """
BODY = b"x" * 12000


def bare(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", "12000")])
    return [BODY]


from flask import Flask

flask_app = Flask(__name__)


@flask_app.get("/")
def page():
    return BODY
"""
GUNICORN = """
import sys
from gunicorn.app.base import BaseApplication
import apps


class Bench(BaseApplication):
    def __init__(self, app):
        self.application = app
        super().__init__()

    def load_config(self):
        for key, value in {
            "bind": sys.argv[2], "workers": 2, "threads": 32, "keepalive": 5,
            "worker_class": "portal.server.PortalThreadWorker", "loglevel": "warning",
        }.items():
            self.cfg.set(key, value)

    def load(self):
        return self.application


Bench(getattr(apps, sys.argv[1])).run()
"""


def servers(folder: Path, port: int) -> dict[str, dict[str, list[str]]]:
    """Each server's command line for each application, when the server is installed."""
    bind = f"{HOST}:{port}"
    found: dict[str, dict[str, list[str]]] = {
        "gunicorn gthread (portal run)": {
            app: [sys.executable, str(folder / "gunicorn_bench.py"), app, bind]
            for app in ("bare", "flask_app")
        }
    }
    granian = SIDE_VENV / "granian"
    if granian.exists():
        found["granian"] = {
            app: [
                str(granian),
                "--interface",
                "wsgi",
                "--workers",
                "2",
                "--blocking-threads",
                "32",
                "--host",
                HOST,
                "--port",
                str(port),
                "--working-dir",
                str(folder),
                f"apps:{app}",
            ]
            for app in ("bare", "flask_app")
        }
    waitress = SIDE_VENV / "waitress-serve"
    if waitress.exists():
        found["waitress"] = {
            app: [str(waitress), "--threads", "32", "--listen", bind, f"apps:{app}"]
            for app in ("bare", "flask_app")
        }
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is missing (apt-get install wrk)", file=sys.stderr)
        return 2
    if PINNING:
        # Servers go to SERVER_CPU (Server pins them); this process and wrk to the other one.
        os.sched_setaffinity(0, {LOAD_CPU})
    rows = []
    with tempfile.TemporaryDirectory(prefix="portal-ceiling-") as name:
        folder = Path(name)
        (folder / "apps.py").write_text(APPS)
        (folder / "gunicorn_bench.py").write_text(GUNICORN)
        port = free_port()
        for server, commands in servers(folder, port).items():
            for app, argv in commands.items():
                process = Server(server, argv, folder / "server.log", cwd=folder)
                try:
                    process.wait_ready(port, "/")
                    wrk(f"http://{HOST}:{port}/", 32, 2, [])  # warm-up
                    result = wrk(f"http://{HOST}:{port}/", 32, args.seconds, [])
                finally:
                    process.stop()
                rows.append({"server": server, "app": app, **result})
                print(
                    f"{server:32} {app:10} {result.get('requests_per_s') or 0:9.0f} req/s"
                    f"  p99 {result.get('p99_ms') or 0:7.1f} ms  errors {result['errors']}"
                )
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    out = args.results / f"ceiling-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "revision": source_revision(),
                "machine": platform.platform(),
                "pinning": {"servers": SERVER_CPU, "load": LOAD_CPU} if PINNING else None,
                "load": "wrk -t2 -c32, keep-alive",
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
