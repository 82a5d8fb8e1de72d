"""Uploading documents through /manage/upload (SPEC sections 4 and 6)."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile

import pytest
from conftest import (
    JPEG_BYTES,
    PDF_BYTES,
    PNG_BYTES,
    count_rows,
    csrf_token,
    login,
    stored_files,
    unlock,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from portal import create_app
from portal.extensions import db
from portal.models import Document, Tag

KEY = re.compile(r"[0-9a-f]{32}")


def upload(client, files, *, session="", tags="", token=None, **fields):
    """POST files to /manage/upload as a browser does; ``files`` is a list of (bytes, name)."""
    data = {
        "files": [(io.BytesIO(content), name) for content, name in files],
        "session": session,
        "tags": tags,
        "title": "",
        "description": "",
        **fields,
    }
    if token is not False:
        data["csrf_token"] = token or csrf_token(client, "/manage/upload")
    return client.post("/manage/upload", data=data, content_type="multipart/form-data")


def documents(app) -> list[dict]:
    with app.app_context():
        rows = db.session.scalars(db.select(Document).order_by(Document.id)).all()
        return [
            {
                "title": d.title,
                "description": d.description,
                "original_name": d.original_name,
                "meeting_id": d.meeting_id,
                "storage_key": d.storage_key,
                "size": d.size,
                "sha256": d.sha256,
                "content_type": d.content_type,
                "tags": sorted(t.name for t in d.tags),
            }
            for d in rows
        ]


def docx_bytes(*members: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member in members:
            archive.writestr(member, "<xml/>")
    return buffer.getvalue()


@pytest.fixture
def uploader(facilitator):
    facilitator.set_cookie("lang", "en")
    return facilitator


def assert_nothing_stored(app, storage_dir):
    assert count_rows(app, Document) == 0
    assert stored_files(storage_dir) == []


# --- the form -------------------------------------------------------------------------


def test_upload_page_has_a_labelled_field_for_each_input(uploader):
    response = uploader.get("/manage/upload")
    assert response.status_code == 200
    page = response.text
    assert 'enctype="multipart/form-data"' in page
    assert 'name="csrf_token"' in page
    for name in ("files", "session", "tags", "title", "description"):
        assert re.search(rf'<label for="{name}">[^<]+</label>', page), f"no label for {name}"
        assert re.search(rf'id="{name}"[^>]*name="{name}"|name="{name}"[^>]*id="{name}"', page)
    assert re.search(r'<input[^>]*multiple[^>]*name="files"|name="files"[^>]*multiple', page)


def test_upload_page_offers_every_session_and_general_documents(uploader, make_meeting):
    meeting = make_meeting("Atelier climat")
    page = uploader.get("/manage/upload").text
    assert '<option value="">' in page or '<option selected value="">' in page
    assert f'value="{meeting.id}"' in page
    assert "Atelier climat" in page


def test_upload_page_preselects_the_session_given_in_the_query(uploader, make_meeting):
    meeting = make_meeting()
    page = uploader.get(f"/manage/upload?session={meeting.id}").text
    assert re.search(rf'<option selected value="{meeting.id}">', page)


# --- accepted files -------------------------------------------------------------------


def test_several_files_go_into_a_session_with_tags_under_random_keys(
    app, uploader, storage_dir, make_meeting
):
    meeting = make_meeting()
    response = upload(
        uploader,
        [(PDF_BYTES, "programme.pdf"), (PNG_BYTES, "affiche.png"), (JPEG_BYTES, "photo.jpg")],
        session=str(meeting.id),
        tags="Support, Climat, support",
    )
    assert response.status_code == 200
    rows = documents(app)
    assert [r["original_name"] for r in rows] == ["programme.pdf", "affiche.png", "photo.jpg"]
    assert {r["meeting_id"] for r in rows} == {meeting.id}
    assert all(r["tags"] == ["Climat", "Support"] for r in rows)
    assert count_rows(app, Tag) == 2
    files = stored_files(storage_dir)
    assert sorted(files) == sorted(r["storage_key"] for r in rows)
    assert all(KEY.fullmatch(name) for name in files)
    for row, content in zip(rows, (PDF_BYTES, PNG_BYTES, JPEG_BYTES), strict=True):
        stored = (storage_dir / row["storage_key"]).read_bytes()
        assert stored == content
        assert row["size"] == len(content)
        assert row["sha256"] == hashlib.sha256(content).hexdigest()


def test_stored_file_names_never_come_from_the_user(app, uploader, storage_dir):
    upload(uploader, [(PDF_BYTES, "0123456789abcdef0123456789abcdef.pdf")])
    upload(uploader, [(PDF_BYTES, "rapport.pdf")])
    files = stored_files(storage_dir)
    assert len(files) == 2
    assert all(KEY.fullmatch(name) for name in files)
    assert "0123456789abcdef0123456789abcdef" not in files
    assert not any("rapport" in name for name in files)


def test_upload_without_session_makes_general_documents(app, uploader):
    assert upload(uploader, [(PDF_BYTES, "general.pdf")]).status_code == 200
    assert documents(app)[0]["meeting_id"] is None


def test_uploaded_document_appears_on_the_programme_and_downloads(app, uploader, make_meeting):
    meeting = make_meeting("Atelier climat")
    upload(uploader, [(PDF_BYTES, "programme.pdf")], session=str(meeting.id), tags="Support")
    participant = app.test_client()
    assert unlock(participant).status_code == 303
    page = participant.get(f"/sessions/{meeting.slug}").text
    assert "programme" in page
    assert "Support" in page
    with participant.get("/documents/1/programme.pdf") as download:
        assert download.status_code == 200
        assert download.data == PDF_BYTES


def test_result_page_lists_accepted_and_rejected_files_with_reasons(app, uploader, storage_dir):
    response = upload(
        uploader,
        [
            (PDF_BYTES, "bon.pdf"),
            (b"<html><script>alert(1)</script></html>", "page.html"),
            (b"<!doctype html><html></html>", "faux.pdf"),
            (b"", "vide.pdf"),
        ],
    )
    assert response.status_code == 200
    page = response.text
    accepted = re.search(r'<ul class="result accepted">(.*?)</ul>', page, re.S).group(1)
    rejected = re.search(r'<ul class="result rejected">(.*?)</ul>', page, re.S).group(1)
    assert "bon.pdf" in accepted
    assert "page.html" in rejected and "This type of file is not accepted." in rejected
    assert "faux.pdf" in rejected
    assert "The content of the file does not match its extension." in rejected
    assert "vide.pdf" in rejected and "The file is empty." in rejected
    assert len(re.findall(r"<li>", rejected)) == 3
    assert [r["original_name"] for r in documents(app)] == ["bon.pdf"]
    assert len(stored_files(storage_dir)) == 1


# --- rejected files -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "name"),
    [
        (b"<html><body>hello</body></html>", "page.html"),
        (b"<html><body>hello</body></html>", "page.htm"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "logo.svg"),
        (b"MZ\x90\x00\x03\x00\x00\x00", "setup.exe"),
        (b"alert(document.cookie)", "script.js"),
        (b"#!/bin/sh\nrm -rf /\n", "install.sh"),
        (PDF_BYTES, "README"),
        (PDF_BYTES, ".pdf"),
        (PDF_BYTES, "document.PDF.html"),
    ],
)
def test_forbidden_extensions_are_rejected(app, uploader, storage_dir, content, name):
    response = upload(uploader, [(content, name)])
    assert response.status_code == 400
    assert "This type of file is not accepted." in response.text
    assert_nothing_stored(app, storage_dir)


@pytest.mark.parametrize(
    ("content", "name"),
    [
        (b"<!DOCTYPE html><html><script>alert(1)</script></html>", "support.pdf"),
        (b"just some text, not an image", "photo.png"),
        (b"just some text, not an image", "photo.jpg"),
        (PNG_BYTES, "photo.jpg"),
        (PDF_BYTES, "photo.png"),
        (docx_bytes("readme.txt", "data/content.xml"), "rapport.docx"),
        (b"PK\x03\x04 not really a zip", "rapport.docx"),
        (PDF_BYTES, "rapport.docx"),
        (b"\x00\x01\x02binary", "notes.txt"),
        (b"<svg></svg>", "archive.zip"),
    ],
)
def test_content_that_lies_about_its_extension_is_rejected(
    app, uploader, storage_dir, content, name
):
    response = upload(uploader, [(content, name)])
    assert response.status_code == 400
    assert "The content of the file does not match its extension." in response.text
    assert_nothing_stored(app, storage_dir)


def test_a_real_docx_is_accepted(app, uploader, storage_dir):
    content = docx_bytes("[Content_Types].xml", "word/document.xml")
    assert upload(uploader, [(content, "rapport.docx")]).status_code == 200
    assert documents(app)[0]["original_name"] == "rapport.docx"
    assert len(stored_files(storage_dir)) == 1


def test_empty_file_is_rejected(app, uploader, storage_dir):
    response = upload(uploader, [(b"", "vide.pdf")])
    assert response.status_code == 400
    assert "The file is empty." in response.text
    assert_nothing_stored(app, storage_dir)


def test_request_without_any_file_is_refused(app, uploader, storage_dir):
    response = uploader.post(
        "/manage/upload",
        data={"session": "", "tags": "", "csrf_token": csrf_token(uploader, "/manage/upload")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert 'id="files-error"' in response.text
    assert_nothing_stored(app, storage_dir)


# --- names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("../../etc/passwd.pdf", "passwd.pdf"),
        ("/abs/path.pdf", "path.pdf"),
        # Backslashes doubled: the multipart parser reads ``\\`` in a quoted name as ``\``.
        ("..\\\\..\\\\x.pdf", "x.pdf"),
        ("C:\\\\Users\\\\Anim\\\\Bureau\\\\support.pdf", "support.pdf"),
        ("../../../../../../tmp/evil.pdf", "evil.pdf"),
    ],
)
def test_path_in_the_name_keeps_only_the_last_component(
    app, uploader, storage_dir, tmp_path, raw, kept
):
    before = sorted(p.name for p in tmp_path.iterdir())
    response = upload(uploader, [(PDF_BYTES, raw)])
    assert response.status_code == 200
    assert documents(app)[0]["original_name"] == kept
    files = stored_files(storage_dir)
    assert len(files) == 1 and KEY.fullmatch(files[0])
    # Nothing was written beside the storage, nor in the place the name points to.
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "etc").exists()
    assert not any(p.is_file() for p in storage_dir.rglob("*") if p.parent != storage_dir)


def test_bidi_and_control_characters_are_stripped_from_the_name(app, uploader):
    # "\u202e" would display "evil_fdp.exe" as "evil_exe.pdf".
    response = upload(uploader, [(PDF_BYTES, "evil_\u202egnp\u2066\u200f\x7f.pdf")])
    assert response.status_code == 200
    name = documents(app)[0]["original_name"]
    assert name == "evil_gnp.pdf"
    assert "\u202e" not in response.text


def test_a_300_byte_name_is_cut_to_255_bytes_keeping_its_extension(app, uploader):
    raw = "a" * 296 + ".pdf"
    assert len(raw.encode()) == 300
    assert upload(uploader, [(PDF_BYTES, raw)]).status_code == 200
    name = documents(app)[0]["original_name"]
    assert len(name.encode()) == 255
    assert name == "a" * 251 + ".pdf"


def test_a_long_multibyte_name_is_cut_on_a_character_boundary(app, uploader):
    raw = "é" * 200 + ".pdf"
    assert upload(uploader, [(PDF_BYTES, raw)]).status_code == 200
    name = documents(app)[0]["original_name"]
    assert len(name.encode()) <= 255
    assert name.endswith(".pdf")
    assert set(name[:-4]) == {"é"}


def test_unicode_names_are_kept(app, uploader):
    raw = "Compte-rendu — Élections 2020 ✓ 日本.pdf"
    response = upload(uploader, [(PDF_BYTES, raw)])
    assert response.status_code == 200
    assert documents(app)[0]["original_name"] == raw
    assert raw in response.text


# --- title and description ------------------------------------------------------------


def test_title_and_description_apply_when_one_file_is_sent(app, uploader):
    response = upload(
        uploader, [(PDF_BYTES, "cr.pdf")], title="Compte-rendu", description="Synthèse du jour"
    )
    assert response.status_code == 200
    row = documents(app)[0]
    assert row["title"] == "Compte-rendu"
    assert row["description"] == "Synthèse du jour"


def test_title_and_description_are_ignored_when_several_files_are_sent(app, uploader):
    response = upload(
        uploader,
        [(PDF_BYTES, "un.pdf"), (PDF_BYTES, "deux.pdf")],
        title="Same title",
        description="Same description",
    )
    assert response.status_code == 200
    rows = documents(app)
    assert [r["title"] for r in rows] == ["un", "deux"]
    assert all(r["description"] == "" for r in rows)


def test_optional_title_and_description_may_be_left_out_of_the_request(app, uploader):
    # A script (curl, the facilitators' own tools) sends only the fields it needs.
    response = uploader.post(
        "/manage/upload",
        data={
            "files": [(io.BytesIO(PDF_BYTES), "support.pdf")],
            "session": "",
            "csrf_token": csrf_token(uploader, "/manage/upload"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 200
    row = documents(app)[0]
    assert (row["title"], row["description"], row["meeting_id"]) == ("support", "", None)


def test_title_defaults_to_the_name_without_extension(app, uploader):
    upload(uploader, [(PDF_BYTES, "Ordre du jour.pdf")])
    assert documents(app)[0]["title"] == "Ordre du jour"


# --- refused requests change nothing ------------------------------------------------------


@pytest.fixture
def small_app(app, app_config):
    # A second app on the instance the ``app`` fixture prepared, with a 1 KiB request limit.
    application = create_app({**app_config, "MAX_CONTENT_LENGTH": 1024})
    yield application
    with application.app_context():
        db.session.remove()
        db.engine.dispose()


def test_request_over_the_size_limit_gets_413_and_stores_nothing(small_app, storage_dir):
    client = small_app.test_client()
    client.set_cookie("lang", "en")
    assert login(client).status_code == 303
    response = upload(client, [(b"%PDF-1.4\n" + b"x" * 4096, "gros.pdf")])
    assert response.status_code == 413
    assert response.mimetype == "text/html"
    assert "Too large" in response.text
    assert "Traceback" not in response.text
    assert count_rows(small_app, Document) == 0
    assert stored_files(storage_dir) == []
    assert list((storage_dir / ".incoming").iterdir()) == []


def test_request_under_the_size_limit_still_works(small_app, storage_dir):
    client = small_app.test_client()
    assert login(client).status_code == 303
    assert upload(client, [(PDF_BYTES, "petit.pdf")]).status_code == 200
    assert count_rows(small_app, Document) == 1


def test_upload_without_csrf_token_gets_400_and_stores_nothing(app, uploader, storage_dir):
    response = upload(uploader, [(PDF_BYTES, "support.pdf")], token=False)
    assert response.status_code == 400
    assert_nothing_stored(app, storage_dir)


def test_upload_with_a_forged_csrf_token_gets_400_and_stores_nothing(app, uploader, storage_dir):
    response = upload(uploader, [(PDF_BYTES, "support.pdf")], token="forged")
    assert response.status_code == 400
    assert_nothing_stored(app, storage_dir)


def test_anonymous_upload_is_sent_to_login_and_writes_nothing(app, client, storage_dir):
    token = csrf_token(client, "/login")
    response = upload(client, [(PDF_BYTES, "support.pdf")], token=token)
    assert response.status_code in (302, 303)
    assert response.headers["Location"].startswith("/login")
    assert_nothing_stored(app, storage_dir)


def test_participant_upload_is_sent_to_login_and_writes_nothing(app, participant, storage_dir):
    token = csrf_token(participant, "/access")
    response = upload(participant, [(PDF_BYTES, "support.pdf")], token=token)
    assert response.status_code in (302, 303)
    assert response.headers["Location"].startswith("/login")
    assert_nothing_stored(app, storage_dir)


def test_unknown_session_id_is_refused_with_400(app, uploader, storage_dir, make_meeting):
    make_meeting()
    response = upload(uploader, [(PDF_BYTES, "support.pdf")], session="9999")
    assert response.status_code == 400
    assert_nothing_stored(app, storage_dir)


def test_non_numeric_session_id_is_refused_with_400(app, uploader, storage_dir):
    response = upload(uploader, [(PDF_BYTES, "support.pdf")], session="abc")
    assert response.status_code == 400
    assert_nothing_stored(app, storage_dir)


def test_storage_failure_while_moving_the_file_leaves_no_file_and_no_row(
    app, uploader, storage_dir, monkeypatch
):
    storage = app.extensions["portal.storage"]

    def broken_commit(incoming):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "commit", broken_commit)
    response = upload(uploader, [(PDF_BYTES, "support.pdf")])
    assert response.status_code >= 400
    assert "Traceback" not in response.text
    assert_nothing_stored(app, storage_dir)


def test_failure_after_the_file_is_moved_into_place_leaves_no_file_and_no_row(
    app, uploader, storage_dir, monkeypatch
):
    import portal.storage

    def broken_fsync(path):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(portal.storage, "_fsync_dir", broken_fsync)
    response = upload(uploader, [(PDF_BYTES, "support.pdf")])
    assert response.status_code >= 400
    assert_nothing_stored(app, storage_dir)


def test_database_failure_at_commit_leaves_no_file_and_no_row(
    app, uploader, storage_dir, monkeypatch
):
    token = csrf_token(uploader, "/manage/upload")

    def broken_commit(self):
        raise OperationalError("COMMIT", {}, Exception("database is locked"))

    monkeypatch.setattr(Session, "commit", broken_commit)
    response = upload(uploader, [(PDF_BYTES, "support.pdf")], token=token)
    monkeypatch.undo()
    assert response.status_code == 503
    assert "Traceback" not in response.text
    assert_nothing_stored(app, storage_dir)


def test_one_rejected_file_does_not_stop_the_others(app, uploader, storage_dir):
    response = upload(uploader, [(b"", "vide.pdf"), (PDF_BYTES, "bon.pdf"), (b"MZ", "virus.exe")])
    assert response.status_code == 200
    assert [r["original_name"] for r in documents(app)] == ["bon.pdf"]
    assert len(stored_files(storage_dir)) == 1


# --- the upload page's scripts ----------------------------------------------------------


def _assets(page: str) -> list[str]:
    return re.findall(r'<(?:script src|link rel="stylesheet" href)="([^"]+)"', page)


def test_the_upload_page_loads_under_100_kb_of_css_and_javascript_all_from_the_portal(
    facilitator,
):
    page = facilitator.get("/manage/upload").get_data(as_text=True)
    assets = _assets(page)
    paths = [a.split("?", 1)[0] for a in assets]  # static URLs carry a version query
    assert any(p.endswith("/upload.js") for p in paths)
    assert any(p.endswith("/vendor/tus.min.js") for p in paths)
    total = 0
    for url in assets:
        assert url.startswith("/static/"), url
        response = facilitator.get(url)
        assert response.status_code == 200
        total += len(response.data)
        response.close()
    assert total < 100_000, total
    # The CSP forbids inline scripts and handlers; the page relies on none.
    assert "<script>" not in page
    assert not re.search(r"<[^>]+\son[a-z]+=", page)


def test_the_upload_page_gives_its_script_the_tus_endpoint_and_translated_messages(facilitator):
    page = facilitator.get("/manage/upload").get_data(as_text=True)
    assert 'data-endpoint="/manage/tus"' in page
    assert 'data-sending="Envoi\u00a0: {percent}\u00a0% · {speed}"' in page
    assert 'data-rejected="Refusé\u00a0: {reason}"' in page
