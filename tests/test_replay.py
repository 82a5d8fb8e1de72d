"""A participant's repeated page request, answered without Flask, exactly as Flask would.

Every test asks the same request twice over: through the whole application (where
``portal.replay`` may answer) and through Flask's own application behind it. The two
answers must be identical, status, headers and bytes, and the replay's counter tells
whether it answered.
"""

from __future__ import annotations

import datetime as dt
import gzip
import re
import time
from typing import Any

import pytest
from conftest import (
    CSRF_PATTERN,
    FORM_PAGE,
    SHARED_PASSWORD,
    app_variant,
    app_with_form_page,
    login,
    unlock,
)
from flask import Flask
from sqlalchemy.exc import DBAPIError
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import EnvironBuilder, run_wsgi_app

from portal import content_version, replay
from portal.extensions import db
from portal.models import Event
from portal.page_cache import Entry
from portal.services.accounts import set_shared_password

Answer = tuple[str, list[tuple[str, str]], bytes]


def replay_of(app: Flask) -> replay.Replay:
    return app.extensions["portal.replay"]


def flask_path(app: Flask) -> Any:
    """Flask's application without the replay, behind ProxyFix as create_app sets it."""
    inner = replay_of(app).wsgi_app
    hops = app.config["PROXY_FIX"]
    return ProxyFix(inner, x_for=hops, x_proto=hops, x_host=hops) if hops else inner


class Visitor:
    """One browser: the cookies, address and user agent its requests carry."""

    def __init__(self, app: Flask, cookie: str, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.cookie = cookie
        client = app.test_client()
        self.user_agent = client.environ_base["HTTP_USER_AGENT"]
        self.address = client.environ_base["REMOTE_ADDR"]
        self.headers = headers or {}
        self.script_root = ""
        #: Whether the pages this visitor gets hold a token signed once (cached pages).
        self.tokens_fixed = True

    def environ(self, path: str, method: str = "GET", **headers: str) -> dict[str, Any]:
        sent = {"Cookie": self.cookie, "User-Agent": self.user_agent, **self.headers}
        sent.update({name.replace("_", "-"): value for name, value in headers.items()})
        builder = EnvironBuilder(
            path=path,
            base_url=f"http://localhost{self.script_root}",
            method=method,
            headers=sent,
            environ_base={"REMOTE_ADDR": self.address},
        )
        return builder.get_environ()

    def ask(self, wsgi: Any, path: str, method: str = "GET", **headers: str) -> Answer:
        app_iter, status, answer_headers = run_wsgi_app(
            wsgi, self.environ(path, method, **headers), buffered=True
        )
        return status, answer_headers.to_wsgi_list(), b"".join(app_iter)

    def both(self, path: str = "/", method: str = "GET", **headers: str) -> tuple[Answer, int]:
        """Ask through the application, then through Flask alone; the same answer, and
        how many times the replay answered (0 or 1)."""
        before = replay_of(self.app).answered
        answer = self.ask(self.app, path, method, **headers)
        replayed = replay_of(self.app).answered - before
        again = self.ask(flask_path(self.app), path, method, **headers)
        if replayed == 0 and not self.tokens_fixed:
            # Pages rendered twice: Flask-WTF signs their form token with the second.
            answer, again = unsigned(answer), unsigned(again)
        assert answer == again
        return answer, replayed


SIGNED_TOKEN = re.compile(rb'(name="csrf_token" (?:type="hidden" )?value=")[^"]+"')


def unsigned(answer: Answer) -> Answer:
    status, headers, body = answer
    return status, headers, SIGNED_TOKEN.sub(rb'\1<token>"', body)


def participant(app: Flask, headers: dict[str, str] | None = None) -> Visitor:
    client = app.test_client()
    for name, value in (headers or {}).items():
        client.environ_base["HTTP_" + name.upper().replace("-", "_")] = value
    assert unlock(client).status_code == 303
    return Visitor(app, f"portal_session={client.get_cookie('portal_session').value}; lang=en")


def header(answer: Answer, name: str) -> str | None:
    return next((v for k, v in answer[1] if k.lower() == name.lower()), None)


@pytest.fixture
def content(app, make_meeting, make_document) -> str:
    meeting = make_meeting("Accueil des personnes exilées", day=21)
    make_document("support.pdf", meeting=meeting, title="Support de l'atelier", tags=["Support"])
    make_document("general.pdf", title="Document général")
    return f"/sessions/{meeting.slug}"


@pytest.mark.parametrize("which", ["programme", "session", "filtered"])
def test_the_same_request_again_gets_the_same_answer_without_flask(app, content, which):
    url = {"programme": "/", "session": content, "filtered": "/?tag=support"}[which]
    visitor = participant(app)
    first, replayed = visitor.both(url)
    assert first[0] == "200 OK" and replayed == 0
    assert b"Support de l&#39;atelier" in first[2]
    again, replayed = visitor.both(url)
    assert replayed == 1
    assert again == first
    # The browser's revalidation (Cache-Control: private, no-cache) goes the same way.
    etag = header(first, "ETag")
    assert etag
    not_modified, replayed = visitor.both(url, If_None_Match=etag)
    assert not_modified[0].startswith("304") and replayed == 0
    assert visitor.both(url, If_None_Match=etag) == (not_modified, 1)


def test_a_replayed_pages_form_token_still_works(app, app_config, content):
    with app_with_form_page(app_config) as formed:
        client = formed.test_client()
        assert unlock(client).status_code == 303
        client.get(FORM_PAGE)
        answered = replay_of(formed).answered
        page = client.get(FORM_PAGE).get_data(as_text=True)
        assert replay_of(formed).answered == answered + 1
        token = CSRF_PATTERN.search(page).group(1)
        assert client.post("/leave", data={"csrf_token": token}).status_code == 303
        assert client.get("/").status_code == 302  # signed out: back to the gate


def _new_document(app: Flask, make_document: Any) -> None:
    make_document("nouveau.pdf", title="Synthèse ajoutée")


def new_password(app: Flask, *_: Any) -> None:
    with app.app_context():
        set_shared_password(SHARED_PASSWORD + "-2")
        db.session.remove()


def window_closed(app: Flask, *_: Any) -> None:
    with app.app_context():
        event = db.session.get(Event, 1)
        event.access_closes = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        db.session.commit()
        db.session.remove()


def new_secret_key(app: Flask, *_: Any) -> None:
    app.secret_key = "another-secret-key"


CHANGES = {
    "a document added": (_new_document, "200 OK"),
    "the shared password changed": (new_password, "302 FOUND"),
    "the access window closed": (window_closed, "302 FOUND"),
    "the secret key changed": (new_secret_key, "302 FOUND"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_after_a_change_the_request_goes_through_flask(app, content, make_document, change):
    visitor = participant(app)
    visitor.both("/")
    assert visitor.both("/")[1] == 1
    apply, status = CHANGES[change]
    apply(app, make_document)
    answer, replayed = visitor.both("/")
    assert replayed == 0
    assert answer[0] == status
    if status == "200 OK":
        assert "Synthèse ajoutée" in answer[2].decode()
    else:
        assert "/access" in header(answer, "Location")


def test_a_session_past_its_lifetime_goes_through_flask(app, content, monkeypatch):
    visitor = participant(app)
    visitor.both("/")
    assert visitor.both("/")[1] == 1
    later = time.time() + 8 * 24 * 3600
    monkeypatch.setattr(time, "time", lambda: later)
    answer, replayed = visitor.both("/")
    assert replayed == 0
    assert answer[0] == "302 FOUND"


def test_a_database_error_gets_the_503_page_not_a_replay(app, content, monkeypatch):
    visitor = participant(app)
    visitor.both("/")
    assert visitor.both("/")[1] == 1

    def unreadable(engine: Any) -> None:
        raise DBAPIError("SELECT", None, OSError("disk I/O error"))

    monkeypatch.setattr(replay, "read_event_state", unreadable)
    monkeypatch.setattr(content_version, "read_event_state", unreadable)
    answer, replayed = visitor.both("/")
    assert replayed == 0
    assert answer[0].startswith("503")
    assert "temporarily unavailable" in answer[2].decode()  # the visitor's language: English


def test_requests_whose_session_flask_would_change_are_never_replayed(app, content):
    visitor = participant(app)
    # Another browser with the same cookie: Flask-Login's session protection rewrites it.
    stranger = Visitor(app, visitor.cookie)
    stranger.user_agent = "Mozilla/5.0 (autre navigateur)"
    # A language chosen in the address is remembered in a cookie.
    for asker, url in ((stranger, "/"), (visitor, "/?lang=fr")):
        for _ in range(2):
            answer, replayed = asker.both(url)
            assert answer[0] == "200 OK"
            assert replayed == 0
            assert header(answer, "Set-Cookie")


def test_heads_facilitators_and_visitors_are_never_replayed(app, content):
    reader = participant(app)
    client = app.test_client()
    assert login(client).status_code == 303
    facilitator = Visitor(app, f"portal_session={client.get_cookie('portal_session').value}")
    facilitator.tokens_fixed = False  # their pages are rendered anew each time
    visitor = Visitor(app, "lang=en")
    for asker, method, url in (
        (reader, "HEAD", "/"),
        (facilitator, "GET", "/"),
        (facilitator, "GET", content),
        (visitor, "GET", "/"),
    ):
        for _ in range(3):
            answer, replayed = asker.both(url, method)
            assert replayed == 0
            assert answer[0] in ("200 OK", "302 FOUND")
    assert len(replay_of(app).noted) == 0


def test_flashed_messages_are_never_replayed(app, content):
    reader = participant(app)
    serializer = app.session_interface.get_signing_serializer(app)
    session = serializer.loads(reader.cookie.split(";")[0].split("=", 1)[1])
    session["_flashes"] = [["message", "Bienvenue"]]
    flashed = Visitor(app, f"portal_session={serializer.dumps(session)}; lang=en")
    for _ in range(2):
        answer, replayed = flashed.both("/")
        assert replayed == 0
        assert answer[0] == "200 OK"


def test_behind_a_proxy_each_forwarded_scheme_and_address_is_its_own_request(app_config, content):
    forwarded = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    with app_variant(app_config, PROXY_FIX=1) as proxied:
        # Flask-WTF asks HTTPS form posts for a same-site Referer.
        reader = participant(proxied, {**forwarded, "Referer": "https://localhost/access"})
        # Its cookie is Secure: a browser sends it back over HTTPS only.
        reader.headers = forwarded
        first, replayed = reader.both("/")
        assert first[0] == "200 OK" and replayed == 0
        assert header(first, "Strict-Transport-Security")
        assert reader.both("/") == (first, 1)
        reader.headers = {**forwarded, "X-Forwarded-Proto": "http"}
        plain, replayed = reader.both("/")
        assert replayed == 0
        assert not header(plain, "Strict-Transport-Security")
        reader.headers = {**forwarded, "X-Forwarded-For": "203.0.113.9"}
        elsewhere, replayed = reader.both("/")
        assert replayed == 0
        assert header(elsewhere, "Set-Cookie")  # session protection: another address


def test_without_page_replay_flask_answers_everything(app_config, content):
    with app_variant(app_config, PAGE_REPLAY=False) as plain:
        assert "portal.replay" not in plain.extensions
        client = plain.test_client()
        assert unlock(client).status_code == 303
        assert client.get("/").status_code == 200
        assert client.get("/").status_code == 200


def test_noted_answers_are_bounded(app_config, content):
    with app_variant(app_config, PAGE_REPLAY_ENTRIES=2) as small:
        for _ in range(4):
            reader = participant(small)
            reader.both("/")
        assert len(replay_of(small).noted) == 2


def test_the_access_window_closing_while_nothing_changes_ends_the_replay(app, content):
    with app.app_context():
        event = db.session.get(Event, 1)
        event.access_closes = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
        db.session.commit()
        db.session.remove()
    visitor = participant(app)
    visitor.both("/")
    assert visitor.both("/")[1] == 1
    time.sleep(1.6)  # the event row is the same: only the clock says the window closed
    answer, replayed = visitor.both("/")
    assert replayed == 0
    assert answer[0] == "302 FOUND"


def test_a_forwarded_address_is_part_of_the_request_even_without_a_proxy(app, content):
    """Flask-Login hashes X-Forwarded-For into its session protection whatever PROXY_FIX."""
    visitor = participant(app)
    visitor.both("/")
    assert visitor.both("/")[1] == 1
    visitor.headers = {"X-Forwarded-For": "203.0.113.9"}
    answer, replayed = visitor.both("/")
    assert replayed == 0
    assert header(answer, "Set-Cookie")


def test_a_page_rendered_again_for_the_same_version_is_not_replaced_by_the_old_one(app, content):
    visitor = participant(app)
    visitor.both("/")
    assert visitor.both("/")[1] == 1
    pages = app.extensions["portal.page_cache"]
    (noted,) = [replay_of(app).noted.get(key) for key in replay_of(app).noted]
    old = pages.get(noted.answered.key, dt.datetime.now(dt.UTC))
    # What a new rendering looks like once the session under way has changed.
    pages.put(
        noted.answered.key, Entry(old.body + b"<!-- plus tard -->", old.headers, None, "autre")
    )
    answer, replayed = visitor.both("/")
    assert replayed == 0
    assert answer[2].endswith(b"<!-- plus tard -->")


def _other_page(visitor: Visitor, content: str) -> str:
    return content


def _other_filter(visitor: Visitor, content: str) -> str:
    return "/?tag=support"


def _other_languages(visitor: Visitor, content: str) -> str:
    visitor.headers = {"Accept-Language": "en"}
    return "/"


def _other_browser(visitor: Visitor, content: str) -> str:
    visitor.user_agent = "Mozilla/5.0 (autre navigateur)"
    return "/"


def _other_address(visitor: Visitor, content: str) -> str:
    visitor.address = "192.0.2.44"
    return "/"


def _other_cookie(visitor: Visitor, content: str) -> str:
    visitor.cookie += "; lang=en"
    return "/"


def _mounted_elsewhere(visitor: Visitor, content: str) -> str:
    visitor.script_root = "/portail"
    return "/"


VARIATIONS = {
    "another page": _other_page,
    "another filter": _other_filter,
    "other languages": _other_languages,
    "another browser": _other_browser,
    "another address": _other_address,
    "another cookie": _other_cookie,
    "under another prefix": _mounted_elsewhere,
}


@pytest.mark.parametrize("variation", VARIATIONS)
def test_a_noted_answer_is_replayed_for_its_own_request_only(app, content, variation):
    client = app.test_client()
    assert unlock(client).status_code == 303
    # No language cookie: the browser's languages choose, French first.
    visitor = Visitor(app, f"portal_session={client.get_cookie('portal_session').value}")
    visitor.headers = {"Accept-Language": "fr"}
    base, _ = visitor.both("/")
    assert visitor.both("/") == (base, 1)
    url = VARIATIONS[variation](visitor, content)
    answer, replayed = visitor.both(url)  # Flask's own answer to that request
    assert replayed == 0
    assert answer != base


def test_a_head_request_after_a_noted_get_goes_through_flask(app, content):
    visitor = participant(app)
    visitor.both("/")
    assert visitor.both("/")[1] == 1
    answer, replayed = visitor.both("/", "HEAD")
    assert replayed == 0
    assert answer[0] == "200 OK" and answer[2] == b""


def test_padded_requests_are_answered_but_never_noted(app, content):
    visitor = participant(app)
    visitor.cookie += "; padding=" + "x" * replay.MAX_REQUEST_BYTES
    for _ in range(3):
        answer, replayed = visitor.both("/")
        assert answer[0] == "200 OK" and replayed == 0
    assert len(replay_of(app).noted) == 0


def test_an_answer_given_while_the_keys_changed_is_not_noted(app, content, monkeypatch):
    visitor = participant(app)
    flask_app = replay_of(app).wsgi_app

    def rotating_meanwhile(environ: dict[str, Any], start_response: Any) -> Any:
        answer = flask_app(environ, start_response)
        app.secret_key = "a-key-set-while-the-request-ran"
        return answer

    monkeypatch.setattr(replay_of(app), "wsgi_app", rotating_meanwhile)
    visitor.ask(app, "/")  # checked with the old key, answered under the new one
    monkeypatch.undo()
    answer, replayed = visitor.both("/")
    assert replayed == 0
    assert answer[0] == "302 FOUND"  # the new key does not know this cookie


def test_a_gzipped_page_is_replayed_gzipped_and_only_to_the_same_request(app, content):
    visitor = participant(app)
    visitor.headers = {"Accept-Encoding": "gzip, deflate, br"}
    first, replayed = visitor.both("/")
    assert header(first, "Content-Encoding") == "gzip" and replayed == 0
    assert visitor.both("/") == (first, 1)
    # Another Accept-Encoding is another request: the page as it is, through Flask.
    visitor.headers = {"Accept-Encoding": "identity"}
    plain, replayed = visitor.both("/")
    assert replayed == 0 and header(plain, "Content-Encoding") is None
    assert gzip.decompress(first[2]) == plain[2]
