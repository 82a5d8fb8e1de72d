"""Shared by the tests that talk to a real ``portal run`` or drive a real browser.

``Server`` starts ``portal run`` on a free port and collects its output; ``Browser`` is a
tiny cookie-keeping HTTP client; ``chromium()`` launches Debian's Chromium through
Playwright (never a downloaded browser).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import pytest

PORTAL = Path(sys.executable).parent / "portal"
START_TIMEOUT = 20.0
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(port: int) -> bool:
    """Say whether something accepts TCP connections on that loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_client(url: str):  # type: ignore[no-untyped-def]
    """A Redis client for ``url``; skips the calling test where no Redis answers."""
    redis = pytest.importorskip("redis", reason='redis is not installed (pip install ".[redis]")')
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("no Redis server answers on 127.0.0.1:6379")
    return client


def demo_instance(root: Path) -> None:
    """Fill a new instance in ``root`` with ``portal demo`` (on the test database, emptied)."""
    from conftest import TEST_DATABASE_URL, _reset_postgresql

    if TEST_DATABASE_URL:
        _reset_postgresql(TEST_DATABASE_URL)
    portal_command(root, "demo")


def portal_command(root: Path, *args: str) -> None:
    """Run one ``portal`` command on the instance in ``root``; fail with what it printed."""
    done = subprocess.run(
        [str(PORTAL), *args],
        capture_output=True,
        text=True,
        cwd=root,
        env=portal_env(root),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def portal_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env["PORTAL_INSTANCE_DIR"] = str(root / "instance")
    env["PORTAL_STORAGE"] = str(root / "uploads")
    if os.environ.get("PORTAL_TEST_DATABASE_URL"):
        env["PORTAL_DATABASE_URL"] = os.environ["PORTAL_TEST_DATABASE_URL"]
    return env


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass
class Browser:
    """A tiny HTTP client that keeps its cookies and opens a new connection per request.

    With ``tls`` it speaks HTTPS (trusting that context's certificates) and sends the
    ``Referer`` a browser sends with a form on port 443, as Flask-WTF checks it over HTTPS.
    """

    port: int
    cookies: dict[str, str] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None, **extra: str
    ) -> Reply:
        if self.tls is None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        else:
            connection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=self.tls, timeout=15
            )
        headers = {"Connection": "close", "Accept-Language": "en", **extra}
        body = None
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            if self.tls is not None:
                # nginx passes the host without the default port.
                headers["Referer"] = f"https://127.0.0.1{path}"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            reply = Reply(response.status, response.headers, response.read())
        finally:
            connection.close()
        for raw in reply.headers.get_all("Set-Cookie") or []:
            jar = SimpleCookie()
            jar.load(raw)
            for name, morsel in jar.items():
                self.cookies[name] = morsel.value
        return reply

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str]) -> Reply:
        return self.request("POST", path, form)

    def csrf(self, path: str) -> str:
        page = self.get(path)
        assert page.status == 200, page.status
        match = CSRF.search(page.text)
        assert match, f"no CSRF token on {path}"
        return match.group(1) or match.group(2)


class Server:
    """A ``portal run`` process whose output is collected line by line."""

    def __init__(self, root: Path, port: int, workers: int, threads: int | None = None) -> None:
        self.port = port
        threads_option = [] if threads is None else ["--threads", str(threads)]
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.process = subprocess.Popen(
            [str(PORTAL), "run", "--port", str(port), "--workers", str(workers), *threads_option],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=root,
            env=portal_env(root),
            start_new_session=True,
        )
        self._readers = [
            threading.Thread(target=self._collect, args=(self.process.stdout, self.stdout)),
            threading.Thread(target=self._collect, args=(self.process.stderr, self.stderr)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    @staticmethod
    def _collect(stream, lines: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.stdout + self.stderr)

    def wait_ready(self) -> None:
        """Wait until /healthz answers 200; fail with the server's output otherwise."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"portal run exited with {self.process.returncode}:\n{self.output()}")
            try:
                if Browser(self.port).get("/healthz").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"/healthz did not answer 200 within {START_TIMEOUT} s:\n{self.output()}")

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the server's own process group after a timeout."""
        self.terminate()
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()


def printed(lines: list[str], label: str) -> list[str]:
    pattern = re.compile(rf"^{re.escape(label)}: (\S+)$")
    return [m.group(1) for line in lines if (m := pattern.match(line))]


CHROMIUM = Path("/usr/bin/chromium")
#: Flags for a headless Chromium on a machine without outside network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def skip_without_chromium() -> None:
    """Skip the calling module, with the reason, where no browser can run."""
    if not CHROMIUM.exists():
        pytest.skip(
            "no Chromium at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True
        )
    pytest.importorskip(
        "playwright.sync_api",
        reason="Playwright for Python is not installed (pip install playwright)",
    )


@contextmanager
def chromium() -> Iterator:  # type: ignore[type-arg]
    """A headless Debian Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()
