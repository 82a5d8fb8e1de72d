#!/usr/bin/env python3
"""How many requests per second a WSGI server gives on one core before any portal code runs.

    python bench/ceiling.py            # gunicorn as `portal run` configures it, and the
                                       # servers installed in bench/.servers (see README)

Each application is served on CPU 0 with two worker processes and loaded by wrk (`-c32`,
keep-alive) from CPU 1: a bare WSGI callable returning a 12 KB page, and the same page from
a one-route Flask app (W1/W1b's shape); under gunicorn also a one-route Flask app sending a
200 KB file with `send_file` (W2's shape, no access check, no count), and a bare WSGI
callable answering with `X-Accel-Redirect` to that file behind nginx (W2 behind nginx).
What a server gives here bounds what the portal can give on those workloads (`run.py`)
however cheap its own request becomes. Prints a table and writes
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

from run import (
    BENCH,
    HOST,
    LOAD_CPU,
    NGINX_PROXY,
    PINNING,
    SERVER_CPU,
    Server,
    free_port,
    nginx_binary,
    start_nginx,
    wrk,
)
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


from pathlib import Path
from flask import send_file

DOCUMENT = Path(__file__).with_name("document.pdf")
download_app = Flask(__name__)


@download_app.get("/")
def download():
    return send_file(DOCUMENT, as_attachment=True, conditional=True, etag=True)


def sendfile(environ, start_response):
    start_response("200 OK", [
        ("Content-Type", "application/pdf"), ("Content-Length", str(DOCUMENT.stat().st_size)),
    ])
    return environ["wsgi.file_wrapper"](DOCUMENT.open("rb"), 256 * 1024)


def accel(environ, start_response):
    start_response("200 OK", [("X-Accel-Redirect", "/protected/document.pdf")])
    return [b""]
"""
#: W2's document size (bench/run.py).
DOCUMENT_BYTES = 200 * 1024
#: Applications measured under each server: the last two only under gunicorn (granian's
#: WSGI offers no file wrapper, so no sendfile), "accel" behind nginx.
PAGE_APPS = ("bare", "flask_app")
DOWNLOAD_APPS = ("download_app", "sendfile", "accel")
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
            for app in PAGE_APPS + DOWNLOAD_APPS
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
            for app in PAGE_APPS
        }
    waitress = SIDE_VENV / "waitress-serve"
    if waitress.exists():
        found["waitress"] = {
            app: [str(waitress), "--threads", "32", "--listen", bind, f"apps:{app}"]
            for app in PAGE_APPS
        }
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    parser.add_argument("--apps", default="", help="comma-separated applications to run")
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
        (folder / "document.pdf").write_bytes(os.urandom(DOCUMENT_BYTES))
        port = free_port()
        for server, commands in servers(folder, port).items():
            for app, argv in commands.items():
                if args.apps and app not in args.apps.split(","):
                    continue
                if app == "accel" and nginx_binary() is None:
                    continue
                process = Server(server, argv, folder / "server.log", cwd=folder)
                proxy = None
                try:
                    process.wait_ready(port, "/")
                    target = port
                    if app == "accel":
                        proxy, target = start_nginx(
                            folder, NGINX_PROXY, "nginx-proxy", upstream=port, storage=folder
                        )
                    wrk(f"http://{HOST}:{target}/", 32, 2, [])  # warm-up
                    result = wrk(f"http://{HOST}:{target}/", 32, args.seconds, [])
                finally:
                    if proxy is not None:
                        proxy.stop()
                    process.stop()
                label = f"nginx + {server}" if app == "accel" else server
                rows.append({"server": label, "app": app, **result})
                print(
                    f"{label:40} {app:12} {result.get('requests_per_s') or 0:9.0f} req/s"
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
