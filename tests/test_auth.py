"""Facilitators' login and logout, and who may enter /manage (SPEC sections 1 and 4)."""

from __future__ import annotations

import re

import pytest
from conftest import (
    ACCOUNT_PASSWORD,
    ADMIN_EMAIL,
    FACILITATOR_EMAIL,
    SHARED_PASSWORD,
    csrf_token,
    login,
)

from portal.extensions import db
from portal.models import Facilitator

SESSION_COOKIE = "portal_session"
WRONG_CREDENTIALS = "Wrong e-mail or password."


def english(client):
    client.set_cookie("lang", "en")
    return client


def post_login(client, email=FACILITATOR_EMAIL, password=ACCOUNT_PASSWORD, **extra):
    token = csrf_token(client, "/login")
    data = {"email": email, "password": password, "csrf_token": token, **extra}
    return client.post("/login", data=data)


def location_path(response) -> str:
    return response.headers["Location"]


def can_reach_manage(client) -> bool:
    response = client.get("/manage/")
    if response.status_code == 200:
        return True
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")
    return False


def password_error(response) -> str:
    match = re.search(r'<p class="error" id="password-error">(.*?)</p>', response.text, re.S)
    assert match, "no error next to the password field"
    return match.group(1).strip()


def set_enabled(app, email: str, enabled: bool) -> None:
    with app.app_context():
        account = db.session.scalars(db.select(Facilitator).where(Facilitator.email == email)).one()
        account.enabled = enabled
        db.session.commit()


# --- the login form -------------------------------------------------------------------


def test_login_page_shows_a_form_with_email_password_and_csrf(client):
    response = english(client).get("/login")
    assert response.status_code == 200
    page = response.text
    assert 'name="email"' in page
    assert 'name="password"' in page
    assert 'type="password"' in page
    assert 'name="csrf_token"' in page
    assert 'method="post"' in page


def test_right_credentials_redirect_to_manage_with_303(client):
    response = post_login(client)
    assert response.status_code == 303
    assert location_path(response).rstrip("/") == "/manage"
    assert can_reach_manage(client)


def test_right_credentials_redirect_to_a_local_next(client):
    response = post_login(client, next="/manage/upload?session=")
    assert response.status_code == 303
    assert location_path(response) == "/manage/upload?session="


def test_next_given_in_the_query_string_is_followed(client):
    token = csrf_token(client, "/login")
    response = client.post(
        "/login?next=/manage/sessions/new",
        data={"email": FACILITATOR_EMAIL, "password": ACCOUNT_PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 303
    assert location_path(response) == "/manage/sessions/new"


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "//evil.example/manage",
        "https://evil.example",
        "https://evil.example/manage",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "evil.example",
        "https:evil.example",
        " //evil.example",
        "/\t/evil.example",
        "/\r\nLocation: https://evil.example",
    ],
)
def test_open_redirects_in_next_are_refused(client, target):
    response = post_login(client, next=target)
    assert response.status_code == 303
    assert location_path(response).rstrip("/") == "/manage"
    assert "evil" not in location_path(response)


def test_login_form_does_not_carry_a_foreign_next(client):
    page = english(client).get("/login?next=https://evil.example").text
    assert "evil.example" not in page


def test_wrong_password_gets_401_and_a_generic_message(client):
    response = post_login(english(client), password="not-the-password")
    assert response.status_code == 401
    assert password_error(response) == WRONG_CREDENTIALS
    assert not can_reach_manage(client)


def test_unknown_email_gets_the_same_401_and_message_as_a_wrong_password(client):
    english(client)
    wrong_password = post_login(client, password="not-the-password")
    unknown_email = post_login(client, email="nobody@example.org")
    assert unknown_email.status_code == wrong_password.status_code == 401
    assert password_error(unknown_email) == password_error(wrong_password) == WRONG_CREDENTIALS
    assert not can_reach_manage(client)


def test_email_is_case_insensitive_and_trimmed(client):
    response = post_login(client, email="  ANIM@Example.ORG ")
    assert response.status_code == 303
    assert can_reach_manage(client)


def test_password_is_case_sensitive(client):
    response = post_login(client, password=ACCOUNT_PASSWORD.upper())
    assert response.status_code == 401
    assert not can_reach_manage(client)


def test_disabled_account_cannot_log_in(app, client):
    set_enabled(app, FACILITATOR_EMAIL, False)
    response = post_login(english(client))
    assert response.status_code == 401
    assert password_error(response) == WRONG_CREDENTIALS
    assert not can_reach_manage(client)


def test_login_without_csrf_token_is_refused_with_400(client):
    response = client.post(
        "/login", data={"email": FACILITATOR_EMAIL, "password": ACCOUNT_PASSWORD}
    )
    assert response.status_code == 400
    assert not can_reach_manage(client)


def test_login_with_a_forged_csrf_token_is_refused_with_400(client):
    client.get("/login")
    response = client.post(
        "/login",
        data={"email": FACILITATOR_EMAIL, "password": ACCOUNT_PASSWORD, "csrf_token": "forged"},
    )
    assert response.status_code == 400
    assert not can_reach_manage(client)


def test_participant_password_does_not_open_the_facilitators_login(client):
    response = post_login(client, password=SHARED_PASSWORD)
    assert response.status_code == 401


# --- logout ---------------------------------------------------------------------------


def test_logout_ends_the_session(facilitator):
    token = csrf_token(facilitator, "/manage/upload")
    response = facilitator.post("/logout", data={"csrf_token": token})
    assert response.status_code == 303
    assert location_path(response).startswith("/login")
    assert not can_reach_manage(facilitator)


def test_logout_without_csrf_token_is_refused_and_keeps_the_session(facilitator):
    response = facilitator.post("/logout")
    assert response.status_code == 400
    assert can_reach_manage(facilitator)


def test_get_logout_is_not_allowed(facilitator):
    response = facilitator.get("/logout")
    assert response.status_code == 405
    assert can_reach_manage(facilitator)


def test_a_cookie_saved_before_logout_is_refused_afterwards(facilitator):
    saved = facilitator.get_cookie(SESSION_COOKIE).value
    token = csrf_token(facilitator, "/manage/upload")
    assert facilitator.post("/logout", data={"csrf_token": token}).status_code == 303
    facilitator.set_cookie(SESSION_COOKIE, saved)
    assert not can_reach_manage(facilitator)


def test_logout_signs_the_facilitator_out_of_every_browser(app, facilitator):
    other = app.test_client()
    assert login(other).status_code == 303
    token = csrf_token(facilitator, "/manage/upload")
    facilitator.post("/logout", data={"csrf_token": token})
    assert not can_reach_manage(other)


# --- who may enter /manage -------------------------------------------------------------

MANAGE_PAGES = [
    "/manage/",
    "/manage/upload",
    "/manage/sessions/new",
    "/manage/documents/1/edit",
    "/manage/settings",
    "/manage/facilitators",
]


@pytest.mark.parametrize("path", MANAGE_PAGES)
def test_anonymous_visitor_on_manage_is_sent_to_login(client, path):
    response = client.get(path)
    assert response.status_code in (302, 303)
    assert location_path(response).startswith("/login")


@pytest.mark.parametrize("path", MANAGE_PAGES)
def test_participant_on_manage_is_sent_to_login(participant, path):
    response = participant.get(path)
    assert response.status_code in (302, 303)
    assert location_path(response).startswith("/login")


def test_redirect_to_login_keeps_the_requested_page_as_next(client):
    response = client.get("/manage/upload")
    assert response.headers["Location"].startswith("/login?next=")
    assert "%2Fmanage%2Fupload" in response.headers["Location"] or (
        "/manage/upload" in response.headers["Location"]
    )


def test_anonymous_post_to_manage_is_sent_to_login(client):
    response = client.post("/manage/sessions/new", data={"title": "X"})
    assert response.status_code in (302, 303)
    assert location_path(response).startswith("/login")


def test_participant_is_still_unlocked_but_not_a_facilitator(participant):
    assert participant.get("/").status_code == 200
    assert participant.get("/manage/").status_code == 302


@pytest.mark.parametrize("path", ["/manage/settings", "/manage/facilitators"])
def test_non_admin_facilitator_gets_403_on_admin_pages(facilitator, path):
    assert facilitator.get(path).status_code == 403


@pytest.mark.parametrize("path", ["/manage/settings", "/manage/facilitators"])
def test_non_admin_facilitator_cannot_post_to_admin_pages(app, facilitator, path):
    token = csrf_token(facilitator, "/manage/upload")
    response = facilitator.post(
        path,
        data={
            "csrf_token": token,
            "title": "Taken over",
            "email": "intruder@example.org",
            "password": "intruder-pass",
        },
    )
    assert response.status_code == 403
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(Facilitator)) == 2


def test_non_admin_facilitator_cannot_change_account_rights(app, facilitator):
    with app.app_context():
        own_id = db.session.scalars(
            db.select(Facilitator.id).where(Facilitator.email == FACILITATOR_EMAIL)
        ).one()
    token = csrf_token(facilitator, "/manage/upload")
    response = facilitator.post(
        f"/manage/facilitators/{own_id}",
        data={"csrf_token": token, "enabled": "y", "is_admin": "y"},
    )
    assert response.status_code == 403
    with app.app_context():
        assert not db.session.get(Facilitator, own_id).is_admin


def test_admin_reaches_admin_pages(admin):
    assert admin.get("/manage/settings").status_code == 200
    assert admin.get("/manage/facilitators").status_code == 200


def test_a_disabled_facilitators_existing_session_stops_working(app, facilitator):
    assert can_reach_manage(facilitator)
    set_enabled(app, FACILITATOR_EMAIL, False)
    assert not can_reach_manage(facilitator)
    response = facilitator.get("/manage/upload")
    assert response.status_code == 302


def test_admin_login_works_like_any_facilitator(client):
    assert login(client, ADMIN_EMAIL).status_code == 303
    assert can_reach_manage(client)


def test_facilitator_can_see_the_programme_without_the_shared_password(facilitator):
    assert facilitator.get("/").status_code == 200
