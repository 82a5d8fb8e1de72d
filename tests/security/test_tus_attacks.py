"""Attack corpus for the resumable-upload endpoints (/manage/tus): zero may succeed.

Case names start with the class of bug they guard against, as in test_attack_corpus.py:
``auth-bypass``, ``csrf``, ``path-traversal``, ``symlink-escape``, ``dos-body``,
``header-injection``, ``lying-content-type``. ``control-...`` cases prove that the same
request succeeds when it is legitimate.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pytest
from conftest import (
    ADMIN_EMAIL,
    FACILITATOR_EMAIL,
    PDF_BYTES,
    count_rows,
    csrf_token,
    login,
    stored_files,
    unlock,
)

from portal.extensions import db
from portal.models import Document, Facilitator

ENDPOINT = "/manage/tus"
SECRET = b"TOP-SECRET-OUTSIDE-STORAGE-9b2e"
#: The routes of the tus blueprint, for the corpus's coverage check.
TUS_ENDPOINTS = {"tus.create", "tus.upload"}


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def tus_headers(token: str, **extra: str) -> dict[str, str]:
    headers = {"Tus-Resumable": "1.0.0", "X-CSRFToken": token}
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return headers


def create(client, token: str, length: int, name: str = "support.pdf", **more: str):
    return client.post(
        ENDPOINT,
        headers=tus_headers(
            token, Upload_Length=str(length), Upload_Metadata=meta(filename=name, **more)
        ),
    )


def patch(client, token: str, location: str, offset: int, body: bytes, **extra: str):
    return client.patch(
        location,
        data=body,
        headers=tus_headers(
            token,
            Upload_Offset=str(offset),
            Content_Type="application/offset+octet-stream",
            **extra,
        ),
    )


def send_whole(client, token: str, content: bytes, name: str):
    created = create(client, token, len(content), name)
    if created.status_code != 201:
        return created.status_code, created.get_json()["error"]
    location = created.headers["Location"]
    if content:
        assert patch(client, token, location, 0, content).status_code == 204
    result = client.get(location).get_json()
    return result["state"], result.get("reason")


def partial_files(instance_dir: Path) -> dict[str, bytes]:
    folder = instance_dir / "tus"
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def owner(app):
    """A facilitator's client with one upload started, 10 bytes in."""
    client = app.test_client()
    login(client)
    token = csrf_token(client, "/manage/upload")
    location = create(client, token, len(PDF_BYTES)).headers["Location"]
    assert patch(client, token, location, 0, PDF_BYTES[:10]).status_code == 204
    return client, token, location


def stranger(app, kind: str):
    client = app.test_client()
    if kind == "participant":
        assert unlock(client).status_code == 303
    elif kind == "disabled":
        login(client, ADMIN_EMAIL)
        with app.app_context():
            account = db.session.scalar(db.select(Facilitator).filter_by(email=ADMIN_EMAIL.lower()))
            account.enabled = False
            db.session.commit()
    token = csrf_token(client, "/access")
    return client, token


@pytest.mark.parametrize("kind", ["anonymous", "participant", "disabled"])
def test_auth_bypass_outsiders_reach_no_tus_endpoint(app, owner, instance_dir, kind):
    _, _, location = owner
    client, token = stranger(app, kind)
    before = partial_files(instance_dir)
    replies = [
        client.options(ENDPOINT),
        client.options(location),
        create(client, token, 10),
        client.head(location, headers=tus_headers(token)),
        client.get(location),
        patch(client, token, location, 10, PDF_BYTES[10:]),
        client.delete(location, headers=tus_headers(token)),
    ]
    for reply in replies:
        assert reply.status_code in (302, 303), reply.status_code
        assert reply.headers["Location"].startswith("/login?next=")
        assert "Upload-Offset" not in reply.headers
    assert partial_files(instance_dir) == before
    assert count_rows(app, Document) == 0


def test_auth_bypass_a_facilitator_disabled_mid_upload_cannot_finish_it(app, owner, instance_dir):
    client, token, location = owner
    with app.app_context():
        account = db.session.scalar(
            db.select(Facilitator).filter_by(email=FACILITATOR_EMAIL.lower())
        )
        account.enabled = False
        db.session.commit()
    reply = patch(client, token, location, 10, PDF_BYTES[10:])
    assert reply.status_code == 303
    assert count_rows(app, Document) == 0


def test_auth_bypass_another_facilitators_upload_is_invisible(app, owner, instance_dir):
    _, _, location = owner
    other = app.test_client()
    login(other, ADMIN_EMAIL)
    token = csrf_token(other, "/manage/upload")
    before = partial_files(instance_dir)
    assert other.get(location).status_code == 404
    assert other.head(location, headers=tus_headers(token)).status_code == 404
    assert patch(other, token, location, 10, PDF_BYTES[10:]).status_code == 404
    assert other.delete(location, headers=tus_headers(token)).status_code == 404
    assert partial_files(instance_dir) == before


@pytest.mark.parametrize(
    "token_of",
    ["none", "garbage", "another-session", "form-field-not-header"],
)
def test_csrf_tus_changes_refuse_a_missing_or_foreign_token(app, owner, instance_dir, token_of):
    client, token, location = owner
    if token_of == "another-session":
        other = app.test_client()
        login(other)
        bad = csrf_token(other, "/manage/upload")
    else:
        bad = {"none": "", "garbage": "x" * 40, "form-field-not-header": ""}[token_of]
    before = partial_files(instance_dir)
    assert create(client, bad, 10).status_code == 400
    assert patch(client, bad, location, 10, PDF_BYTES[10:]).status_code == 400
    assert client.delete(location, headers=tus_headers(bad)).status_code == 400
    if token_of == "form-field-not-header":
        # A form body is not a tus body: refused before any form (and its token) is parsed.
        reply = client.patch(
            location,
            data={"csrf_token": token},
            headers={"Tus-Resumable": "1.0.0", "Upload-Offset": "10"},
        )
        assert reply.status_code == 415
    assert partial_files(instance_dir) == before
    assert count_rows(app, Document) == 0


def test_csrf_over_https_with_a_foreign_referer_is_refused(app, owner, instance_dir):
    client, token, location = owner
    before = partial_files(instance_dir)
    reply = client.patch(
        location,
        data=PDF_BYTES[10:],
        base_url="https://localhost",
        headers=tus_headers(
            token,
            Upload_Offset="10",
            Content_Type="application/offset+octet-stream",
            Referer="https://evil.example/page",
        ),
    )
    assert reply.status_code == 400
    assert partial_files(instance_dir) == before


def test_control_the_same_patch_with_the_right_token_finishes_the_upload(app, owner):
    client, token, location = owner
    assert patch(client, token, location, 10, PDF_BYTES[10:]).status_code == 204
    assert count_rows(app, Document) == 1


@pytest.mark.parametrize(
    "upload_id",
    [
        "..%2f..%2fsecret_key",
        "%2e%2e",
        "..",
        "0" * 31 + "G",
        "A" * 32,
        "0" * 33,
        "0" * 32 + ".json",
        "0" * 32 + "%00",
    ],
)
def test_path_traversal_in_the_upload_id_reads_and_writes_nothing(
    app, owner, instance_dir, upload_id
):
    client, token, _ = owner
    (instance_dir / "secret.pdf").write_bytes(SECRET)
    before = partial_files(instance_dir)
    path = f"{ENDPOINT}/{upload_id}"
    for reply in (
        client.get(path),
        client.head(path, headers=tus_headers(token)),
        patch(client, token, path, 0, b"%PDF-evil"),
        client.delete(path, headers=tus_headers(token)),
    ):
        assert reply.status_code in (400, 404), (path, reply.status_code)
        assert SECRET not in reply.data
    assert partial_files(instance_dir) == before
    assert (instance_dir / "secret.pdf").read_bytes() == SECRET


def test_path_traversal_in_the_file_name_keeps_only_its_last_part(app, facilitator, storage_dir):
    token = csrf_token(facilitator, "/manage/upload")
    state, _ = send_whole(facilitator, token, PDF_BYTES, "../../../etc/passwd.pdf")
    assert state == "accepted"
    with app.app_context():
        document = db.session.scalars(db.select(Document)).one()
        assert document.original_name == "passwd.pdf"
        assert stored_files(storage_dir) == [document.storage_key]


def test_symlink_escape_a_link_planted_as_partial_data_is_never_followed(
    app, owner, instance_dir, tmp_path
):
    client, token, location = owner
    secret = tmp_path / "outside.pdf"
    secret.write_bytes(b"%PDF-1.4 " + SECRET)
    data = instance_dir / "tus" / (location.rsplit("/", 1)[1] + ".bin")
    data.unlink()
    data.symlink_to(secret)
    reply = patch(client, token, location, 10, PDF_BYTES[10:])
    assert reply.status_code == 404
    assert secret.read_bytes() == b"%PDF-1.4 " + SECRET
    assert count_rows(app, Document) == 0


@pytest.mark.parametrize(
    ("length", "status"),
    [(str(10**30), 400), ("1e9", 400), ("0x10", 400), ("١٢", 400), (" 12", 400)],
)
def test_dos_body_absurd_declared_lengths_are_refused(facilitator, instance_dir, length, status):
    token = csrf_token(facilitator, "/manage/upload")
    reply = facilitator.post(
        ENDPOINT,
        headers=tus_headers(token, Upload_Length=length, Upload_Metadata=meta(filename="a.pdf")),
    )
    assert reply.status_code == status
    assert partial_files(instance_dir) == {}


def test_dos_body_a_patch_announcing_more_than_the_limit_is_refused_unread(app, owner):
    client, token, location = owner
    reply = client.patch(
        location,
        data=b"%PDF-",
        headers=tus_headers(
            token, Upload_Offset="10", Content_Type="application/offset+octet-stream"
        ),
        environ_overrides={"CONTENT_LENGTH": str(app.config["MAX_CONTENT_LENGTH"] + 1)},
    )
    assert reply.status_code == 413
    assert client.head(location, headers=tus_headers(token)).headers["Upload-Offset"] == "10"


def test_dos_body_oversized_metadata_is_refused(facilitator, instance_dir):
    token = csrf_token(facilitator, "/manage/upload")
    for values in ({"title": "t" * 300}, {"description": "d" * 6000}, {"tags": "x" * 600}):
        assert create(facilitator, token, 10, **values).status_code == 400
    assert partial_files(instance_dir) == {}


def test_header_injection_through_metadata_never_reaches_a_header(app, facilitator):
    token = csrf_token(facilitator, "/manage/upload")
    created = create(facilitator, token, len(PDF_BYTES), "a\r\nSet-Cookie: x=1\r\n.pdf")
    assert created.status_code == 201
    assert "x=1" not in str(created.headers)
    location = created.headers["Location"]
    assert location.startswith(f"{ENDPOINT}/") and "\n" not in location
    reply = patch(facilitator, token, location, 0, PDF_BYTES)
    assert "x=1" not in str(reply.headers)
    with app.app_context():
        name = db.session.scalars(db.select(Document)).one().original_name
    assert "\r" not in name and "\n" not in name


HOSTILE = [
    ("page.html", b"<!doctype html><script>alert(1)</script>"),
    ("image.svg", b"<svg onload=alert(1)></svg>"),
    ("tool.exe", b"MZ\x90\x00" + b"\x00" * 60),
    ("script.js", b"alert(1)"),
    ("fake.pdf", b"<html><script>alert(1)</script></html>"),
    ("fake.png", b"GIF89a" + b"\x00" * 32),
    ("polyglot.png", b"<!doctype html>\x89PNG\r\n\x1a\n"),
    ("empty.pdf", b""),
    ("notes.txt", b"<html><script>alert(1)</script></html>"),
    ("good.pdf", PDF_BYTES),
]


@pytest.mark.parametrize(("name", "content"), HOSTILE, ids=[n for n, _ in HOSTILE])
def test_lying_content_type_tus_decides_exactly_like_the_plain_form(
    app, facilitator, storage_dir, name, content
):
    token = csrf_token(facilitator, "/manage/upload")
    plain = facilitator.post(
        "/manage/upload",
        data={"files": [(io.BytesIO(content), name)], "session": "", "csrf_token": token},
        content_type="multipart/form-data",
    )
    plain_accepted = plain.status_code == 200
    with app.app_context():
        plain_rows = db.session.scalars(db.select(Document)).all()
        for row in plain_rows:
            db.session.delete(row)
        db.session.commit()
    state, reason = send_whole(facilitator, token, content, name)
    assert (state == "accepted") == plain_accepted, (name, state, reason)
    if not plain_accepted:
        # The same message, word for word (the plain page escapes it as HTML).
        from markupsafe import escape

        assert str(escape(reason)) in plain.get_data(as_text=True), (name, reason)
    assert count_rows(app, Document) == (1 if plain_accepted else 0)


def test_expired_uploads_cannot_be_resumed_nor_read(app, owner, instance_dir):
    client, token, location = owner
    info_path = instance_dir / "tus" / (location.rsplit("/", 1)[1] + ".json")
    info = json.loads(info_path.read_text())
    info["created"] = info["updated"] = 0
    info_path.write_text(json.dumps(info))
    assert client.head(location, headers=tus_headers(token)).status_code == 404
    assert patch(client, token, location, 10, PDF_BYTES[10:]).status_code == 404
    assert count_rows(app, Document) == 0


def test_partials_folder_is_private(app, owner, instance_dir):
    mode = os.stat(instance_dir / "tus").st_mode & 0o777
    assert mode == 0o700


#: Every method the outsiders' case above sends, per tus endpoint.
EXERCISED = {
    "tus.create": {"OPTIONS", "POST"},
    "tus.upload": {"OPTIONS", "GET", "HEAD", "PATCH", "DELETE"},
}


def test_auth_bypass_this_corpus_covers_every_tus_route(app):
    """A tus route or method added later without a place in this corpus fails here."""
    routed = {
        rule.endpoint: set(rule.methods or ())
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("tus.")
    }
    assert set(routed) == TUS_ENDPOINTS == set(EXERCISED)
    for endpoint, methods in routed.items():
        assert methods <= EXERCISED[endpoint], (endpoint, methods - EXERCISED[endpoint])
