"""The participant's path through the portal in a real browser, on a phone and a desktop.

The live portal holds the ``portal demo`` week (eight sessions, 21–27 November 2020, in
Europe/Paris). Every test opens its own browser context, so none depends on another's cookies.
"""

from __future__ import annotations

import io
import re
import zipfile

import pytest
from playwright.sync_api import expect

from portal.demo import SESSIONS, make_png

from .conftest import DESKTOP, PHONE, new_context, unlock

pytestmark = pytest.mark.live

CSV_BYTES = "Assemblée locale;Participant·es\nExemple A;3\nExemple B;5\n".encode()
DAYS_FR = [
    "Samedi 21 novembre",
    "Dimanche 22 novembre",
    "Lundi 23 novembre",
    "Mardi 24 novembre",
    "Mercredi 25 novembre",
    "Jeudi 26 novembre",
    "Vendredi 27 novembre",
]


@pytest.fixture(params=["phone", "desktop"])
def page(request):
    """A page past the gate, on the programme, once on a phone and once on a desktop."""
    name = "phone_participant_page" if request.param == "phone" else "participant_page"
    return request.getfixturevalue(name)


KINDS = ("Support de présentation", "Compte-rendu")


def shows(page, expected: list[str], tags: list[str], text: str) -> None:
    """The filtered programme shows ``expected`` and only documents that match the filters.

    Other browser tests may add documents to the shared portal: only the demo's are counted.
    """
    expect(page.locator("a.doc-title").first).to_be_visible()
    items = page.locator("li.document").all()
    shown = [item.locator("a.doc-title").inner_text() for item in items]
    assert set(expected) <= set(shown), shown
    for item in items:
        selected = {chip.strip() for chip in item.locator(".chip.on").all_inner_texts()}
        assert len(selected) == len(tags), item.inner_text()
        assert text.lower() in item.inner_text().lower() or text.lower() in (
            item.locator("a.doc-title").get_attribute("href") or ""
        )


def document(page, title: str):
    return page.locator("li.document", has=page.get_by_role("link", name=title, exact=True))


# --- the gate and the programme ----------------------------------------------------------------


@pytest.mark.parametrize("device", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_gate_refuses_a_wrong_password_then_opens_the_programme(browser, live_portal, device):
    context = new_context(browser, live_portal, device)
    page = context.new_page()
    page.goto("/sessions/" + "x")
    assert "/access" in page.url
    page.get_by_label("Mot de passe").fill("not the password")
    response_status = []
    page.on("response", lambda r: response_status.append(r.status) if "/access" in r.url else 0)
    page.get_by_role("button", name="Entrer").click()
    expect(page.locator(".error")).to_contain_text("n’est pas le bon")
    assert 401 in response_status
    expect(page.get_by_label("Mot de passe")).to_have_attribute("aria-invalid", "true")

    page.get_by_label("Mot de passe").fill(live_portal.shared_password)
    page.get_by_role("button", name="Entrer").click()
    page.wait_for_url(lambda url: "/access" not in url)
    context.close()


@pytest.mark.parametrize("device", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_leaving_asks_to_confirm_then_closes_the_portal_on_this_device(
    browser, live_portal, device
):
    context = new_context(browser, live_portal, device)
    page = context.new_page()
    unlock(page, live_portal.shared_password)
    # Pages arrive gzipped: the browser shows them all the same.
    with page.expect_response(lambda r: r.url.endswith("/")) as programme:
        page.goto("/")
    assert programme.value.headers.get("content-encoding") == "gzip"
    page.get_by_role("link", name="Quitter").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Quitter le portail\u00a0?")
    page.get_by_role("link", name="Retour au programme").click()
    page.wait_for_url(lambda url: url.endswith("/"))  # changed their mind: still inside
    page.get_by_role("link", name="Quitter").click()
    page.get_by_role("button", name="Quitter").click()
    page.wait_for_url(lambda url: "/access" in url)
    page.goto("/")
    assert "/access" in page.url
    context.close()


def test_programme_is_grouped_by_day_with_times_in_the_event_zone(
    browser, live_portal, participant_state
):
    # A browser far from Paris still reads the event's times: they are written by the server.
    context = new_context(
        browser, live_portal, DESKTOP, storage_state=participant_state, timezone_id="Asia/Tokyo"
    )
    page = context.new_page()
    page.goto("/")
    days = page.locator("section.day > h2").all_inner_texts()
    # The demo's days in order (other browser tests may add sessions: only order is asserted).
    assert [day for day in days if day in DAYS_FR] == DAYS_FR
    assert days[-1] == "Documents généraux"
    # Wednesday 25 holds two sessions, in time order, at their Paris times.
    wednesday = page.locator("section.day", has=page.get_by_role("heading", name=DAYS_FR[4]))
    sessions = wednesday.locator("article h3").all_inner_texts()
    assert sessions.index(SESSIONS[4][2]) < sessions.index(SESSIONS[5][2])
    starts = wednesday.locator("article .when time:first-of-type").all_inner_texts()
    assert starts[sessions.index(SESSIONS[4][2])] == "14:00"
    assert starts[sessions.index(SESSIONS[5][2])] == "18:00"
    first = page.locator("article.meeting", has_text=SESSIONS[0][2])
    expect(first.locator(".when")).to_contain_text("10:00–12:00")
    # Each document shows its type, its size and its tags; each session its ZIP.
    item = document(page, f"Support de présentation – {SESSIONS[0][2]}")
    expect(item.locator(".icon")).to_have_text("PDF")
    expect(item.locator(".meta")).to_contain_text(re.compile(r"PDF · \d+ o"))
    expect(item.locator(".tags li")).to_have_text(["Assemblées locales", "Bilan 2020", "Support"])
    expect(first.get_by_role("link", name=re.compile("Tout télécharger \\(ZIP\\)"))).to_be_visible()
    count = first.locator("li.document").count()
    expect(first.locator(".zip-line")).to_contain_text(f"{count} documents")
    context.close()


def test_tag_chips_and_search_combine_and_live_in_the_url(
    page, browser, live_portal, participant_state
):
    page.get_by_label("Rechercher dans les documents").fill("compte")
    page.locator("label.chip", has_text="Bilan 2020").click()
    page.get_by_role("button", name="Filtrer").click()
    page.wait_for_url(re.compile(r"q=compte.*tag=bilan-2020"))
    titles = page.locator("a.doc-title")
    # Sessions 1, 4 and 5: their reports carry "Bilan 2020".
    shows(page, [f"Compte-rendu – {SESSIONS[i][2]}" for i in (0, 3, 4)], ["bilan-2020"], "compte")
    expect(page.get_by_label("Rechercher dans les documents")).to_have_value("compte")

    # A tag chip on a document adds its tag and keeps the text.
    document(page, f"Compte-rendu – {SESSIONS[3][2]}").get_by_role(
        "link", name="Chantiers thématiques", exact=True
    ).click()
    page.wait_for_url(re.compile(r"q=compte.*tag=bilan-2020.*tag=chantiers-thematiques"))
    both = ["bilan-2020", "chantiers-thematiques"]
    shows(page, [f"Compte-rendu – {SESSIONS[i][2]}" for i in (3, 4)], both, "compte")
    shared, selection = page.url, titles.all_inner_texts()

    # Removing the text keeps the tags; the address alone reproduces the selection.
    page.locator(".active-filters a", has_text="compte").click()
    page.wait_for_url(lambda url: "q=" not in url and "chantiers-thematiques" in url)
    expected = [f"{kind} – {SESSIONS[i][2]}" for i in (3, 4) for kind in KINDS]
    shows(page, expected, both, "")
    other = new_context(browser, live_portal, DESKTOP, storage_state=participant_state)
    again = other.new_page()
    again.goto(shared)
    expect(again.locator("a.doc-title")).to_have_text(selection)
    expect(again.locator(".tag-filter input:checked")).to_have_count(2)
    other.close()


def test_a_search_without_match_says_so(page):
    page.get_by_label("Rechercher dans les documents").fill("zzz-nothing")
    page.get_by_label("Rechercher dans les documents").press("Enter")
    expect(page.get_by_role("status")).to_contain_text("Aucun document")
    expect(page.locator("a.doc-title")).to_have_count(0)


# --- previews --------------------------------------------------------------------------------


def test_pdf_preview_embeds_the_file_inline(page):
    item = document(page, "Programme de la semaine")
    item.get_by_role("link", name=re.compile("Aperçu")).click()
    page.wait_for_url(re.compile(r"/preview/\d+$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Programme de la semaine")
    viewer = page.locator(".viewer object[type='application/pdf']")
    data = viewer.get_attribute("data")
    assert data and data.endswith("?inline=1")
    served = page.request.get(data)
    assert served.status == 200
    assert served.headers["content-type"] == "application/pdf"
    assert served.headers["content-disposition"].startswith("inline")
    assert served.body().startswith(b"%PDF-")
    # The browser really shows it in the page: the object holds a frame on the inline URL,
    # drawn by the browser's PDF viewer (no download happens).
    for _ in range(150):  # up to 15 s on a busy machine
        urls = [frame.url for frame in page.frames]
        if any(url.endswith(data) for url in urls) and any("extension" in u for u in urls):
            break
        page.wait_for_timeout(100)
    else:
        raise AssertionError(f"the PDF is not shown in the page: {urls}")
    expect(page.get_by_role("link", name="Télécharger", exact=True)).to_be_visible()
    page.get_by_role("link", name="← Programme").click()
    page.wait_for_url(re.compile(r"/$"))


def test_image_preview_shows_the_picture(page):
    document(page, "Bandeau de la session nationale").get_by_role(
        "link", name=re.compile("Aperçu")
    ).click()
    image = page.get_by_role("img", name="Bandeau de la session nationale")
    expect(image).to_be_visible()
    # Loaded through the page's policy: a blocked or broken image has no natural width.
    page.wait_for_function(
        "img => img.complete && img.naturalWidth === 48", arg=image.element_handle()
    )


def test_text_documents_have_no_preview_and_their_preview_address_is_refused(page):
    item = document(page, f"Compte-rendu – {SESSIONS[0][2]}")
    expect(item.get_by_role("link", name=re.compile("Aperçu"))).to_have_count(0)
    href = item.locator("a.doc-title").get_attribute("href")
    document_id = re.search(r"/documents/(\d+)/", href or "").group(1)
    response = page.goto(f"/preview/{document_id}")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text("Pas d’aperçu")
    expect(page.locator("main")).to_contain_text("Téléchargez-le")
    assert page.locator("main object, main img, main iframe").count() == 0


# --- downloads ---------------------------------------------------------------------------------


def test_documents_download_with_their_exact_bytes(page):
    for title, name, expected in [
        ("Bandeau de la session nationale", "bandeau-egm.png", make_png()),
        (
            "Participation par type de structure (exemple)",
            "participation-par-structure.csv",
            CSV_BYTES,
        ),
    ]:
        with page.expect_download() as caught:
            page.get_by_role("link", name=title, exact=True).click()
        download = caught.value
        assert download.suggested_filename == name
        with open(download.path(), "rb") as stream:
            assert stream.read() == expected


def test_session_zip_holds_its_documents(page):
    page.get_by_role("link", name=SESSIONS[0][2], exact=True).click()
    page.wait_for_url(re.compile(r"/sessions/"))
    with page.expect_download() as caught:
        page.get_by_role("link", name=re.compile("Tout télécharger \\(ZIP\\)")).click()
    download = caught.value
    assert download.suggested_filename.endswith(".zip")
    with open(download.path(), "rb") as stream:
        archive = zipfile.ZipFile(io.BytesIO(stream.read()))
    names = archive.namelist()
    assert {"compte-rendu-temps-1.txt", "support-temps-1.pdf"} <= set(names)
    assert len(names) == page.locator("li.document").count()  # every listed document
    assert archive.read("support-temps-1.pdf").startswith(b"%PDF-")
    assert archive.read("compte-rendu-temps-1.txt").decode().startswith("Compte-rendu – ")


# --- keyboard, small screens, no JavaScript, languages --------------------------------------------


def focus_is_visible(page) -> bool:
    return page.evaluate(
        """() => {
            const el = document.activeElement;
            const style = getComputedStyle(el);
            const box = el.getBoundingClientRect();
            return style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2
                && box.width > 0 && box.height > 0;
        }"""
    )


def test_keyboard_alone_reaches_the_main_links_with_a_visible_focus(participant_page):
    page = participant_page
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    assert focus_is_visible(page)
    page.keyboard.press("Enter")
    wanted = {"search": False, "session": False, "document": False, "zip": False, "preview": False}
    for _ in range(80):
        page.keyboard.press("Tab")
        assert focus_is_visible(page), page.evaluate("document.activeElement.outerHTML")
        found = page.evaluate(
            """() => {
                const el = document.activeElement;
                if (el.id === 'q') return 'search';
                if (el.closest('article h3')) return 'session';
                if (el.classList.contains('doc-title')) return 'document';
                if (el.classList.contains('zip')) return 'zip';
                if (el.classList.contains('preview')) return 'preview';
                return '';
            }"""
        )
        if found:
            wanted[found] = True
        if all(wanted.values()):
            break
    assert all(wanted.values()), wanted
    # Enter on a focused document link downloads it: the keyboard does what the mouse does.
    with page.expect_download():
        page.keyboard.press("Enter")


@pytest.mark.parametrize("path", ["/access", "/", "/?q=support&tag=bilan-2020", "/sessions/"])
def test_no_horizontal_scroll_on_a_360_px_phone(browser, live_portal, participant_state, path):
    device = {**PHONE, "viewport": {"width": 360, "height": 740}}
    state = None if path == "/access" else participant_state
    context = new_context(browser, live_portal, device, storage_state=state)
    page = context.new_page()
    page.goto("/")
    if path == "/sessions/":
        page.locator("article h3 a").first.click()
        page.wait_for_url(re.compile("/sessions/"))
    elif path != "/":
        page.goto(path)
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{path}: {width[0]} px wide in a {width[1]} px screen"
    context.close()


def test_without_javascript_the_gate_filters_and_downloads_work(browser, live_portal):
    context = new_context(browser, live_portal, PHONE, java_script_enabled=False)
    page = context.new_page()
    unlock(page, live_portal.shared_password)
    page.locator("label.chip", has_text="Communication").click()
    page.get_by_role("button", name="Filtrer").click()
    page.wait_for_url(re.compile(r"tag=communication"))
    expect(page.locator("a.doc-title").first).to_be_visible()
    for item in page.locator("li.document").all():
        expect(item.locator(".chip.on")).to_have_text("Communication")
    with page.expect_download() as caught:
        page.get_by_role("link", name="Bandeau de la session nationale", exact=True).click()
    with open(caught.value.path(), "rb") as stream:
        assert stream.read() == make_png()
    context.close()


def test_language_switch_keeps_the_filters_and_sets_the_lang_attribute(page):
    page.goto("/?q=support")
    expect(page.locator("html")).to_have_attribute("lang", "fr")
    expect(page.get_by_label("Rechercher dans les documents")).to_have_value("support")
    page.get_by_role("link", name="English").click()
    page.wait_for_url(re.compile(r"lang=en"))
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.get_by_label("Search the documents")).to_have_value("support")
    expect(page.locator("section.day > h2").first).to_have_text("Saturday 21 November")
    # The choice is remembered without the parameter.
    page.goto("/")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    link = page.get_by_role("link", name="Français")
    expect(link).to_have_attribute("lang", "fr")
    link.click()
    page.wait_for_url(re.compile(r"lang=fr"))
    expect(page.locator("html")).to_have_attribute("lang", "fr")
