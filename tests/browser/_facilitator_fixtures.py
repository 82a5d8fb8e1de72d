"""Browser fixtures for the facilitators' flow, until tests/browser/conftest.py provides them.

Same names as the shared ones (``live_portal``, ``browser``, ``desktop``, ``phone``,
``admin_page``) so that the test module only has to stop importing this file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TEST_DATABASE_URL, _reset_postgresql
from liveserver import Server, chromium, free_port, printed


@dataclass
class LivePortal:
    root: Path
    server: Server
    admin_email: str
    admin_password: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture(scope="module")
def live_portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePortal]:
    """A real ``portal run`` on an empty instance (it prints the admin's credentials)."""
    if TEST_DATABASE_URL:
        _reset_postgresql(TEST_DATABASE_URL)
    root = tmp_path_factory.mktemp("facilitator-flow")
    server = Server(root, free_port(), workers=1)
    try:
        server.wait_ready()
        yield LivePortal(
            root,
            server,
            admin_email=printed(server.stdout, "admin e-mail")[0],
            admin_password=printed(server.stdout, "admin password")[0],
        )
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def desktop(browser, live_portal) -> Iterator:
    context = browser.new_context(
        base_url=live_portal.url, viewport={"width": 1280, "height": 900}, locale="fr-FR"
    )
    try:
        yield context
    finally:
        context.close()


@pytest.fixture(scope="module")
def phone(browser, live_portal) -> Iterator:
    context = browser.new_context(
        base_url=live_portal.url,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        locale="fr-FR",
    )
    try:
        yield context
    finally:
        context.close()


@pytest.fixture(scope="module")
def admin_page(desktop, live_portal) -> Iterator:
    """A desktop page signed in as the admin through the login form."""
    page = desktop.new_page()
    page.goto("/login")
    page.fill("input[name=email]", live_portal.admin_email)
    page.fill("input[name=password]", live_portal.admin_password)
    page.click("main button[type=submit]")
    page.wait_for_url("**/manage")
    try:
        yield page
    finally:
        page.close()
