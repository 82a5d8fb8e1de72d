"""The administrators' pages: /manage/settings and /manage/facilitators."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from conftest import (
    ADMIN_EMAIL,
    FACILITATOR_EMAIL,
    SHARED_PASSWORD,
    count_rows,
    csrf_token,
    login,
    unlock,
)

from portal.extensions import db
from portal.models import Event, Facilitator

UTC = dt.UTC
NEW_PASSWORD = "#Nouveau2021"
PAST = "2000-01-01T00:00"
FUTURE = "2999-01-01T00:00"


@pytest.fixture
def boss(admin):
    admin.set_cookie("lang", "en")
    return admin


def settings_form(**fields) -> dict:
    return {
        "title": "Session nationale",
        "description": "",
        "starts_on": "",
        "ends_on": "",
        "access_opens": "",
        "access_closes": "",
        "password": "",
        "password_confirm": "",
        **fields,
    }


def post_settings(client, **fields):
    data = settings_form(**fields)
    data.setdefault("csrf_token", csrf_token(client, "/manage/settings"))
    return client.post("/manage/settings", data=data)


def event(app) -> dict:
    with app.app_context():
        found = db.session.get(Event, 1)
        return {
            "title": found.title,
            "description": found.description,
            "starts_on": found.starts_on,
            "ends_on": found.ends_on,
            "access_opens": found.access_opens,
            "access_closes": found.access_closes,
            "shared_password_hash": found.shared_password_hash,
            "password_version": found.password_version,
        }


def account(app, email: str) -> dict | None:
    with app.app_context():
        found = db.session.scalars(db.select(Facilitator).where(Facilitator.email == email)).first()
        if found is None:
            return None
        return {
            "id": found.id,
            "name": found.name,
            "enabled": found.enabled,
            "is_admin": found.is_admin,
        }


def field_error(page: str, field: str) -> str | None:
    match = re.search(rf'<p class="error" id="{field}-error">(.*?)</p>', page, re.S)
    return match.group(1).strip() if match else None


def new_participant(app):
    client = app.test_client()
    client.set_cookie("lang", "en")
    return client


def try_unlock(client, password: str = SHARED_PASSWORD):
    """Type the password at the gate, with a token from a page that is never closed."""
    token = csrf_token(client, "/login")
    return client.post("/access", data={"password": password, "csrf_token": token})


def is_unlocked(client) -> bool:
    response = client.get("/")
    if response.status_code == 200:
        return True
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/access")
    return False


def can_manage(client) -> bool:
    response = client.get("/manage/")
    if response.status_code == 200:
        return True
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")
    return False


# --- event details --------------------------------------------------------------------


def test_settings_page_shows_every_field_with_a_label(boss):
    response = boss.get("/manage/settings")
    assert response.status_code == 200
    page = response.text
    for name in (
        "title",
        "description",
        "starts_on",
        "ends_on",
        "access_opens",
        "access_closes",
        "password",
        "password_confirm",
    ):
        assert f'<label for="{name}">' in page, name
    assert re.search(
        r'name="access_opens"[^>]*type="datetime-local"|type="datetime-local"'
        r'[^>]*name="access_opens"',
        page,
    )
    assert 'type="password"' in page


def test_settings_change_the_title_description_and_dates(app, boss):
    response = post_settings(
        boss,
        title="Session nationale 2020",
        description="Une semaine en ligne",
        starts_on="2020-11-21",
        ends_on="2020-11-27",
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/manage/settings"
    saved = event(app)
    assert saved["title"] == "Session nationale 2020"
    assert saved["description"] == "Une semaine en ligne"
    assert saved["starts_on"] == dt.date(2020, 11, 21)
    assert saved["ends_on"] == dt.date(2020, 11, 27)
    programme = boss.get("/").text
    assert "<h1>Session nationale 2020</h1>" in programme
    assert "Une semaine en ligne" in programme


def test_settings_with_last_day_before_first_day_are_refused_and_change_nothing(app, boss):
    before = event(app)
    response = post_settings(
        boss,
        title="Autre titre",
        starts_on="2020-11-27",
        ends_on="2020-11-21",
        access_opens="2020-11-21T08:00",
    )
    assert response.status_code == 400
    assert field_error(response.text, "ends_on")
    assert event(app) == before


def test_settings_without_a_title_are_refused_and_change_nothing(app, boss):
    before = event(app)
    response = post_settings(boss, title="", description="Changée")
    assert response.status_code == 400
    assert field_error(response.text, "title")
    assert event(app) == before


def test_settings_without_csrf_token_are_refused_and_change_nothing(app, boss):
    before = event(app)
    response = boss.post("/manage/settings", data=settings_form(title="Piraté"))
    assert response.status_code == 400
    assert event(app) == before


# --- access window --------------------------------------------------------------------


def test_access_window_is_read_in_europe_paris_and_stored_in_utc(app, boss):
    response = post_settings(
        boss, access_opens="2020-11-21T08:00", access_closes="2020-11-28T20:00"
    )
    assert response.status_code == 303
    saved = event(app)
    assert saved["access_opens"] == dt.datetime(2020, 11, 21, 7, 0, tzinfo=UTC)
    assert saved["access_closes"] == dt.datetime(2020, 11, 28, 19, 0, tzinfo=UTC)
    page = boss.get("/manage/settings").text
    assert 'value="2020-11-21T08:00"' in page
    assert 'value="2020-11-28T20:00"' in page


def test_window_not_yet_open_closes_the_gate_but_not_the_login(app, boss):
    assert post_settings(boss, access_opens=FUTURE).status_code == 303
    visitor = new_participant(app)
    closed = visitor.get("/access")
    assert closed.status_code == 403
    assert 'name="password"' not in closed.text
    assert try_unlock(visitor).status_code == 403
    assert not is_unlocked(visitor)

    facilitator = app.test_client()
    assert login(facilitator).status_code == 303
    assert can_manage(facilitator)
    assert facilitator.get("/").status_code == 200


def test_closed_window_refuses_the_password_and_signs_participants_out(app, boss):
    inside = new_participant(app)
    assert unlock(inside).status_code == 303
    assert is_unlocked(inside)

    assert post_settings(boss, access_closes=PAST).status_code == 303
    assert not is_unlocked(inside)
    late = new_participant(app)
    assert try_unlock(late).status_code == 403
    assert not is_unlocked(late)
    facilitator = app.test_client()
    assert login(facilitator).status_code == 303
    assert can_manage(facilitator)


def test_clearing_the_window_reopens_the_gate(app, boss):
    assert post_settings(boss, access_opens=FUTURE).status_code == 303
    assert try_unlock(new_participant(app)).status_code == 403
    assert post_settings(boss, access_opens="", access_closes="").status_code == 303
    saved = event(app)
    assert saved["access_opens"] is None and saved["access_closes"] is None
    visitor = new_participant(app)
    assert unlock(visitor).status_code == 303
    assert is_unlocked(visitor)


def test_window_that_closes_before_it_opens_is_refused_and_changes_nothing(app, boss):
    before = event(app)
    response = post_settings(
        boss,
        title="Titre qui ne doit pas changer",
        access_opens="2020-11-28T10:00",
        access_closes="2020-11-21T10:00",
        password=NEW_PASSWORD,
        password_confirm=NEW_PASSWORD,
    )
    assert response.status_code == 400
    assert field_error(response.text, "access_closes") == (
        "The closing date must come after the opening date."
    )
    assert event(app) == before
    assert unlock(new_participant(app)).status_code == 303


def test_window_with_a_bad_date_is_refused_and_changes_nothing(app, boss):
    before = event(app)
    response = post_settings(boss, title="Autre", access_opens="demain")
    assert response.status_code == 400
    assert field_error(response.text, "access_opens")
    assert event(app) == before


# --- shared password ------------------------------------------------------------------


def test_changing_the_shared_password_signs_participants_out(app, boss):
    inside = new_participant(app)
    assert unlock(inside).status_code == 303
    assert is_unlocked(inside)

    response = post_settings(boss, password=NEW_PASSWORD, password_confirm=NEW_PASSWORD)
    assert response.status_code == 303
    assert not is_unlocked(inside)
    assert unlock(new_participant(app), SHARED_PASSWORD).status_code == 401
    newcomer = new_participant(app)
    assert unlock(newcomer, NEW_PASSWORD).status_code == 303
    assert is_unlocked(newcomer)
    # The admin's own session is personal and survives.
    assert can_manage(boss)


def test_saving_settings_without_a_password_keeps_participants_in(app, boss):
    inside = new_participant(app)
    assert unlock(inside).status_code == 303
    before = event(app)
    assert post_settings(boss, title="Nouveau titre").status_code == 303
    assert event(app)["password_version"] == before["password_version"]
    assert event(app)["shared_password_hash"] == before["shared_password_hash"]
    assert is_unlocked(inside)


def test_mismatched_password_confirmation_is_refused_and_keeps_the_old_password(app, boss):
    inside = new_participant(app)
    assert unlock(inside).status_code == 303
    before = event(app)
    response = post_settings(boss, password=NEW_PASSWORD, password_confirm=NEW_PASSWORD + "x")
    assert response.status_code == 400
    assert field_error(response.text, "password_confirm") == "The two passwords differ."
    assert event(app) == before
    assert is_unlocked(inside)
    assert unlock(new_participant(app), SHARED_PASSWORD).status_code == 303
    assert unlock(new_participant(app), NEW_PASSWORD).status_code == 401


def test_too_short_shared_password_is_refused(app, boss):
    before = event(app)
    response = post_settings(boss, password="court", password_confirm="court")
    assert response.status_code == 400
    assert field_error(response.text, "password")
    assert event(app) == before


def test_shared_password_is_stored_only_as_a_hash(app, boss):
    post_settings(boss, password=NEW_PASSWORD, password_confirm=NEW_PASSWORD)
    stored = event(app)["shared_password_hash"]
    assert NEW_PASSWORD not in stored
    assert stored.startswith("$argon2")


# --- facilitator accounts -------------------------------------------------------------


def post_account(client, **fields):
    data = {"email": "nouvelle@example.org", "name": "Nouvelle", "password": "motdepasse-1"}
    data.update(fields)
    data.setdefault("csrf_token", csrf_token(client, "/manage/facilitators"))
    return client.post("/manage/facilitators", data=data)


def post_rights(client, account_id: int, *, enabled: bool, is_admin: bool, **extra):
    data = {"csrf_token": csrf_token(client, "/manage/facilitators"), **extra}
    if enabled:
        data["enabled"] = "y"
    if is_admin:
        data["is_admin"] = "y"
    return client.post(f"/manage/facilitators/{account_id}", data=data)


def test_facilitators_page_lists_the_accounts(boss):
    response = boss.get("/manage/facilitators")
    assert response.status_code == 200
    assert FACILITATOR_EMAIL in response.text
    assert ADMIN_EMAIL in response.text
    assert '<label for="email">' in response.text


def test_admin_creates_an_account_that_can_then_log_in(app, boss):
    response = post_account(boss, email="Nouvelle@Example.org")
    assert response.status_code == 303
    created = account(app, "nouvelle@example.org")
    assert created == {"id": created["id"], "name": "Nouvelle", "enabled": True, "is_admin": False}
    newcomer = app.test_client()
    assert login(newcomer, "nouvelle@example.org", "motdepasse-1").status_code == 303
    assert can_manage(newcomer)
    assert newcomer.get("/manage/settings").status_code == 403


def test_admin_creates_an_admin_account(app, boss):
    assert post_account(boss, is_admin="y").status_code == 303
    assert account(app, "nouvelle@example.org")["is_admin"] is True
    newcomer = app.test_client()
    assert login(newcomer, "nouvelle@example.org", "motdepasse-1").status_code == 303
    assert newcomer.get("/manage/settings").status_code == 200


@pytest.mark.parametrize("email", [FACILITATOR_EMAIL, "ANIM@example.org", " anim@EXAMPLE.org "])
def test_duplicate_email_is_refused(app, boss, email):
    response = post_account(boss, email=email, password="autre-mot-de-passe")
    assert response.status_code == 400
    assert field_error(response.text, "email") == (
        "An account with this e-mail address already exists."
    )
    assert count_rows(app, Facilitator) == 2
    # The existing account keeps its password.
    assert login(app.test_client()).status_code == 303


@pytest.mark.parametrize(
    "fields",
    [
        {"email": "not-an-email"},
        {"email": ""},
        {"password": "court"},
        {"password": ""},
    ],
)
def test_invalid_account_fields_are_refused(app, boss, fields):
    response = post_account(boss, **fields)
    assert response.status_code == 400
    assert 'class="error"' in response.text
    assert count_rows(app, Facilitator) == 2


def test_account_creation_without_csrf_token_is_refused(app, boss):
    response = boss.post(
        "/manage/facilitators",
        data={"email": "x@example.org", "name": "", "password": "motdepasse-1"},
    )
    assert response.status_code == 400
    assert count_rows(app, Facilitator) == 2


def test_disabling_an_account_ends_its_session_and_its_logins(app, boss):
    target = account(app, FACILITATOR_EMAIL)
    signed_in = app.test_client()
    assert login(signed_in).status_code == 303
    assert can_manage(signed_in)

    response = post_rights(boss, target["id"], enabled=False, is_admin=False)
    assert response.status_code == 303
    assert account(app, FACILITATOR_EMAIL)["enabled"] is False
    assert not can_manage(signed_in)
    assert login(app.test_client()).status_code == 401


def test_reenabling_an_account_lets_it_log_in_again(app, boss):
    target = account(app, FACILITATOR_EMAIL)
    post_rights(boss, target["id"], enabled=False, is_admin=False)
    assert post_rights(boss, target["id"], enabled=True, is_admin=False).status_code == 303
    assert login(app.test_client()).status_code == 303


def test_granting_admin_opens_the_admin_pages(app, boss):
    target = account(app, FACILITATOR_EMAIL)
    promoted = app.test_client()
    assert login(promoted).status_code == 303
    assert promoted.get("/manage/settings").status_code == 403

    assert post_rights(boss, target["id"], enabled=True, is_admin=True).status_code == 303
    assert account(app, FACILITATOR_EMAIL)["is_admin"] is True
    assert promoted.get("/manage/settings").status_code == 200
    assert promoted.get("/manage/facilitators").status_code == 200


def test_an_admin_cannot_disable_themselves(app, boss):
    me = account(app, ADMIN_EMAIL)
    response = post_rights(boss, me["id"], enabled=False, is_admin=True)
    assert response.status_code == 400
    assert "You cannot disable your own account or remove your own rights." in response.text
    assert account(app, ADMIN_EMAIL) == me
    assert boss.get("/manage/settings").status_code == 200


def test_an_admin_cannot_remove_their_own_admin_flag(app, boss):
    me = account(app, ADMIN_EMAIL)
    response = post_rights(boss, me["id"], enabled=True, is_admin=False)
    assert response.status_code == 400
    assert account(app, ADMIN_EMAIL) == me


def test_rights_change_without_csrf_token_is_refused(app, boss):
    target = account(app, FACILITATOR_EMAIL)
    response = boss.post(f"/manage/facilitators/{target['id']}", data={"is_admin": "y"})
    assert response.status_code == 400
    assert account(app, FACILITATOR_EMAIL) == target


def test_rights_change_on_an_unknown_account_gets_404(app, boss):
    response = post_rights(boss, 9999, enabled=True, is_admin=True)
    assert response.status_code == 404
    assert count_rows(app, Facilitator) == 2


def test_get_on_the_rights_route_is_not_allowed(app, boss):
    target = account(app, FACILITATOR_EMAIL)
    assert boss.get(f"/manage/facilitators/{target['id']}").status_code == 405


def test_passwords_of_accounts_are_stored_only_as_hashes(app, boss):
    post_account(boss)
    with app.app_context():
        stored = db.session.scalars(
            db.select(Facilitator.password_hash).where(Facilitator.email == "nouvelle@example.org")
        ).one()
    assert "motdepasse-1" not in stored
    assert stored.startswith("$argon2")
