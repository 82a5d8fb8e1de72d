"""``portal run`` for real: gunicorn with two worker processes, spoken to over plain HTTP.

One server per module, on a fresh instance filled by ``portal demo``. The tests run in file
order: the gate and downloads first, the rate limit (which then blocks the gate for a minute
for this client address) near the end, the log inspection last.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import io
import json
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from liveserver import Browser, Server, demo_instance, free_port, portal_command, printed

from portal.demo import SESSIONS, make_png

# Selectable with ``-m live`` / ``-m "not live"``, and run by default. The marker is not
# registered in pyproject.toml, so its "unknown mark" warning is silenced here.
pytestmark = pytest.mark.live


@dataclass
class Live:
    root: Path
    server: Server
    second: Server
    shared_password: str
    admin_email: str
    admin_password: str

    @property
    def port(self) -> int:
        return self.server.port

    def browser(self) -> Browser:
        return Browser(self.port)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("live")
    demo_instance(root)
    server = Server(root, free_port(), workers=2)
    second = None
    try:
        server.wait_ready()
        # A second `portal run` on the same instance, started now so that it boots while
        # the other tests run; test_second_run_... inspects it.
        second = Server(root, free_port(), workers=1)
        live = Live(
            root,
            server,
            second,
            shared_password=(printed(server.stdout, "shared password") or [""])[0],
            admin_email=(printed(server.stdout, "admin e-mail") or [""])[0],
            admin_password=(printed(server.stdout, "admin password") or [""])[0],
        )
        yield live
    finally:
        servers = [s for s in (server, second) if s is not None]
        for each in servers:
            each.terminate()
        for each in servers:
            each.stop()


@pytest.fixture(scope="module")
def participant(live: Live) -> Browser:
    browser = live.browser()
    token = browser.csrf("/access")
    reply = browser.post("/access", {"password": live.shared_password, "csrf_token": token})
    assert reply.status == 303
    return browser


# --- start-up ----------------------------------------------------------------------------------


def test_first_run_prints_each_credential_once_on_its_own_line(live):
    for label in ("shared password", "admin e-mail", "admin password"):
        values = printed(live.server.stdout, label)
        assert len(values) == 1, f"{label!r} printed {len(values)} times:\n{live.server.stdout}"
    assert "@" in live.admin_email
    assert len(live.shared_password) >= 8
    assert len(live.admin_password) >= 8


def test_healthz_answers_json_ok(live):
    reply = live.browser().get("/healthz")
    assert reply.status == 200
    assert reply.headers.get_content_type() == "application/json"
    assert json.loads(reply.body) == {"status": "ok"}


# --- the gate over real HTTP -------------------------------------------------------------------


def test_programme_redirects_to_the_gate_without_the_password(live):
    reply = live.browser().get("/")
    assert reply.status == 302
    assert reply.headers["Location"].startswith("/access")


def test_gate_with_the_printed_password_answers_303_and_a_session_cookie(live):
    browser = live.browser()
    token = browser.csrf("/access")
    assert "portal_session" in browser.cookies
    before = browser.cookies["portal_session"]

    reply = browser.post("/access", {"password": live.shared_password, "csrf_token": token})

    assert reply.status == 303
    assert reply.headers["Location"] in ("/", f"http://127.0.0.1:{live.port}/")
    cookie = next(c for c in reply.headers.get_all("Set-Cookie") if "portal_session=" in c)
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert browser.cookies["portal_session"] != before
    assert browser.get("/").status == 200


def test_gate_without_csrf_token_is_400(live):
    reply = live.browser().post("/access", {"password": live.shared_password})
    assert reply.status == 400


def test_printed_admin_credentials_log_in(live):
    browser = live.browser()
    token = browser.csrf("/login")
    reply = browser.post(
        "/login",
        {"email": live.admin_email, "password": live.admin_password, "csrf_token": token},
    )
    assert reply.status == 303
    assert browser.get(reply.headers["Location"]).status == 200
    assert browser.get("/manage/settings").status == 200


# --- what participants read -------------------------------------------------------------------


def session_slugs(page: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r'href="/sessions/([a-z0-9-]+)"', page)))


def document_links(page: str) -> dict[str, str]:
    """Map each file name to its download path."""
    links = re.findall(r'href="(/documents/\d+/[^"?]+)"', page)
    return {html.unescape(link.rsplit("/", 1)[1]): html.unescape(link) for link in links}


def test_programme_lists_the_eight_demo_sessions_in_order(participant):
    reply = participant.get("/")
    assert reply.status == 200
    page = html.unescape(reply.text)
    assert len(session_slugs(reply.text)) == 8
    positions = [page.find(title) for _, _, title, _, _ in SESSIONS]
    assert all(p >= 0 for p in positions), "a demo session is missing from the programme"
    assert positions == sorted(positions), "sessions are not in time order"


def test_document_downloads_with_the_right_bytes(participant):
    links = document_links(participant.get("/").text)
    reply = participant.get(links["bandeau-egm.png"])
    assert reply.status == 200
    assert reply.body == make_png()
    assert reply.headers["Content-Type"] == "image/png"
    assert reply.headers["Content-Disposition"].startswith("attachment")
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert hashlib.sha256(reply.body).hexdigest() in reply.headers["ETag"]
    assert int(reply.headers["Content-Length"]) == len(reply.body)


def test_range_request_returns_the_asked_bytes(participant):
    links = document_links(participant.get("/").text)
    whole = participant.get(links["bandeau-egm.png"]).body
    connection = http.client.HTTPConnection("127.0.0.1", participant.port, timeout=15)
    try:
        cookie = "; ".join(f"{k}={v}" for k, v in participant.cookies.items())
        connection.request(
            "GET", links["bandeau-egm.png"], headers={"Cookie": cookie, "Range": "bytes=8-15"}
        )
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 206
    assert body == whole[8:16]


def test_each_document_asked_again_and_again_keeps_its_own_bytes(participant):
    """After its first download, a participant's downloads are sent without Flask (through
    gunicorn's file wrapper, by each worker): every document still gets its own answer."""
    page = participant.get("/").text
    links = document_links(page)
    for slug in session_slugs(page):
        links.update(document_links(participant.get(f"/sessions/{slug}").text))
    assert len(links) >= 10
    first: dict[str, bytes] = {}
    for _ in range(3):
        for name, link in links.items():
            reply = participant.get(link)
            assert reply.status == 200, name
            assert first.setdefault(name, reply.body) == reply.body, name
            assert hashlib.sha256(reply.body).hexdigest() in reply.headers["ETag"], name
            assert int(reply.headers["Content-Length"]) == len(reply.body), name
            assert reply.headers["Content-Disposition"] == f"attachment; filename={name}"
            assert "Set-Cookie" not in reply.headers, name


def admin_browser(live: Live) -> Browser:
    browser = live.browser()
    token = browser.csrf("/login")
    form = {"email": live.admin_email, "password": live.admin_password, "csrf_token": token}
    assert browser.post("/login", form).status == 303
    return browser


def dashboard_count(admin: Browser, link: str) -> int:
    """The download count the dashboard shows for the document at ``link``."""
    page = admin.get("/manage/").text
    found = re.search(re.escape(f'href="{link}"') + r'.*?<td class="num">(\d+)</td>', page, re.S)
    assert found is not None, link
    return int(found.group(1))


def test_the_dashboard_counts_downloads_another_process_sent(live, participant):
    """Each process writes its counts a moment after the downloads (portal.download_counts);
    the dashboard, served by another `portal run` on the same instance, shows them."""
    live.second.wait_ready()
    admin = admin_browser(live)
    link = next(iter(document_links(participant.get("/").text).values()))
    before = dashboard_count(admin, link)
    elsewhere = Browser(live.second.port, cookies=dict(participant.cookies))
    for _ in range(8):
        assert elsewhere.get(link).status == 200
    # Well beyond the writer's delay: a loaded machine may be slow to schedule it.
    deadline = time.monotonic() + 10
    while dashboard_count(admin, link) != before + 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dashboard_count(admin, link) == before + 8


def test_session_zip_is_a_valid_archive_of_its_documents(participant):
    programme = participant.get("/").text
    first = session_slugs(programme)[0]
    session_page = participant.get(f"/sessions/{first}").text
    links = document_links(session_page)

    reply = participant.get(f"/sessions/{first}/archive.zip")

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(reply.body)) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert sorted(names) == sorted(links)
        assert all("/" not in name for name in names)
        for name, link in links.items():
            assert archive.read(name) == participant.get(link).body


# --- the rate limit is shared by both worker processes ------------------------------------------


def test_eleventh_wrong_password_within_a_minute_is_429_across_workers(live):
    browser = live.browser()
    token = browser.csrf("/access")
    statuses = []
    for attempt in range(10):
        # A new connection each time: gunicorn's two workers take turns accepting them.
        reply = browser.post("/access", {"password": f"wrong-{attempt}", "csrf_token": token})
        statuses.append(reply.status)
    assert statuses == [401] * 10

    eleventh = browser.post("/access", {"password": "still-wrong", "csrf_token": token})

    assert eleventh.status == 429
    retry_after = eleventh.headers["Retry-After"]
    assert retry_after is not None and retry_after.isdigit()
    assert 0 < int(retry_after) <= 60
    # The error page is the portal's own, with no traceback.
    assert "Traceback" not in eleventh.text


# --- a second start, and what the server wrote ------------------------------------------------


def test_second_run_on_the_same_instance_prints_no_credentials(live):
    second = live.second
    second.wait_ready()
    for label in ("shared password", "admin e-mail", "admin password"):
        assert printed(second.stdout, label) == [], second.stdout
    assert live.shared_password not in second.output()
    assert live.admin_password not in second.output()


def test_server_logs_no_client_address(live, participant):
    assert participant.get("/").status == 200
    time.sleep(0.5)  # let the reader threads catch up
    lines = live.server.stdout + live.server.stderr
    assert any("Listening at" in line for line in lines), lines
    leaking = [line for line in lines if "127.0.0.1" in line and "Listening at" not in line]
    assert leaking == []
    assert not any("Traceback" in line for line in lines), live.server.output()


def test_a_document_imported_meanwhile_shows_on_the_very_next_page(live, participant, tmp_path):
    """Pages asked again and again (and so answered from the page cache, then replayed by
    each worker) still change as soon as another process adds a document."""
    for _ in range(6):
        reply = participant.get("/")
        assert reply.status == 200
        assert "synthese-ajoutee.txt" not in reply.text
    folder = tmp_path / "ajout"
    folder.mkdir()
    (folder / "synthese-ajoutee.txt").write_text("Synthèse de la session.\n", encoding="utf-8")
    portal_command(live.root, "import", str(folder))
    for _ in range(4):  # whichever worker answers
        assert "synthese-ajoutee.txt" in participant.get("/").text
