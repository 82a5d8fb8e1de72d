"""Downloading one file and a whole session as a ZIP."""

from __future__ import annotations

import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from conftest import (
    JPEG_BYTES,
    PDF_BYTES,
    PNG_BYTES,
    app_variant,
    count_rows,
    flush_counts,
)

import portal
from portal.extensions import db
from portal.models import Document

PORTAL_DIR = str(Path(portal.__file__).parent)
UNICODE_NAME = "Compte-rendu été – n°1 «final».pdf"


def url_of(document: Document, filename: str | None = None, **query: str) -> str:
    url = f"/documents/{document.id}/{filename or document.original_name}"
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return url


def fetch(client, url: str, **kwargs):
    """GET ``url``, read the whole body, and release the file as a WSGI server would."""
    response = client.get(url, **kwargs)
    response.get_data()
    response.close()
    return response


def download_count(app, document: Document) -> int:
    flush_counts(app)
    with app.app_context():
        value = db.session.get(Document, document.id).download_count
        db.session.remove()
        return value


def disposition(response) -> tuple[str, dict[str, str]]:
    """Split Content-Disposition into its type and parameters."""
    kind, *params = [p.strip() for p in response.headers["Content-Disposition"].split(";")]
    values = {}
    for param in params:
        key, _, value = param.partition("=")
        values[key.strip().lower()] = value.strip().strip('"')
    return kind.lower(), values


def rfc5987_name(response) -> str:
    _, params = disposition(response)
    charset, _, rest = params["filename*"].partition("'")
    _, _, encoded = rest.partition("'")
    assert charset.upper() == "UTF-8"
    return unquote(encoded, encoding="utf-8")


def assert_error_page(response, status: int) -> None:
    assert response.status_code == status
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "Traceback" not in page
    assert PORTAL_DIR not in page


@pytest.fixture
def pdf(make_meeting, make_document):
    meeting = make_meeting("Temps d'échange")
    return make_document("support.pdf", PDF_BYTES, meeting=meeting)


# --- one file -------------------------------------------------------------------------------


def test_download_sends_identical_bytes_as_attachment(participant, pdf):
    response = fetch(participant, url_of(pdf))
    assert response.status_code == 200
    assert response.data == PDF_BYTES
    assert response.mimetype == "application/pdf"
    kind, params = disposition(response)
    assert kind == "attachment"
    assert params["filename"] == "support.pdf"


def test_download_carries_caching_and_range_headers(participant, pdf):
    response = fetch(participant, url_of(pdf))
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["ETag"]
    assert parsedate_to_datetime(response.headers["Last-Modified"]).year >= 2020
    assert response.headers["Accept-Ranges"] == "bytes"
    assert int(response.headers["Content-Length"]) == len(PDF_BYTES)


def test_unicode_name_is_sent_with_rfc5987_filename_star(participant, make_document):
    document = make_document(UNICODE_NAME, PDF_BYTES)
    response = fetch(participant, url_of(document))
    assert response.status_code == 200
    kind, params = disposition(response)
    assert kind == "attachment"
    assert rfc5987_name(response) == UNICODE_NAME
    assert params["filename"].isascii()  # the fallback for old clients
    response.headers["Content-Disposition"].encode("latin-1")  # a valid header value


def test_filename_in_url_does_not_change_the_name_sent(participant, pdf):
    response = fetch(participant, url_of(pdf, "evil.html"))
    assert response.status_code == 200
    assert disposition(response)[1]["filename"] == "support.pdf"
    assert response.mimetype == "application/pdf"
    assert response.data == PDF_BYTES


def test_range_request_gets_206_with_the_right_bytes(participant, pdf):
    response = fetch(participant, url_of(pdf), headers={"Range": "bytes=2-9"})
    assert response.status_code == 206
    assert response.data == PDF_BYTES[2:10]
    assert response.headers["Content-Range"] == f"bytes 2-9/{len(PDF_BYTES)}"


def test_open_ended_and_suffix_ranges_work(participant, pdf):
    tail = fetch(participant, url_of(pdf), headers={"Range": "bytes=-5"})
    assert tail.status_code == 206
    assert tail.data == PDF_BYTES[-5:]
    rest = fetch(participant, url_of(pdf), headers={"Range": "bytes=10-"})
    assert rest.status_code == 206
    assert rest.data == PDF_BYTES[10:]


def test_unsatisfiable_range_gets_416_with_the_file_length(app, participant, pdf):
    response = fetch(participant, url_of(pdf), headers={"Range": "bytes=9999-10000"})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(PDF_BYTES)}"
    assert download_count(app, pdf) == 0


def test_if_none_match_with_current_etag_gets_304(participant, pdf):
    etag = fetch(participant, url_of(pdf)).headers["ETag"]
    response = fetch(participant, url_of(pdf), headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.data == b""


@pytest.fixture
def small_pool_app(app_config, app):
    """The same instance with two pooled connections: a request needing two at once stalls."""
    options = {"pool_size": 2, "max_overflow": 0, "pool_timeout": 5}
    if not app_config.get("SQLALCHEMY_DATABASE_URI"):
        options["connect_args"] = {"timeout": 30}
    with app_variant(app_config, SQLALCHEMY_ENGINE_OPTIONS=options) as small:
        yield small


def test_simultaneous_downloads_are_each_counted_once(small_pool_app, participant, pdf):
    """Twelve visitors at once on two pooled connections: none refused, no count lost."""
    url = url_of(pdf)
    cookie = participant.get_cookie("portal_session").value

    def visitor(_: int) -> list[int]:
        client = small_pool_app.test_client()
        client.set_cookie("portal_session", cookie)
        return [fetch(client, url).status_code for _ in range(5)]

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = [s for batch in pool.map(visitor, range(12)) for s in batch]

    assert statuses == [200] * 60
    assert download_count(small_pool_app, pdf) == 60


def test_download_count_increments_for_a_full_get_only(app, participant, pdf):
    assert download_count(app, pdf) == 0
    etag = fetch(participant, url_of(pdf)).headers["ETag"]
    assert download_count(app, pdf) == 1
    assert fetch(participant, url_of(pdf), headers={"If-None-Match": etag}).status_code == 304
    assert download_count(app, pdf) == 1
    fetch(participant, url_of(pdf))
    assert download_count(app, pdf) == 2


# --- inline ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "mimetype"),
    [
        ("support.pdf", PDF_BYTES, "application/pdf"),
        ("photo.png", PNG_BYTES, "image/png"),
        ("photo.jpg", JPEG_BYTES, "image/jpeg"),
    ],
)
def test_inline_shows_pdf_and_images_in_the_browser(
    participant, make_document, name, content, mimetype
):
    document = make_document(name, content)
    response = fetch(participant, url_of(document, inline="1"))
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert disposition(response)[0] == "inline"
    assert response.data == content
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("name", "content"),
    [("notes.txt", b"<html><script>alert(1)</script>\n"), ("table.csv", b"a,b\n1,2\n")],
)
def test_inline_is_ignored_for_text_files(participant, make_document, name, content):
    document = make_document(name, content)
    response = fetch(participant, url_of(document, inline="1"))
    assert response.status_code == 200
    assert disposition(response)[0] == "attachment"
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert response.data == content


@pytest.mark.parametrize(
    ("name", "content", "query"),
    [
        ("support.pdf", PDF_BYTES, {}),
        ("photo.png", PNG_BYTES, {}),
        ("photo.png", PNG_BYTES, {"inline": "1"}),
        ("photo.jpg", JPEG_BYTES, {"inline": "1"}),
        ("notes.txt", b"hello\n", {}),
        ("notes.txt", b"hello\n", {"inline": "1"}),
    ],
)
def test_file_responses_carry_a_sandbox_csp(participant, make_document, name, content, query):
    document = make_document(name, content)
    response = fetch(participant, url_of(document, **query))
    assert response.status_code == 200
    policy = response.headers["Content-Security-Policy"]
    assert "sandbox" in [d.strip().split(" ")[0] for d in policy.split(";")]


def test_inline_pdf_has_a_csp_without_sandbox_and_no_scripts(participant, pdf):
    response = fetch(participant, url_of(pdf, inline="1"))
    policy = response.headers["Content-Security-Policy"]
    assert "sandbox" not in policy
    assert "default-src 'none'" in policy
    assert "script-src" not in policy or "'none'" in policy.split("script-src")[1].split(";")[0]


# --- refusals -------------------------------------------------------------------------------


def test_unknown_document_id_gets_404(participant, pdf):
    assert_error_page(fetch(participant, f"/documents/{pdf.id + 100}/support.pdf"), 404)


@pytest.mark.parametrize("path", ["/documents/abc/support.pdf", "/documents/-1/x.pdf"])
def test_non_numeric_document_id_gets_404(participant, pdf, path):
    assert_error_page(fetch(participant, path), 404)


def test_anonymous_download_is_sent_to_the_gate(app, client, pdf):
    response = fetch(client, url_of(pdf))
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/access"
    assert parse_qs(location.query)["next"] == [url_of(pdf)]
    assert response.data != PDF_BYTES
    assert download_count(app, pdf) == 0


def test_missing_stored_file_gets_503_page_and_keeps_the_row(app, participant, pdf, storage_dir):
    (storage_dir / pdf.storage_key).unlink()
    response = fetch(participant, url_of(pdf))
    assert_error_page(response, 503)
    assert count_rows(app, Document) == 1
    assert download_count(app, pdf) == 0


def test_truncated_stored_file_gets_503_page_and_keeps_the_row(app, participant, pdf, storage_dir):
    path = storage_dir / pdf.storage_key
    path.write_bytes(PDF_BYTES[:10])
    response = fetch(participant, url_of(pdf))
    assert_error_page(response, 503)
    assert PDF_BYTES[:10] not in response.data
    assert count_rows(app, Document) == 1
    assert path.read_bytes() == PDF_BYTES[:10]  # left as it is for `portal check`


# --- a session's ZIP ------------------------------------------------------------------------


def open_zip(response) -> zipfile.ZipFile:
    assert response.status_code == 200
    assert response.mimetype == "application/zip"
    body = response.get_data()
    assert int(response.headers["Content-Length"]) == len(body)
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    return archive


def test_session_zip_holds_every_document_under_its_original_name(
    participant, make_meeting, make_document
):
    meeting = make_meeting("Temps ZIP")
    other = make_meeting("Autre temps", day=22)
    files = {
        "programme.pdf": PDF_BYTES,
        "Résumé – été.pdf": PDF_BYTES + b"%2\n",
        "photo.png": PNG_BYTES,
        "notes.txt": "Texte accentué\n".encode(),
    }
    for name, content in files.items():
        make_document(name, content, meeting=meeting)
    make_document("ailleurs.pdf", meeting=other)
    make_document("general.pdf")

    archive = open_zip(fetch(participant, f"/sessions/{meeting.slug}/archive.zip"))
    assert sorted(archive.namelist()) == sorted(files)
    for name, content in files.items():
        assert archive.read(name) == content


def test_session_zip_renames_duplicates(participant, make_meeting, make_document):
    meeting = make_meeting("Temps doublons")
    contents = [PDF_BYTES + bytes([n]) for n in range(3)]
    for content in contents:
        make_document("support.pdf", content, meeting=meeting)
    archive = open_zip(fetch(participant, f"/sessions/{meeting.slug}/archive.zip"))
    assert sorted(archive.namelist()) == ["support (2).pdf", "support (3).pdf", "support.pdf"]
    assert sorted(archive.read(n) for n in archive.namelist()) == sorted(contents)


def test_session_zip_member_names_have_no_folder_part(participant, make_meeting, make_document):
    meeting = make_meeting("Temps chemins")
    make_document("../../etc/passwd.txt", b"one\n", meeting=meeting)
    make_document("dossier\\sous-dossier\\note.txt", b"two\n", meeting=meeting)
    make_document("/absolu/rapport.txt", b"three\n", meeting=meeting)
    archive = open_zip(fetch(participant, f"/sessions/{meeting.slug}/archive.zip"))
    names = archive.namelist()
    assert sorted(names) == ["note.txt", "passwd.txt", "rapport.txt"]
    for name in names:
        assert "/" not in name and "\\" not in name and ".." not in name


def test_session_zip_flags_non_ascii_names_as_utf8(participant, make_meeting, make_document):
    meeting = make_meeting("Temps unicode")
    make_document(UNICODE_NAME, PDF_BYTES, meeting=meeting)
    make_document("plain.pdf", PDF_BYTES, meeting=meeting)
    archive = open_zip(fetch(participant, f"/sessions/{meeting.slug}/archive.zip"))
    info = {i.filename: i for i in archive.infolist()}
    assert UNICODE_NAME in info
    assert info[UNICODE_NAME].flag_bits & 0x800


def test_session_zip_of_an_empty_session_is_a_valid_empty_archive(participant, make_meeting):
    meeting = make_meeting("Temps vide")
    archive = open_zip(fetch(participant, f"/sessions/{meeting.slug}/archive.zip"))
    assert archive.namelist() == []


def test_session_zip_of_unknown_session_gets_404(participant):
    assert_error_page(fetch(participant, "/sessions/no-such-session/archive.zip"), 404)


def test_anonymous_session_zip_is_sent_to_the_gate(client, make_meeting, make_document):
    meeting = make_meeting("Temps privé")
    make_document("support.pdf", meeting=meeting)
    response = fetch(client, f"/sessions/{meeting.slug}/archive.zip")
    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).path == "/access"


def test_session_zip_with_a_missing_file_gets_503_page(
    participant, make_meeting, make_document, storage_dir
):
    meeting = make_meeting("Temps abîmé")
    make_document("ok.pdf", meeting=meeting)
    broken = make_document("lost.pdf", meeting=meeting)
    (storage_dir / broken.storage_key).unlink()
    assert_error_page(fetch(participant, f"/sessions/{meeting.slug}/archive.zip"), 503)
