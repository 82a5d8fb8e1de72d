"""Resumable uploads at /manage/tus (tus 1.0: core, creation, termination)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import time
from pathlib import Path

import pytest
from conftest import (
    ADMIN_EMAIL,
    PDF_BYTES,
    count_rows,
    csrf_token,
    login,
    stored_files,
    unlock,
)
from markupsafe import escape

from portal.extensions import db
from portal.integrity import check_storage
from portal.models import Document
from portal.tus import EXPIRE_AFTER_SECONDS, stale_partials

ENDPOINT = "/manage/tus"
BIG_PDF = PDF_BYTES + b"%" + os.urandom(300_000) + b"\n%%EOF\n"


def metadata(**values: str) -> str:
    return ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}" if v else k for k, v in values.items()
    )


class Tus:
    """A tiny tus client on top of Flask's test client."""

    def __init__(self, client, token: str | None = None) -> None:
        self.client = client
        self.token = token if token is not None else csrf_token(client, "/manage/upload")

    def headers(self, **extra: str) -> dict[str, str]:
        headers = {"Tus-Resumable": "1.0.0", "X-CSRFToken": self.token}
        headers.update({k.replace("_", "-"): v for k, v in extra.items()})
        return headers

    def create(self, length: int, name: str = "support.pdf", **meta: str):
        return self.client.post(
            ENDPOINT,
            headers=self.headers(
                Upload_Length=str(length), Upload_Metadata=metadata(filename=name, **meta)
            ),
        )

    def patch(self, location: str, offset: int, body: bytes, announced: int | None = None, **extra):
        """PATCH ``body``; ``announced`` claims a longer body, as a connection cut mid-way."""
        overrides = {"CONTENT_LENGTH": str(announced)} if announced is not None else {}
        return self.client.patch(
            location,
            data=body,
            headers=self.headers(
                Upload_Offset=str(offset),
                Content_Type="application/offset+octet-stream",
                **extra,
            ),
            environ_overrides=overrides,
        )

    def head(self, location: str):
        return self.client.head(location, headers=self.headers())

    def upload(self, content: bytes, name: str = "support.pdf", chunk: int = 100_000, **meta):
        created = self.create(len(content), name, **meta)
        assert created.status_code == 201, created.get_data(as_text=True)
        location = created.headers["Location"]
        offset = 0
        reply = created
        while offset < len(content):
            reply = self.patch(location, offset, content[offset : offset + chunk])
            assert reply.status_code == 204, reply.get_data(as_text=True)
            offset = int(reply.headers["Upload-Offset"])
        return location, reply


@pytest.fixture
def tus(facilitator) -> Tus:
    return Tus(facilitator)


def partial_files(instance_dir: Path) -> list[str]:
    folder = instance_dir / "tus"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def only_document(app) -> Document:
    with app.app_context():
        rows = db.session.scalars(db.select(Document)).all()
        assert len(rows) == 1
        document = rows[0]
        _ = document.tags, document.meeting
        db.session.expunge(document)
        return document


def test_options_announce_version_extensions_and_the_size_limit(app, facilitator):
    reply = facilitator.options(ENDPOINT)
    assert reply.status_code == 204
    assert reply.headers["Tus-Version"] == "1.0.0"
    assert set(reply.headers["Tus-Extension"].split(",")) == {"creation", "termination"}
    assert int(reply.headers["Tus-Max-Size"]) == app.config["MAX_CONTENT_LENGTH"]


def test_an_upload_in_chunks_becomes_a_document_like_a_plain_upload(
    app, tus, make_meeting, storage_dir, instance_dir
):
    meeting = make_meeting("Atelier")
    location, last = tus.upload(
        BIG_PDF, "Synthèse.pdf", session=str(meeting.id), tags="support, cr", title="Synthèse"
    )
    assert last.headers["Portal-Upload-Result"] == "accepted"
    document = only_document(app)
    assert document.original_name == "Synthèse.pdf"
    assert document.title == "Synthèse"
    assert document.meeting_id == meeting.id
    assert sorted(t.name for t in document.tags) == ["cr", "support"]
    assert document.size == len(BIG_PDF)
    assert document.sha256 == hashlib.sha256(BIG_PDF).hexdigest()
    assert (storage_dir / document.storage_key).read_bytes() == BIG_PDF
    assert stored_files(storage_dir) == [document.storage_key]
    # The received bytes are gone; only the result remains, for the page to read.
    assert partial_files(instance_dir) == [location.rsplit("/", 1)[1] + ".json"]
    result = tus.client.get(location).get_json()
    assert result["state"] == "accepted"
    assert result["document"] == document.id
    assert result["url"] == f"/manage/documents/{document.id}/edit"
    head = tus.head(location)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(BIG_PDF))


def test_head_reports_the_offset_and_length(tus):
    location = tus.create(len(BIG_PDF)).headers["Location"]
    assert tus.patch(location, 0, BIG_PDF[:1000]).status_code == 204
    head = tus.head(location)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "1000"
    assert head.headers["Upload-Length"] == str(len(BIG_PDF))
    assert head.headers["Cache-Control"] == "no-store"
    assert head.headers["Tus-Resumable"] == "1.0.0"


def test_an_interrupted_chunk_keeps_what_arrived_and_the_client_resumes(app, tus):
    location = tus.create(len(BIG_PDF)).headers["Location"]
    # The client announced 200 000 bytes but the connection died after 70 000.
    cut = tus.patch(location, 0, BIG_PDF[:70_000], announced=200_000)
    assert cut.status_code == 400
    offset = int(tus.head(location).headers["Upload-Offset"])
    assert offset == 70_000
    assert tus.patch(location, offset, BIG_PDF[offset:]).status_code == 204
    document = only_document(app)
    assert document.sha256 == hashlib.sha256(BIG_PDF).hexdigest()


def test_a_chunk_at_the_wrong_offset_is_refused_with_409_and_changes_nothing(tus):
    location = tus.create(len(BIG_PDF)).headers["Location"]
    tus.patch(location, 0, BIG_PDF[:1000])
    for wrong in (0, 500, 2000):
        reply = tus.patch(location, wrong, BIG_PDF[wrong : wrong + 100])
        assert reply.status_code == 409
        assert reply.get_json()["error"]
    assert tus.head(location).headers["Upload-Offset"] == "1000"


def test_a_declared_length_over_the_limit_is_refused_with_413(app, tus, instance_dir):
    limit = app.config["MAX_CONTENT_LENGTH"]
    reply = tus.create(limit + 1, "enregistrement.mp4")
    assert reply.status_code == 413
    assert "1024" in reply.get_json()["error"]
    assert partial_files(instance_dir) == []
    assert tus.create(limit, "enregistrement.mp4").status_code == 201


def test_more_bytes_than_declared_are_refused(tus):
    location = tus.create(100).headers["Location"]
    reply = tus.patch(location, 0, b"%PDF-" + b"x" * 200)
    assert reply.status_code == 413
    assert tus.head(location).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 400),
        ({"Upload-Length": "-1"}, 400),
        ({"Upload-Length": "ten"}, 400),
        ({"Upload-Length": "10", "Upload-Defer-Length": "1"}, 400),
        ({"Upload-Length": "10", "Upload-Metadata": "filename ***"}, 400),
        ({"Upload-Length": "10", "Upload-Metadata": ""}, 400),
        ({"Upload-Length": "10", "Tus-Resumable": "0.2.2"}, 412),
    ],
)
def test_creation_refuses_bad_headers_and_creates_nothing(tus, instance_dir, headers, status):
    reply = tus.client.post(ENDPOINT, headers={**tus.headers(), **headers})
    assert reply.status_code == status
    assert reply.get_json()["error"]
    assert partial_files(instance_dir) == []


def test_an_unknown_session_is_refused_at_creation(tus, instance_dir):
    assert tus.create(10, session="9999").status_code == 400
    assert tus.create(10, session="abc").status_code == 400
    assert partial_files(instance_dir) == []


def test_a_forbidden_type_is_refused_with_the_plain_forms_message(app, facilitator, instance_dir):
    tus = Tus(facilitator)
    reply = tus.create(100, "script.exe")
    assert reply.status_code == 400
    message = reply.get_json()["error"]
    assert message == "Ce type de fichier n’est pas accepté."
    assert partial_files(instance_dir) == []
    plain = facilitator.post(
        "/manage/upload",
        data={
            "files": [(io.BytesIO(b"MZ" + b"\0" * 98), "script.exe")],
            "session": "",
            "csrf_token": tus.token,
        },
        content_type="multipart/form-data",
    )
    assert str(escape(message)) in plain.get_data(as_text=True)


def test_content_not_matching_its_extension_is_rejected_at_the_end_with_the_same_message(
    app, tus, storage_dir, instance_dir
):
    location, last = tus.upload(b"not a pdf at all" * 100, "faux.pdf")
    assert last.headers["Portal-Upload-Result"] == "rejected"
    result = tus.client.get(location).get_json()
    assert result["state"] == "rejected"
    assert result["reason"] == "Le contenu du fichier ne correspond pas à son extension."
    assert count_rows(app, Document) == 0
    assert stored_files(storage_dir) == []
    assert not any(name.endswith(".bin") for name in partial_files(instance_dir))


def test_an_empty_file_is_rejected_at_creation_like_a_plain_upload(app, tus):
    reply = tus.create(0, "vide.pdf")
    assert reply.status_code == 201
    assert reply.headers["Portal-Upload-Result"] == "rejected"
    result = tus.client.get(reply.headers["Location"]).get_json()
    assert result["reason"] == "Le fichier est vide."
    assert count_rows(app, Document) == 0


def test_the_result_speaks_the_users_language(tus):
    tus.client.get("/?lang=en")
    location, _ = tus.upload(b"not a pdf" * 10, "faux.pdf")
    assert tus.client.get(location).get_json()["reason"] == (
        "The content of the file does not match its extension."
    )


def test_repeating_the_last_chunk_after_a_lost_reply_is_harmless(app, tus):
    location, _ = tus.upload(PDF_BYTES)
    again = tus.patch(location, len(PDF_BYTES), b"")
    assert again.status_code == 204
    assert again.headers["Upload-Offset"] == str(len(PDF_BYTES))
    assert tus.patch(location, 0, PDF_BYTES).status_code == 409
    assert count_rows(app, Document) == 1


def test_an_upload_whose_check_never_ran_is_finished_by_an_empty_last_chunk(app, tus, instance_dir):
    """All bytes stored, then the server stopped before checking them (or failed to)."""
    location = tus.create(len(PDF_BYTES)).headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    (instance_dir / "tus" / f"{upload_id}.bin").write_bytes(PDF_BYTES)
    state = tus.client.get(location).get_json()
    assert (state["state"], state["offset"]) == ("uploading", len(PDF_BYTES))
    reply = tus.patch(location, len(PDF_BYTES), b"")
    assert reply.status_code == 204
    assert reply.headers["Portal-Upload-Result"] == "accepted"
    assert count_rows(app, Document) == 1


def test_termination_removes_the_partial_upload(tus, instance_dir):
    location = tus.create(len(BIG_PDF)).headers["Location"]
    tus.patch(location, 0, BIG_PDF[:5000])
    reply = tus.client.delete(location, headers=tus.headers())
    assert reply.status_code == 204
    assert partial_files(instance_dir) == []
    assert tus.head(location).status_code == 404
    assert tus.patch(location, 5000, b"more").status_code == 404


def test_patch_needs_the_offset_stream_content_type(tus):
    location = tus.create(100).headers["Location"]
    reply = tus.client.patch(
        location,
        data={"x": "y"},
        headers=tus.headers(Upload_Offset="0"),
    )
    assert reply.status_code == 415
    assert tus.head(location).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_missing_or_wrong_csrf_header_is_refused(tus, instance_dir, token):
    location = tus.create(len(PDF_BYTES)).headers["Location"]
    bad = Tus(tus.client, token=token)
    assert bad.create(10).status_code == 400
    assert bad.patch(location, 0, PDF_BYTES).status_code == 400
    assert bad.client.delete(location, headers=bad.headers()).status_code == 400
    assert tus.head(location).headers["Upload-Offset"] == "0"
    assert len(partial_files(instance_dir)) == 2


def test_anonymous_clients_are_sent_to_the_login_page_before_any_byte_is_stored(
    app, client, instance_dir
):
    with app.test_client() as owner:
        login(owner)
        location = Tus(owner).create(len(PDF_BYTES)).headers["Location"]
    stranger = Tus(client, token="")
    for reply in (
        stranger.create(10),
        stranger.patch(location, 0, PDF_BYTES),
        stranger.head(location),
        client.get(location),
        client.delete(location, headers=stranger.headers()),
    ):
        assert reply.status_code in {302, 303}
        assert reply.headers["Location"].startswith("/login?next=")
    assert (instance_dir / "tus" / (location.rsplit("/", 1)[1] + ".bin")).stat().st_size == 0


def test_participants_are_refused(app, client, instance_dir):
    with app.test_client() as owner:
        login(owner)
        location = Tus(owner).create(len(PDF_BYTES)).headers["Location"]
    unlock(client)
    token = csrf_token(client, "/access")
    participant = Tus(client, token=token)
    assert participant.create(10).status_code == 303
    assert participant.patch(location, 0, PDF_BYTES).status_code == 303
    assert participant.head(location).status_code == 302
    assert count_rows(app, Document) == 0
    assert len(partial_files(instance_dir)) == 2


def test_another_facilitator_gets_404(app, tus, instance_dir):
    location = tus.create(len(PDF_BYTES)).headers["Location"]
    with app.test_client() as other:
        login(other, ADMIN_EMAIL)
        intruder = Tus(other)
        assert intruder.head(location).status_code == 404
        assert other.get(location).status_code == 404
        assert intruder.patch(location, 0, PDF_BYTES).status_code == 404
        assert other.delete(location, headers=intruder.headers()).status_code == 404
    assert tus.head(location).headers["Upload-Offset"] == "0"


def test_unknown_or_malformed_ids_get_404(tus):
    for upload_id in ("0" * 32, "../../secret_key", "ABC"):
        assert tus.head(f"{ENDPOINT}/{upload_id}").status_code == 404


def test_partial_uploads_are_in_the_private_instance_folder(app, tus, instance_dir, storage_dir):
    location = tus.create(len(BIG_PDF)).headers["Location"]
    tus.patch(location, 0, BIG_PDF[:1000])
    folder = instance_dir / "tus"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert not storage_dir.joinpath("tus").exists()
    upload_id = location.rsplit("/", 1)[1]
    # No URL serves them: not the static files, not the documents.
    for path in (f"/static/../instance/tus/{upload_id}.bin", f"/documents/{upload_id}/x.bin"):
        assert tus.client.get(path).status_code == 404


def _age(instance_dir: Path, upload_id: str, seconds: float) -> None:
    info_path = instance_dir / "tus" / f"{upload_id}.json"
    info = json.loads(info_path.read_text())
    info["created"] = info["updated"] = time.time() - seconds
    info_path.write_text(json.dumps(info))


def test_abandoned_uploads_expire_are_reported_and_swept(app, tus, instance_dir):
    old = tus.create(len(BIG_PDF)).headers["Location"].rsplit("/", 1)[1]
    fresh = tus.create(len(BIG_PDF)).headers["Location"].rsplit("/", 1)[1]
    _age(instance_dir, old, EXPIRE_AFTER_SECONDS + 60)
    _age(instance_dir, fresh, EXPIRE_AFTER_SECONDS - 600)
    assert sorted(p.name for p in stale_partials(instance_dir)) == [f"{old}.bin", f"{old}.json"]
    assert tus.head(f"{ENDPOINT}/{old}").status_code == 404
    assert tus.head(f"{ENDPOINT}/{fresh}").status_code == 200
    # The next upload sweeps the expired one away.
    tus.create(10)
    names = partial_files(instance_dir)
    assert not any(name.startswith(old) for name in names)
    assert f"{fresh}.bin" in names


def test_portal_check_reports_abandoned_uploads_and_repair_removes_them(app, tus, instance_dir):
    old = tus.create(len(BIG_PDF)).headers["Location"].rsplit("/", 1)[1]
    fresh = tus.create(len(BIG_PDF)).headers["Location"].rsplit("/", 1)[1]
    _age(instance_dir, old, EXPIRE_AFTER_SECONDS + 60)
    with app.app_context():
        report = check_storage()
    text = "\n".join(report.lines())
    assert not report.healthy()
    assert f"abandoned resumable upload: {old}.bin, expired" in text
    assert fresh not in text
    assert text.splitlines()[-1].startswith("problems found:")
    with app.app_context():
        repaired = check_storage(repair=True)
    assert repaired.healthy(repaired=True)
    assert repaired.removed_uploads == 2
    names = partial_files(instance_dir)
    assert not any(name.startswith(old) for name in names)
    assert f"{fresh}.bin" in names
    with app.app_context():
        assert check_storage().healthy()


def test_chunks_under_a_proxy_body_cap_get_a_large_file_through(app, tus):
    """A reverse proxy refusing bodies over a cap (nginx's client_max_body_size) lets it pass."""
    cap = 64 * 1024
    inner = app.wsgi_app

    def capped_proxy(environ, start_response):
        if int(environ.get("CONTENT_LENGTH") or 0) > cap:
            start_response("413 Request Entity Too Large", [("Content-Length", "0")])
            return [b""]
        return inner(environ, start_response)

    app.wsgi_app = capped_proxy
    try:
        whole = Tus(tus.client).create(len(BIG_PDF)).headers["Location"]
        assert tus.patch(whole, 0, BIG_PDF).status_code == 413
        location, last = tus.upload(BIG_PDF, chunk=cap)
    finally:
        app.wsgi_app = inner
    assert last.headers["Portal-Upload-Result"] == "accepted"
    assert only_document(app).sha256 == hashlib.sha256(BIG_PDF).hexdigest()


def test_the_browser_chunk_size_passes_a_100_mb_proxy_cap(facilitator):
    page = facilitator.get("/manage/upload").get_data(as_text=True)
    chunk = int(page.split('data-chunk-size="', 1)[1].split('"', 1)[0])
    assert 1024 * 1024 <= chunk <= 100 * 1000 * 1000


# --- through a real reverse proxy ---------------------------------------------------------

NGINX = Path("/usr/sbin/nginx")
NGINX_CONF = """
daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size {cap};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Host $http_host;
        }}
    }}
}}
"""


@pytest.mark.live
def test_a_real_server_keeps_a_cut_chunk_and_nginxs_body_cap_is_passed_in_chunks(tmp_path):
    """On `portal run`: a chunk cut mid-way is kept up to its last byte received; behind
    nginx refusing any body over 1 MiB (as a 100 MB cap would), tus chunks get through."""
    import http.client
    import socket
    import subprocess

    from liveserver import Browser, Server, free_port, printed

    if not NGINX.exists():
        pytest.skip("no nginx at /usr/sbin/nginx")
    if os.environ.get("PORTAL_TEST_DATABASE_URL"):
        from conftest import _reset_postgresql

        _reset_postgresql(os.environ["PORTAL_TEST_DATABASE_URL"])
    server = Server(tmp_path, free_port(), workers=1)
    proxy = None
    try:
        server.wait_ready()
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(NGINX_CONF.format(root=tmp_path, port=port, cap="1m", upstream=server.port))
        proxy = subprocess.Popen(
            [
                str(NGINX),
                "-p",
                str(tmp_path),
                "-e",
                str(tmp_path / "nginx-stderr.log"),
                "-c",
                str(conf),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        browser = Browser(port)
        for _ in range(50):
            try:
                browser.get("/healthz")
                break
            except OSError:
                time.sleep(0.1)
        token = browser.csrf("/login")
        signed_in = browser.post(
            "/login",
            {
                "email": printed(server.stdout, "admin e-mail")[0],
                "password": printed(server.stdout, "admin password")[0],
                "csrf_token": token,
            },
        )
        assert signed_in.status == 303
        token = browser.csrf("/manage/upload")
        cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
        content = PDF_BYTES + os.urandom(3 * 1024 * 1024) + b"\n%%EOF\n"

        def call(method: str, path: str, body: bytes = b"", via: int = port, **headers: str):
            connection = http.client.HTTPConnection("127.0.0.1", via, timeout=30)
            try:
                sent = {
                    "Cookie": cookie,
                    "Tus-Resumable": "1.0.0",
                    "X-CSRFToken": token,
                    **{k.replace("_", "-"): v for k, v in headers.items()},
                }
                connection.request(method, path, body=body, headers=sent)
                response = connection.getresponse()
                response.read()
                return response
            finally:
                connection.close()

        def start() -> str:
            created = call(
                "POST",
                ENDPOINT,
                Upload_Length=str(len(content)),
                Upload_Metadata=metadata(filename="Enregistrement.pdf"),
            )
            assert created.status == 201
            return created.headers["Location"]

        octets = "application/offset+octet-stream"
        # A connection cut in the middle of a chunk, straight to `portal run`: what arrived
        # is kept, and HEAD says where to resume.
        cut = start()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall(
                (
                    f"PATCH {cut} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
                    f"X-CSRFToken: {token}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                    f"Content-Type: {octets}\r\nContent-Length: {len(content)}\r\n\r\n"
                ).encode()
                + content[:300_000]
            )
        stored = 0
        for _ in range(50):
            stored = int(call("HEAD", cut).headers["Upload-Offset"])
            if stored == 300_000:
                break
            time.sleep(0.1)
        assert stored == 300_000
        for _ in range(50):
            # 423 while the cut request has not yet seen its connection close and let go of
            # the upload: tus clients retry, as here.
            resumed = call(
                "PATCH",
                cut,
                content[stored:],
                via=server.port,
                Upload_Offset=str(stored),
                Content_Type=octets,
            )
            if resumed.status != 423:
                break
            time.sleep(0.1)
        assert resumed.status == 204
        assert resumed.headers["Portal-Upload-Result"] == "accepted"
        whole = start()
        refused = call("PATCH", whole, content, Upload_Offset="0", Content_Type=octets)
        assert refused.status == 413  # nginx's own refusal: one request cannot carry it all
        location = start()
        chunk = 512 * 1024
        for offset in range(0, len(content), chunk):
            reply = call(
                "PATCH",
                location,
                content[offset : offset + chunk],
                Upload_Offset=str(offset),
                Content_Type=octets,
            )
            assert reply.status == 204, reply.status
        assert reply.headers["Portal-Upload-Result"] == "accepted"
        result = json.loads(browser.get(location).body)
        served = browser.get(f"/documents/{result['document']}/Enregistrement.pdf")
        assert hashlib.sha256(served.body).hexdigest() == hashlib.sha256(content).hexdigest()
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=10)
        server.stop()
