"""A real headless Chromium opens every document URL and runs no script (issue 4).

Hostile files are uploaded through the facilitators' form: a ``.txt`` full of HTML, a
PNG/HTML polyglot (and GIF, JPEG, WebP ones), a PDF that is an HTML page too, a CSV of HTML,
with titles full of markup. A participant unlocks the portal in the browser by typing the
shared password, then opens every document URL, with and without ``?inline=1``, the session
ZIP and the pages that list them. No script may run: ``window.__pwned`` stays unset, no
dialog opens and nothing logs the payload's marker. A control test first serves the same
payload as an ordinary HTML page, to prove that the detectors do see a script that runs.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from conftest import SHARED_PASSWORD, csrf_token, login
from liveserver import chromium, skip_without_chromium
from werkzeug.serving import make_server

from portal.extensions import db
from portal.models import Document, Meeting

skip_without_chromium()
from playwright import sync_api  # noqa: E402

PlaywrightError = sync_api.Error

MARK = "PWNED-7c1f"
PAYLOAD = (
    "<!doctype html><html><head><title>x</title></head><body>"
    f"<script>window.__pwned = 1; console.log('{MARK}'); alert('{MARK}')</script>"
    f"<img src=x onerror=\"window.__pwned = 2; console.log('{MARK}')\">"
    f"<svg onload=\"window.__pwned = 3; console.log('{MARK}')\"></svg>"
    "</body></html>"
).encode()
TITLE = f"<img src=x onerror=\"window.__pwned = 4; console.log('{MARK}')\"> support"

#: (file name, content, shown inline with ?inline=1)
HOSTILE_FILES = [
    ("notes.txt", PAYLOAD, False),
    ("table.csv", PAYLOAD, False),
    ("photo.png", b"\x89PNG\r\n\x1a\n" + PAYLOAD, True),
    ("anim.gif", b"GIF89a" + PAYLOAD, True),
    ("photo.jpg", b"\xff\xd8\xff\xe0" + PAYLOAD, True),
    ("photo.webp", b"RIFF\x40\x00\x00\x00WEBPVP8 " + PAYLOAD, True),
    ("support.pdf", PAYLOAD + b"\n%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", True),
]


@dataclass
class Witness:
    """What the page let slip: dialogs, console lines, uncaught errors."""

    dialogs: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def watch(self, page) -> None:  # type: ignore[no-untyped-def]
        def on_dialog(dialog) -> None:  # type: ignore[no-untyped-def]
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("console", lambda message: self.console.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def script_ran(self) -> list[str]:
        return self.dialogs + [line for line in self.console if MARK in line]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium() as launched:
        yield launched


@pytest.fixture
def live(app) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


@pytest.fixture
def hostile(app, client, make_meeting) -> tuple[str, list[tuple[int, str, bool]]]:
    """Upload every hostile file into one session through the form; return its slug and files."""
    meeting = make_meeting("Visio <script>window.__pwned = 5</script>")
    assert login(client).status_code == 303
    for name, content, _ in HOSTILE_FILES:
        response = client.post(
            "/manage/upload",
            data={
                "csrf_token": csrf_token(client, "/manage/upload"),
                "files": [(io.BytesIO(content), name)],
                "session": str(meeting.id),
                "tags": "<b>tag</b>",
                "title": TITLE,
                "description": TITLE,
            },
            content_type="multipart/form-data",
        )
        assert response.status_code == 200, f"{name} was refused"
    with app.app_context():
        documents = db.session.scalars(db.select(Document).order_by(Document.id)).all()
        inline = {name: shown for name, _, shown in HOSTILE_FILES}
        files = [(d.id, d.original_name, inline[d.original_name]) for d in documents]
        slug = db.session.get(Meeting, meeting.id).slug
        db.session.remove()
    assert len(files) == len(HOSTILE_FILES)
    return slug, files


def unlock_in_browser(page, base: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{base}/access")
    page.fill("input[name=password]", SHARED_PASSWORD)
    page.click("form[action='/access'] button[type=submit]")
    page.wait_for_url(f"{base}/")


def pwned(page) -> object:  # type: ignore[no-untyped-def]
    return page.evaluate("() => window.__pwned")


@dataclass
class Visit:
    """How the browser handled a URL: saved it (``download``) or showed it (``shown_as``)."""

    download: object | None = None
    shown_as: str | None = None


def visit(page, url: str) -> Visit:  # type: ignore[no-untyped-def]
    downloads: list = []

    def record(download) -> None:  # type: ignore[no-untyped-def]
        downloads.append(download)

    page.on("download", record)
    try:
        try:
            page.goto(url)
        except PlaywrightError as error:
            # Chromium reports a navigation that turned into a download as an aborted one.
            if "Download is starting" not in str(error):
                raise
            for _ in range(100):
                if downloads:
                    break
                page.wait_for_timeout(50)
            assert downloads, f"{url}: navigation aborted without a download"
            downloads[0].cancel()
            return Visit(download=downloads[0])
        # Shown in the tab: give a script that would run the time to do so.
        page.wait_for_timeout(150)
        return Visit(shown_as=page.evaluate("() => document.contentType"))
    finally:
        page.remove_listener("download", record)


def test_control_the_detectors_see_a_script_that_runs(browser, live):
    """The same payload served as an ordinary HTML page does run: the detectors work."""
    context = browser.new_context()
    page = context.new_page()
    witness = Witness()
    witness.watch(page)
    page.route(
        f"{live}/control-page",
        lambda route: route.fulfill(status=200, content_type="text/html", body=PAYLOAD),
    )
    try:
        page.goto(f"{live}/control-page")
        page.wait_for_function("() => window.__pwned !== undefined", timeout=5_000)
        assert pwned(page)
        assert MARK in witness.dialogs
        assert any(MARK in line for line in witness.console)
    finally:
        context.close()


def test_no_document_url_runs_a_script_in_the_browser(browser, live, hostile):
    slug, files = hostile
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    witness = Witness()
    witness.watch(page)
    problems: list[str] = []
    try:
        unlock_in_browser(page, live)
        for document_id, name, inline in files:
            url = f"{live}/documents/{document_id}/{name}"
            for address, may_show in ((url, False), (f"{url}?inline=1", inline)):
                seen = visit(page, address)
                if seen.download is not None:
                    saved_as = seen.download.suggested_filename
                    if saved_as != name:
                        problems.append(f"{address}: saved as {saved_as!r}")
                elif not may_show:
                    problems.append(f"{address}: shown as {seen.shown_as} instead of saved")
                elif seen.shown_as in {"text/html", "application/xhtml+xml", "image/svg+xml"}:
                    problems.append(f"{address}: rendered as {seen.shown_as}")
                if pwned(page):
                    problems.append(f"{address}: window.__pwned = {pwned(page)!r}")

        if visit(page, f"{live}/sessions/{slug}/archive.zip").download is None:
            problems.append("the session ZIP was shown instead of saved")
        # The pages that list the documents, with their markup-laden titles.
        for path in ("/", f"/sessions/{slug}", "/?q=support"):
            page.goto(f"{live}{path}")
            page.wait_for_timeout(100)
            if pwned(page):
                problems.append(f"{path}: window.__pwned = {pwned(page)!r}")
    finally:
        context.close()
    problems += [f"script ran: {line!r}" for line in witness.script_ran()]
    assert not problems, "\n".join(problems)


def test_manage_pages_with_hostile_titles_run_no_script(app, browser, live, hostile):
    slug, files = hostile
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    witness = Witness()
    witness.watch(page)
    problems: list[str] = []
    try:
        page.goto(f"{live}/login")
        page.fill("input[name=email]", "anim@example.org")
        page.fill("input[name=password]", "facilitator-pass")
        page.click("form[action='/login'] button[type=submit]")
        page.wait_for_url(f"{live}/manage")
        for path in ("/manage", f"/manage/documents/{files[0][0]}/edit", "/manage/upload"):
            page.goto(f"{live}{path}")
            page.wait_for_timeout(100)
            if pwned(page):
                problems.append(f"{path}: window.__pwned = {pwned(page)!r}")
    finally:
        context.close()
    problems += [f"script ran: {line!r}" for line in witness.script_ran()]
    assert not problems, "\n".join(problems)
