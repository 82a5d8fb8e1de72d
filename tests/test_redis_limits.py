"""With ``PORTAL_RATELIMIT_STORAGE_URI=redis://...`` two servers share one count of wrong tries."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TEST_DATABASE_URL, _reset_postgresql
from liveserver import PORTAL, Browser, free_port, portal_env, redis_client

pytestmark = pytest.mark.live

REDIS_URL = "redis://127.0.0.1:6379/15"


def _run(args: list[str], root: Path, env: dict[str, str], stdin: str = "") -> None:
    result = subprocess.run(
        [str(PORTAL), *args], input=stdin, capture_output=True, text=True, cwd=root, env=env
    )
    assert result.returncode == 0, result.stderr


def _wait_ready(process: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "portal run exited early"
        try:
            if Browser(port).get("/healthz").status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail("portal run did not answer /healthz")


def test_wrong_tries_count_across_two_servers(tmp_path):
    client = redis_client(REDIS_URL)
    client.flushdb()
    if TEST_DATABASE_URL:
        _reset_postgresql(TEST_DATABASE_URL)
    env = portal_env(tmp_path)
    env["PORTAL_RATELIMIT_STORAGE_URI"] = REDIS_URL
    _run(["init"], tmp_path, env)
    _run(["set-password", "--password-stdin"], tmp_path, env, "le bon mot de passe\n")
    ports = [free_port(), free_port()]
    servers: list[subprocess.Popen] = []
    try:
        # One after the other: the first start creates the admin account.
        for port in ports:
            server = subprocess.Popen(
                [str(PORTAL), "run", "--port", str(port), "--workers", "1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=tmp_path,
                env=env,
                start_new_session=True,
            )
            servers.append(server)
            _wait_ready(server, port)
        statuses = []
        for attempt in range(11):
            browser = Browser(ports[attempt % 2])
            token = browser.csrf("/access")
            reply = browser.post("/access", {"password": "faux", "csrf_token": token})
            statuses.append(reply.status)
        assert statuses[:10] == [401] * 10
        assert statuses[10] == 429
        # The other server refuses this client too: the count lives in Redis.
        browser = Browser(ports[1])
        token = browser.csrf("/access")
        assert browser.post("/access", {"password": "faux", "csrf_token": token}).status == 429
        assert client.dbsize() > 0
    finally:
        for server in servers:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
        for server in servers:
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
        client.flushdb()
