"""The portal on S3 storage, through its pages: upload, download, Range, ZIP, delete, check.

Every test runs the real app against a real S3 protocol server on loopback (moto's
standalone server), on the suite's database (SQLite, or PostgreSQL when configured).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import urllib.request
import zipfile

import pytest
from conftest import PDF_BYTES, csrf_token, flush_counts, login, unlock
from s3server import closed_port_url, s3_bucket_fixture, s3_client, s3_endpoint_fixture  # noqa: F401 - fixtures
from test_downloads import disposition, fetch, rfc5987_name
from test_upload import docx_bytes, upload

from portal import create_app
from portal.extensions import db
from portal.integrity import check_storage
from portal.models import Document
from portal.storage_s3 import PART_SIZE, S3Storage

PREFIX = "portail/2020"
BIG_DOCX_MEMBER = os.urandom(PART_SIZE + 4321)  # the upload spans two parts


@pytest.fixture
def app_config(app_config, s3_endpoint, s3_bucket):
    return {**app_config, "STORAGE": f"s3://{s3_bucket}/{PREFIX}", "S3_ENDPOINT_URL": s3_endpoint}


@pytest.fixture
def objects(app, s3_endpoint, s3_bucket):
    """List the keys really in the bucket under the portal's prefix."""
    client = s3_client(s3_endpoint)

    def listed() -> list[str]:
        found = client.list_objects_v2(Bucket=s3_bucket, Prefix=f"{PREFIX}/").get("Contents", [])
        return sorted(item["Key"].removeprefix(f"{PREFIX}/") for item in found)

    return listed


def big_docx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("word/document.xml", "<xml/>")
        archive.writestr("word/media/video.bin", BIG_DOCX_MEMBER)
    return buffer.getvalue()


def documents(app) -> list[Document]:
    with app.app_context():
        found = db.session.scalars(db.select(Document).order_by(Document.id)).all()
        db.session.expunge_all()
        db.session.remove()
        return found


def test_uploads_stream_to_the_bucket_and_download_byte_identical(app, client, objects):
    assert login(client).status_code == 303
    content = big_docx()
    response = upload(client, [(PDF_BYTES, "programme.pdf"), (content, "Synthèse été.docx")])
    # The test client spools a large body to a temporary file it never closes itself.
    response.request.environ["wsgi.input"].close()
    assert response.status_code == 200, response.text
    pdf, docx = documents(app)
    assert objects() == sorted([pdf.storage_key, docx.storage_key])
    assert docx.size == len(content)
    assert docx.sha256 == hashlib.sha256(content).hexdigest()

    got = fetch(client, f"/documents/{docx.id}/x")
    assert got.status_code == 200
    assert got.data == content
    assert got.headers["Content-Length"] == str(len(content))
    assert got.headers["Accept-Ranges"] == "bytes"
    assert got.headers["ETag"] == f'"{docx.sha256}"'
    assert "Last-Modified" in got.headers
    assert "sandbox" in got.headers["Content-Security-Policy"]
    assert disposition(got)[0] == "attachment"
    assert rfc5987_name(got) == "Synthèse été.docx"


def test_a_docx_whose_content_does_not_match_is_refused_and_nothing_stays(app, client, objects):
    assert login(client).status_code == 303
    response = upload(client, [(docx_bytes("not-word/x.xml"), "faux.docx")])
    assert response.status_code == 400
    assert documents(app) == []
    assert objects() == []
    with app.app_context():
        storage = app.extensions["portal.storage"]
        assert storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads") is None


def test_ranges_revalidation_and_inline_pdf_on_s3(app, participant, make_document):
    data = PDF_BYTES + bytes(range(256)) * 8
    document = make_document("support.pdf", data)
    url = f"/documents/{document.id}/support.pdf"

    part = fetch(participant, url, headers={"Range": "bytes=10-29"})
    assert part.status_code == 206
    assert part.data == data[10:30]
    assert part.headers["Content-Range"] == f"bytes 10-29/{len(data)}"
    suffix = fetch(participant, url, headers={"Range": "bytes=-7"})
    assert (suffix.status_code, suffix.data) == (206, data[-7:])
    unsatisfiable = fetch(participant, url, headers={"Range": f"bytes={len(data)}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{len(data)}"
    etag = fetch(participant, url).headers["ETag"]
    assert fetch(participant, url, headers={"If-None-Match": etag}).status_code == 304
    stale = fetch(participant, url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert (stale.status_code, stale.data) == (200, data), "a changed file is sent whole"

    inline = fetch(participant, url + "?inline=1")
    assert inline.data == data
    assert disposition(inline)[0] == "inline"
    assert inline.headers["X-Frame-Options"] == "SAMEORIGIN"
    flush_counts(participant.application)
    with participant.application.app_context():
        # The whole GET, the If-Range one sent whole, the inline one: not ranges or 304s.
        assert db.session.get(Document, document.id).download_count == 3


def test_session_zip_streams_from_the_bucket(participant, make_meeting, make_document):
    meeting = make_meeting("Temps ZIP")
    files = {"a.pdf": PDF_BYTES, "Résumé.txt": "été\n".encode(), "b.pdf": PDF_BYTES + b"%b\n"}
    for name, content in files.items():
        make_document(name, content, meeting=meeting)
    response = fetch(participant, f"/sessions/{meeting.slug}/archive.zip")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(response.data))
    with zipfile.ZipFile(io.BytesIO(response.data)) as archive:
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist()} == files


def test_delete_removes_the_object(app, facilitator, make_document, objects):
    document = make_document("support.pdf")
    assert objects() == [document.storage_key]
    token = csrf_token(facilitator, "/manage")
    response = facilitator.post(
        f"/manage/documents/{document.id}/delete", data={"csrf_token": token}
    )
    assert response.status_code == 303
    assert objects() == []


def test_check_verifies_every_object_and_quarantines_orphans(
    app,
    make_document,
    s3_endpoint,
    s3_bucket,
):
    kept = make_document("support.pdf", PDF_BYTES)
    damaged = make_document("notes.txt", b"original notes\n")
    client = s3_client(s3_endpoint)
    damaged_key = f"{PREFIX}/{damaged.storage_key}"
    client.put_object(Bucket=s3_bucket, Key=damaged_key, Body=b"changed notes\n\n")
    orphan = "0" * 32
    client.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/{orphan}", Body=b"nobody's")
    command = app.test_cli_runner().invoke(args=["check"])
    assert command.exit_code == 1
    assert f"checksum mismatch: document {damaged.id}" in command.output
    assert f"orphan file: {orphan}" in command.output
    with app.app_context():
        report = check_storage(repair=True)
    text = "\n".join(report.lines())
    assert report.checked == 2
    assert report.problems == [f"checksum mismatch: document {damaged.id} ('notes.txt')"]
    assert [o.key for o in report.orphans] == [orphan]
    assert report.quarantined[0].startswith(f"s3://{s3_bucket}/{PREFIX}/quarantine/")
    assert "1 damaged or missing, 1 orphan files" in text
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert f"{PREFIX}/{kept.storage_key}" in keys
    assert f"{PREFIX}/{orphan}" not in keys


def test_presigned_download_redirects_to_a_link_with_the_right_headers(
    app, app_config, make_document
):
    document = make_document("Compte rendu été.pdf", PDF_BYTES)
    presigned = create_app({**app_config, "S3_PRESIGNED": True})
    client = presigned.test_client()
    assert unlock(client).status_code == 303
    response = client.get(f"/documents/{document.id}/x")
    assert response.status_code == 302
    assert "no-store" in response.headers["Cache-Control"]
    location = response.headers["Location"]
    assert location.startswith(app_config["S3_ENDPOINT_URL"])
    assert "X-Amz-Expires=300" in location
    with urllib.request.urlopen(location, timeout=10) as answer:  # noqa: S310 - loopback
        assert answer.read() == PDF_BYTES
        assert answer.headers["Content-Type"] == "application/pdf"
        assert (
            "filename*=UTF-8''Compte%20rendu%20%C3%A9t%C3%A9.pdf"
            in (answer.headers["Content-Disposition"])
        )
        assert answer.headers["Content-Disposition"].startswith("attachment")
    inline = client.get(f"/documents/{document.id}/x?inline=1").headers["Location"]
    with urllib.request.urlopen(inline, timeout=10) as answer:  # noqa: S310 - loopback
        assert answer.headers["Content-Disposition"].startswith("inline")
    flush_counts(presigned)
    with presigned.app_context():
        assert db.session.get(Document, document.id).download_count == 2
        db.session.remove()


@pytest.fixture
def down(app, app_config):
    """The same portal and database, with the object store unreachable."""
    application = create_app({**app_config, "S3_ENDPOINT_URL": closed_port_url()})
    yield application
    with application.app_context():
        db.session.remove()


def assert_unavailable_page(response) -> None:
    assert response.status_code == 503
    assert response.mimetype == "text/html"
    assert "Traceback" not in response.text
    assert re.search(r"temporarily unavailable|temporairement indisponible", response.text, re.I)


def test_a_store_that_is_down_gives_a_503_page(down, make_meeting, make_document):
    meeting = make_meeting("Temps")
    document = make_document("support.pdf", meeting=meeting)
    client = down.test_client()
    assert unlock(client).status_code == 303
    assert_unavailable_page(client.get(f"/documents/{document.id}/x"))
    assert_unavailable_page(client.get(f"/sessions/{meeting.slug}/archive.zip"))
    assert client.get("/healthz").status_code == 503
    assert login(client).status_code == 303
    response = upload(client, [(PDF_BYTES, "nouveau.pdf")])
    assert_unavailable_page(response)
    assert len(documents(down)) == 1


def test_refused_credentials_give_a_503_page(app, participant, make_document):
    from botocore.stub import Stubber

    document = make_document("support.pdf")
    storage: S3Storage = app.extensions["portal.storage"]
    with Stubber(storage.client) as stub:
        stub.add_client_error("head_object", "InvalidAccessKeyId", http_status_code=403)
        assert_unavailable_page(participant.get(f"/documents/{document.id}/x"))


def test_s3_and_local_downloads_carry_the_same_headers(app, app_config, tmp_path, make_document):
    from portal.services.documents import add_document

    on_s3 = make_document("Résumé.pdf", PDF_BYTES)
    local = create_app({**app_config, "STORAGE": str(tmp_path / "local"), "S3_ENDPOINT_URL": None})
    with local.app_context():
        local.extensions["portal.storage"].create()
        on_disk = add_document(io.BytesIO(PDF_BYTES), "Résumé.pdf").id
        db.session.remove()
    answers = []
    for application, document_id in ((app, on_s3.id), (local, on_disk)):
        client = application.test_client()
        assert unlock(client).status_code == 303
        for headers in ({}, {"Range": "bytes=3-9"}):
            response = fetch(client, f"/documents/{document_id}/x", headers=headers)
            answers.append(
                (
                    response.status_code,
                    response.data,
                    sorted(set(response.headers.keys()) - {"Date", "Set-Cookie", "Vary"}),
                    {k: response.headers[k] for k in ("Content-Disposition", "Cache-Control")},
                )
            )
    assert answers[:2] == answers[2:]


def test_a_store_failing_after_the_size_check_still_gives_the_503_page(
    app, participant, make_document
):
    from botocore.stub import Stubber

    document = make_document("support.pdf")
    storage: S3Storage = app.extensions["portal.storage"]
    with Stubber(storage.client) as stub:
        stub.add_response("head_object", {"ContentLength": document.size})
        stub.add_client_error("get_object", "AccessDenied", http_status_code=403)
        assert_unavailable_page(participant.get(f"/documents/{document.id}/x"))


def test_a_head_request_asks_the_store_for_the_size_only(app, participant, make_document):
    from botocore.stub import Stubber

    document = make_document("support.pdf")
    storage: S3Storage = app.extensions["portal.storage"]
    # The stub answers one HEAD and nothing else: a GET of the object would fail the test.
    with Stubber(storage.client) as stub:
        stub.add_response("head_object", {"ContentLength": document.size})
        response = participant.head(f"/documents/{document.id}/x")
        stub.assert_no_pending_responses()
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(document.size)
    assert response.data == b""
