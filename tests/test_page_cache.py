"""The content version and the participants' page cache: fast, and never stale.

Two applications on one database and one storage stand for two server processes: a change
made through one is visible on the very next request to the other.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import threading
import time

import pytest
from conftest import (
    ADMIN_EMAIL,
    CSRF_PATTERN,
    FORM_PAGE,
    PDF_BYTES,
    SHARED_PASSWORD,
    app_variant,
    app_with_form_page,
    csrf_token,
    flush_counts,
    leave_token,
    login,
    unlock,
)
from flask import Flask
from sqlalchemy import event as sqlalchemy_event

from portal import content_version, create_app, page_cache
from portal.content_version import _STATE, EventState, event_state
from portal.extensions import db
from portal.models import Document, Event, Meeting, Tag
from portal.page_cache import PLACEHOLDER, Entry, PageCache
from portal.services import documents as document_service
from portal.services import event as event_service
from portal.services.accounts import set_shared_password


def version(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(db.select(Event.content_version).where(Event.id == 1))


def cache_of(app: Flask) -> PageCache:
    return app.extensions["portal.page_cache"]


def page(client, url: str = "/") -> str:
    response = client.get(url)
    assert response.status_code == 200, url
    return response.get_data(as_text=True)


@pytest.fixture
def second_app(app, app_config) -> Flask:
    """Another process on the same database and storage."""
    other = create_app(app_config)
    yield other
    with other.app_context():
        db.session.remove()
        db.engine.dispose()


def new_participant(app: Flask):
    client = app.test_client()
    assert unlock(client).status_code == 303
    client.set_cookie("lang", "en")
    return client


def new_facilitator(app: Flask, email: str | None = None):
    client = app.test_client()
    response = login(client, email) if email else login(client)
    assert response.status_code == 303
    client.set_cookie("lang", "en")
    return client


# --- the content version --------------------------------------------------------------------


def _in_app(app, change):
    with app.app_context():
        change()
        db.session.remove()


CHANGES = {
    "new session": lambda m, d: event_service.save_meeting(
        None, title="Nouveau", starts_at=m.starts_at, ends_at=m.ends_at
    ),
    "session edited": lambda m, d: event_service.save_meeting(
        db.session.get(Meeting, m.id), title="Renommé", starts_at=m.starts_at, ends_at=m.ends_at
    ),
    "session deleted": lambda m, d: event_service.delete_meeting(db.session.get(Meeting, m.id)),
    "document edited": lambda m, d: document_service.update_document(
        db.session.get(Document, d.id), title="Autre", description="", meeting=None, tags=["x"]
    ),
    "document retagged": lambda m, d: document_service.update_document(
        db.session.get(Document, d.id), title=d.title, description="", meeting=None, tags=["y"]
    ),
    "document deleted": lambda m, d: document_service.delete_document(
        db.session.get(Document, d.id)
    ),
    "file replaced": lambda m, d: document_service.replace_document(
        db.session.get(Document, d.id), io.BytesIO(PDF_BYTES + b" "), "v2.pdf"
    ),
    "tag renamed": lambda m, d: (
        setattr(db.session.scalars(db.select(Tag)).first(), "name", "Renommée"),
        db.session.commit(),
    ),
    "bulk update": lambda m, d: (
        db.session.execute(db.update(Document).values(description="en masse")),
        db.session.commit(),
    ),
    "event settings": lambda m, d: event_service.update_event(
        title="Autre titre", description="", starts_on=None, ends_on=None
    ),
    "access window": lambda m, d: event_service.set_access_window(
        None, dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    ),
    "password": lambda m, d: set_shared_password("un autre mot de passe"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_every_change_to_a_listing_bumps_the_version(app, make_meeting, make_document, change):
    meeting = make_meeting()
    document = make_document(meeting=meeting, tags=["Support"], title="Avant")
    before = version(app)
    _in_app(app, lambda: CHANGES[change](meeting, document))
    assert version(app) > before


def test_an_upload_bumps_the_version(app):
    before = version(app)
    _in_app(app, lambda: document_service.add_document(io.BytesIO(PDF_BYTES), "a.pdf"))
    assert version(app) == before + 1  # once per flush, not once per row


def test_a_download_does_not_bump_the_version(app, make_document):
    document = make_document()
    reader = new_participant(app)
    before = version(app)
    response = reader.get(f"/documents/{document.id}/{document.original_name}")
    assert response.status_code == 200
    response.close()
    flush_counts(app)
    with app.app_context():
        assert db.session.get(Document, document.id).download_count == 1
    assert version(app) == before


def test_a_rolled_back_change_does_not_bump_the_version(app, make_meeting):
    meeting = make_meeting()
    before = version(app)
    with app.app_context():
        db.session.get(Meeting, meeting.id).title = "Jamais"
        db.session.flush()
        assert db.session.scalar(db.select(Event.content_version)) == before + 1
        db.session.rollback()
        db.session.remove()
    assert version(app) == before
    with app.app_context():
        db.session.get(Meeting, meeting.id).description = "Vraiment"
        db.session.commit()
        db.session.remove()
    assert version(app) == before + 1  # the rolled-back flush left nothing behind


# --- the one query of a cached page ------------------------------------------------------


def _state_through_sqlalchemy() -> EventState:
    with db.engine.connect() as connection:
        return EventState(*connection.execute(_STATE).one())


@pytest.mark.parametrize("window", ["none", "open", "closed"])
def test_the_event_state_read_on_the_driver_equals_sqlalchemys(app, window):
    """The driver's raw row is converted as SQLAlchemy would: booleans, aware datetimes."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    bounds = {
        "none": (None, None),
        "open": (now - dt.timedelta(days=1), now + dt.timedelta(days=1)),
        "closed": (now - dt.timedelta(days=3), now - dt.timedelta(days=2)),
    }[window]
    with app.app_context():
        event_service.set_access_window(*bounds)
    with app.test_request_context("/"):
        state = event_state()
        assert state == _state_through_sqlalchemy()
        assert state.has_password is True
        assert (state.access_opens, state.access_closes) == bounds
        assert state.window_state() == {"none": "open", "open": "open", "closed": "closed"}[window]
        for instant in bounds:
            assert instant is None or instant.utcoffset() == dt.timedelta(0)


def test_a_database_that_cannot_be_read_gets_the_503_page_not_a_crash(app, app_config, tmp_path):
    reader = new_participant(app)
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"not a database, " * 512)
    with app_variant(app_config, SQLALCHEMY_DATABASE_URI=f"sqlite:///{broken}") as variant:
        visitor = variant.test_client()
        visitor.set_cookie("portal_session", reader.get_cookie("portal_session").value)
        for url in ("/", "/sessions/any"):
            response = visitor.get(url, headers={"Accept-Language": "fr"})
            assert response.status_code == 503, url
            assert response.mimetype == "text/html"
            page = response.get_data(as_text=True)
            assert "temporairement indisponible" in page
            assert "Traceback" not in page and "not a database" not in page
    assert broken.read_bytes() == b"not a database, " * 512  # nothing written to it


def test_a_connection_the_driver_reports_lost_leaves_the_pool(app, monkeypatch):
    """A lost connection is dropped, as SQLAlchemy's own execution would, not handed on."""
    reader = new_participant(app)
    dropped = []

    def count_drop(dbapi_connection, record, exception):
        dropped.append(exception)

    with app.app_context():
        engine = db.engine
    old_pool = engine.pool
    sqlalchemy_event.listen(old_pool, "invalidate", count_drop)
    try:
        # The dialect is told to see this statement's failure as a lost connection.
        monkeypatch.setitem(
            content_version._COMPILED,
            (engine.dialect.name, engine.dialect.driver),
            content_version._CompiledState("SELECT * FROM no_such_table_here", ()),
        )
        monkeypatch.setattr(type(engine.dialect), "is_disconnect", lambda *args: True)
        assert reader.get("/").status_code == 503
        assert len(dropped) == 1
        assert engine.pool is not old_pool  # the connections opened before are not reused
        monkeypatch.undo()
        assert reader.get("/").status_code == 200
        assert len(dropped) == 1
    finally:
        sqlalchemy_event.remove(old_pool, "invalidate", count_drop)


# --- never stale, on either process ---------------------------------------------------------


def test_changes_through_one_app_show_at_once_on_both(app, second_app, make_meeting):
    meeting = make_meeting("Temps A")
    here, there = new_participant(app), new_participant(second_app)
    boss = new_facilitator(app)
    session_url = f"/sessions/{meeting.slug}"

    def seen(text: str) -> bool:
        return all(text in page(c, u) for c in (here, there) for u in ("/", session_url))

    for client in (here, there):  # warm both caches
        page(client), page(client, session_url)
    assert len(cache_of(second_app)) == 2

    token = csrf_token(boss, "/manage/upload")
    data = {
        "files": (io.BytesIO(PDF_BYTES), "cartes.pdf"),
        "session": str(meeting.id),
        "tags": "Carte",
        "title": "Cartes du monde",
        "description": "",
        "csrf_token": token,
    }
    response = boss.post("/manage/upload", data=data, content_type="multipart/form-data")
    assert response.status_code in (200, 303)
    assert seen("Cartes du monde")
    with app.app_context():
        document_id = db.session.scalars(db.select(Document.id)).one()

    edit = {
        "title": "Cartes révisées",
        "description": "",
        "session": str(meeting.id),
        "tags": "Géographie",
        "csrf_token": csrf_token(boss, "/manage/upload"),
    }
    assert boss.post(f"/manage/documents/{document_id}/edit", data=edit).status_code == 303
    assert seen("Cartes révisées") and seen("Géographie")
    assert not any("Carte<" in page(c) for c in (here, there))  # the old tag is gone

    form = {
        "title": "Temps A bis",
        "slug": meeting.slug,
        "starts_at": "2020-11-21T11:00",
        "ends_at": "2020-11-21T12:00",
        "facilitators": "",
        "meeting_url": "",
        "description": "",
        "csrf_token": csrf_token(boss, "/manage/upload"),
    }
    assert boss.post(f"/manage/sessions/{meeting.id}/edit", data=form).status_code == 303
    assert seen("Temps A bis")

    delete = {"csrf_token": csrf_token(boss, "/manage/upload")}
    assert boss.post(f"/manage/documents/{document_id}/delete", data=delete).status_code == 303
    assert not any("Cartes révisées" in page(c) for c in (here, there))


def test_a_new_password_is_never_answered_from_the_cache(app, second_app):
    here, there = new_participant(app), new_participant(second_app)
    page(here), page(there)
    boss = new_facilitator(second_app, ADMIN_EMAIL)
    data = {
        "title": "Session nationale",
        "description": "",
        "starts_on": "",
        "ends_on": "",
        "access_opens": "",
        "access_closes": "",
        "password": "nouveau-mot-2020",
        "password_confirm": "nouveau-mot-2020",
        "csrf_token": csrf_token(boss, "/manage/settings"),
    }
    assert boss.post("/manage/settings", data=data).status_code in (200, 303)
    for client in (here, there):
        response = client.get("/")
        assert response.status_code == 302
        assert "/access" in response.headers["Location"]


# --- what is per user ----------------------------------------------------------------------


def test_a_page_with_a_flashed_message_is_neither_served_from_nor_kept_in_the_cache(app):
    reader = new_participant(app)
    page(reader)
    cached = len(cache_of(app))
    with reader.session_transaction() as session:
        session["_flashes"] = [("success", "Un message pour vous seul")]
    assert "Un message pour vous seul" in page(reader)
    assert len(cache_of(app)) == cached
    assert "Un message pour vous seul" not in page(reader)
    other = new_participant(app)
    assert "Un message pour vous seul" not in page(other)


def test_participants_pages_hold_no_form_token_and_are_the_same_for_all(app, make_document):
    make_document(title="Commun")
    first, second = new_participant(app), new_participant(app)
    first_page, second_page = page(first), page(second)
    assert len(cache_of(app)) == 1  # one rendering, two readers
    assert first_page == second_page
    assert "csrf_token" not in first_page
    # Each one's "Leave" form (on its own page) holds a token for that session alone.
    first_token, second_token = leave_token(first), leave_token(second)
    assert first_token != second_token
    second.post("/leave", data={"csrf_token": first_token})
    assert second.get("/").status_code == 200


def test_each_participant_gets_a_form_token_valid_for_their_own_session(app, app_config):
    with app_with_form_page(app_config) as formed:
        first, second = new_participant(formed), new_participant(formed)
        first_page, second_page = page(first, FORM_PAGE), page(second, FORM_PAGE)
        assert len(cache_of(formed)) == 1  # one rendering, two readers
        assert PLACEHOLDER.decode() not in first_page
        first_token = CSRF_PATTERN.search(first_page).group(1)
        second_token = CSRF_PATTERN.search(second_page).group(1)
        assert first_token != second_token
        # Someone else's token does not let a form through.
        second.post("/leave", data={"csrf_token": first_token})
        assert second.get("/").status_code == 200
        for client, token in ((first, first_token), (second, second_token)):
            assert client.post("/leave", data={"csrf_token": token}).status_code == 303
            assert client.get("/").status_code == 302  # back at the gate: the token was valid
        # A page holding a token is never compressed (BREACH).
        reader = new_participant(formed)
        answer = reader.get(FORM_PAGE, headers={"Accept-Encoding": "gzip"})
        assert "Content-Encoding" not in answer.headers


def test_a_sessions_form_token_is_signed_once_and_stays_valid(app, app_config, monkeypatch):
    with app_with_form_page(app_config) as formed:
        reader = new_participant(formed)
        first_page = page(reader, FORM_PAGE)
        # A second later Flask-WTF would sign the same session token differently (its
        # signature carries the time): the page keeps the signature made the first time.
        clock = time.time()
        monkeypatch.setattr(time, "time", lambda: clock + 5)
        again = page(reader, FORM_PAGE)
        monkeypatch.undo()
        token = CSRF_PATTERN.search(first_page).group(1)
        assert CSRF_PATTERN.search(again).group(1) == token
        assert len(formed.extensions["portal.signed_tokens"]._signed) == 1
        assert reader.post("/leave", data={"csrf_token": token}).status_code == 303
        assert reader.get("/").status_code == 302


def test_with_a_time_limit_on_form_tokens_none_is_kept(app, app_config):
    with app_with_form_page(app_config, WTF_CSRF_TIME_LIMIT=3600) as limited:
        reader = new_participant(limited)
        page(reader, FORM_PAGE)
        page(reader, FORM_PAGE)
        assert len(limited.extensions["portal.signed_tokens"]._signed) == 0
        token = CSRF_PATTERN.search(page(reader, FORM_PAGE)).group(1)
        assert reader.post("/leave", data={"csrf_token": token}).status_code == 303


def test_facilitators_are_never_served_the_participants_pages(app):
    reader = new_participant(app)
    page(reader)
    cached = len(cache_of(app))
    boss = new_facilitator(app)
    boss_page = page(boss)
    assert "/manage/upload" in boss_page
    assert len(cache_of(app)) == cached
    assert "/manage/upload" not in page(reader)


def test_visitors_are_sent_to_the_gate_not_served_the_cache(app):
    page(new_participant(app))
    response = app.test_client().get("/")
    assert response.status_code == 302
    assert "/access" in response.headers["Location"]


# --- HTTP caching ---------------------------------------------------------------------------


def test_a_matching_etag_gets_304_until_the_content_changes(app, make_document):
    reader = new_participant(app)
    first = reader.get("/")
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')
    assert first.headers["Cache-Control"] == "private, no-cache"
    again = reader.get("/", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.data == b""
    make_document(title="Nouveauté")
    after = reader.get("/", headers={"If-None-Match": etag})
    assert after.status_code == 200
    assert "Nouveauté" in after.get_data(as_text=True)
    assert after.headers["ETag"] != etag


def test_an_etag_is_not_valid_across_participants_or_a_second_unlock(app):
    first, second = new_participant(app), new_participant(app)
    etag = first.get("/").headers["ETag"]
    assert second.get("/", headers={"If-None-Match": etag}).status_code == 200
    # Leaving and coming back starts a new session.
    first.post("/leave", data={"csrf_token": leave_token(first)})
    unlock(first, SHARED_PASSWORD)
    assert first.get("/", headers={"If-None-Match": etag}).status_code == 200


# --- bounded --------------------------------------------------------------------------------


def test_unusual_query_strings_are_answered_but_not_kept(app, make_document):
    make_document(title="Doc", tags=["Support"])
    reader = new_participant(app)
    page(reader, "/?tag=support")
    cached = len(cache_of(app))
    for url in (
        "/?junk=1",
        "/?tag=Support",
        "/?tag=support&tag=support",
        "/?q=%20doc",
        "/?q=",
        "/?lang=de",
        "/?lang=en&lang=fr",
        "/sessions/x?tag=1",
    ):
        response = reader.get(url)
        assert response.status_code in (200, 404), url
        assert "ETag" not in response.headers
    assert len(cache_of(app)) == cached


def test_the_cache_is_bounded_in_entries_and_bytes():
    cache = PageCache(max_entries=3, max_bytes=800)
    for number in range(10):
        cache.put(("k", number), Entry(b"x" * 50, (), None, str(number)))
    assert len(cache) == 3
    assert cache.get(("k", 0), dt.datetime.now(dt.UTC)) is None
    cache.put(("big",), Entry(b"x" * 101, (), None, "big"))  # over an eighth: never kept
    assert cache.get(("big",), dt.datetime.now(dt.UTC)) is None
    for number in range(3):
        cache.put(("m", number), Entry(b"x" * 100, (), None, str(number)))
    assert cache.size <= 800


def test_a_page_that_says_what_is_next_expires_when_that_changes(app, make_meeting):
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    with app.app_context():
        event_service.save_meeting(
            None, title="Bientôt", starts_at=start, ends_at=start + dt.timedelta(hours=1)
        )
        db.session.remove()
    reader = new_participant(app)
    assert "Next:" in page(reader)
    cache = cache_of(app)
    ((key, entry),) = cache._entries.items()
    assert entry.valid_until == start
    assert cache.get(key, start - dt.timedelta(seconds=1)) is entry
    assert cache.get(key, start) is None


def test_a_cached_preview_keeps_its_own_content_security_policy(app, make_document):
    document = make_document("plan.pdf")
    reader = new_participant(app)
    first = reader.get(f"/preview/{document.id}")
    second = reader.get(f"/preview/{document.id}")
    assert len(cache_of(app)) == 1
    for response in (first, second):
        assert response.status_code == 200
        assert "object-src 'self'" in response.headers["Content-Security-Policy"]
        assert int(response.headers["Content-Length"]) == len(response.data)


# --- compressed ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accepted", "gzipped"),
    [
        ("gzip, deflate, br, zstd", True),
        ("*", True),
        ("gzip;q=0, br", False),
        ("identity", False),
        (None, False),
    ],
)
def test_pages_go_gzipped_to_browsers_that_accept_it(app, make_document, accepted, gzipped):
    make_document(title="Commun")
    reader = new_participant(app)
    plain = reader.get("/")
    headers = {"Accept-Encoding": accepted} if accepted else {}
    for _ in range(2):  # rendered, then from the cache
        answer = reader.get("/", headers=headers)
        assert answer.status_code == 200
        assert "Accept-Encoding" in answer.headers["Vary"]
        if gzipped:
            assert answer.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(answer.data) == plain.data
            assert len(answer.data) * 2 < len(plain.data)
            assert int(answer.headers["Content-Length"]) == len(answer.data)
            # Its own validator: a browser revalidates the representation it holds.
            assert answer.headers["ETag"] != plain.headers["ETag"]
        else:
            assert "Content-Encoding" not in answer.headers
            assert answer.data == plain.data
        etag = answer.headers["ETag"]
        again = reader.get("/", headers={**headers, "If-None-Match": etag})
        assert again.status_code == 304


def test_a_short_page_is_sent_as_it_is(app):
    assert page_cache.compressed(b"<p>court</p>") is None
    assert page_cache.compressed(b"x" * 5000) is not None
    assert page_cache.compressed(b"x" * 5000 + page_cache.PLACEHOLDER) is None


# --- one rendering for many requests ---------------------------------------------------------

SLOW_PAGE = "/test-only/slow-page"


@pytest.fixture
def slow_page(app, app_config, monkeypatch):
    """An app with one more cached participant page that counts its renderings. Each
    rendering waits for ``release``; ``fail`` makes the next one raise. ``waiting`` counts
    the requests that found the page being rendered by another."""
    from portal.access import unlocked_required
    from portal.page_cache import cached_page, window

    state = {"renders": 0, "fail": False, "release": threading.Event(), "waiting": 0}
    state["release"].set()

    def slow() -> str:
        state["renders"] += 1
        window([], dt.datetime.now(dt.UTC))
        if not state["release"].wait(10):
            raise AssertionError("never released")
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("rendering failed")
        return "<p>slow</p>" * 200

    real_claim = PageCache.claim

    def counted_claim(self, key):
        first, done = real_claim(self, key)
        if not first:
            state["waiting"] += 1
        return first, done

    monkeypatch.setattr(PageCache, "claim", counted_claim)
    with app_variant(app_config, PROPAGATE_EXCEPTIONS=False) as application:
        application.add_url_rule(SLOW_PAGE, "slow_page", unlocked_required(cached_page()(slow)))
        yield application, state


def ask_at_once(application: Flask, state: dict, clients: list) -> list:
    """Each client asks for the slow page at once; the rendering is released only when all
    but the first are waiting for it. Their statuses and bodies."""
    answers: list = [None] * len(clients)
    state["release"].clear()

    def ask(i: int) -> None:
        response = clients[i].get(SLOW_PAGE)
        answers[i] = (response.status_code, response.data)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while state["waiting"] < len(clients) - 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert state["waiting"] == len(clients) - 1
    state["release"].set()
    for thread in threads:
        thread.join(20)
    assert application.extensions["portal.page_cache"].rendering() == 0
    return answers


def test_requests_at_once_for_a_missing_page_render_it_once(slow_page):
    application, state = slow_page
    clients = [new_participant(application) for _ in range(6)]
    answers = ask_at_once(application, state, clients)
    assert state["renders"] == 1
    assert {status for status, _ in answers} == {200}
    assert len({body for _, body in answers}) == 1


def test_when_the_rendering_fails_the_waiting_requests_render_the_page_themselves(
    slow_page, monkeypatch
):
    application, state = slow_page
    # Longer than the test may take: the waiters must be woken by the failed rendering.
    monkeypatch.setattr(page_cache, "RENDER_WAIT", 60)
    clients = [new_participant(application) for _ in range(4)]
    state["fail"] = True
    started = time.monotonic()
    answers = ask_at_once(application, state, clients)
    assert time.monotonic() - started < 30
    assert sorted(status for status, _ in answers) == [200, 200, 200, 500]
    assert state["renders"] >= 2
    renders = state["renders"]
    assert clients[0].get(SLOW_PAGE).status_code == 200  # cached now
    assert state["renders"] == renders


def test_a_request_waits_for_another_rendering_only_so_long(slow_page, monkeypatch):
    application, state = slow_page
    monkeypatch.setattr(page_cache, "RENDER_WAIT", 0.05)
    clients = [new_participant(application) for _ in range(2)]
    state["release"].clear()
    answers: list = []
    first = threading.Thread(target=lambda: answers.append(clients[0].get(SLOW_PAGE).status_code))
    first.start()
    deadline = time.monotonic() + 10
    while state["renders"] < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    # The first rendering is held: the second request waits 0.05 s, then renders too.
    second = threading.Thread(target=lambda: answers.append(clients[1].get(SLOW_PAGE).status_code))
    second.start()
    while state["renders"] < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert state["renders"] == 2 and state["waiting"] == 1
    state["release"].set()
    first.join(20)
    second.join(20)
    assert answers == [200, 200]


def test_put_says_whether_it_kept_the_entry():
    pages = PageCache(max_entries=4, max_bytes=800)
    entry = Entry(b"x" * 200, (), None, "tag")
    assert pages.put(("big",), entry) is False
    assert pages.get(("big",), dt.datetime.now(dt.UTC)) is None
    assert pages.put(("small",), Entry(b"x" * 50, (), None, "tag")) is True


def test_a_page_too_big_to_keep_is_rendered_by_each_request(app, app_config):
    from portal.access import unlocked_required
    from portal.page_cache import cached_page, window

    renders: list[int] = []

    def big() -> str:
        renders.append(1)
        window([], dt.datetime.now(dt.UTC))
        return "<p>big</p>" * 200  # 2 KB: more than an eighth of the cache

    with app_variant(app_config, PAGE_CACHE_BYTES=8000) as application:
        application.add_url_rule(SLOW_PAGE, "big_page", unlocked_required(cached_page()(big)))
        reader = new_participant(application)
        answers = [reader.get(SLOW_PAGE) for _ in range(2)]
        pages = application.extensions["portal.page_cache"]
        assert [a.status_code for a in answers] == [200, 200]
        assert len(renders) == 2 and len(pages) == 0 and pages.rendering() == 0
        # Not answered as a cached page: no validator that a revalidation could match.
        assert all("ETag" not in a.headers for a in answers)


def test_a_thread_rendering_a_page_does_not_wait_for_itself():
    pages = PageCache()
    first, done = pages.claim(("page",))
    assert first and done is not None
    assert pages.claim(("page",)) == (False, None)
    waited: list = []
    other = threading.Thread(target=lambda: waited.append(pages.claim(("page",))))
    other.start()
    other.join(5)
    assert waited == [(False, done)]
    pages.release(("page",), done)
    assert done.is_set() and pages.rendering() == 0
