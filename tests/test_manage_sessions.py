"""Creating, editing and deleting sessions under /manage/sessions/."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from conftest import PDF_BYTES, count_rows, csrf_token, stored_files

from portal.extensions import db
from portal.models import Document, Meeting

UTC = dt.UTC


@pytest.fixture
def manager(facilitator):
    facilitator.set_cookie("lang", "en")
    return facilitator


def session_form(**fields) -> dict:
    return {
        "title": "Atelier climat",
        "slug": "",
        "starts_at": "2020-11-21T10:00",
        "ends_at": "2020-11-21T12:00",
        "facilitators": "",
        "meeting_url": "",
        "description": "",
        **fields,
    }


def post_new(client, **fields):
    data = session_form(**fields)
    data.setdefault("csrf_token", csrf_token(client, "/manage/sessions/new"))
    return client.post("/manage/sessions/new", data=data)


def post_edit(client, meeting_id: int, **fields):
    data = session_form(**fields)
    data.setdefault("csrf_token", csrf_token(client, "/manage/upload"))
    return client.post(f"/manage/sessions/{meeting_id}/edit", data=data)


def meetings(app) -> list[dict]:
    with app.app_context():
        return [
            {
                "id": m.id,
                "slug": m.slug,
                "title": m.title,
                "description": m.description,
                "facilitators": m.facilitators,
                "meeting_url": m.meeting_url,
                "starts_at": m.starts_at,
                "ends_at": m.ends_at,
            }
            for m in db.session.scalars(db.select(Meeting).order_by(Meeting.id))
        ]


def field_error(page: str, field: str) -> str | None:
    match = re.search(rf'<p class="error" id="{field}-error">(.*?)</p>', page, re.S)
    return match.group(1).strip() if match else None


# --- create ---------------------------------------------------------------------------


def test_new_session_form_has_labelled_datetime_fields(manager):
    response = manager.get("/manage/sessions/new")
    assert response.status_code == 200
    page = response.text
    for name in ("title", "starts_at", "ends_at", "facilitators", "meeting_url", "slug"):
        assert f'<label for="{name}">' in page, name
    assert re.search(
        r'type="datetime-local"[^>]*name="starts_at"|name="starts_at"[^>]*'
        r'type="datetime-local"',
        page,
    )


def test_create_session_reads_times_in_europe_paris_and_stores_utc(app, manager):
    response = post_new(
        manager,
        title="Fonctionnement des Assemblées locales",
        facilitators="Anim et Co",
        meeting_url="https://visio.example.org/room",
        description="Premier temps d'échange",
    )
    assert response.status_code == 303
    assert response.headers["Location"].rstrip("/") == "/manage"
    [created] = meetings(app)
    assert created["title"] == "Fonctionnement des Assemblées locales"
    assert created["starts_at"] == dt.datetime(2020, 11, 21, 9, 0, tzinfo=UTC)
    assert created["ends_at"] == dt.datetime(2020, 11, 21, 11, 0, tzinfo=UTC)
    assert created["facilitators"] == "Anim et Co"
    assert created["meeting_url"] == "https://visio.example.org/room"
    assert created["slug"] == "fonctionnement-des-assemblees-locales"


def test_summer_time_is_taken_into_account(app, manager):
    assert (
        post_new(manager, starts_at="2021-07-01T10:00", ends_at="2021-07-01T11:30").status_code
        == 303
    )
    [created] = meetings(app)
    assert created["starts_at"] == dt.datetime(2021, 7, 1, 8, 0, tzinfo=UTC)
    assert created["ends_at"] == dt.datetime(2021, 7, 1, 9, 30, tzinfo=UTC)


def test_created_session_appears_in_the_programme_at_local_time(manager):
    post_new(manager, title="Atelier climat", slug="atelier-climat")
    programme = manager.get("/").text
    assert "Atelier climat" in programme
    page = manager.get("/sessions/atelier-climat")
    assert page.status_code == 200
    assert "10:00" in page.text
    assert "12:00" in page.text


def test_end_before_start_is_refused_with_an_error_next_to_the_field(app, manager):
    response = post_new(manager, starts_at="2020-11-21T12:00", ends_at="2020-11-21T10:00")
    assert response.status_code == 400
    page = response.text
    assert field_error(page, "ends_at") == "The end must come after the start."
    assert re.search(r'aria-describedby="ends_at-error"', page)
    assert count_rows(app, Meeting) == 0


def test_end_equal_to_start_is_refused(app, manager):
    response = post_new(manager, starts_at="2020-11-21T10:00", ends_at="2020-11-21T10:00")
    assert response.status_code == 400
    assert field_error(response.text, "ends_at")
    assert count_rows(app, Meeting) == 0


def test_refused_form_keeps_what_was_typed(manager):
    response = post_new(
        manager, title="Mon atelier", starts_at="2020-11-21T12:00", ends_at="2020-11-21T10:00"
    )
    assert 'value="Mon atelier"' in response.text
    assert 'value="2020-11-21T12:00"' in response.text


@pytest.mark.parametrize(
    "fields",
    [
        {"title": ""},
        {"starts_at": ""},
        {"ends_at": "not a date"},
        {"starts_at": "2020-13-40T25:99"},
        {"meeting_url": "javascript:alert(1)"},
        {"slug": "Pas Un Slug!"},
    ],
)
def test_invalid_session_fields_are_refused_and_nothing_is_created(app, manager, fields):
    response = post_new(manager, **fields)
    assert response.status_code == 400
    assert 'class="error"' in response.text
    assert count_rows(app, Meeting) == 0


def test_duplicate_slug_is_refused(app, manager, make_meeting):
    make_meeting("Atelier", slug="atelier")
    response = post_new(manager, title="Autre atelier", slug="atelier")
    assert response.status_code == 400
    assert field_error(response.text, "ends_at") or field_error(response.text, "slug")
    assert "Another session already uses this slug." in response.text
    assert [m["slug"] for m in meetings(app)] == ["atelier"]


def test_same_title_gets_a_distinct_slug(app, manager):
    assert post_new(manager, title="Atelier").status_code == 303
    assert post_new(manager, title="Atelier").status_code == 303
    assert [m["slug"] for m in meetings(app)] == ["atelier", "atelier-2"]


def test_create_without_csrf_token_is_refused_and_creates_nothing(app, manager):
    response = manager.post("/manage/sessions/new", data=session_form())
    assert response.status_code == 400
    assert count_rows(app, Meeting) == 0


# --- edit -----------------------------------------------------------------------------


def test_edit_page_shows_the_times_in_local_time(manager, make_meeting):
    meeting = make_meeting("Atelier", day=21, hour=9)  # 09:00 UTC is 10:00 in Paris
    page = manager.get(f"/manage/sessions/{meeting.id}/edit").text
    assert 'value="2020-11-21T10:00"' in page
    assert 'value="2020-11-21T12:00"' in page


def test_edit_changes_the_session(app, manager, make_meeting):
    meeting = make_meeting("Ancien titre", slug="ancien")
    response = post_edit(
        manager,
        meeting.id,
        title="Nouveau titre",
        slug="nouveau",
        starts_at="2020-11-24T14:00",
        ends_at="2020-11-24T16:30",
        description="Mise à jour",
    )
    assert response.status_code == 303
    [changed] = meetings(app)
    assert changed["title"] == "Nouveau titre"
    assert changed["slug"] == "nouveau"
    assert changed["starts_at"] == dt.datetime(2020, 11, 24, 13, 0, tzinfo=UTC)
    assert changed["ends_at"] == dt.datetime(2020, 11, 24, 15, 30, tzinfo=UTC)
    assert changed["description"] == "Mise à jour"
    assert manager.get("/sessions/nouveau").status_code == 200
    assert manager.get("/sessions/ancien").status_code == 404


def test_edit_keeps_the_slug_when_left_empty(app, manager, make_meeting):
    meeting = make_meeting("Atelier", slug="atelier")
    assert post_edit(manager, meeting.id, title="Atelier renommé").status_code == 303
    assert meetings(app)[0]["slug"] == "atelier"


def test_edit_with_end_before_start_is_refused_and_changes_nothing(app, manager, make_meeting):
    meeting = make_meeting("Atelier")
    before = meetings(app)
    response = post_edit(
        manager,
        meeting.id,
        title="Changé",
        starts_at="2020-11-21T12:00",
        ends_at="2020-11-21T11:00",
    )
    assert response.status_code == 400
    assert field_error(response.text, "ends_at")
    assert meetings(app) == before


def test_edit_to_a_slug_already_taken_is_refused_and_changes_nothing(app, manager, make_meeting):
    make_meeting("Premier", slug="premier")
    second = make_meeting("Second", slug="second", day=22)
    before = meetings(app)
    response = post_edit(manager, second.id, title="Second", slug="premier")
    assert response.status_code == 400
    assert meetings(app) == before


def test_edit_without_csrf_token_is_refused(app, manager, make_meeting):
    meeting = make_meeting("Atelier")
    before = meetings(app)
    response = manager.post(f"/manage/sessions/{meeting.id}/edit", data=session_form(title="X"))
    assert response.status_code == 400
    assert meetings(app) == before


# --- delete ---------------------------------------------------------------------------


def test_delete_session_turns_its_documents_into_general_documents(
    app, manager, make_meeting, make_document, storage_dir
):
    meeting = make_meeting("À supprimer")
    other = make_meeting("Reste", day=22)
    moved = [make_document("a.pdf", meeting=meeting), make_document("b.pdf", meeting=meeting)]
    stays = make_document("c.pdf", meeting=other)
    files = stored_files(storage_dir)

    response = manager.post(
        f"/manage/sessions/{meeting.id}/delete",
        data={"csrf_token": csrf_token(manager, "/manage/upload")},
    )
    assert response.status_code == 303
    assert [m["id"] for m in meetings(app)] == [other.id]
    assert count_rows(app, Document) == 3
    with app.app_context():
        assert db.session.get(Document, moved[0].id).meeting_id is None
        assert db.session.get(Document, moved[1].id).meeting_id is None
        assert db.session.get(Document, stays.id).meeting_id == other.id
    assert stored_files(storage_dir) == files
    response = manager.get(f"/documents/{moved[0].id}/a.pdf")
    assert response.data == PDF_BYTES
    response.close()
    programme = manager.get("/").text
    assert "À supprimer" not in programme
    general = programme.split('id="general"', 1)
    assert len(general) == 2
    assert "a.pdf" in general[1] and "b.pdf" in general[1]


def test_delete_without_csrf_token_keeps_the_session(app, manager, make_meeting):
    meeting = make_meeting()
    response = manager.post(f"/manage/sessions/{meeting.id}/delete")
    assert response.status_code == 400
    assert count_rows(app, Meeting) == 1


def test_get_on_delete_is_not_allowed(app, manager, make_meeting):
    meeting = make_meeting()
    assert manager.get(f"/manage/sessions/{meeting.id}/delete").status_code == 405
    assert count_rows(app, Meeting) == 1


# --- unknown ids ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/manage/sessions/9999/edit"),
        ("post", "/manage/sessions/9999/edit"),
        ("post", "/manage/sessions/9999/delete"),
    ],
)
def test_unknown_session_ids_get_404(app, manager, make_meeting, method, path):
    make_meeting()
    before = meetings(app)
    if method == "get":
        response = manager.get(path)
    else:
        data = session_form(csrf_token=csrf_token(manager, "/manage/upload"))
        response = manager.post(path, data=data)
    assert response.status_code == 404
    assert "Page not found" in response.text
    assert meetings(app) == before


def test_a_refused_session_edit_keeps_what_was_typed_with_the_error_next_to_the_field(
    app, manager, make_meeting
):
    meeting = make_meeting("Atelier")
    response = post_edit(
        manager,
        meeting.id,
        title="Atelier renommé",
        facilitators="Léa, Sam",
        starts_at="2020-11-21T12:00",
        ends_at="2020-11-21T11:00",
    )
    assert response.status_code == 400
    page = response.text
    assert 'value="Atelier renommé"' in page
    assert 'value="Léa, Sam"' in page
    assert 'value="2020-11-21T11:00"' in page
    assert 'aria-describedby="ends_at-error"' in page
    summary = page.split('class="error-summary"', 1)[1].split("</div>", 1)[0]
    assert re.findall(r'href="#([^"]+)"', summary) == ["ends_at"]
