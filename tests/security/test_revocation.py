"""Revocation: a saved session cookie stops working when it should (issue 4, SPEC §1 and §4).

A cookie is copied (its value, as an attacker or a forgotten browser tab would keep it) and
replayed in a fresh browser after: the facilitator's logout, a change of the shared password,
the facilitator's account being disabled by an admin, and the session lifetime
(``PERMANENT_SESSION_LIFETIME``). It must be refused: a participant's cookie is sent to
``/access``, a facilitator's to ``/login``, and nothing it asks to change is changed.

``tests/test_auth.py``, ``test_gate.py`` and ``test_admin.py`` check that the same browser is
signed out; here the copy is replayed on every kind of page, with its CSRF token, after the
account was re-enabled or the password set back, and across time.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import itsdangerous.timed
import pytest
from conftest import (
    ACCOUNT_PASSWORD,
    ADMIN_EMAIL,
    FACILITATOR_EMAIL,
    FORM_PAGE,
    PDF_BYTES,
    SHARED_PASSWORD,
    app_variant,
    app_with_form_page,
    csrf_token,
    login,
    unlock,
)
from flask import Flask, request
from flask.testing import FlaskClient

from portal import create_app
from portal.extensions import db
from portal.models import Document, Event, Facilitator
from portal.services.accounts import create_facilitator

SESSION_COOKIE = "portal_session"
NEW_PASSWORD = "nouveau-mot-2020"


# --- helpers ------------------------------------------------------------------------------------


def saved_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie(SESSION_COOKIE)
    assert cookie is not None, "no session cookie to save"
    return cookie.value


def replay(app: Flask, value: str) -> FlaskClient:
    """A fresh browser that holds nothing but the saved cookie."""
    browser = app.test_client()
    browser.set_cookie(SESSION_COOKIE, value)
    return browser


def get(client: FlaskClient, path: str):
    response = client.get(path)
    response.get_data()
    response.close()
    return response


def assert_sent_to(response, target: str, path: str) -> None:
    """A 302/303 to ``target`` (``/access`` or ``/login``) that keeps ``path`` as ``next``."""
    assert response.status_code in (302, 303), (path, response.status_code)
    parts = urlsplit(response.headers["Location"])
    assert parts.path == target, (path, response.headers["Location"])
    assert parse_qs(parts.query).get("next") == [path], (path, response.headers["Location"])


def account_id(app: Flask, email: str) -> int:
    with app.app_context():
        found = db.session.scalars(db.select(Facilitator.id).where(Facilitator.email == email))
        return found.one()


def documents(app: Flask) -> list[tuple[int, str, str]]:
    with app.app_context():
        rows = db.session.scalars(db.select(Document).order_by(Document.id)).all()
        return [(d.id, d.title, d.sha256) for d in rows]


def password_version(app: Flask) -> int:
    with app.app_context():
        return db.session.scalars(db.select(Event)).one().password_version


def signed_in_browser(app: Flask, email: str) -> FlaskClient:
    browser = app.test_client()
    assert login(browser, email).status_code == 303
    assert get(browser, "/manage").status_code == 200
    return browser


def unlocked_browser(app: Flask) -> FlaskClient:
    browser = app.test_client()
    assert unlock(browser).status_code == 303
    assert get(browser, "/").status_code == 200
    return browser


def change_rights(admin: FlaskClient, target_id: int, **rights: bool) -> None:
    """What the admin's form sends: a missing box is an unticked box."""
    data = {"csrf_token": csrf_token(admin, "/manage/facilitators")}
    data.update({name: "y" for name, ticked in rights.items() if ticked})
    response = admin.post(f"/manage/facilitators/{target_id}", data=data)
    assert response.status_code == 303, response.status_code


def change_shared_password(admin: FlaskClient, password: str) -> None:
    response = admin.post(
        "/manage/settings",
        data={
            "csrf_token": csrf_token(admin, "/manage/settings"),
            "title": "Session nationale",
            "description": "",
            "password": password,
            "password_confirm": password,
        },
    )
    assert response.status_code == 303, response.status_code


def logout(browser: FlaskClient) -> None:
    response = browser.post("/logout", data={"csrf_token": csrf_token(browser, "/manage/upload")})
    assert response.status_code == 303


@pytest.fixture
def world(make_meeting, make_document):
    meeting = make_meeting("Ouverture")
    document = make_document("support.pdf", meeting=meeting)
    return meeting, document


def participant_pages(world) -> list[str]:
    meeting, document = world
    return [
        "/",
        f"/sessions/{meeting.slug}",
        f"/documents/{document.id}/{document.original_name}",
        f"/sessions/{meeting.slug}/archive.zip",
    ]


def facilitator_pages(world) -> list[str]:
    meeting, document = world
    return [
        "/manage",
        "/manage/upload",
        f"/manage/documents/{document.id}/edit",
        "/manage/sessions/new",
        f"/manage/sessions/{meeting.id}/edit",
    ]


def assert_participant_cookie_refused(browser: FlaskClient, world) -> None:
    for path in participant_pages(world):
        response = get(browser, path)
        assert_sent_to(response, "/access", path)
        assert PDF_BYTES not in response.data


def assert_facilitator_cookie_refused(browser: FlaskClient, world, admin: bool = False) -> None:
    pages = facilitator_pages(world) + (
        ["/manage/settings", "/manage/facilitators"] if admin else []
    )
    for path in pages:
        assert_sent_to(get(browser, path), "/login", path)
    # Without the shared password a former facilitator is a stranger on the programme too.
    assert_sent_to(get(browser, "/"), "/access", "/")


def assert_cannot_delete(app: Flask, browser: FlaskClient, token: str, world) -> None:
    """The saved cookie and the CSRF token that went with it change nothing."""
    _, document = world
    before = documents(app)
    path = f"/manage/documents/{document.id}/delete"
    response = browser.post(path, data={"csrf_token": token})
    assert_sent_to(response, "/login", path)
    upload = browser.post(
        "/manage/upload",
        data={"csrf_token": token, "files": (io.BytesIO(PDF_BYTES), "late.pdf"), "session": ""},
    )
    assert_sent_to(upload, "/login", "/manage/upload")
    assert documents(app) == before


# --- logout ---------------------------------------------------------------------------------------


def test_cookie_saved_before_logout_is_refused_everywhere_in_a_fresh_browser(app, world):
    browser = signed_in_browser(app, FACILITATOR_EMAIL)
    token = csrf_token(browser, "/manage/upload")
    saved = saved_cookie(browser)
    logout(browser)

    thief = replay(app, saved)
    assert_facilitator_cookie_refused(thief, world)
    assert_cannot_delete(app, thief, token, world)


def test_logging_in_again_does_not_revive_a_cookie_saved_before_logout(app, world):
    browser = signed_in_browser(app, FACILITATOR_EMAIL)
    saved = saved_cookie(browser)
    logout(browser)
    signed_in_browser(app, FACILITATOR_EMAIL)  # the owner comes back, elsewhere
    assert_facilitator_cookie_refused(replay(app, saved), world)


def test_admin_cookie_saved_before_logout_cannot_change_the_shared_password(app, world):
    admin = signed_in_browser(app, ADMIN_EMAIL)
    token = csrf_token(admin, "/manage/settings")
    saved = saved_cookie(admin)
    version = password_version(app)
    logout(admin)

    thief = replay(app, saved)
    assert_facilitator_cookie_refused(thief, world, admin=True)
    response = thief.post(
        "/manage/settings",
        data={
            "csrf_token": token,
            "title": "Taken over",
            "password": "attacker-chosen",
            "password_confirm": "attacker-chosen",
        },
    )
    assert_sent_to(response, "/login", "/manage/settings")
    assert password_version(app) == version
    assert unlock(app.test_client(), SHARED_PASSWORD).status_code == 303


# --- shared password change -----------------------------------------------------------------------


def test_participant_cookie_saved_before_a_password_change_is_refused_everywhere(app, world):
    participant = unlocked_browser(app)
    saved = saved_cookie(participant)
    change_shared_password(signed_in_browser(app, ADMIN_EMAIL), NEW_PASSWORD)

    assert_participant_cookie_refused(replay(app, saved), world)
    assert_participant_cookie_refused(participant, world)


def test_setting_the_old_password_back_does_not_revive_old_cookies(app, world):
    participant = unlocked_browser(app)
    saved = saved_cookie(participant)
    admin = signed_in_browser(app, ADMIN_EMAIL)
    change_shared_password(admin, NEW_PASSWORD)
    change_shared_password(admin, SHARED_PASSWORD)

    assert_participant_cookie_refused(replay(app, saved), world)
    # The participant types the (same old) password again, and is in.
    assert unlock(participant).status_code == 303
    assert get(participant, "/").status_code == 200


def test_a_password_change_signs_out_participants_only(app, world):
    """Facilitators have their own accounts: rotating the shared password keeps them in."""
    facilitator = signed_in_browser(app, FACILITATOR_EMAIL)
    admin = signed_in_browser(app, ADMIN_EMAIL)
    change_shared_password(admin, NEW_PASSWORD)
    assert get(facilitator, "/manage").status_code == 200
    assert get(facilitator, "/").status_code == 200
    assert get(admin, "/manage/settings").status_code == 200


# --- disabled accounts ----------------------------------------------------------------------------


def test_cookie_saved_before_an_account_is_disabled_is_refused(app, world):
    facilitator = signed_in_browser(app, FACILITATOR_EMAIL)
    token = csrf_token(facilitator, "/manage/upload")
    saved = saved_cookie(facilitator)
    admin = signed_in_browser(app, ADMIN_EMAIL)
    change_rights(admin, account_id(app, FACILITATOR_EMAIL))  # no `enabled`: disabled

    for browser in (replay(app, saved), facilitator):
        assert_facilitator_cookie_refused(browser, world)
        assert_cannot_delete(app, browser, token, world)


def test_reenabling_an_account_does_not_revive_cookies_saved_before_it_was_disabled(app, world):
    saved = saved_cookie(signed_in_browser(app, FACILITATOR_EMAIL))
    admin = signed_in_browser(app, ADMIN_EMAIL)
    target = account_id(app, FACILITATOR_EMAIL)
    change_rights(admin, target)
    change_rights(admin, target, enabled=True)

    assert_facilitator_cookie_refused(replay(app, saved), world)
    # The owner signs in again and works.
    signed_in_browser(app, FACILITATOR_EMAIL)


def test_cookie_of_a_disabled_admin_opens_no_admin_page(app, world):
    second_admin = "admin2@example.org"
    with app.app_context():
        create_facilitator(second_admin, ACCOUNT_PASSWORD, is_admin=True)
        db.session.remove()
    saved = saved_cookie(signed_in_browser(app, second_admin))
    change_rights(signed_in_browser(app, ADMIN_EMAIL), account_id(app, second_admin))
    assert_facilitator_cookie_refused(replay(app, saved), world, admin=True)


def test_cookie_of_an_admin_whose_flag_was_removed_gets_403_on_admin_pages(app, world):
    second_admin = "admin2@example.org"
    with app.app_context():
        create_facilitator(second_admin, ACCOUNT_PASSWORD, is_admin=True)
        db.session.remove()
    browser = signed_in_browser(app, second_admin)
    assert get(browser, "/manage/facilitators").status_code == 200
    change_rights(signed_in_browser(app, ADMIN_EMAIL), account_id(app, second_admin), enabled=True)
    for path in ("/manage/settings", "/manage/facilitators"):
        assert get(browser, path).status_code == 403, path
    assert get(browser, "/manage").status_code == 200


# --- session lifetime -----------------------------------------------------------------------------


class SigningClock:
    """The clock itsdangerous signs and checks cookie timestamps with, moved forward."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real: Callable[[], float] = time.time
        clock = self

        def get_timestamp(self) -> int:  # type: ignore[no-untyped-def]
            return int(real() + clock.offset)

        monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", get_timestamp)

    def travel(self, delta: dt.timedelta) -> None:
        self.offset += delta.total_seconds()


@pytest.fixture
def signing_clock(monkeypatch: pytest.MonkeyPatch) -> SigningClock:
    return SigningClock(monkeypatch)


def lifetime(app: Flask) -> dt.timedelta:
    value = app.config["PERMANENT_SESSION_LIFETIME"]
    return value if isinstance(value, dt.timedelta) else dt.timedelta(seconds=value)


def test_participant_cookie_older_than_the_session_lifetime_is_refused(app, world, signing_clock):
    saved = saved_cookie(unlocked_browser(app))
    signing_clock.travel(lifetime(app) - dt.timedelta(minutes=5))
    assert get(replay(app, saved), "/").status_code == 200  # still young enough
    signing_clock.travel(dt.timedelta(minutes=10))
    assert_participant_cookie_refused(replay(app, saved), world)


def test_facilitator_cookie_older_than_the_session_lifetime_is_refused(app, world, signing_clock):
    facilitator = signed_in_browser(app, FACILITATOR_EMAIL)
    token = csrf_token(facilitator, "/manage/upload")
    saved = saved_cookie(facilitator)
    signing_clock.travel(lifetime(app) - dt.timedelta(minutes=5))
    assert get(replay(app, saved), "/manage").status_code == 200
    signing_clock.travel(dt.timedelta(minutes=10))
    thief = replay(app, saved)
    assert_facilitator_cookie_refused(thief, world)
    assert_cannot_delete(app, thief, token, world)


def test_a_kept_cookie_from_the_future_is_refused(app, world, signing_clock):
    """A cookie kept after its first check is refused, as itsdangerous does, once the
    clock has gone back behind the moment it was signed."""
    saved = saved_cookie(unlocked_browser(app))
    assert get(replay(app, saved), "/").status_code == 200  # checked, then kept
    signing_clock.travel(-dt.timedelta(minutes=5))
    assert_participant_cookie_refused(replay(app, saved), world)


def test_the_default_session_lifetime_is_seven_days(app_config):
    # Flask's own default (31 days) used to win over the portal's.
    config = {k: v for k, v in app_config.items() if k != "PERMANENT_SESSION_LIFETIME"}
    with app_variant(config) as fresh:
        assert fresh.config["PERMANENT_SESSION_LIFETIME"] == dt.timedelta(days=7)
        assert fresh.config["SESSION_REFRESH_EACH_REQUEST"] is False


def test_visits_do_not_extend_a_session_past_its_lifetime(app, world, signing_clock):
    participant = unlocked_browser(app)
    signing_clock.travel(lifetime(app) - dt.timedelta(minutes=5))
    page = get(participant, "/")
    assert page.status_code == 200
    # The cookie is not signed again on a visit, so its age stays the age of the unlock.
    assert "Set-Cookie" not in page.headers
    signing_clock.travel(dt.timedelta(minutes=10))
    assert_participant_cookie_refused(participant, world)


@pytest.fixture
def short_lived_app(app_config, app) -> Iterator[Flask]:
    """The same instance with a ten-minute session lifetime."""
    with app_variant(app_config, PERMANENT_SESSION_LIFETIME=dt.timedelta(minutes=10)) as short:
        yield short


def test_the_configured_lifetime_is_the_one_enforced(short_lived_app, world, signing_clock):
    participant = unlocked_browser(short_lived_app)
    facilitator = signed_in_browser(short_lived_app, FACILITATOR_EMAIL)
    saved_participant, saved_facilitator = saved_cookie(participant), saved_cookie(facilitator)
    signing_clock.travel(dt.timedelta(minutes=9))
    assert get(replay(short_lived_app, saved_participant), "/").status_code == 200
    assert get(replay(short_lived_app, saved_facilitator), "/manage").status_code == 200
    signing_clock.travel(dt.timedelta(minutes=2))
    assert_participant_cookie_refused(replay(short_lived_app, saved_participant), world)
    assert_facilitator_cookie_refused(replay(short_lived_app, saved_facilitator), world)


def test_cookie_expiry_sent_to_the_browser_matches_the_lifetime(app):
    browser = app.test_client()
    response = browser.post(
        "/access", data={"password": SHARED_PASSWORD, "csrf_token": csrf_token(browser)}
    )
    assert response.status_code == 303
    cookie = browser.get_cookie(SESSION_COOKIE)
    assert cookie is not None and cookie.expires is not None
    remaining = cookie.expires - dt.datetime.now(dt.UTC)
    assert remaining <= lifetime(app) + dt.timedelta(minutes=1)


# --- a new secret key -----------------------------------------------------------------------------


def test_a_new_secret_key_revokes_every_cookie(app_config, app, world):
    """Rotating the key (after a leak) signs everyone out: old cookies are just refused."""
    participant_cookie = saved_cookie(unlocked_browser(app))
    admin_cookie = saved_cookie(signed_in_browser(app, ADMIN_EMAIL))
    rotated = create_app({**app_config, "SECRET_KEY": "a-brand-new-secret-key-0123456789abcdef"})
    try:
        assert_participant_cookie_refused(replay(rotated, participant_cookie), world)
        assert_facilitator_cookie_refused(replay(rotated, admin_cookie), world, admin=True)
    finally:
        with rotated.app_context():
            db.session.remove()
            db.engine.dispose()


def test_a_cookie_forged_with_a_guessable_key_is_refused(app, world):
    """A session built by someone who tries default keys opens nothing."""
    admin_id = account_id(app, ADMIN_EMAIL)
    interface = app.session_interface
    for guess in ("changeme", "secret", "dev", "test-secret", ""):
        forger = Flask("forger")
        forger.secret_key = guess or "x"
        serializer = interface.get_signing_serializer(forger)
        for user_id in (f"f:{admin_id}:0", f"f:{admin_id}:1", "p:1", "p:2"):
            forged = serializer.dumps({"_user_id": user_id, "_fresh": True})
            browser = replay(app, forged)
            assert_sent_to(get(browser, "/manage/settings"), "/login", "/manage/settings")
            assert_sent_to(get(browser, "/"), "/access", "/")


def test_a_new_secret_key_refuses_cookies_signed_with_the_old_one(app):
    """The session cookie's serializer is built once per set of keys, never kept past them."""
    reader = app.test_client()
    assert unlock(reader).status_code == 303
    assert reader.get("/").status_code == 200
    old_key = app.secret_key
    try:
        app.secret_key = "a-rotated-secret-key"
        assert reader.get("/").status_code == 302  # back at the gate
        app.config["SECRET_KEY_FALLBACKS"] = [old_key]
        assert reader.get("/").status_code == 200  # a key being rotated out still works
    finally:
        app.secret_key = old_key
        app.config["SECRET_KEY_FALLBACKS"] = []


def test_a_checked_cookie_is_shared_only_by_its_exact_bytes_and_never_changed(app):
    """The session interface remembers cookies it verified; nothing else may get through."""
    reader = app.test_client()
    assert unlock(reader).status_code == 303
    cookie = reader.get_cookie("portal_session").value
    assert reader.get("/").status_code == 200
    interface = app.session_interface
    assert any(value == cookie for _, value in interface._verified)
    payload, _, signature = cookie.rpartition(".")
    forged = f"{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    thief = app.test_client()
    thief.set_cookie("portal_session", forged)
    assert thief.get("/").status_code == 302  # sent to the gate
    # One request changing its session changes nothing for the next one with that cookie.
    with app.test_request_context("/", headers={"Cookie": f"portal_session={cookie}"}):
        first = interface.open_session(app, request)
        first["_user_id"] = "f:1:0"
        first["extra"] = "changed"
        again = interface.open_session(app, request)
        assert again["_user_id"].startswith("p:") and "extra" not in again


def test_sessions_holding_messages_are_checked_every_time(app):
    """A flashed message is a list that a request empties: such sessions are never kept."""
    reader = app.test_client()
    assert unlock(reader).status_code == 303
    with reader.session_transaction() as session:
        session["_flashes"] = [("info", "Bonjour")]
    cookie = reader.get_cookie("portal_session").value
    reader.get("/")
    assert all(value != cookie for _, value in app.session_interface._verified)


def test_form_tokens_follow_a_new_secret_key(app, app_config):
    """Flask-WTF checks tokens with the current key alone: none signed before may be shown."""
    with app_with_form_page(app_config) as formed:
        reader = formed.test_client()
        assert unlock(reader).status_code == 303
        assert reader.get(FORM_PAGE).status_code == 200  # a token signed with the first key
        old_key = formed.secret_key
        formed.secret_key = "a-rotated-secret-key"
        formed.config["SECRET_KEY_FALLBACKS"] = [old_key]  # the session cookie stays valid
        page = reader.get(FORM_PAGE).get_data(as_text=True)
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        assert reader.post("/leave", data={"csrf_token": token}).status_code == 303
