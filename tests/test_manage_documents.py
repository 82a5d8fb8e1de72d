"""Editing, retagging, replacing and deleting documents under /manage/documents/<id>/."""

from __future__ import annotations

import hashlib
import io
import re

import pytest
from conftest import PDF_BYTES, PNG_BYTES, count_rows, csrf_token, stored_files, unlock
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from portal import download_counts
from portal.extensions import db
from portal.models import Document

NEW_PDF = b"%PDF-1.7\n% a second version of the support\n%%EOF\n"


@pytest.fixture
def manager(facilitator):
    facilitator.set_cookie("lang", "en")
    return facilitator


def token(client) -> str:
    return csrf_token(client, "/manage/upload")


def row(app, document_id: int) -> dict | None:
    with app.app_context():
        document = db.session.get(Document, document_id)
        if document is None:
            return None
        return {
            "title": document.title,
            "description": document.description,
            "meeting_id": document.meeting_id,
            "tags": sorted(t.name for t in document.tags),
            "original_name": document.original_name,
            "storage_key": document.storage_key,
            "size": document.size,
            "sha256": document.sha256,
            "content_type": document.content_type,
        }


def edit(client, document_id: int, **fields):
    data = {"title": "", "description": "", "session": "", "tags": "", **fields}
    data.setdefault("csrf_token", token(client))
    return client.post(f"/manage/documents/{document_id}/edit", data=data)


def replace(client, document_id: int, content: bytes, name: str, *, with_token: bool = True):
    data = {"file": (io.BytesIO(content), name)}
    if with_token:
        data["csrf_token"] = token(client)
    return client.post(
        f"/manage/documents/{document_id}/replace", data=data, content_type="multipart/form-data"
    )


def listed_titles(page: str) -> list[str]:
    """Titles of the documents listed on a programme page."""
    return re.findall(r'<a class="doc-title" href="[^"]*">([^<]*)</a>', page)


def download(client, document_id: int, name: str = "file"):
    response = client.get(f"/documents/{document_id}/{name}")
    data = response.data
    status = response.status_code
    response.close()
    return status, data


# --- edit -----------------------------------------------------------------------------


def test_edit_page_shows_the_documents_current_values(manager, make_meeting, make_document):
    meeting = make_meeting("Atelier climat")
    document = make_document(meeting=meeting, tags=["Support", "Climat"], title="Ordre du jour")
    response = manager.get(f"/manage/documents/{document.id}/edit")
    assert response.status_code == 200
    page = response.text
    assert 'value="Ordre du jour"' in page
    assert re.search(rf'<option selected value="{meeting.id}">', page)
    assert 'value="Climat, Support"' in page
    assert f'action="/manage/documents/{document.id}/replace"' in page
    assert f'action="/manage/documents/{document.id}/delete"' in page


def test_edit_changes_title_description_tags_and_session_visible_in_the_programme(
    app, manager, make_meeting, make_document
):
    first = make_meeting("Premier temps", day=21)
    second = make_meeting("Second temps", day=22)
    document = make_document(meeting=first, tags=["Ancienne"], title="Ancien titre")
    response = edit(
        manager,
        document.id,
        title="Nouveau titre",
        description="Une description neuve",
        session=str(second.id),
        tags="Synthèse, Climat",
    )
    assert response.status_code == 303
    assert response.headers["Location"].rstrip("/") == "/manage"
    assert row(app, document.id)["tags"] == ["Climat", "Synthèse"]
    assert row(app, document.id)["meeting_id"] == second.id

    programme = manager.get("/").text
    assert listed_titles(programme) == ["Nouveau titre"]
    assert '<p class="description">Une description neuve</p>' in programme
    assert ">Synthèse</a>" in programme
    assert "Ancienne" not in programme
    assert listed_titles(manager.get(f"/sessions/{second.slug}").text) == ["Nouveau titre"]
    assert listed_titles(manager.get(f"/sessions/{first.slug}").text) == []
    assert listed_titles(manager.get("/?tag=synthese").text) == ["Nouveau titre"]
    assert listed_titles(manager.get("/?tag=ancienne").text) == []


def test_edit_can_make_a_document_general(app, manager, make_meeting, make_document):
    meeting = make_meeting()
    document = make_document(meeting=meeting)
    assert edit(manager, document.id, title="Général", session="").status_code == 303
    assert row(app, document.id)["meeting_id"] is None


def test_edit_without_a_title_is_refused_and_changes_nothing(app, manager, make_document):
    document = make_document(title="Titre", tags=["Support"])
    before = row(app, document.id)
    response = edit(manager, document.id, title="", tags="Autre")
    assert response.status_code == 400
    assert 'id="title-error"' in response.text
    assert row(app, document.id) == before


def test_edit_with_an_unknown_session_is_refused_and_changes_nothing(app, manager, make_document):
    document = make_document(title="Titre")
    before = row(app, document.id)
    response = edit(manager, document.id, title="Autre", session="9999")
    assert response.status_code == 400
    assert row(app, document.id) == before


def test_edit_without_csrf_token_is_refused_and_changes_nothing(app, manager, make_document):
    document = make_document(title="Titre")
    before = row(app, document.id)
    response = manager.post(
        f"/manage/documents/{document.id}/edit",
        data={"title": "Piraté", "description": "", "session": "", "tags": ""},
    )
    assert response.status_code == 400
    assert row(app, document.id) == before


def test_edit_does_not_touch_the_stored_file(app, manager, make_document, storage_dir):
    document = make_document()
    files = stored_files(storage_dir)
    assert edit(manager, document.id, title="Autre").status_code == 303
    assert stored_files(storage_dir) == files
    assert download(manager, document.id) == (200, PDF_BYTES)


# --- replace --------------------------------------------------------------------------


def test_replace_serves_the_new_bytes_and_removes_the_old_file(
    app, manager, make_document, storage_dir
):
    document = make_document("support.pdf", PDF_BYTES, title="Support")
    old_key = row(app, document.id)["storage_key"]
    response = replace(manager, document.id, NEW_PDF, "support-v2.pdf")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/manage/documents/{document.id}/edit"

    after = row(app, document.id)
    assert after["sha256"] == hashlib.sha256(NEW_PDF).hexdigest()
    assert after["size"] == len(NEW_PDF)
    assert after["original_name"] == "support-v2.pdf"
    assert after["title"] == "Support"
    assert after["storage_key"] != old_key
    assert stored_files(storage_dir) == [after["storage_key"]]
    assert download(manager, document.id) == (200, NEW_PDF)
    assert count_rows(app, Document) == 1


def test_replace_with_another_type_updates_the_media_type(app, manager, make_document):
    document = make_document("support.pdf", PDF_BYTES)
    assert replace(manager, document.id, PNG_BYTES, "affiche.png").status_code == 303
    after = row(app, document.id)
    assert after["content_type"] == "image/png"
    assert download(manager, document.id) == (200, PNG_BYTES)


@pytest.mark.parametrize(
    ("content", "name"),
    [
        (b"<html><script>alert(1)</script></html>", "support.html"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "support.svg"),
        (b"<!doctype html><html></html>", "support.pdf"),
        (b"", "support.pdf"),
        (b"MZ\x90\x00", "support.exe"),
    ],
)
def test_a_refused_replacement_keeps_the_old_file_intact(
    app, manager, make_document, storage_dir, content, name
):
    document = make_document("support.pdf", PDF_BYTES)
    before = row(app, document.id)
    files = stored_files(storage_dir)
    response = replace(manager, document.id, content, name)
    assert response.status_code == 400
    assert 'id="file-error"' in response.text
    assert row(app, document.id) == before
    assert stored_files(storage_dir) == files
    assert (storage_dir / before["storage_key"]).read_bytes() == PDF_BYTES
    assert download(manager, document.id) == (200, PDF_BYTES)


def test_replace_without_csrf_token_is_refused_and_keeps_the_old_file(
    app, manager, make_document, storage_dir
):
    document = make_document("support.pdf", PDF_BYTES)
    before = row(app, document.id)
    response = replace(manager, document.id, NEW_PDF, "support.pdf", with_token=False)
    assert response.status_code == 400
    assert row(app, document.id) == before
    assert stored_files(storage_dir) == [before["storage_key"]]


def test_replace_without_a_file_is_refused(app, manager, make_document, storage_dir):
    document = make_document()
    before = row(app, document.id)
    response = manager.post(
        f"/manage/documents/{document.id}/replace",
        data={"csrf_token": token(manager)},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert row(app, document.id) == before
    assert stored_files(storage_dir) == [before["storage_key"]]


def test_replace_failing_at_the_database_keeps_the_old_file(
    app, manager, make_document, storage_dir, monkeypatch
):
    document = make_document("support.pdf", PDF_BYTES)
    before = row(app, document.id)
    csrf = token(manager)

    def broken_commit(self):
        raise OperationalError("COMMIT", {}, Exception("database is locked"))

    monkeypatch.setattr(Session, "commit", broken_commit)
    response = manager.post(
        f"/manage/documents/{document.id}/replace",
        data={"file": (io.BytesIO(NEW_PDF), "support.pdf"), "csrf_token": csrf},
        content_type="multipart/form-data",
    )
    monkeypatch.undo()
    assert response.status_code == 503
    assert row(app, document.id) == before
    assert stored_files(storage_dir) == [before["storage_key"]]
    assert download(manager, document.id) == (200, PDF_BYTES)


# --- delete ---------------------------------------------------------------------------


def test_delete_removes_the_row_and_the_file(app, manager, make_document, storage_dir):
    keep = make_document("garder.pdf", PDF_BYTES)
    document = make_document("supprimer.pdf", NEW_PDF)
    response = manager.post(
        f"/manage/documents/{document.id}/delete", data={"csrf_token": token(manager)}
    )
    assert response.status_code == 303
    assert row(app, document.id) is None
    assert count_rows(app, Document) == 1
    assert stored_files(storage_dir) == [row(app, keep.id)["storage_key"]]
    assert manager.get(f"/manage/documents/{document.id}/edit").status_code == 404
    assert download(manager, document.id)[0] == 404
    assert download(manager, keep.id) == (200, PDF_BYTES)


def test_delete_without_csrf_token_is_refused_and_keeps_everything(
    app, manager, make_document, storage_dir
):
    document = make_document()
    files = stored_files(storage_dir)
    response = manager.post(f"/manage/documents/{document.id}/delete")
    assert response.status_code == 400
    assert row(app, document.id) is not None
    assert stored_files(storage_dir) == files


def test_deleted_document_leaves_the_programme(manager, make_document):
    document = make_document(title="Document à supprimer")
    make_document(title="Document gardé")
    assert listed_titles(manager.get("/").text) == ["Document à supprimer", "Document gardé"]
    manager.post(f"/manage/documents/{document.id}/delete", data={"csrf_token": token(manager)})
    assert listed_titles(manager.get("/").text) == ["Document gardé"]


# --- unknown ids and methods ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/manage/documents/9999/edit"),
        ("post", "/manage/documents/9999/edit"),
        ("post", "/manage/documents/9999/replace"),
        ("post", "/manage/documents/9999/delete"),
    ],
)
def test_unknown_document_ids_get_404(app, manager, make_document, storage_dir, method, path):
    make_document()
    files = stored_files(storage_dir)
    data = {
        "csrf_token": token(manager),
        "title": "X",
        "description": "",
        "session": "",
        "tags": "",
        "file": (io.BytesIO(PDF_BYTES), "x.pdf"),
    }
    if method == "get":
        response = manager.get(path)
    else:
        response = manager.post(path, data=data, content_type="multipart/form-data")
    assert response.status_code == 404
    assert "Page not found" in response.text
    assert count_rows(app, Document) == 1
    assert stored_files(storage_dir) == files


@pytest.mark.parametrize("action", ["delete", "replace"])
def test_get_on_delete_and_replace_is_not_allowed(app, manager, make_document, action):
    document = make_document()
    response = manager.get(f"/manage/documents/{document.id}/{action}")
    assert response.status_code == 405
    assert "POST" in response.headers.get("Allow", "")
    assert row(app, document.id) is not None


# --- the dashboard --------------------------------------------------------------------


def test_dashboard_escapes_a_title_with_markup(manager, make_document):
    make_document(title='<script>alert("x")</script><img src=x onerror=alert(1)>')
    page = manager.get("/manage/").text
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    assert "&lt;script&gt;alert(" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_dashboard_escapes_a_file_name_with_markup(manager, make_document):
    make_document(name="<img src=x onerror=alert(1)>.pdf", title="Titre sage")
    page = manager.get("/manage/").text
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;.pdf" in page


def dashboard_counts(page: str) -> dict[str, str]:
    return dict(
        re.findall(
            r'>([^<]+)</a><br><span class="small">[^<]*</span></td>.*?<td class="num">(\d+)</td>',
            page,
            re.S,
        )
    )


def test_dashboard_shows_counts_its_process_has_not_written_yet(app, manager, make_document):
    counted = make_document("souvent.pdf", title="Souvent lu")
    # The writer waits an hour: only the dashboard's own write can show these.
    app.extensions["portal.download_counts"].delay = 3600
    participant = app.test_client()
    assert unlock(participant).status_code == 303
    for _ in range(2):
        assert download(participant, counted.id)[0] == 200
    assert dashboard_counts(manager.get("/manage/").text) == {"Souvent lu": "2"}
    assert download(participant, counted.id)[0] == 200
    page = manager.get(f"/manage/documents/{counted.id}/edit").text
    assert "3 downloads" in page


def test_dashboard_shows_written_counts_when_the_others_cannot_be_written(
    app, manager, make_document, monkeypatch, caplog
):
    counted = make_document("souvent.pdf", title="Souvent lu")
    counter = app.extensions["portal.download_counts"]
    counter.delay = 3600
    participant = app.test_client()
    assert unlock(participant).status_code == 303
    assert download(participant, counted.id)[0] == 200
    counter.flush()
    assert download(participant, counted.id)[0] == 200

    def refused(engine, counts):
        raise OperationalError("UPDATE", None, OSError("database is locked"))

    monkeypatch.setattr(download_counts, "_write", refused)
    response = manager.get("/manage/")
    assert response.status_code == 200
    assert dashboard_counts(response.text) == {"Souvent lu": "1"}
    assert "download counts not written yet" in caplog.text
    assert counter.pending() == 1


def test_dashboard_shows_download_counts(app, manager, make_document):
    counted = make_document("souvent.pdf", title="Souvent lu")
    make_document("jamais.pdf", title="Jamais lu")
    participant = app.test_client()
    assert unlock(participant).status_code == 303
    for _ in range(3):
        assert download(participant, counted.id)[0] == 200
    page = manager.get("/manage/").text
    assert dashboard_counts(page) == {"Souvent lu": "3", "Jamais lu": "0"}
    assert "3 downloads in all" in page


# --- errors next to the fields ---------------------------------------------------------


def test_a_refused_edit_keeps_what_was_typed_and_marks_the_field(app, manager, make_document):
    document = make_document(title="Titre")
    response = edit(
        manager, document.id, title="   ", description="Ma description", tags="climat, eau"
    )
    assert response.status_code == 400
    page = response.text
    assert re.search(
        r'<input[^>]*aria-describedby="title-error"[^>]*aria-invalid="true"', page
    ) or (re.search(r'<input[^>]*aria-invalid="true"[^>]*aria-describedby="title-error"', page))
    assert re.search(r'<p class="error" id="title-error">[^<]+</p>', page)
    assert "Ma description</textarea>" in page
    assert 'value="climat, eau"' in page
    # The summary above the form leads to the field, and only to it.
    summary = page.split('class="error-summary"', 1)[1].split("</div>", 1)[0]
    assert re.findall(r'href="#([^"]+)"', summary) == ["title"]


def test_a_refused_replacement_shows_the_reason_next_to_the_file_field(app, manager, make_document):
    document = make_document()
    response = replace(manager, document.id, b"MZ\x90\x00", "outil.exe")
    assert response.status_code == 400
    page = response.text
    assert re.search(
        r'<p class="error" id="file-error">This type of file is not accepted.</p>', page
    )
    assert 'aria-describedby="file-error"' in page


def test_a_valid_edit_page_has_no_error_summary(manager, make_document):
    document = make_document()
    assert "error-summary" not in manager.get(f"/manage/documents/{document.id}/edit").text
