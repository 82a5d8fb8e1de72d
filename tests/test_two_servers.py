"""Two `portal run` servers, as on two machines behind a load balancer, share everything.

Each has its own instance folder; they share one PostgreSQL database, one S3 bucket (moto's
server), one Redis database and the secret key. What one server does, the other sees: no
state lives only in one process.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import liveserver
import pytest
from conftest import TEST_DATABASE_URL, _reset_postgresql
from liveserver import PORTAL, Browser, Reply, Server, free_port, portal_env
from s3server import s3_endpoint_fixture  # noqa: F401 - fixture

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not TEST_DATABASE_URL,
        reason="PORTAL_TEST_DATABASE_URL is not set: two servers share a PostgreSQL database",
    ),
]

#: Not db 15: tests/test_redis_limits.py flushes that one.
REDIS_URL = "redis://127.0.0.1:6379/14"
SHARED_PASSWORD = "mot de passe partagé 2020"
ADMIN_EMAIL, ADMIN_PASSWORD = "admin@example.org", "admin-password-2020"
CONTENT = b"%PDF-1.4\n" + os.urandom(200_000) + b"\n%%EOF\n"


def _redis():
    redis = pytest.importorskip("redis", reason='redis is not installed (pip install ".[redis]")')
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("no Redis server answers on 127.0.0.1:6379")
    return client


@dataclass
class Pair:
    first: Server
    second: Server
    bucket: str


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[Pair]:
    redis = _redis()
    redis.flushdb()
    _reset_postgresql(TEST_DATABASE_URL)
    bucket = f"portal-{secrets.token_hex(6)}"
    secret_key = secrets.token_hex(32)

    def environment(root: Path) -> dict[str, str]:
        env = portal_env(root)
        env.update(
            PORTAL_STORAGE=f"s3://{bucket}/portal",
            PORTAL_S3_ENDPOINT_URL=s3_endpoint,
            PORTAL_RATELIMIT_STORAGE_URI=REDIS_URL,
            # Every server signs the same cookies.
            PORTAL_SECRET_KEY=secret_key,
        )
        return env

    roots = [tmp_path_factory.mktemp("machine-a"), tmp_path_factory.mktemp("machine-b")]

    def portal(*args: str, stdin: str = "") -> None:
        done = subprocess.run(
            [str(PORTAL), *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=roots[0],
            env=environment(roots[0]),
            timeout=60,
        )
        assert done.returncode == 0, done.stderr

    portal("init")
    portal("set-password", "--password-stdin", stdin=SHARED_PASSWORD + "\n")
    portal("create-facilitator", ADMIN_EMAIL, "--admin", "--password-stdin", stdin=ADMIN_PASSWORD)
    servers: list[Server] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(liveserver, "portal_env", environment)
        try:
            for root in roots:
                server = Server(root, free_port(), workers=1)
                servers.append(server)
                server.wait_ready()
            yield Pair(servers[0], servers[1], bucket)
        finally:
            for server in servers:
                server.stop()
            redis.flushdb()


def sign_in(port: int) -> Browser:
    browser = Browser(port)
    token = browser.csrf("/login")
    form = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": token}
    assert browser.post("/login", form).status == 303
    return browser


def unlocked(port: int) -> Browser:
    browser = Browser(port)
    token = browser.csrf("/access")
    reply = browser.post("/access", {"password": SHARED_PASSWORD, "csrf_token": token})
    assert reply.status == 303, reply.text
    return browser


def post_file(browser: Browser, path: str, fields: dict[str, str], name: str, data: bytes) -> Reply:
    """POST a multipart form with one file, as a browser does."""
    boundary = secrets.token_hex(16)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: application/pdf\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    body = b"".join(parts)
    connection = http.client.HTTPConnection("127.0.0.1", browser.port, timeout=30)
    try:
        connection.request(
            "POST",
            path,
            body=body,
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Cookie": "; ".join(f"{k}={v}" for k, v in browser.cookies.items()),
                "Accept-Language": "en",
                "Connection": "close",
            },
        )
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def test_a_file_uploaded_through_one_server_is_served_by_the_other(pair):
    facilitator = sign_in(pair.first.port)
    token = facilitator.csrf("/manage/upload")
    reply = post_file(
        facilitator,
        "/manage/upload",
        {"csrf_token": token, "session": "", "tags": "Bilan", "title": "", "description": ""},
        "synthese-2020.pdf",
        CONTENT,
    )
    assert reply.status == 200, reply.text

    participant = unlocked(pair.second.port)
    listing = participant.get("/")
    assert listing.status == 200
    assert "synthese-2020" in listing.text
    link = next(
        part.split('"', 1)[0]
        for part in listing.text.split('href="')[1:]
        if part.startswith("/documents/")
    )
    download = participant.get(link)
    assert download.status == 200
    assert hashlib.sha256(download.body).hexdigest() == hashlib.sha256(CONTENT).hexdigest()
    assert download.body == CONTENT


def test_a_password_change_on_one_server_signs_participants_out_on_the_other(pair):
    participant = unlocked(pair.first.port)
    assert participant.get("/").status == 200

    admin = sign_in(pair.second.port)
    token = admin.csrf("/manage/settings")
    new_password = "nouveau mot de passe 2020"
    reply = admin.post(
        "/manage/settings",
        {
            "csrf_token": token,
            "title": "Session nationale 2020",
            "password": new_password,
            "password_confirm": new_password,
        },
    )
    assert reply.status == 303, reply.text

    sent_back = participant.get("/")
    assert sent_back.status in (302, 303)
    assert sent_back.headers["Location"].startswith("/access")
    # The new password opens both servers; the old one neither.
    for port in (pair.first.port, pair.second.port):
        browser = Browser(port)
        old = browser.post(
            "/access", {"password": SHARED_PASSWORD, "csrf_token": browser.csrf("/access")}
        )
        assert old.status == 401
        new = browser.post(
            "/access", {"password": new_password, "csrf_token": browser.csrf("/access")}
        )
        assert new.status == 303


def test_failed_gate_attempts_count_across_both_servers(pair):
    _redis().flushdb()
    statuses = []
    for attempt in range(11):
        browser = Browser((pair.first, pair.second)[attempt % 2].port)
        token = browser.csrf("/access")
        statuses.append(browser.post("/access", {"password": "faux", "csrf_token": token}).status)
    assert statuses[:10] == [401] * 10
    assert statuses[10] == 429
    browser = Browser(pair.first.port)
    token = browser.csrf("/access")
    assert browser.post("/access", {"password": "faux", "csrf_token": token}).status == 429
