"""Disk full and missing storage: a clear error, nothing partial, and the portal keeps serving.

Disk full is simulated two ways: the file object under ``portal.storage.IncomingFile``
fails with ENOSPC once the free space is used (always available), and a real tmpfs of
256 KiB mounted by the test as the storage folder (skipped when mounting is not permitted).
Missing storage: the folder removed or emptied while documents exist, for the running app,
for a new ``portal run`` and for ``portal check``.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    PDF_BYTES,
    SHARED_PASSWORD,
    count_rows,
    csrf_token,
    login,
    stored_files,
    unlock,
)

from portal.extensions import db
from portal.models import Document
from portal.storage import TEMP_DIR, WRITE_PIECE, IncomingFile

PORTAL = Path(sys.executable).parent / "portal"
# Under 500 KiB: a larger body would be spooled by the test client to a file it never closes.
BIG_PDF = PDF_BYTES + os.urandom(400 * 1024)
SMALL_PDF = PDF_BYTES + b"petit support\n" * 100


# --- helpers ---------------------------------------------------------------------------------


class FullDiskRaw(io.RawIOBase):
    """The raw file under an upload's buffered file, on a disk with ``free`` bytes left.

    Like the kernel, a write that does not fit writes what fits (a short write) and the
    next one fails with ENOSPC; the buffered file above it behaves as on a real full disk
    (it keeps what it could not write and tries again when flushed or closed).
    """

    def __init__(self, raw: io.FileIO, free: int) -> None:
        super().__init__()
        self._raw = raw
        self._free = free

    def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
        room = self._free - self._raw.tell()
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._raw.write(bytes(data)[:room])

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        return self._raw.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def fileno(self) -> int:
        return self._raw.fileno()

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()
        super().close()


def fill_disk(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    """From now on, every upload's temporary file is written onto a disk with ``free`` bytes."""
    real_init = IncomingFile.__init__

    def init(self: IncomingFile, path: Path) -> None:
        real_init(self, path)
        self._file.close()
        raw = FullDiskRaw(io.FileIO(path, "r+"), free)
        self._file = io.BufferedRandom(raw)  # type: ignore[assignment]

    monkeypatch.setattr(IncomingFile, "__init__", init)


#: Free space left on the simulated disk: none, less than a page, one read of the
#: multipart parser, and an amount that ends in the middle of the file's buffer.
FREE_SPACE = [0, 1000, 64 * 1024, 100_000]


@pytest.fixture(params=FREE_SPACE, ids=lambda free: f"free={free}")
def full_disk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    fill_disk(monkeypatch, request.param)
    yield request.param
    # A file object the portal failed to close is reported here, on this test, not on the
    # next one.
    gc.collect()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def answered(send, storage_dir: Path):  # type: ignore[no-untyped-def]
    """Send a request; an error escaping the app (no answer at all on a real server) fails."""
    try:
        return send()
    except OSError as error:
        pytest.fail(
            f"the request raised {error!r} out of the application instead of answering"
            f" (gunicorn closes the connection without a response); left in the storage:"
            f" {stored_files(storage_dir)}"
        )


def upload(client, files: list[tuple[bytes, str]], storage_dir: Path):
    data = {
        "files": [(io.BytesIO(content), name) for content, name in files],
        "session": "",
        "tags": "",
        "csrf_token": csrf_token(client, "/manage/upload"),
    }
    return answered(
        lambda: client.post("/manage/upload", data=data, content_type="multipart/form-data"),
        storage_dir,
    )


def keys_of(app) -> dict[str, str]:
    with app.app_context():
        return {d.original_name: d.storage_key for d in db.session.scalars(db.select(Document))}


def assert_clear_error_page(response, status: int, title: str, storage_dir: Path) -> None:
    body = response.get_data(as_text=True)
    assert response.status_code == status, body[:500]
    assert response.mimetype == "text/html"
    assert title in body
    assert "Traceback" not in body
    assert str(storage_dir) not in body
    assert "Errno" not in body


@pytest.fixture
def earlier(make_meeting, make_document):
    """A document uploaded before the trouble, in a session."""
    meeting = make_meeting("Bilan des chantiers")
    return make_document("programme.pdf", SMALL_PDF, meeting=meeting), meeting


@pytest.fixture
def participant_client(app):
    client = app.test_client()
    client.set_cookie("lang", "en")
    assert unlock(client).status_code == 303
    return client


@pytest.fixture
def manager(client):
    client.set_cookie("lang", "en")
    assert login(client).status_code == 303
    return client


def assert_portal_keeps_serving(participant_client, document) -> None:
    assert participant_client.get("/").status_code == 200
    reply = participant_client.get(f"/documents/{document.id}/{document.original_name}")
    try:
        assert reply.status_code == 200
        assert reply.data == SMALL_PDF
    finally:
        reply.close()


# --- disk full, simulated --------------------------------------------------------------------


def test_upload_onto_a_full_disk_gets_507_and_leaves_nothing(
    app, manager, participant_client, earlier, storage_dir, full_disk
):
    document, _ = earlier
    before = stored_files(storage_dir)

    response = upload(manager, [(BIG_PDF, "enregistrement.pdf")], storage_dir)

    assert_clear_error_page(response, 507, "Storage full", storage_dir)
    assert count_rows(app, Document) == 1
    assert stored_files(storage_dir) == before, "a partial or temporary file was left"
    assert_portal_keeps_serving(participant_client, document)
    if len(SMALL_PDF) <= full_disk:
        # The facilitator can go on working: a file that fits is accepted.
        small = upload(manager, [(SMALL_PDF, "ordre-du-jour.pdf")], storage_dir)
        assert small.status_code == 200
        assert count_rows(app, Document) == 2


#: Written by the upload's writing thread in three pieces, the last one short.
LARGE_PDF = PDF_BYTES + os.urandom(2 * WRITE_PIECE + 400 * 1024)


def multipart(fields: dict[str, str], name: str, content: bytes) -> tuple[bytes, str]:
    """A multipart body in memory (the test client would spool a large one to a file)."""
    boundary = "portal-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
        for key, value in fields.items()
    ]
    head = "".join(parts) + (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: application/pdf\r\n\r\n"
    )
    body = head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("free", [0, WRITE_PIECE + 100_000], ids=["free=0", "free=1piece+"])
def test_large_upload_whose_writing_thread_meets_a_full_disk_gets_507_and_leaves_nothing(
    app, manager, participant_client, earlier, storage_dir, monkeypatch, free
):
    document, _ = earlier
    before = stored_files(storage_dir)
    fill_disk(monkeypatch, free)
    fields = {"session": "", "tags": "", "csrf_token": csrf_token(manager, "/manage/upload")}
    body, content_type = multipart(fields, "enregistrement.pdf", LARGE_PDF)

    response = answered(
        lambda: manager.post("/manage/upload", data=body, content_type=content_type),
        storage_dir,
    )

    assert_clear_error_page(response, 507, "Storage full", storage_dir)
    assert count_rows(app, Document) == 1
    assert stored_files(storage_dir) == before, "a partial or temporary file was left"
    assert_portal_keeps_serving(participant_client, document)
    assert not [t for t in threading.enumerate() if t.name == "upload-writer"]
    gc.collect()


@pytest.mark.parametrize("sent", [1000, 3 * WRITE_PIECE // 2], ids=["head", "past-1-piece"])
def test_upload_whose_client_goes_away_mid_body_is_refused_and_leaves_nothing(
    app, manager, storage_dir, sent
):
    fields = {"session": "", "tags": "", "csrf_token": csrf_token(manager, "/manage/upload")}
    body, content_type = multipart(fields, "enregistrement.pdf", LARGE_PDF)
    before = stored_files(storage_dir)

    # The body announces its whole length but stops early, as when a phone loses the line.
    response = answered(
        lambda: manager.post(
            "/manage/upload",
            data=body[:sent],
            content_type=content_type,
            environ_overrides={"CONTENT_LENGTH": str(len(body))},
        ),
        storage_dir,
    )

    assert response.status_code == 400, response.get_data(as_text=True)[:500]
    assert "Traceback" not in response.get_data(as_text=True)
    assert count_rows(app, Document) == 0
    assert stored_files(storage_dir) == before, "a partial or temporary file was left"
    assert not [t for t in threading.enumerate() if t.name == "upload-writer"]


def test_large_upload_is_stored_whole_through_the_writing_thread(app, manager, storage_dir):
    fields = {"session": "", "tags": "", "csrf_token": csrf_token(manager, "/manage/upload")}
    body, content_type = multipart(fields, "enregistrement.pdf", LARGE_PDF)

    response = manager.post("/manage/upload", data=body, content_type=content_type)

    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    with app.app_context():
        row = db.session.scalars(db.select(Document)).one()
        assert (row.size, row.sha256) == (len(LARGE_PDF), sha256(LARGE_PDF))
        assert (storage_dir / row.storage_key).read_bytes() == LARGE_PDF
    assert not [t for t in threading.enumerate() if t.name == "upload-writer"]


def test_several_files_onto_a_full_disk_store_only_whole_files(
    app, manager, participant_client, earlier, storage_dir, full_disk
):
    document, _ = earlier

    response = upload(manager, [(SMALL_PDF, "petit.pdf"), (BIG_PDF, "grand.pdf")], storage_dir)

    body = response.get_data(as_text=True)
    assert response.status_code in (200, 507), body[:500]
    assert "Traceback" not in body
    with app.app_context():
        rows = db.session.scalars(db.select(Document)).all()
        names = {d.original_name: d for d in rows}
    assert "grand.pdf" not in names
    assert set(stored_files(storage_dir)) == {d.storage_key for d in names.values()}
    for row in names.values():
        assert sha256((storage_dir / row.storage_key).read_bytes()) == row.sha256
    assert_portal_keeps_serving(participant_client, document)


def test_disk_full_when_syncing_the_file_gets_507_and_leaves_nothing(
    app, manager, participant_client, earlier, storage_dir, monkeypatch
):
    """Some filesystems report the lack of room only when the data is synced (NFS, ext4)."""
    document, _ = earlier
    before = stored_files(storage_dir)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(storage_dir / TEMP_DIR)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    response = upload(manager, [(BIG_PDF, "enregistrement.pdf")], storage_dir)

    assert_clear_error_page(response, 507, "Storage full", storage_dir)
    assert count_rows(app, Document) == 1
    assert stored_files(storage_dir) == before
    assert_portal_keeps_serving(participant_client, document)


def test_replace_onto_a_full_disk_keeps_the_previous_version(
    app, manager, participant_client, earlier, storage_dir, full_disk
):
    document, _ = earlier
    before = stored_files(storage_dir)
    token = csrf_token(manager, f"/manage/documents/{document.id}/edit")

    response = answered(
        lambda: manager.post(
            f"/manage/documents/{document.id}/replace",
            data={"file": (io.BytesIO(BIG_PDF), "programme-v2.pdf"), "csrf_token": token},
            content_type="multipart/form-data",
        ),
        storage_dir,
    )

    assert_clear_error_page(response, 507, "Storage full", storage_dir)
    assert stored_files(storage_dir) == before
    assert keys_of(app) == {"programme.pdf": document.storage_key}, "the row was changed"
    assert_portal_keeps_serving(participant_client, document)


def test_import_onto_a_full_disk_rejects_the_file_with_a_reason(
    app, earlier, storage_dir, tmp_path, full_disk
):
    folder = tmp_path / "to-import"
    folder.mkdir()
    (folder / "grand.pdf").write_bytes(BIG_PDF)
    (folder / "petit.pdf").write_bytes(SMALL_PDF)

    result = app.test_cli_runner().invoke(args=["import", str(folder)])

    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    rejected = [line for line in lines if line.startswith("rejected: grand.pdf: ")]
    assert len(rejected) == 1, result.output
    assert re.search(r"full|space", rejected[0], re.IGNORECASE), rejected[0]
    small_fits = len(SMALL_PDF) <= full_disk
    if small_fits:
        assert "imported: petit.pdf" in lines
    else:
        assert [line for line in lines if line.startswith("rejected: petit.pdf: ")], lines
    assert "Traceback" not in result.output
    assert count_rows(app, Document) == (2 if small_fits else 1)
    assert stored_files(storage_dir) == sorted(
        [earlier[0].storage_key, *([keys_of(app)["petit.pdf"]] if small_fits else [])]
    ), "a partial or temporary file was left"


# --- disk full, for real: a small tmpfs ------------------------------------------------------


class TestSmallFilesystem:
    """The storage folder is a 256 KiB tmpfs: ENOSPC comes from the kernel."""

    @pytest.fixture
    def storage_dir(self, tmp_path: Path) -> Iterator[Path]:
        mount_point = tmp_path / "small-disk"
        mount_point.mkdir()
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a tmpfs needs root and mount(8)")
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0750", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            pytest.skip(f"mount is not permitted here: {mounted.stderr.strip()}")
        try:
            yield mount_point
        finally:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)

    def test_upload_larger_than_the_free_space_gets_507_and_leaves_nothing(
        self, app, manager, participant_client, earlier, storage_dir
    ):
        document, _ = earlier
        before = stored_files(storage_dir)

        response = upload(manager, [(BIG_PDF, "enregistrement.pdf")], storage_dir)

        assert_clear_error_page(response, 507, "Storage full", storage_dir)
        assert count_rows(app, Document) == 1
        assert stored_files(storage_dir) == before
        assert_portal_keeps_serving(participant_client, document)
        assert shutil.disk_usage(storage_dir).free > len(BIG_PDF) // 4, "space not given back"

    def test_portal_import_rejects_what_does_not_fit_and_exits_1(
        self, app, earlier, storage_dir, tmp_path, instance_dir
    ):
        folder = tmp_path / "to-import"
        folder.mkdir()
        (folder / "grand.pdf").write_bytes(BIG_PDF)
        (folder / "petit.pdf").write_bytes(SMALL_PDF)

        done = subprocess.run(
            [str(PORTAL), "import", str(folder)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=portal_env(instance_dir, storage_dir),
            timeout=120,
        )

        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        rejected = [line for line in lines if line.startswith("rejected: grand.pdf: ")]
        assert len(rejected) == 1, done.stdout
        assert re.search(r"full|space", rejected[0], re.IGNORECASE), rejected[0]
        assert "imported: petit.pdf" in lines
        assert "Traceback" not in done.stdout + done.stderr
        assert count_rows(app, Document) == 2
        assert not list((storage_dir / TEMP_DIR).iterdir())


# --- missing storage -------------------------------------------------------------------------


def portal_env(instance_dir: Path, storage_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env["PORTAL_INSTANCE_DIR"] = str(instance_dir)
    env["PORTAL_STORAGE"] = str(storage_dir)
    if os.environ.get("PORTAL_TEST_DATABASE_URL"):
        env["PORTAL_DATABASE_URL"] = os.environ["PORTAL_TEST_DATABASE_URL"]
    return env


@pytest.fixture
def documents(make_meeting, make_document):
    meeting = make_meeting("Synthèse")
    return [
        make_document("programme.pdf", SMALL_PDF, meeting=meeting),
        make_document("compte-rendu.pdf", PDF_BYTES + b"notes", meeting=meeting),
        make_document("bandeau général.pdf", PDF_BYTES + b"general"),
    ], meeting


def remove_storage(storage_dir: Path, how: str) -> None:
    if how == "removed":
        shutil.rmtree(storage_dir)
    elif how == "emptied":
        for entry in storage_dir.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    else:  # the documents' files only: the folders are still there
        for entry in storage_dir.iterdir():
            if entry.is_file():
                entry.unlink()


@pytest.mark.parametrize("how", ["removed", "emptied", "files-gone"])
def test_missing_storage_refuses_to_serve_documents_and_deletes_no_row(
    app, participant_client, manager, documents, storage_dir, how
):
    docs, meeting = documents
    remove_storage(storage_dir, how)

    for document in docs:
        reply = participant_client.get(f"/documents/{document.id}/{document.original_name}")
        reply.close()
        assert_clear_error_page(reply, 503, "Temporarily unavailable", storage_dir)
    archive = participant_client.get(f"/sessions/{meeting.slug}/archive.zip")
    assert archive.status_code == 503
    assert participant_client.get("/").status_code == 200
    if how != "files-gone":
        health = participant_client.get("/healthz")
        assert health.status_code == 503
        assert health.mimetype == "application/json"
        assert health.get_json()["status"] == "error"
    manager.get("/manage")
    assert count_rows(app, Document) == 3
    if how == "removed":
        assert not storage_dir.exists(), "the running portal created the storage folder"
    else:
        assert not any(p.is_file() for p in storage_dir.rglob("*"))


def test_upload_while_the_storage_is_missing_gets_503_and_does_not_recreate_it(
    app, manager, documents, storage_dir
):
    shutil.rmtree(storage_dir)

    response = upload(manager, [(SMALL_PDF, "nouveau.pdf")], storage_dir)

    assert_clear_error_page(response, 503, "Temporarily unavailable", storage_dir)
    assert not storage_dir.exists()
    assert count_rows(app, Document) == 3


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http(port: int, method: str, path: str, body: str | None = None, cookie: str = ""):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    headers = {"Connection": "close", "Accept-Language": "en"}
    if cookie:
        headers["Cookie"] = cookie
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


@pytest.fixture
def portal_run(instance_dir: Path, storage_dir: Path, tmp_path: Path):
    """Start ``portal run`` on the test instance; stopped (and its group killed) at the end."""
    started: list[subprocess.Popen[str]] = []

    def start() -> tuple[subprocess.Popen[str], int]:
        port = free_port()
        process = subprocess.Popen(
            [str(PORTAL), "run", "--port", str(port), "--workers", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=tmp_path,
            env=portal_env(instance_dir, storage_dir),
            start_new_session=True,
        )
        started.append(process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"portal run exited with {process.returncode}:\n{out}\n{err}")
            try:
                http(port, "GET", "/healthz")
                return process, port
            except OSError:
                time.sleep(0.1)
        pytest.fail("portal run did not answer within 60 s")

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=30)


@pytest.mark.live
def test_portal_run_with_the_storage_folder_missing_warns_serves_and_does_not_recreate_it(
    app, documents, storage_dir, portal_run
):
    docs, _ = documents
    shutil.rmtree(storage_dir)

    process, port = portal_run()

    status, headers, body = http(port, "GET", "/healthz")
    assert status == 503
    assert json.loads(body)["status"] == "error"
    status, headers, page = http(port, "GET", "/access")
    assert status == 200
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    form = f"password={SHARED_PASSWORD.replace('#', '%23')}&csrf_token={token}"
    status, headers, _ = http(port, "POST", "/access", form, cookie)
    assert status == 303
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    status, _, programme = http(port, "GET", "/", cookie=cookie)
    assert status == 200
    for document in docs:
        status, _, page = http(port, "GET", f"/documents/{document.id}/x", cookie=cookie)
        assert status == 503
        assert "Temporarily unavailable" in page and "Traceback" not in page
    assert not storage_dir.exists(), "portal run created the missing storage folder"
    out, err = stop(process)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "storage" in warnings[0] and str(storage_dir) in warnings[0]
    assert "Traceback" not in out + err
    assert not storage_dir.exists()
    assert count_rows(app, Document) == 3


@pytest.mark.parametrize("how", ["files-gone", "emptied", "removed"])
def test_portal_check_names_every_document_whose_file_is_missing(
    app, documents, storage_dir, instance_dir, tmp_path, how
):
    docs, _ = documents
    remove_storage(storage_dir, how)

    done = subprocess.run(
        [str(PORTAL), "check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=portal_env(instance_dir, storage_dir),
        timeout=120,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    for document in docs:
        named = [
            line
            for line in output.splitlines()
            if f"document {document.id} " in line and document.original_name in line
        ]
        assert len(named) == 1, f"document {document.id} not reported once:\n{output}"
        assert "missing" in named[0]
    if how == "removed":
        assert not storage_dir.exists(), "portal check created the storage folder"
        assert str(storage_dir) in output
    assert count_rows(app, Document) == 3
