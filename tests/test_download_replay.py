"""A participant's further downloads, sent without Flask, exactly as Flask would send them.

As in test_replay.py, each request goes both through the whole application (where
``portal.replay`` may answer) and through Flask's own application, and the two answers must
be the same: status, headers in order, bytes. Only Date and Expires, which carry the second
the answer was made, may differ, by at most a second. Each of the two counts as a download.
"""

from __future__ import annotations

import io
import time
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from conftest import app_variant, flush_counts, login
from flask import Flask
from sqlalchemy.exc import DBAPIError
from test_replay import (
    Answer,
    Visitor,
    flask_path,
    header,
    new_password,
    new_secret_key,
    participant,
    replay_of,
    window_closed,
)

from portal import download_counts, download_replay
from portal.extensions import db
from portal.models import Document
from portal.services.documents import delete_document, replace_document

TIMED = ("date", "expires")


def untimed(answer: Answer) -> Answer:
    status, headers, body = answer
    return status, [(k, "<time>" if k.lower() in TIMED else v) for k, v in headers], body


def both(visitor: Visitor, path: str, method: str = "GET", **headers: str) -> tuple[Answer, int]:
    """The answer through the application and through Flask: the same but for the time."""
    before = replay_of(visitor.app).answered
    answer = visitor.ask(visitor.app, path, method, **headers)
    replayed = replay_of(visitor.app).answered - before
    again = visitor.ask(flask_path(visitor.app), path, method, **headers)
    assert untimed(answer) == untimed(again)
    for name in TIMED:
        if header(answer, name) is not None:
            sent = parsedate_to_datetime(header(answer, name))
            assert abs((parsedate_to_datetime(header(again, name)) - sent).total_seconds()) <= 1
    return answer, replayed


def counts(app: Flask) -> dict[str, int]:
    flush_counts(app)
    with app.app_context():
        found = {d.original_name: d.download_count for d in db.session.scalars(db.select(Document))}
        db.session.remove()
        return found


def url(document: Document) -> str:
    return f"/documents/{document.id}/{document.original_name}"


@pytest.fixture
def files(make_document) -> dict[str, Document]:
    return {
        "pdf": make_document("support.pdf", title="Support"),
        "text": make_document("Compte-rendu été – n°1.txt", content="Synthèse\n".encode()),
        "image": make_document("photo.png", content=b"\x89PNG\r\n\x1a\n" + b"\x00" * 64),
    }


def test_after_one_download_the_participants_next_ones_skip_flask(app, files):
    reader = participant(app)
    first, replayed = both(reader, url(files["pdf"]))
    assert first[0] == "200 OK" and replayed == 0
    again, replayed = both(reader, url(files["pdf"]))
    assert replayed == 1 and untimed(again) == untimed(first)
    # Another document, of another type and with a name that needs RFC 5987: its own
    # headers, the same as Flask's (charset, filename*, length, ETag, Last-Modified).
    text, replayed = both(reader, url(files["text"]))
    assert replayed == 1
    assert text[2] == "Synthèse\n".encode()
    assert header(text, "Content-Type") == "text/plain; charset=utf-8"
    assert "filename*=UTF-8''Compte-rendu%20%C3%A9t%C3%A9" in header(text, "Content-Disposition")
    image, replayed = both(reader, url(files["image"]))
    assert replayed == 1 and header(image, "Content-Type") == "image/png"
    # Every answer counted once, on both paths.
    assert counts(app) == {"support.pdf": 4, "Compte-rendu été – n°1.txt": 2, "photo.png": 2}


def test_a_download_keeps_the_documents_last_modified(app, files):
    reader = participant(app)
    first, _ = both(reader, url(files["pdf"]))
    time.sleep(1.1)
    asked_at = int(time.time())
    later, replayed = both(reader, url(files["pdf"]))
    assert replayed == 1
    assert header(later, "Last-Modified") == header(first, "Last-Modified")
    # The replayed answer carries its own time, not the noted one's.
    for name in TIMED:
        assert parsedate_to_datetime(header(later, name)).timestamp() >= asked_at
    # So a browser's revalidation by date still finds the file unchanged.
    since = header(first, "Last-Modified")
    assert reader.ask(app, url(files["pdf"]), If_Modified_Since=since)[0].startswith("304")


OTHER_REQUESTS = {
    "a range": ({"Range": "bytes=0-9"}, "", "206"),
    "a revalidation by ETag": ({"If_None_Match": "*"}, "", "304"),
    "a revalidation by date": ({"If_Modified_Since": "Sun, 01 Jan 2090 00:00:00 GMT"}, "", "304"),
    "a query (inline)": ({}, "?inline=1", "200"),
    "another query": ({}, "?x=1", "200"),
}


@pytest.mark.parametrize("kind", OTHER_REQUESTS)
def test_ranges_revalidations_and_queries_go_through_flask(app, files, kind):
    reader = participant(app)
    both(reader, url(files["pdf"]))
    headers, query, status = OTHER_REQUESTS[kind]
    for _ in range(2):
        answer, replayed = both(reader, url(files["pdf"]) + query, **headers)
        assert replayed == 0
        assert answer[0].startswith(status)


def test_heads_unknown_documents_and_odd_paths_go_through_flask(app, files):
    reader = participant(app)
    both(reader, url(files["pdf"]))
    pdf = files["pdf"]
    for method, path, status in (
        ("HEAD", url(pdf), "200"),
        ("GET", "/documents/999999/nothing.pdf", "404"),
        ("GET", f"/documents/0{pdf.id}/support.pdf", "200"),
        ("GET", f"/documents/{pdf.id}/support.pdf/", "404"),
    ):
        answer, replayed = both(reader, path, method)
        assert replayed == 0
        assert answer[0].startswith(status)
    # The name in the address is not checked, by either path.
    answer, replayed = both(reader, f"/documents/{pdf.id}/autre-nom.pdf")
    assert replayed == 1 and answer[0] == "200 OK"


def _deleted(app: Flask, document: Document) -> None:
    with app.app_context():
        delete_document(db.session.get(Document, document.id))
        db.session.remove()


def _replaced(app: Flask, document: Document) -> None:
    with app.app_context():
        replace_document(
            db.session.get(Document, document.id), io.BytesIO(b"%PDF-1.4\nversion 2\n"), "v2.pdf"
        )
        db.session.remove()


def _file_damaged(app: Flask, document: Document) -> None:
    storage = app.extensions["portal.storage"]
    storage.local_path(document.storage_key).write_bytes(b"%PDF")


CHANGES = {
    "the access window closed": (window_closed, "302", 0),
    "the secret key changed": (new_secret_key, "302", 0),
    "the document deleted": (_deleted, "404", 0),
    "the document's file replaced": (_replaced, "200", 1),
    "the shared password changed": (new_password, "302", 0),
    "the stored file damaged": (_file_damaged, "503", 0),
}


@pytest.mark.parametrize("change", CHANGES)
def test_after_a_change_the_answer_follows_it(app, files, change):
    reader = participant(app)
    pdf = files["pdf"]
    both(reader, url(files["image"]))
    assert both(reader, url(pdf))[1] == 1
    apply, status, replayed_after = CHANGES[change]
    apply(app, pdf)
    answer, replayed = both(reader, url(pdf))
    assert answer[0].startswith(status)
    assert replayed == replayed_after
    if change == "the document's file replaced":
        assert answer[2] == b"%PDF-1.4\nversion 2\n"
        assert header(answer, "Content-Disposition") == "attachment; filename=v2.pdf"


def test_a_cookie_past_its_lifetime_goes_through_flask(app, files, monkeypatch):
    reader = participant(app)
    both(reader, url(files["image"]))
    assert both(reader, url(files["pdf"]))[1] == 1
    later = time.time() + 8 * 24 * 3600
    monkeypatch.setattr(time, "time", lambda: later)
    answer, replayed = both(reader, url(files["pdf"]))
    assert replayed == 0
    assert answer[0] == "302 FOUND" and "/access" in header(answer, "Location")


def test_an_answer_with_a_header_of_its_own_is_never_noted(app_config, files):
    """Only headers known to be the same for every document are replayed as they were."""
    with app_variant(app_config) as other:

        @other.after_request
        def served_file(response: Any) -> Any:
            if response.headers.get("Content-Disposition"):
                response.headers["X-Served-File"] = response.headers["Content-Disposition"]
            return response

        reader = participant(other)
        for document in (files["pdf"], files["text"], files["pdf"]):
            answer, replayed = both(reader, url(document))
            assert replayed == 0 and header(answer, "X-Served-File")
        assert len(replay_of(other).clients) == 0


def test_facilitators_and_sessions_flask_rewrites_are_never_noted(app, files):
    client = app.test_client()
    assert login(client).status_code == 303
    facilitator = Visitor(app, f"portal_session={client.get_cookie('portal_session').value}")
    reader = participant(app)
    stranger = Visitor(app, reader.cookie)
    stranger.user_agent = "Mozilla/5.0 (autre navigateur)"  # session protection: Set-Cookie
    for asker in (facilitator, stranger):
        for document in files.values():
            answer, replayed = both(asker, url(document))
            assert answer[0] == "200 OK" and replayed == 0
    assert len(replay_of(app).clients) == 0
    # Nor is the cookie's owner's noted answer given to another browser, or address.
    assert both(reader, url(files["pdf"]))[1] == 0
    assert both(reader, url(files["pdf"]))[1] == 1
    elsewhere = Visitor(app, reader.cookie)
    elsewhere.address = "198.51.100.7"
    for asker in (stranger, elsewhere):
        answer, replayed = both(asker, url(files["pdf"]))
        assert replayed == 0 and header(answer, "Set-Cookie")


def test_behind_nginx_the_answer_names_the_file_for_nginx(app_config, files):
    with app_variant(app_config, ACCEL_REDIRECT="/protected/") as proxied:
        reader = participant(proxied)
        both(reader, url(files["pdf"]))
        answer, replayed = both(reader, url(files["text"]))
        assert replayed == 1
        assert header(answer, "X-Accel-Redirect") == f"/protected/{files['text'].storage_key}"
        assert header(answer, "Content-Length") == "0" and answer[2] == b""
        assert header(answer, "Content-Type") == "text/plain; charset=utf-8"


def test_a_count_that_cannot_be_written_yet_does_not_stop_the_download(app, files, monkeypatch):
    reader = participant(app)
    both(reader, url(files["pdf"]))
    assert both(reader, url(files["pdf"]))[1] == 1
    flush_counts(app)

    def refused(engine: Any, counts: Any) -> None:
        raise DBAPIError("UPDATE", None, OSError("disk I/O error"))

    monkeypatch.setattr(download_counts, "_write", refused)
    answer, replayed = both(reader, url(files["pdf"]))
    assert replayed == 1
    assert answer[0] == "200 OK" and answer[2] == files_bytes(app, files["pdf"])
    with pytest.raises(DBAPIError):
        flush_counts(app)
    # Kept until the database takes them.
    monkeypatch.undo()
    assert counts(app)["support.pdf"] == 6


def files_bytes(app: Flask, document: Document) -> bytes:
    storage = app.extensions["portal.storage"]
    return storage.local_path(document.storage_key).read_bytes()


def test_participants_share_one_copy_of_the_noted_headers(app, files):
    readers = [participant(app) for _ in range(3)]
    for reader, document in zip(readers, files.values(), strict=True):
        both(reader, url(document))
    noted = [replay_of(app).clients.get(key) for key in replay_of(app).clients]
    assert len(noted) == 3
    assert noted[0].headers is noted[1].headers is noted[2].headers


@pytest.mark.parametrize(
    ("environ", "found"),
    [
        ({}, 5),
        ({"CONTENT_LENGTH": ""}, 5),  # what nginx's uwsgi_params send for a GET
        ({"CONTENT_LENGTH": "0"}, 5),
        ({"CONTENT_LENGTH": "12"}, None),
        ({"HTTP_TRANSFER_ENCODING": "chunked"}, None),
        ({"QUERY_STRING": "inline=1"}, None),
        ({"HTTP_RANGE": "bytes=0-1"}, None),
        ({"PATH_INFO": "/documents/05/x.pdf"}, None),
        ({"PATH_INFO": "/documents/5/x.pdf/"}, None),
        ({"PATH_INFO": "/documents/5/"}, None),
        ({"PATH_INFO": "/documents/5/a\x00b"}, None),
        ({"PATH_INFO": "/sessions/5/x.pdf"}, None),
    ],
)
def test_which_requests_are_plain_downloads(environ, found):
    assert download_replay.plain_download({"PATH_INFO": "/documents/5/x.pdf", **environ}) == found
