"""Power loss: the order in which an upload reaches the disk, and SQLite's durability settings.

A stored file survives a power cut only if it was written, synced, moved into place and
the folder synced before the database records it (SPEC section 6). The system calls are
wrapped and recorded while an upload, a replace and an import run through the real code:

    write(temp) ... fsync(temp) -> rename(temp, storage/key) -> fsync(storage) -> COMMIT

and, for a replace, the old file is unlinked only after the COMMIT that stops pointing to
it. SQLite must run in WAL mode with ``synchronous=FULL`` on every connection of the app.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import (
    PDF_BYTES,
    PNG_BYTES,
    TEST_DATABASE_URL,
    count_rows,
    csrf_token,
    flush_counts,
    stored_files,
)
from sqlalchemy import event, text

from portal.database import unsynced
from portal.extensions import db
from portal.models import Document
from portal.storage import TEMP_DIR, IncomingFile, LocalStorage

BIG_PDF = PDF_BYTES + os.urandom(300 * 1024)


@dataclass
class Recorder:
    """The storage's system calls and the database's commits, in the order they happened."""

    storage: Path
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, what: str, path: str = "", other: str = "") -> None:
        self.calls.append((what, path, other))

    def indexes(self, what: str, path: str | None = None) -> list[int]:
        return [
            i for i, (w, p, _) in enumerate(self.calls) if w == what and (path is None or p == path)
        ]

    def renames_into_storage(self) -> list[tuple[int, str, str]]:
        """(position, temporary path, target path) of every move into the storage folder."""
        return [
            (i, src, dst)
            for i, (w, src, dst) in enumerate(self.calls)
            if w == "rename" and Path(dst).parent == self.storage
        ]


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def recorder(app, storage_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    record = Recorder(storage_dir.resolve())
    real_fsync, real_rename, real_unlink = os.fsync, os.rename, os.unlink
    real_write = IncomingFile.write

    def fsync(fd) -> None:  # type: ignore[no-untyped-def]
        number = fd if isinstance(fd, int) else fd.fileno()
        kind = "fsync-dir" if stat.S_ISDIR(os.fstat(number).st_mode) else "fsync-file"
        record.add(kind, _fd_path(number))
        real_fsync(fd)

    def rename(src, dst, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        record.add("rename", str(Path(src).resolve()), str(Path(dst).resolve()))
        real_rename(src, dst, *args, **kwargs)

    def unlink(path, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        record.add("unlink", str(Path(path).resolve()))
        real_unlink(path, *args, **kwargs)

    def write(self: IncomingFile, data: bytes) -> int:
        record.add("write", str(Path(self.path).resolve()))
        return real_write(self, data)

    def on_commit(connection) -> None:  # type: ignore[no-untyped-def]
        record.add("commit")

    def on_execute(connection, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO DOCUMENTS"):
            record.add("insert-document")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(IncomingFile, "write", write)
    with app.app_context():
        engine = db.engine
    event.listen(engine, "commit", on_commit)
    event.listen(engine, "before_cursor_execute", on_execute)
    yield record
    event.remove(engine, "commit", on_commit)
    event.remove(engine, "before_cursor_execute", on_execute)


def upload(client, files: list[tuple[bytes, str]]):
    data = {
        "files": [(io.BytesIO(content), name) for content, name in files],
        "session": "",
        "tags": "",
        "csrf_token": csrf_token(client, "/manage/upload"),
    }
    return client.post("/manage/upload", data=data, content_type="multipart/form-data")


def keys(app) -> dict[str, str]:
    with app.app_context():
        rows = db.session.scalars(db.select(Document)).all()
        return {d.original_name: d.storage_key for d in rows}


def assert_durable_order(record: Recorder, key: str) -> int:
    """Check write -> fsync(file) -> rename -> fsync(folder) -> commit for the file ``key``;
    return the position of that commit."""
    target = str(record.storage / key)
    moves = [(i, src) for i, src, dst in record.renames_into_storage() if dst == target]
    assert len(moves) == 1, f"{key} was not moved into place exactly once: {record.calls}"
    moved_at, temporary = moves[0]
    assert Path(temporary).parent == record.storage / TEMP_DIR, (
        f"the file was not written in the private temporary folder first: {temporary}"
    )
    writes = record.indexes("write", temporary)
    assert writes, f"nothing written to {temporary}"
    synced = [i for i in record.indexes("fsync-file", temporary) if i > writes[-1]]
    assert synced, f"{temporary} was not synced after its last write: {record.calls}"
    assert synced[0] < moved_at, "the file was moved into place before it was synced"
    folder_synced = [i for i in record.indexes("fsync-dir", str(record.storage)) if i > moved_at]
    assert folder_synced, f"the storage folder was not synced after the rename: {record.calls}"
    commits = [i for i in record.indexes("commit") if i > moved_at]
    assert commits, "no database commit after the file was moved into place"
    assert folder_synced[0] < commits[0], (
        "the database committed before the storage folder was synced: "
        f"{record.calls[moved_at : commits[0] + 1]}"
    )
    inserts = [i for i in record.indexes("insert-document") if i < commits[0]]
    if inserts:
        # The row inserted last is committed by this commit, not by an earlier one.
        between = [i for i in record.indexes("commit") if inserts[-1] < i < commits[0]]
        assert not between, "the document's row was committed before its file was in place"
    return commits[0]


def test_upload_is_written_synced_moved_folder_synced_then_committed(
    app, facilitator, recorder: Recorder
):
    response = upload(facilitator, [(BIG_PDF, "programme.pdf")])

    assert response.status_code == 200
    key = keys(app)["programme.pdf"]
    commit = assert_durable_order(recorder, key)
    # The commit that follows the folder's sync is the one that records the document.
    assert [i for i in recorder.indexes("insert-document") if i < commit]
    assert (recorder.storage / key).read_bytes() == BIG_PDF


def test_each_file_of_a_multiple_upload_is_durable_before_its_own_commit(
    app, facilitator, recorder: Recorder
):
    response = upload(facilitator, [(BIG_PDF, "premier.pdf"), (PNG_BYTES, "second.png")])

    assert response.status_code == 200
    stored = keys(app)
    first = assert_durable_order(recorder, stored["premier.pdf"])
    second = assert_durable_order(recorder, stored["second.png"])
    assert first < second


def test_replace_is_durable_before_its_commit_and_the_old_file_goes_after_it(
    app, facilitator, make_document, recorder: Recorder
):
    document = make_document("support.pdf", PDF_BYTES)
    old_path = str(recorder.storage / document.storage_key)
    recorder.calls.clear()
    token = csrf_token(facilitator, f"/manage/documents/{document.id}/edit")

    response = facilitator.post(
        f"/manage/documents/{document.id}/replace",
        data={"file": (io.BytesIO(BIG_PDF), "support-v2.pdf"), "csrf_token": token},
        content_type="multipart/form-data",
    )

    assert response.status_code == 303
    new_key = keys(app)["support-v2.pdf"]
    assert new_key != document.storage_key
    commit = assert_durable_order(recorder, new_key)
    removed = recorder.indexes("unlink", old_path)
    assert removed, f"the old file was not removed: {recorder.calls}"
    assert removed[0] > commit, "the old file was removed before the new row was committed"
    assert not Path(old_path).exists()


def test_import_follows_the_same_order(app, recorder: Recorder, tmp_path: Path):
    folder = tmp_path / "to-import"
    folder.mkdir()
    (folder / "compte-rendu.pdf").write_bytes(BIG_PDF)

    result = app.test_cli_runner().invoke(args=["import", str(folder)])

    assert result.exit_code == 0, result.output
    assert_durable_order(recorder, keys(app)["compte-rendu.pdf"])


@pytest.mark.parametrize("failing", ["fsync-file", "fsync-dir"])
def test_a_failed_sync_records_nothing_and_keeps_no_file(
    app, facilitator, storage_dir: Path, monkeypatch: pytest.MonkeyPatch, failing: str
):
    """A file that may not be on the disk is never recorded (EIO from fsync)."""
    real_fsync = os.fsync

    def fsync(fd) -> None:  # type: ignore[no-untyped-def]
        number = fd if isinstance(fd, int) else fd.fileno()
        kind = "fsync-dir" if stat.S_ISDIR(os.fstat(number).st_mode) else "fsync-file"
        if kind == failing and Path(_fd_path(number)).is_relative_to(storage_dir.resolve()):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    facilitator.set_cookie("lang", "en")

    response = upload(facilitator, [(BIG_PDF, "programme.pdf")])

    body = response.get_data(as_text=True)
    assert response.status_code >= 400
    assert "Traceback" not in body
    assert count_rows(app, Document) == 0
    assert stored_files(storage_dir) == []


@pytest.mark.skipif(bool(TEST_DATABASE_URL), reason="SQLite settings; PostgreSQL syncs commits")
def test_sqlite_runs_in_wal_mode_with_synchronous_full_on_every_connection(app):
    with app.app_context():
        engine = db.engine
        # Several connections at once: each new one must get the settings, not only the first.
        connections = [engine.connect() for _ in range(3)]
        try:
            for connection in connections:
                assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
                assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        finally:
            for connection in connections:
                connection.close()
        assert db.session.execute(text("PRAGMA synchronous")).scalar() == 2
        db.session.rollback()


# --- the order check itself fails on a wrong order -------------------------------------------


def _commit_without_folder_sync(self: LocalStorage, incoming: IncomingFile) -> str:
    incoming.close()
    with open(incoming.path, "rb+") as handle:
        os.fsync(handle.fileno())
    key = secrets.token_hex(16)
    os.rename(incoming.path, self.root / key)
    incoming.committed = True
    return key


def _commit_moving_before_sync(self: LocalStorage, incoming: IncomingFile) -> str:
    incoming.close()
    key = secrets.token_hex(16)
    os.rename(incoming.path, self.root / key)
    with open(self.root / key, "rb+") as handle:
        os.fsync(handle.fileno())
    incoming.committed = True
    return key


@pytest.mark.parametrize(
    ("wrong_commit", "message"),
    [
        (_commit_without_folder_sync, "storage folder was not synced"),
        (_commit_moving_before_sync, "not synced after its last write"),
    ],
)
def test_the_order_check_fails_on_a_storage_that_gets_it_wrong(
    app, facilitator, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, wrong_commit, message
):
    monkeypatch.setattr(LocalStorage, "commit", wrong_commit)

    assert upload(facilitator, [(BIG_PDF, "programme.pdf")]).status_code == 200

    with pytest.raises(AssertionError, match=message):
        assert_durable_order(recorder, keys(app)["programme.pdf"])


# --- counters: committed without waiting for the disk, documents never --------------------------


def _sync_setting(connection) -> str:
    if connection.dialect.name == "sqlite":
        return {0: "off", 1: "normal", 2: "full", 3: "extra"}[
            connection.exec_driver_sql("PRAGMA synchronous").scalar()
        ]
    return connection.exec_driver_sql("SHOW synchronous_commit").scalar()


def test_an_unsynced_transaction_relaxes_only_itself(app):
    durable = "full" if not TEST_DATABASE_URL else "on"
    relaxed = "normal" if not TEST_DATABASE_URL else "off"
    with app.app_context(), db.engine.connect() as connection:
        assert _sync_setting(connection) == durable
        connection.rollback()
        with unsynced(connection):
            assert _sync_setting(connection) == relaxed
        assert _sync_setting(connection) == durable
        connection.rollback()


def test_an_unsynced_transaction_that_fails_changes_nothing_and_restores_the_setting(
    app, make_document
):
    document = make_document("support.pdf", PDF_BYTES)
    durable = "full" if not TEST_DATABASE_URL else "on"
    with app.app_context(), db.engine.connect() as connection:
        with pytest.raises(RuntimeError), unsynced(connection):
            connection.execute(
                Document.__table__.update()
                .where(Document.__table__.c.id == document.id)
                .values(download_count=99)
            )
            raise RuntimeError("interrupted")
        assert _sync_setting(connection) == durable
        connection.rollback()
        count = db.session.get(Document, document.id).download_count
        db.session.remove()
    assert count == 0


def test_downloads_are_counted_and_leave_every_connection_durable(app, participant, make_document):
    document = make_document("support.pdf", PDF_BYTES)
    for _ in range(5):
        response = participant.get(f"/documents/{document.id}/support.pdf")
        response.get_data()
        response.close()
        assert response.status_code == 200
    durable = "full" if not TEST_DATABASE_URL else "on"
    flush_counts(app)
    with app.app_context():
        assert db.session.get(Document, document.id).download_count == 5
        db.session.remove()
        # The pool hands back the connections the counts used: each must sync commits again.
        connections = [db.engine.connect() for _ in range(3)]
        try:
            assert [_sync_setting(c) for c in connections] == [durable] * 3
        finally:
            for connection in connections:
                connection.close()
