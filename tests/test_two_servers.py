"""Two `portal run` servers, as on two machines behind a load balancer, share everything.

Each has its own instance folder; they share one PostgreSQL database, one S3 bucket (moto's
server), one Redis database and the secret key. What one server does, the other sees: no
state lives only in one process. The settings file and the set-up commands are those of
docs/deploy.md, with this machine's addresses and secrets put in.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import liveserver
import pytest
from conftest import TEST_DATABASE_URL, _reset_postgresql
from deploy_guide import block, replace_all
from liveserver import PORTAL, Browser, Reply, Server, free_port, redis_client
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
SHARED_PASSWORD = "mot de passe partage 2020"
ADMIN_EMAIL, ADMIN_PASSWORD = "admin@example.org", "admin-password-2020"
CONTENT = b"%PDF-1.4\n" + os.urandom(200_000) + b"\n%%EOF\n"


@dataclass
class Pair:
    first: Server
    second: Server
    bucket: str
    env_file: Path


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[Pair]:
    redis = redis_client(REDIS_URL)
    redis.flushdb()
    _reset_postgresql(TEST_DATABASE_URL)
    bucket = f"portal-{secrets.token_hex(6)}"
    roots = [tmp_path_factory.mktemp("machine-a"), tmp_path_factory.mktemp("machine-b")]
    settings = replace_all(
        block("sh", "# /etc/portal/portal.env"),
        {
            "/srv/portal/instance": "INSTANCE",
            "postgresql://portal:PASSWORD@db.internal:5432/portal": TEST_DATABASE_URL,
            "s3://portail-supports/events-2020": f"s3://{bucket}/events-2020",
            "https://s3.internal:9000": s3_endpoint,
            "AWS_ACCESS_KEY_ID=KEY": f"AWS_ACCESS_KEY_ID={os.environ['AWS_ACCESS_KEY_ID']}",
            "AWS_SECRET_ACCESS_KEY=SECRET": (
                f"AWS_SECRET_ACCESS_KEY={os.environ['AWS_SECRET_ACCESS_KEY']}"
            ),
            "redis://redis.internal:6379/0": REDIS_URL,
            "PORTAL_SECRET_KEY=SECRET_KEY": f"PORTAL_SECRET_KEY={secrets.token_hex(32)}",
        },
    )

    def env_file(root: Path) -> Path:
        path = root / "portal.env"
        path.write_text(settings.replace("INSTANCE", str(root / "instance")))
        return path

    def environment(root: Path) -> dict[str, str]:
        """What systemd's EnvironmentFile gives the server: the guide's settings only."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
        for line in env_file(root).read_text().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.partition("=")
                env[name] = value
        return env

    # The guide's one-time set-up, line by line, in bash, as an administrator types it.
    setup = block("sh", "portal check --deploy").splitlines()
    assert setup[0] == "set -a && . /etc/portal/portal.env && set +a"
    answers = {"create-facilitator": ADMIN_PASSWORD, "set-password": SHARED_PASSWORD}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env["PATH"] = f"{PORTAL.parent}:{env.get('PATH', '')}"
    for command in setup[1:]:
        command = command.replace("admin@example.org", ADMIN_EMAIL)
        stdin = next((answer for word, answer in answers.items() if word in command), "")
        source = setup[0].replace("/etc/portal/portal.env", str(env_file(roots[0])))
        done = subprocess.run(
            ["bash", "-c", f"{source} && {command}"],
            input=stdin + "\n",
            capture_output=True,
            text=True,
            cwd=roots[0],
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    servers: list[Server] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(liveserver, "portal_env", environment)
        try:
            for root in roots:
                server = Server(root, free_port(), workers=1)
                servers.append(server)
                server.wait_ready()
            yield Pair(servers[0], servers[1], bucket, env_file(roots[0]))
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
    redis_client(REDIS_URL).flushdb()
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


def test_the_guides_nightly_backup_saves_the_shared_installation(pair, tmp_path):
    (line,) = [
        entry
        for entry in block("sh", "/etc/cron.d/portal-backup").splitlines()
        if not entry.startswith("#")
    ]
    *schedule, user, command = line.split(maxsplit=6)
    assert (schedule, user) == (["15", "3", "*", "*", "*"], "portal")
    # What cron runs: its own "%" escapes undone, with this machine's paths.
    command = replace_all(
        command.replace("\\%", "%"),
        {
            "/etc/portal/portal.env": str(pair.env_file),
            "/srv/portal/venv/bin/portal": str(PORTAL),
            "/var/backups/portal/": f"{tmp_path}/",
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "AWS_"))}
    done = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    (archive,) = tmp_path.glob("portal-*.zip")
    with zipfile.ZipFile(archive) as opened:
        manifest = json.loads(opened.read("manifest.json"))
    assert manifest["tables"]["facilitators"] == 1
