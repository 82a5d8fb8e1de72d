"""The participants' gate: the shared password, the `next` target, cookies, the access window."""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import CSRF_PATTERN, SHARED_PASSWORD, csrf_token, leave_token, login, unlock

from portal import create_app
from portal.extensions import db
from portal.services.accounts import set_shared_password
from portal.services.event import set_access_window

FUTURE_OPENING = dt.datetime(2099, 3, 5, 9, 0, tzinfo=dt.UTC)  # 10:00 in Paris
PAST_CLOSING = dt.datetime(2020, 11, 27, 17, 30, tzinfo=dt.UTC)  # 18:30 in Paris


@pytest.fixture
def english(client):
    client.set_cookie("lang", "en")
    return client


def is_unlocked(client) -> bool:
    """Ask the programme: 200 when this browser is inside, a redirect to the gate otherwise."""
    response = client.get("/")
    if response.status_code == 302:
        assert urlsplit(response.headers["Location"]).path == "/access"
        return False
    assert response.status_code == 200
    return True


def session_cookie(app, response) -> str:
    name = app.config["SESSION_COOKIE_NAME"]
    found = [c for c in response.headers.getlist("Set-Cookie") if c.startswith(f"{name}=")]
    assert found, f"no {name} cookie set"
    return found[-1]


def cookie_attributes(header: str) -> set[str]:
    return {part.strip().lower() for part in header.split(";")[1:]}


def set_window(app, opens=None, closes=None) -> None:
    with app.app_context():
        set_access_window(opens, closes)
        db.session.remove()


# --- the form -------------------------------------------------------------------------------


def test_gate_shows_a_password_form_with_a_csrf_token(client):
    response = client.get("/access")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert re.search(r'<input[^>]*name="password"[^>]*type="password"', page) or re.search(
        r'<input[^>]*type="password"[^>]*name="password"', page
    )
    assert CSRF_PATTERN.search(page)


# --- the right password ---------------------------------------------------------------------


def test_right_password_redirects_303_to_local_next(client):
    token = csrf_token(client)
    response = client.post(
        "/access",
        data={"password": SHARED_PASSWORD, "csrf_token": token, "next": "/sessions/abc?tag=x"},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/sessions/abc?tag=x"
    assert is_unlocked(client)


def test_right_password_without_next_redirects_to_programme(client):
    response = unlock(client)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert is_unlocked(client)


def test_next_survives_the_round_trip_from_a_protected_page(client):
    first = client.get("/sessions/some-session?tag=support")
    assert first.status_code == 302
    gate_url = first.headers["Location"]
    assert parse_qs(urlsplit(gate_url).query)["next"] == ["/sessions/some-session?tag=support"]
    page = client.get(gate_url).get_data(as_text=True)
    token = CSRF_PATTERN.search(page).group(1)
    assert 'name="next" value="/sessions/some-session?tag=support"' in page
    response = client.post(gate_url, data={"password": SHARED_PASSWORD, "csrf_token": token})
    assert response.status_code == 303
    assert response.headers["Location"] == "/sessions/some-session?tag=support"


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "//evil.example/path",
        "///evil.example",
        "https://evil.example",
        "http:/evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "\\/evil.example",
        "/\t/evil.example",
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "/\r\nSet-Cookie: hijack=1",
        "/ok\r\nLocation: https://evil.example",
        "evil.example",
    ],
)
def test_open_redirect_attempts_in_next_fall_back_to_programme(client, target):
    token = csrf_token(client)
    response = client.post(
        "/access", data={"password": SHARED_PASSWORD, "csrf_token": token, "next": target}
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert "hijack" not in " ".join(response.headers.getlist("Set-Cookie"))
    assert is_unlocked(client)


def test_open_redirect_in_query_string_is_not_echoed_into_the_form(client):
    page = client.get("/access?next=//evil.example").get_data(as_text=True)
    # The language link keeps the query (re-checked when used); no link or field points away.
    assert 'href="//evil.example' not in page
    assert 'value="//evil.example' not in page
    assert 'name="next" value="/"' in page


# --- wrong input ----------------------------------------------------------------------------


def test_wrong_password_gets_401_with_the_form_and_an_error(english):
    token = csrf_token(english)
    response = english.post("/access", data={"password": "not-the-password", "csrf_token": token})
    assert response.status_code == 401
    page = response.get_data(as_text=True)
    assert "This password is not the right one." in page
    assert 'name="password"' in page
    assert CSRF_PATTERN.search(page)
    assert 'aria-invalid="true"' in page
    assert "not-the-password" not in page  # the typed password is never echoed back
    assert not is_unlocked(english)


def test_missing_csrf_token_gets_400_and_does_not_unlock(client):
    client.get("/access")
    response = client.post("/access", data={"password": SHARED_PASSWORD})
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert not is_unlocked(client)


def test_bad_csrf_token_gets_400_and_does_not_unlock(client):
    client.get("/access")
    response = client.post(
        "/access", data={"password": SHARED_PASSWORD, "csrf_token": "forged-token"}
    )
    assert response.status_code == 400
    assert not is_unlocked(client)


def test_csrf_token_of_another_browser_gets_400(app, client):
    other = app.test_client()
    foreign_token = csrf_token(other)
    client.get("/access")
    response = client.post(
        "/access", data={"password": SHARED_PASSWORD, "csrf_token": foreign_token}
    )
    assert response.status_code == 400
    assert not is_unlocked(client)


# --- cookies --------------------------------------------------------------------------------


def test_session_cookie_is_httponly_and_samesite_lax(app, client):
    cookie = session_cookie(app, unlock(client))
    attributes = cookie_attributes(cookie)
    assert "httponly" in attributes
    assert "samesite=lax" in attributes


def test_session_cookie_is_secure_over_https(app, client):
    https = "https://localhost"
    page = client.get("/access", base_url=https).get_data(as_text=True)
    token = CSRF_PATTERN.search(page).group(1)
    response = client.post(
        "/access",
        data={"password": SHARED_PASSWORD, "csrf_token": token},
        base_url=https,
        # Over HTTPS, the CSRF check also wants the same-origin Referer browsers send.
        headers={"Referer": f"{https}/access"},
    )
    assert response.status_code == 303
    attributes = cookie_attributes(session_cookie(app, response))
    assert {"secure", "httponly", "samesite=lax"} <= attributes


def test_session_cookie_is_secure_when_a_trusted_proxy_reports_https(app_config, app):
    proxied = create_app({**app_config, "PROXY_FIX": 1})
    try:
        client = proxied.test_client()
        headers = {
            "X-Forwarded-Proto": "https",
            "X-Forwarded-For": "203.0.113.9",
            "Referer": "https://localhost/access",
        }
        page = client.get("/access", headers=headers).get_data(as_text=True)
        token = CSRF_PATTERN.search(page).group(1)
        response = client.post(
            "/access",
            data={"password": SHARED_PASSWORD, "csrf_token": token},
            headers=headers,
            environ_base={"REMOTE_ADDR": "10.0.0.1"},
        )
        assert response.status_code == 303
        assert "secure" in cookie_attributes(session_cookie(proxied, response))
    finally:
        with proxied.app_context():
            db.session.remove()
            db.engine.dispose()


# --- the access window ----------------------------------------------------------------------


def test_before_opening_the_gate_answers_403_with_the_opening_date(app, english):
    token = csrf_token(english)
    set_window(app, opens=FUTURE_OPENING)

    shown = english.get("/access")
    assert shown.status_code == 403
    page = shown.get_data(as_text=True)
    assert "5 March 2099" in page
    assert "10:00" in page  # shown in the event's time zone (Europe/Paris)

    tried = english.post("/access", data={"password": SHARED_PASSWORD, "csrf_token": token})
    assert tried.status_code == 403
    assert "5 March 2099" in tried.get_data(as_text=True)
    assert not is_unlocked(english)


def test_after_closing_the_gate_answers_403_with_the_closing_date(app, english):
    token = csrf_token(english)
    set_window(app, opens=dt.datetime(2020, 11, 20, tzinfo=dt.UTC), closes=PAST_CLOSING)

    shown = english.get("/access")
    assert shown.status_code == 403
    page = shown.get_data(as_text=True)
    assert "27 November 2020" in page
    assert "18:30" in page

    tried = english.post("/access", data={"password": SHARED_PASSWORD, "csrf_token": token})
    assert tried.status_code == 403
    assert "27 November 2020" in tried.get_data(as_text=True)
    assert not is_unlocked(english)


def test_gate_opens_inside_the_window(app, client):
    now = dt.datetime.now(dt.UTC)
    set_window(app, opens=now - dt.timedelta(hours=1), closes=now + dt.timedelta(hours=1))
    assert unlock(client).status_code == 303
    assert is_unlocked(client)


def test_participant_inside_loses_access_when_the_window_closes(app, participant):
    assert is_unlocked(participant)
    set_window(app, closes=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    response = participant.get("/")
    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).path == "/access"


def test_facilitator_can_still_log_in_when_the_window_is_closed(app, client):
    set_window(app, closes=PAST_CLOSING)
    assert login(client).status_code == 303
    assert client.get("/").status_code == 200
    assert client.get("/manage", follow_redirects=True).status_code == 200


# --- rotation and leaving -------------------------------------------------------------------


def test_password_rotation_signs_the_participant_out(app, participant):
    assert is_unlocked(participant)
    with app.app_context():
        set_shared_password("nouveau-mot-2020")
        db.session.remove()
    response = participant.get("/")
    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).path == "/access"


def test_old_password_stops_working_after_rotation(app, client):
    with app.app_context():
        set_shared_password("nouveau-mot-2020")
        db.session.remove()
    assert unlock(client, SHARED_PASSWORD).status_code == 401
    assert not is_unlocked(client)
    assert unlock(client, "nouveau-mot-2020").status_code == 303
    assert is_unlocked(client)


def test_leave_signs_the_participant_out(participant):
    page = participant.get("/").get_data(as_text=True)
    # A link to a page that asks to confirm: the programme itself holds no form token.
    assert 'href="/leave"' in page and "csrf_token" not in page
    confirm = participant.get("/leave", headers={"Accept-Language": "fr"})
    assert confirm.status_code == 200
    assert "Quitter le portail\u00a0?" in confirm.get_data(as_text=True)
    assert is_unlocked(participant)  # asking is not leaving
    response = participant.post("/leave", data={"csrf_token": leave_token(participant)})
    assert response.status_code == 303
    assert urlsplit(response.headers["Location"]).path == "/access"
    assert not is_unlocked(participant)


def test_a_facilitator_on_the_leave_page_signs_out_from_it(client):
    assert login(client).status_code == 303
    page = client.get("/leave").get_data(as_text=True)
    assert 'action="/logout"' in page
    response = client.post("/logout", data={"csrf_token": CSRF_PATTERN.search(page).group(1)})
    assert response.status_code == 303
    assert client.get("/manage").status_code == 302


def test_the_leave_page_sends_everyone_else_to_the_gate(client):
    response = client.get("/leave")
    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).path == "/access"


def test_leave_without_csrf_token_gets_400_and_keeps_the_participant_inside(participant):
    response = participant.post("/leave")
    assert response.status_code == 400
    assert is_unlocked(participant)
