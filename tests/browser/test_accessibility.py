"""axe-core on every page, in French and in English: no "serious" or "critical" violation.

axe-core comes bundled inside the ``axe-playwright-python`` package (no download, no network):
it is injected into each page by Playwright, which the pages' Content-Security-Policy does not
restrict. Every rule axe runs by default is checked; only the impact filter is ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe

from .conftest import DESKTOP, PHONE, new_context

pytestmark = pytest.mark.live

BLOCKING = {"serious", "critical"}
LOCALES = {"fr": "fr-FR", "en": "en-GB"}
AXE = Axe()


def first_link(pattern: str) -> Callable[[Any], str]:
    """Find, on the programme, the first link whose address matches ``pattern``."""

    def find(page: Any) -> str:
        page.goto("/")
        href = page.locator(f"main a[href*='{pattern}']").first.get_attribute("href")
        assert href, f"no link to {pattern} on the programme"
        return href

    return find


def preview_of(name: str) -> Callable[[Any], str]:
    def find(page: Any) -> str:
        page.goto("/")
        item = page.locator("li.document", has=page.locator(f"a[href$='/{name}']"))
        href = item.locator("a.preview").get_attribute("href")
        assert href, f"no preview link for {name}"
        return href

    return find


def refused_preview(page: Any) -> str:
    page.goto("/")
    href = page.locator("a.doc-title[href$='.txt']").first.get_attribute("href") or ""
    return "/preview/" + re.search(r"/documents/(\d+)/", href).group(1)  # type: ignore[union-attr]


def admin_link(pattern: str) -> Callable[[Any], str]:
    def find(page: Any) -> str:
        page.goto("/manage")
        href = page.locator(f"main a[href*='{pattern}']").first.get_attribute("href")
        assert href, f"no link to {pattern} on /manage"
        return href

    return find


#: (name, who, address or a function finding it, an action before the check, expected status)
PAGES: list[tuple[str, str, Any, str | None, int]] = [
    ("gate", "anonymous", "/access", None, 200),
    ("gate-wrong-password", "anonymous", "/access", "wrong-password", 200),
    ("login", "anonymous", "/login", None, 200),
    ("login-wrong-password", "anonymous", "/login", "wrong-login", 200),
    ("error-404", "anonymous", "/no-such-page", None, 404),
    ("programme", "participant", "/", None, 200),
    ("programme-filtered", "participant", "/?q=support&tag=bilan-2020", None, 200),
    ("programme-no-match", "participant", "/?q=zzzz", None, 200),
    ("session", "participant", first_link("/sessions/"), None, 200),
    ("preview-pdf", "participant", preview_of("programme-session-nationale-2020.pdf"), None, 200),
    ("preview-image", "participant", preview_of("bandeau-egm.png"), None, 200),
    ("preview-refused", "participant", refused_preview, None, 404),
    ("leave", "participant", "/leave", None, 200),
    ("manage", "admin", "/manage", None, 200),
    ("manage-upload", "admin", "/manage/upload", None, 200),
    ("manage-new-session", "admin", "/manage/sessions/new", None, 200),
    ("manage-edit-session", "admin", admin_link("/manage/sessions/"), None, 200),
    ("manage-edit-document", "admin", admin_link("/manage/documents/"), None, 200),
    ("manage-settings", "admin", "/manage/settings", None, 200),
    ("manage-facilitators", "admin", "/manage/facilitators", None, 200),
]


@pytest.fixture(scope="module")
def pages(browser, live_portal, participant_state, admin_state) -> Iterator[dict]:
    """One page per (role, language, device), reused by every check of this module."""
    states = {"anonymous": None, "participant": participant_state, "admin": admin_state}
    contexts = []
    opened: dict[tuple[str, str, str], Any] = {}
    for device_name, device in (("desktop", DESKTOP), ("phone", PHONE)):
        for lang, locale in LOCALES.items():
            for who, state in states.items():
                if device_name == "phone" and (lang != "fr" or who == "admin"):
                    continue
                context = new_context(
                    browser, live_portal, device, locale=locale, storage_state=state
                )
                contexts.append(context)
                opened[(who, lang, device_name)] = context.new_page()
    yield opened
    for context in contexts:
        context.close()


def blocking_violations(page: Any) -> list[str]:
    results = AXE.run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} — "
        + "; ".join(", ".join(node["target"]) for node in v["nodes"][:5])
        for v in results.response["violations"]
        if v["impact"] in BLOCKING
    ]


def act(page: Any, action: str | None, live_portal: Any) -> None:
    if action == "wrong-password":
        page.fill("input[name=password]", "not the password")
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            page.click("main button[type=submit]")
        assert posted.value.status == 401
        page.wait_for_selector(".error")
    elif action == "wrong-login":
        page.fill("input[name=email]", live_portal.admin_email)
        page.fill("input[name=password]", "not the password")
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            page.click("main button[type=submit]")
        assert posted.value.status == 401
        page.wait_for_selector(".error")


#: Every page on a desktop in both languages; the participants' pages on a phone too (French,
#: their usual case). Wrong passwords only on the desktop: each one counts toward the gate's
#: rate limit, which the live portal shares between every browser test.
PHONE_PAGES = {
    "gate",
    "programme",
    "programme-filtered",
    "session",
    "preview-pdf",
    "preview-image",
    "leave",
}
CASES = [
    pytest.param(*page, lang, "desktop", id=f"{page[0]}-{lang}-desktop")
    for page in PAGES
    for lang in LOCALES
] + [
    pytest.param(*page, "fr", "phone", id=f"{page[0]}-fr-phone")
    for page in PAGES
    if page[0] in PHONE_PAGES
]


@pytest.mark.parametrize(("name", "who", "where", "action", "status", "lang", "device"), CASES)
def test_no_serious_or_critical_violation(
    pages, live_portal, name, who, where, action, status, lang, device
):
    page = pages[(who, lang, device)]
    address = where if isinstance(where, str) else where(page)
    response = page.goto(address)
    assert response is not None and response.status == status, name
    act(page, action, live_portal)
    assert page.locator("html").get_attribute("lang") == lang
    violations = blocking_violations(page)
    assert not violations, f"{name} ({lang}, {device}):\n" + "\n".join(violations)


def test_the_check_sees_a_missing_label(pages):
    """The checker itself works: a search field stripped of its label is reported."""
    page = pages[("participant", "fr", "desktop")]
    page.goto("/")
    page.evaluate("document.querySelector('label[for=q]').remove()")
    assert any(v.startswith("label (critical)") for v in blocking_violations(page))


def set_opening(page: Any, value: str) -> None:
    """Save the access window's opening time on /manage/settings, as an admin does."""
    page.goto("/manage/settings")
    page.fill("#access_opens", value)
    with page.expect_response(lambda r: r.request.method == "POST") as saved:
        page.click("main button[type=submit]")
    assert saved.value.status == 303, saved.value.status


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_closed_gate_has_no_serious_or_critical_violation(pages, lang):
    """The page shown before the access window opens (restored at once, whatever happens)."""
    admin, visitor = pages[("admin", "fr", "desktop")], pages[("anonymous", lang, "desktop")]
    set_opening(admin, "2099-01-01T10:00")
    try:
        response = visitor.goto("/access")
        assert response is not None and response.status == 403
        assert visitor.locator("html").get_attribute("lang") == lang
        violations = blocking_violations(visitor)
    finally:
        set_opening(admin, "")
    assert visitor.goto("/access").status == 200  # type: ignore[union-attr]
    assert not violations, f"closed gate ({lang}):\n" + "\n".join(violations)
