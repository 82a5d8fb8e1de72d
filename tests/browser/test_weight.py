"""Light pages: nothing fetched from elsewhere, at most 100 KB of CSS and JavaScript per page,
static files versioned by their content and cached for a year.

Each page is loaded in Chromium and every request it makes is recorded: this covers what the
HTML references and anything the CSS or the scripts would fetch in turn (fonts, images).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from .conftest import DESKTOP, PHONE, new_context

pytestmark = pytest.mark.live

BUDGET = 100 * 1024
ONE_YEAR = "max-age=31536000"
NETWORK_SCHEMES = {"http", "https", "ws", "wss", "ftp"}

PARTICIPANT_PAGES = ["/", "/?q=support&tag=bilan-2020", "/preview/{pdf}", "/preview/{png}"]
ANONYMOUS_PAGES = ["/access", "/login", "/no-such-page"]
ADMIN_PAGES = [
    "/manage",
    "/manage/upload",
    "/manage/settings",
    "/manage/facilitators",
    "/manage/sessions/new",
]


def check_page(context: Any, path: str, origin: str) -> int:
    """Open ``path``; check what it fetched; return its bytes of CSS and JavaScript."""
    page = context.new_page()
    responses: list[Any] = []
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("response", lambda response: responses.append(response))
    page.goto(path)  # waits for the load event: every stylesheet, script, image and font
    # The browser's own PDF viewer loads chrome:// and chrome-extension:// files: not network.
    network = [url for url in requested if url.split(":", 1)[0] in NETWORK_SCHEMES]
    outside = [url for url in network if not url.startswith(origin + "/")]
    assert not outside, f"{path} fetched from elsewhere: {outside[:5]}"
    weight = 0
    for response in list(responses):
        kind = response.request.resource_type
        if kind not in ("stylesheet", "script") or not response.url.startswith(origin + "/"):
            continue  # the browser's own PDF viewer brings its files from inside the browser
        weight += len(response.body())
        url = urlsplit(response.url)
        assert url.path.startswith("/static/"), f"{path}: {response.url} is not a static file"
        assert parse_qs(url.query).get("v"), f"{path}: {response.url} has no version"
        cache = response.headers.get("cache-control", "")
        assert ONE_YEAR in cache and "immutable" in cache, f"{response.url}: {cache!r}"
    assert weight <= BUDGET, f"{path}: {weight} bytes of CSS and JavaScript"
    page.close()
    return weight


@pytest.fixture(scope="module")
def document_ids(browser, live_portal, participant_state) -> dict[str, str]:
    context = new_context(browser, live_portal, DESKTOP, storage_state=participant_state)
    page = context.new_page()
    page.goto("/")
    ids = {}
    for key, name in (("pdf", "programme-session-nationale-2020.pdf"), ("png", "bandeau-egm.png")):
        href = page.locator(f"a.doc-title[href$='/{name}']").get_attribute("href") or ""
        ids[key] = href.split("/")[2]
    context.close()
    return ids


@pytest.mark.parametrize("device", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_participant_pages_are_light_and_local(
    browser, live_portal, participant_state, document_ids, device
):
    context = new_context(browser, live_portal, device, storage_state=participant_state)
    page = context.new_page()
    page.goto("/")
    session = page.locator("article h3 a").first.get_attribute("href")
    page.close()
    for path in [*PARTICIPANT_PAGES, session]:
        check_page(context, path.format(**document_ids), live_portal.url)
    context.close()


def test_anonymous_pages_are_light_and_local(desktop, live_portal):
    for path in ANONYMOUS_PAGES:
        check_page(desktop, path, live_portal.url)


def test_manage_pages_are_light_and_local(browser, live_portal, admin_state):
    context = new_context(browser, live_portal, DESKTOP, storage_state=admin_state)
    for path in ADMIN_PAGES:
        check_page(context, path, live_portal.url)
    context.close()


def test_the_budget_counts_real_files(participant_page, live_portal):
    """The programme loads the portal's stylesheet: the measure is not vacuous."""
    weight = check_page(participant_page.context, "/", live_portal.url)
    assert weight > 1024
