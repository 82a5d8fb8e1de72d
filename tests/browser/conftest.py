"""Fixtures for the browser tests: one live portal and one Chromium, shared by every test.

``live_portal`` is a real ``portal run`` (two workers) on a fresh instance filled by
``portal demo``; it lives for the ``tests/browser`` package. ``browser`` is one headless
Debian Chromium for the whole run. ``phone`` and ``desktop`` are fresh anonymous browser
contexts (French, like most participants); ``participant_page`` / ``phone_participant_page``
are pages already past the gate, and ``admin_page`` a page logged in with the admin account
that ``portal run`` printed. Contexts are cheap: each test gets its own, so cookies never
leak from one test to the next, while the costly parts (server, browser, password hashing)
are paid once through saved storage states.

The portal is shared by every browser test of a pytest process, in file order. A test may add
sessions and documents (the participants' tests only count the demo's own); it must not change
or delete the demo's sessions and documents, and a test that changes the shared password, the
admin's password or the access window must restore them before it ends (the saved states and
the other tests depend on them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from liveserver import (
    Server,
    chromium,
    demo_instance,
    free_port,
    printed,
    skip_without_chromium,
)

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1280, "height": 900}}


@dataclass
class LivePortal:
    """A running portal and the credentials it printed on its first start."""

    root: Path
    server: Server
    shared_password: str
    admin_email: str
    admin_password: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture(scope="package")
def live_portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePortal]:
    """Start ``portal run`` on a fresh demo instance; stop it after the package's tests."""
    root = tmp_path_factory.mktemp("browser-live")
    demo_instance(root)
    server = Server(root, free_port(), workers=2)
    try:
        server.wait_ready()
        credentials = {
            label: (printed(server.stdout, label) or [""])[0]
            for label in ("shared password", "admin e-mail", "admin password")
        }
        assert all(credentials.values()), server.output()
        yield LivePortal(
            root,
            server,
            shared_password=credentials["shared password"],
            admin_email=credentials["admin e-mail"],
            admin_password=credentials["admin password"],
        )
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Debian Chromium for the whole run (skips the test where none can run)."""
    skip_without_chromium()
    with chromium() as launched:
        yield launched


def new_context(browser: Any, live_portal: LivePortal, device: dict, **options: Any) -> Any:
    """Open a French browser context on the live portal (base URL set: ``page.goto("/")``)."""
    settings = {"locale": "fr-FR", "timezone_id": "Europe/Paris", **device, **options}
    return browser.new_context(base_url=live_portal.url, **settings)


@pytest.fixture
def phone(browser: Any, live_portal: LivePortal) -> Iterator[Any]:
    """An anonymous phone context: 390×844, touch, mobile viewport."""
    context = new_context(browser, live_portal, PHONE)
    yield context
    context.close()


@pytest.fixture
def desktop(browser: Any, live_portal: LivePortal) -> Iterator[Any]:
    """An anonymous desktop context: 1280×900."""
    context = new_context(browser, live_portal, DESKTOP)
    yield context
    context.close()


def unlock(page: Any, password: str) -> None:
    """Type the shared password at the gate, as a participant does."""
    page.goto("/access")
    page.fill("input[name=password]", password)
    page.click("main button[type=submit]")
    page.wait_for_url(lambda url: "/access" not in url)


def sign_in(page: Any, email: str, password: str) -> None:
    """Log in on /login, as a facilitator does."""
    page.goto("/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("main button[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url)


@pytest.fixture(scope="package")
def participant_state(browser: Any, live_portal: LivePortal) -> dict:
    """The cookies of a browser that typed the shared password (typed once per package)."""
    context = new_context(browser, live_portal, DESKTOP)
    try:
        unlock(context.new_page(), live_portal.shared_password)
        return context.storage_state()
    finally:
        context.close()


@pytest.fixture(scope="package")
def admin_state(browser: Any, live_portal: LivePortal) -> dict:
    """The cookies of a browser logged in as the printed admin (logged in once per package)."""
    context = new_context(browser, live_portal, DESKTOP)
    try:
        sign_in(context.new_page(), live_portal.admin_email, live_portal.admin_password)
        return context.storage_state()
    finally:
        context.close()


def _page_with_state(browser: Any, live_portal: LivePortal, device: dict, state: dict) -> Any:
    context = new_context(browser, live_portal, device, storage_state=state)
    return context, context.new_page()


@pytest.fixture
def participant_page(browser: Any, live_portal: LivePortal, participant_state: dict) -> Iterator:
    """A desktop page past the gate, on the programme."""
    context, page = _page_with_state(browser, live_portal, DESKTOP, participant_state)
    page.goto("/")
    yield page
    context.close()


@pytest.fixture
def phone_participant_page(
    browser: Any, live_portal: LivePortal, participant_state: dict
) -> Iterator:
    """A phone page past the gate, on the programme."""
    context, page = _page_with_state(browser, live_portal, PHONE, participant_state)
    page.goto("/")
    yield page
    context.close()


@pytest.fixture
def admin_page(browser: Any, live_portal: LivePortal, admin_state: dict) -> Iterator:
    """A desktop page logged in as the admin, on /manage."""
    context, page = _page_with_state(browser, live_portal, DESKTOP, admin_state)
    page.goto("/manage")
    yield page
    context.close()
