"""Wrong-password throttling on /access and /login (SPEC section 4)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import (
    ACCOUNT_PASSWORD,
    CSRF_PATTERN,
    FACILITATOR_EMAIL,
    SHARED_PASSWORD,
)

from portal import create_app
from portal.extensions import db

LIMIT = 10
WRONG = "not-the-password"
CLIENT_A = "198.51.100.7"
CLIENT_B = "198.51.100.8"
PROJECT_DIR = Path(__file__).resolve().parent.parent


def token_for(client, path: str, address: str, headers=None) -> str:
    page = client.get(path, environ_base={"REMOTE_ADDR": address}, headers=headers or {})
    return CSRF_PATTERN.search(page.get_data(as_text=True)).group(1)


def attempt(client, password: str, address: str, path: str = "/access", headers=None, token=None):
    """One try at ``path`` from ``address``, with a valid CSRF token (fetched if not given)."""
    data = {"password": password, "csrf_token": token or token_for(client, path, address, headers)}
    if path == "/login":
        data["email"] = FACILITATOR_EMAIL
    return client.post(
        path, data=data, environ_base={"REMOTE_ADDR": address}, headers=headers or {}
    )


def wrong_tries(client, count: int, address: str, path: str = "/access", headers=None):
    """``count`` wrong tries; a wrong try leaves the session, hence the token, as it was."""
    token = token_for(client, path, address, headers)
    return [attempt(client, WRONG, address, path, headers, token).status_code for _ in range(count)]


def assert_throttled(response) -> None:
    assert response.status_code == 429
    retry_after = int(response.headers["Retry-After"])
    assert 0 < retry_after <= 60
    assert response.mimetype == "text/html"


def is_unlocked(client) -> bool:
    return client.get("/").status_code == 200


@pytest.fixture
def proxied_app(app_config, app):
    """The same portal behind one trusted reverse proxy (PORTAL_PROXY_FIX=1)."""
    proxied = create_app({**app_config, "PROXY_FIX": 1})
    yield proxied
    with proxied.app_context():
        db.session.remove()
        db.engine.dispose()


# --- the gate -------------------------------------------------------------------------------


def test_eleventh_wrong_try_gets_429_with_retry_after(client):
    assert wrong_tries(client, LIMIT, CLIENT_A) == [401] * LIMIT
    response = attempt(client, WRONG, CLIENT_A)
    assert_throttled(response)


def test_throttled_page_is_the_portals_own_in_english(client):
    client.set_cookie("lang", "en")
    wrong_tries(client, LIMIT, CLIENT_A)
    response = attempt(client, WRONG, CLIENT_A)
    assert_throttled(response)
    assert "Too many attempts" in response.get_data(as_text=True)


def test_throttled_client_cannot_get_in_even_with_the_right_password(client):
    wrong_tries(client, LIMIT, CLIENT_A)
    response = attempt(client, SHARED_PASSWORD, CLIENT_A)
    assert_throttled(response)
    assert not is_unlocked(client)


def test_right_password_from_another_address_still_gets_in(app, client):
    wrong_tries(client, LIMIT, CLIENT_A)
    assert_throttled(attempt(client, WRONG, CLIENT_A))
    other = app.test_client()
    assert attempt(other, SHARED_PASSWORD, CLIENT_B).status_code == 303
    assert is_unlocked(other)


def test_right_tries_do_not_count(app, client):
    right = app.test_client()
    statuses = []
    for _ in range(LIMIT):
        assert attempt(right, SHARED_PASSWORD, CLIENT_A).status_code == 303
        statuses.append(attempt(client, WRONG, CLIENT_A).status_code)
    assert statuses == [401] * LIMIT
    assert_throttled(attempt(client, WRONG, CLIENT_A))


def test_requests_without_a_password_check_do_not_count(client):
    for _ in range(LIMIT + 2):
        assert client.get("/access", environ_base={"REMOTE_ADDR": CLIENT_A}).status_code == 200
    assert wrong_tries(client, LIMIT, CLIENT_A) == [401] * LIMIT


# --- /login ---------------------------------------------------------------------------------


def test_login_and_access_count_separately(client):
    assert wrong_tries(client, LIMIT, CLIENT_A, "/access") == [401] * LIMIT
    assert wrong_tries(client, LIMIT, CLIENT_A, "/login") == [401] * LIMIT
    assert_throttled(attempt(client, WRONG, CLIENT_A, "/login"))
    assert_throttled(attempt(client, WRONG, CLIENT_A, "/access"))


def test_login_eleventh_wrong_try_gets_429_and_others_can_still_sign_in(app, client):
    assert wrong_tries(client, LIMIT, CLIENT_A, "/login") == [401] * LIMIT
    assert_throttled(attempt(client, WRONG, CLIENT_A, "/login"))
    other = app.test_client()
    assert attempt(other, ACCOUNT_PASSWORD, CLIENT_B, "/login").status_code == 303


def test_wrong_login_tries_leave_the_gate_open_for_the_same_address(app, client):
    wrong_tries(client, LIMIT + 1, CLIENT_A, "/login")
    participant = app.test_client()
    assert attempt(participant, SHARED_PASSWORD, CLIENT_A).status_code == 303


# --- what a client is -----------------------------------------------------------------------


def test_ipv6_addresses_of_one_64_share_a_counter(client):
    assert wrong_tries(client, LIMIT, "2001:db8:1:2::1") == [401] * LIMIT
    assert_throttled(attempt(client, WRONG, "2001:db8:1:2:ffff:ffff:ffff:fffe"))


def test_ipv6_addresses_of_different_64s_have_their_own_counters(client):
    wrong_tries(client, LIMIT, "2001:db8:1:2::1")
    assert attempt(client, WRONG, "2001:db8:1:3::1").status_code == 401
    assert attempt(client, WRONG, "2001:db8:1:2::1").status_code == 429


def test_ipv4_addresses_have_their_own_counters(client):
    wrong_tries(client, LIMIT, CLIENT_A)
    assert attempt(client, WRONG, CLIENT_B).status_code == 401


def test_spoofed_forwarded_for_is_ignored_without_a_trusted_proxy(client):
    statuses = [
        attempt(client, WRONG, CLIENT_A, headers={"X-Forwarded-For": f"203.0.113.{n}"}).status_code
        for n in range(LIMIT)
    ]
    assert statuses == [401] * LIMIT
    assert_throttled(attempt(client, WRONG, CLIENT_A, headers={"X-Forwarded-For": "203.0.113.99"}))


def test_trusted_proxy_reports_the_client_address(proxied_app):
    client = proxied_app.test_client()
    proxy = "10.0.0.1"
    first = {"X-Forwarded-For": "203.0.113.5"}
    second = {"X-Forwarded-For": "203.0.113.6"}
    assert wrong_tries(client, LIMIT, proxy, headers=first) == [401] * LIMIT
    assert_throttled(attempt(client, WRONG, proxy, headers=first))
    assert attempt(client, WRONG, proxy, headers=second).status_code == 401
    assert attempt(client, SHARED_PASSWORD, proxy, headers=second).status_code == 303


def test_trusted_proxy_takes_only_the_address_it_appended(proxied_app):
    client = proxied_app.test_client()
    proxy = "10.0.0.1"
    for n in range(LIMIT):
        # The client forges the left part; the proxy appends the real address.
        headers = {"X-Forwarded-For": f"192.0.2.{n}, 203.0.113.5"}
        assert attempt(client, WRONG, proxy, headers=headers).status_code == 401
    forged = {"X-Forwarded-For": "192.0.2.200, 203.0.113.5"}
    assert_throttled(attempt(client, WRONG, proxy, headers=forged))


# --- several server processes ---------------------------------------------------------------


def test_a_second_app_on_the_same_instance_sees_the_same_counts(app_config, client):
    assert wrong_tries(client, LIMIT, CLIENT_A) == [401] * LIMIT
    second = create_app(app_config)
    try:
        assert_throttled(attempt(second.test_client(), WRONG, CLIENT_A))
        assert attempt(second.test_client(), WRONG, CLIENT_B).status_code == 401
    finally:
        with second.app_context():
            db.session.remove()
            db.engine.dispose()


SECOND_PROCESS = textwrap.dedent(
    """
    import json, re, sys
    from portal import create_app

    config, address, count = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    client = create_app(config).test_client()
    statuses = []
    for _ in range(count):
        page = client.get("/access").get_data(as_text=True)
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        response = client.post(
            "/access",
            data={"password": "not-the-password", "csrf_token": token},
            environ_base={"REMOTE_ADDR": address},
        )
        statuses.append(response.status_code)
    print(json.dumps(statuses))
    """
)


def test_wrong_tries_in_another_process_count_here(app_config, client):
    done = subprocess.run(
        [sys.executable, "-c", SECOND_PROCESS, json.dumps(app_config), CLIENT_A, str(LIMIT)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [401] * LIMIT
    assert_throttled(attempt(client, WRONG, CLIENT_A))
