"""The facilitators' flow in a real Chromium against a real ``portal run``.

Login, create a session, drop three files on the upload page and watch each progress bar
reach 100 %, see a forbidden file refused with the server's message, resume an upload whose
connection was cut, edit a document (an error shown next to its field), delete it; and the
same page without JavaScript. The tests share one signed-in page and run in file order.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from liveserver import skip_without_chromium

skip_without_chromium()
from playwright.sync_api import expect  # noqa: E402

from .conftest import DESKTOP, new_context  # noqa: E402

pytestmark = pytest.mark.live

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
DROP = """(files) => {
  const data = new DataTransfer();
  for (const f of files) {
    data.items.add(new File([new Uint8Array(f.bytes)], f.name, { type: f.type }));
  }
  const zone = document.getElementById("dropzone");
  for (const type of ["dragenter", "dragover", "drop"]) {
    const init = { dataTransfer: data, bubbles: true, cancelable: true };
    zone.dispatchEvent(new DragEvent(type, init));
  }
}"""
WATCH_STATES = """() => {
  window.uploadStates = [];
  new MutationObserver(() => {
    for (const state of document.querySelectorAll(".upload-item .state")) {
      window.uploadStates.push(state.textContent);
    }
  }).observe(document.getElementById("upload-list"), {
    subtree: true, childList: true, characterData: true
  });
}"""
SENDING = re.compile(r"Envoi\u00a0: \d{1,3}\u00a0% · \d+(,\d)?\u00a0Mo/s")
ASSETS = """() => performance.getEntriesByType("resource")
  .filter((e) => e.initiatorType === "script" || e.initiatorType === "link")
  .reduce((sum, e) => sum + e.decodedBodySize, 0)"""


@pytest.fixture(scope="module")
def desktop(browser, live_portal, admin_state):  # type: ignore[no-untyped-def]
    """One signed-in desktop context for the whole module: the tests follow one another."""
    context = new_context(browser, live_portal, DESKTOP, storage_state=admin_state)
    yield context
    context.close()


@pytest.fixture(scope="module")
def admin_page(desktop):  # type: ignore[no-untyped-def]
    page = desktop.new_page()
    yield page
    page.close()


@pytest.fixture(scope="module")
def requested(desktop) -> list[str]:
    """Every URL the signed-in browser asks for."""
    urls: list[str] = []
    desktop.on("request", lambda request: urls.append(request.url))
    return urls


@pytest.fixture(scope="module")
def session_upload_url(admin_page) -> str:
    page = admin_page
    page.goto("/manage/sessions/new")
    page.fill("#title", "Atelier climat")
    page.fill("#starts_at", "2020-11-21T10:00")
    page.fill("#ends_at", "2020-11-21T12:00")
    page.click("main form button[type=submit]")
    page.wait_for_url("**/manage")
    row = page.locator("tr", has=page.locator("a", has_text="Atelier climat"))
    href = row.locator("a[href^='/manage/upload?session=']").get_attribute("href")
    assert href
    return href


def test_three_dropped_files_reach_100_percent_and_are_listed(
    admin_page, requested, session_upload_url
):
    page = admin_page
    page.goto(session_upload_url)
    expect(page.locator(".drop-hint")).to_be_visible()
    # The whole page (styles and scripts) stays under 100 KB, measured as the browser got it.
    assert 0 < page.evaluate(ASSETS) < 100_000
    files = [
        {"name": "Feuille-de-route.pdf", "type": "application/pdf", "bytes": list(PDF)},
        {"name": "Affiche.png", "type": "image/png", "bytes": list(PNG)},
        {"name": "Notes.txt", "type": "text/plain", "bytes": list(b"Notes du temps d'echange\n")},
    ]
    page.evaluate(DROP, files)
    items = page.locator(".upload-item")
    expect(items).to_have_count(3)
    expect(page.locator(".upload-item.accepted")).to_have_count(3)
    for index, name in enumerate(["Feuille-de-route.pdf", "Affiche.png", "Notes.txt"]):
        item = items.nth(index)
        expect(item.locator(".name")).to_have_text(name)
        assert item.locator("progress").evaluate("(bar) => bar.value") == 100
        expect(item.locator(".state")).to_contain_text("Accepté")
    # The page stayed usable: the form is there, empty, ready for more.
    assert page.input_value("#tags") == ""
    page.goto("/manage")
    page.click("text=Atelier climat")
    for title in ("Feuille-de-route", "Affiche", "Notes"):
        expect(page.locator("a.doc-title", has_text=title)).to_be_visible()


def test_a_forbidden_file_is_rejected_with_the_servers_message(admin_page, session_upload_url):
    page = admin_page
    page.goto(session_upload_url)
    page.set_input_files(
        "#files",
        files=[
            {"name": "outil.exe", "mimeType": "application/octet-stream", "buffer": b"MZ\x90"},
            {"name": "faux.pdf", "mimeType": "application/pdf", "buffer": b"pas un PDF"},
        ],
    )
    page.click("main form button[type=submit]")
    rejected = page.locator(".upload-item.rejected")
    expect(rejected).to_have_count(2)
    expect(rejected.nth(0)).to_contain_text("Ce type de fichier n’est pas accepté.")
    expect(rejected.nth(1)).to_contain_text(
        "Le contenu du fichier ne correspond pas à son extension."
    )
    assert page.url.endswith(session_upload_url)


def test_an_upload_cut_mid_way_resumes_from_the_stored_bytes(
    admin_page, session_upload_url, tmp_path: Path
):
    page = admin_page
    page.goto(session_upload_url)
    chunk = int(page.get_attribute("#upload-form", "data-chunk-size"))
    content = PDF + os.urandom(chunk + 300_000) + b"\n%%EOF\n"
    path = tmp_path / "Enregistrement.pdf"
    path.write_bytes(content)
    offsets: list[str] = []

    def cut_the_second_chunk(route, request) -> None:  # type: ignore[no-untyped-def]
        if request.method == "PATCH":
            offsets.append(request.headers.get("upload-offset", ""))
            if len(offsets) == 2:
                route.abort("connectionreset")
                return
        route.continue_()

    page.route(re.compile(r".*/manage/tus/[0-9a-f]{32}$"), cut_the_second_chunk)
    page.evaluate(WATCH_STATES)
    try:
        page.set_input_files("#files", str(path))
        page.click("main form button[type=submit]")
        item = page.locator(".upload-item")
        expect(item.locator(".state")).to_contain_text("Accepté", timeout=60_000)
    finally:
        page.unroute(re.compile(r".*/manage/tus/[0-9a-f]{32}$"))
    # The first chunk was kept; after the cut only the rest was sent again.
    assert offsets == ["0", str(chunk), str(chunk)]
    # What the facilitator read on the way: progress with the speed, the cut, the check.
    states = page.evaluate("window.uploadStates")
    assert any(SENDING.fullmatch(state) for state in states), states
    assert "Connexion perdue\u00a0; reprise en cours…" in states
    assert "Reçu\u00a0; vérification du fichier…" in states
    edit_url = item.locator(".state a").get_attribute("href")
    document_id = re.search(r"/documents/(\d+)/edit", edit_url).group(1)
    served = page.request.get(f"/documents/{document_id}/Enregistrement.pdf")
    assert hashlib.sha256(served.body()).hexdigest() == hashlib.sha256(content).hexdigest()


def test_edit_shows_the_error_next_to_the_field_then_saves_and_deletes(admin_page):
    page = admin_page
    page.goto("/manage")
    page.click("a[href$='/edit']:has-text('Feuille-de-route')")
    page.fill("#title", "")
    page.fill("#description", "La feuille de route de l’atelier")
    page.click("form[action$='/edit'] button[type=submit]")
    title = page.locator("#title")
    expect(title).to_have_attribute("aria-invalid", "true")
    expect(title).to_have_attribute("aria-describedby", "title-error")
    expect(page.locator("#title-error")).to_be_visible()
    expect(page.locator("#description")).to_have_value("La feuille de route de l’atelier")
    expect(page.locator(".error-summary a[href='#title']")).to_be_visible()
    page.fill("#title", "Feuille de route de l’atelier")
    page.click("form[action$='/edit'] button[type=submit]")
    page.wait_for_url("**/manage")
    expect(
        page.locator("table a[href^='/documents/']", has_text="Feuille de route de l’atelier")
    ).to_be_visible()
    page.locator("form.inline button", has_text="Feuille de route de l’atelier").click()
    page.wait_for_url("**/manage")
    expect(page.locator(".flash.success")).to_contain_text("Feuille de route de l’atelier")
    expect(
        page.locator("table a[href^='/documents/']", has_text="Feuille de route de l’atelier")
    ).to_have_count(0)


def test_without_javascript_the_plain_form_still_uploads(browser, live_portal):
    context = browser.new_context(base_url=live_portal.url, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto("/login")
        page.fill("input[name=email]", live_portal.admin_email)
        page.fill("input[name=password]", live_portal.admin_password)
        page.click("main button[type=submit]")
        page.goto("/manage/upload")
        expect(page.locator(".drop-hint")).to_be_hidden()
        page.set_input_files(
            "#files", files=[{"name": "Sans-js.pdf", "mimeType": "application/pdf", "buffer": PDF}]
        )
        page.click("main form button[type=submit]")
        expect(page.locator("ul.result.accepted")).to_contain_text("Sans-js.pdf")
    finally:
        context.close()


def test_no_request_left_the_portal(live_portal, requested):
    assert requested
    assert all(url.startswith(live_portal.url + "/") for url in requested), requested
