"""nginx in front of `portal run`, with TLS and X-Accel-Redirect, end to end.

The nginx configuration is the one of docs/deploy.md, with this test's ports, certificate
and folders put in; the README's reverse-proxy snippets must be part of it. nginx runs
unprivileged-style from a temporary prefix (pid, logs and temporary files inside it).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import liveserver
import pytest
from conftest import TEST_DATABASE_URL, _reset_postgresql
from deploy_guide import block, replace_all
from liveserver import PORTAL, Browser, Server, answers, free_port, portal_env

pytestmark = pytest.mark.live

NGINX = Path("/usr/sbin/nginx")
README = Path(__file__).resolve().parent.parent / "README.md"
SHARED_PASSWORD = "mot de passe 2020"
CONTENT = b"%PDF-1.4\n" + os.urandom(300_000) + b"\n%%EOF\n"


@dataclass
class Site:
    https_port: int
    http_port: int
    context: ssl.SSLContext
    key: str
    document_id: int

    def client(self) -> Browser:
        return Browser(self.https_port, tls=self.context)


def _certificate(folder: Path) -> tuple[Path, Path]:
    if not shutil.which("openssl"):
        pytest.skip("no openssl command to make the test's certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
    )
    return cert, key


def _nginx_conf(prefix: Path, cert: Path, key: Path, ports: dict[str, int], storage: Path) -> str:
    site = replace_all(
        block("nginx", "location /protected/"),
        {
            "listen 443 ssl;": f"listen 127.0.0.1:{ports['https']} ssl;",
            "listen 80;": f"listen 127.0.0.1:{ports['http']};",
            "server 127.0.0.1:8000;": f"server 127.0.0.1:{ports['portal']};",
            "/etc/letsencrypt/live/supports.example.org/fullchain.pem": str(cert),
            "/etc/letsencrypt/live/supports.example.org/privkey.pem": str(key),
            "alias /srv/portal/uploads/;": f"alias {storage}/;",
        },
    )
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # Run as root (CI), the workers must be able to read the test's private folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'};\nevents {{ worker_connections 64; }}\n"
        f"http {{\n    access_log off;\n    default_type application/octet-stream;\n{temp}\n"
        f"{site}}}\n"
    )


def _readme_directives() -> list[str]:
    """The directives of the README's nginx snippets, comments and blank lines aside."""
    text = README.read_text(encoding="utf-8")
    snippets = re.findall(r"^```nginx\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert snippets, "the README has no nginx snippet"
    lines = []
    for snippet in snippets:
        for line in snippet.splitlines():
            line = line.split("#", 1)[0].strip()
            if line and line not in ("}", "{") and not line.endswith("{"):
                lines.append(line)
    return lines


def test_the_readme_snippets_are_part_of_the_tested_configuration():
    tested = {
        line.split("#", 1)[0].strip()
        for line in block("nginx", "location /protected/").splitlines()
    }
    # The README sends to one local server; the guide's upstream may list several.
    allowed = {"proxy_pass http://127.0.0.1:8000;": "proxy_pass http://portal;"}
    for directive in _readme_directives():
        assert allowed.get(directive, directive) in tested, directive


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not NGINX.exists():
        pytest.skip("no nginx at /usr/sbin/nginx (apt-get install nginx)")
    root = tmp_path_factory.mktemp("nginx-site")
    prefix = root / "nginx"
    prefix.mkdir()
    cert, key = _certificate(prefix)
    if TEST_DATABASE_URL:
        _reset_postgresql(TEST_DATABASE_URL)

    def environment(folder: Path) -> dict[str, str]:
        env = portal_env(folder)
        env.update(PORTAL_PROXY_FIX="1", PORTAL_ACCEL_REDIRECT="/protected/")
        return env

    env = environment(root)
    subprocess.run([str(PORTAL), "init"], cwd=root, env=env, check=True, capture_output=True)
    subprocess.run(
        [str(PORTAL), "set-password", "--password-stdin"],
        input=SHARED_PASSWORD + "\n",
        text=True,
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    document = root / "synthese.pdf"
    document.write_bytes(CONTENT)
    subprocess.run(
        [str(PORTAL), "import", str(root)], cwd=root, env=env, check=True, capture_output=True
    )
    (key_file,) = [p for p in (root / "uploads").iterdir() if p.is_file()]

    ports = {"https": free_port(), "http": free_port(), "portal": free_port()}
    conf = prefix / "nginx.conf"
    conf.write_text(_nginx_conf(prefix, cert, key, ports, root / "uploads"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(liveserver, "portal_env", environment)
        server = Server(root, ports["portal"], workers=1)
    nginx = subprocess.Popen(
        [str(NGINX), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        + ["-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        server.wait_ready()
        deadline = time.monotonic() + 15
        while not answers(ports["https"]):
            if nginx.poll() is not None or time.monotonic() > deadline:
                log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
                pytest.fail(f"nginx did not start: {nginx.stderr.read().decode()}\n{log}")
            time.sleep(0.1)
        context = ssl.create_default_context(cafile=str(cert))
        yield Site(ports["https"], ports["http"], context, key_file.name, 1)
    finally:
        if nginx.poll() is None:
            nginx.send_signal(signal.SIGQUIT)
            try:
                nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(nginx.pid, signal.SIGKILL)
                nginx.wait(timeout=10)
        if nginx.stderr:
            nginx.stderr.close()
        server.stop()


def unlocked(site: Site) -> Browser:
    client = site.client()
    token = client.csrf("/access")
    reply = client.request("POST", "/access", {"password": SHARED_PASSWORD, "csrf_token": token})
    assert reply.status == 303, reply.text
    return client


def test_nginx_sends_the_bytes_the_portal_allowed(site):
    client = unlocked(site)
    reply = client.request("GET", f"/documents/{site.document_id}/synthese.pdf")
    assert reply.status == 200
    assert hashlib.sha256(reply.body).digest() == hashlib.sha256(CONTENT).digest()
    assert "X-Accel-Redirect" not in reply.headers, "nginx consumes the header"
    assert reply.headers["Content-Type"] == "application/pdf"
    assert reply.headers["Content-Disposition"].startswith("attachment")
    assert reply.headers["Content-Disposition"] == "attachment; filename=synthese.pdf"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in reply.headers["Content-Security-Policy"]


def test_nginx_answers_ranges(site):
    client = unlocked(site)
    reply = client.request("GET", f"/documents/{site.document_id}/x", Range="bytes=100-199")
    assert reply.status == 206
    assert reply.body == CONTENT[100:200]
    assert reply.headers["Content-Range"] == f"bytes 100-199/{len(CONTENT)}"


def test_the_protected_location_is_not_reachable_from_outside(site):
    client = unlocked(site)
    assert client.request("GET", f"/protected/{site.key}").status == 404
    assert client.request("GET", f"/protected/../uploads/{site.key}").status in (400, 404)


def test_without_the_password_nothing_is_sent(site):
    client = site.client()
    reply = client.request("GET", f"/documents/{site.document_id}/synthese.pdf")
    assert reply.status in (302, 303)
    assert reply.headers["Location"].startswith("/access")
    assert CONTENT[:2000] not in reply.body
    assert len(reply.body) < 2000


def test_plain_http_is_sent_to_https(site):
    connection = http.client.HTTPConnection("127.0.0.1", site.http_port, timeout=10)
    try:
        connection.request("GET", "/programme", headers={"Host": "supports.example.org"})
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert response.status == 301
    assert response.headers["Location"] == "https://supports.example.org/programme"
