"""``portal backup`` and ``portal restore``: a portable archive, verified before it is trusted.

The round trip goes SQLite + folder → the test database (PostgreSQL when
PORTAL_TEST_DATABASE_URL is set, SQLite otherwise) + folder → SQLite + folder, through the
console script in subprocesses, and compares every row of every table and every file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import PDF_BYTES, PNG_BYTES, _reset_postgresql, fresh_app, login, unlock
from flask import Flask
from sqlalchemy import create_engine, inspect, select

from portal.backup import BackupError, restore_backup
from portal.cli import cli, initialise
from portal.config import database_url
from portal.extensions import db
from portal.models import Document
from portal.services.accounts import (
    authenticate_facilitator,
    create_facilitator,
    set_shared_password,
    update_facilitator,
)
from portal.services.documents import add_document, count_download, delete_document
from portal.services.event import save_meeting, update_event
from portal.services.tags import tags_for
from portal.storage import LocalStorage, StorageError

PORTAL = Path(sys.executable).parent / "portal"
TEST_DATABASE = os.environ.get("PORTAL_TEST_DATABASE_URL")  # the worker's, as given
UTC = dt.UTC
SHARED_PASSWORD = "#SN2020egm"
ACCOUNT_PASSWORD = "facilitator-pass"
SYNTHESIS = "Synthèse des échanges\n".encode()
BIG = PNG_BYTES + os.urandom(3 * 1024 * 1024 + 17)  # several read chunks, not a round size


@dataclass
class Site:
    """One installation in a temporary folder: SQLite in its instance folder, or ``database``."""

    root: Path
    database: str | None = None
    #: ``s3://bucket/prefix`` for an installation on S3 (``endpoint``: the S3 server's URL).
    storage: str | None = None
    endpoint: str | None = None

    @property
    def instance_dir(self) -> Path:
        return self.root / "instance"

    @property
    def storage_dir(self) -> Path:
        return self.root / "uploads"

    @property
    def url(self) -> str:
        return database_url(self.database, self.instance_dir)

    def portal(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
        env["PORTAL_INSTANCE_DIR"] = str(self.instance_dir)
        env["PORTAL_STORAGE"] = self.storage or str(self.storage_dir)
        if self.endpoint:
            env["PORTAL_S3_ENDPOINT_URL"] = self.endpoint
        if self.database:
            env["PORTAL_DATABASE_URL"] = self.database
        return subprocess.run(
            [str(PORTAL), *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.root,
            env=env,
            timeout=120,
        )

    @contextmanager
    def web(self) -> Iterator[Flask]:
        """The same installation, in-process, for test clients (no context pushed)."""
        with fresh_app(
            {
                "TESTING": True,
                "INSTANCE_DIR": str(self.instance_dir),
                "STORAGE": self.storage or str(self.storage_dir),
                "S3_ENDPOINT_URL": self.endpoint,
                "SQLALCHEMY_DATABASE_URI": self.url,
                "PASSWORD_HASH": {"time_cost": 1, "memory_cost": 8, "parallelism": 1},
            }
        ) as application:
            yield application

    @contextmanager
    def app(self) -> Iterator[Flask]:
        """The same installation, in-process, inside an application context."""
        with self.web() as application, application.app_context():
            yield application
            db.session.remove()

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of every table, as dicts, by primary key."""
        with self.app():
            return {
                table.name: [
                    dict(row)
                    for row in db.session.execute(
                        select(table).order_by(*table.primary_key.columns)
                    ).mappings()
                ]
                for table in db.metadata.sorted_tables
            }

    def files(self) -> dict[str, str]:
        """Every stored file (temporary ones aside): key → SHA-256 of its bytes."""
        if self.storage:
            return self._objects()
        if not self.storage_dir.is_dir():
            return {}
        return {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in self.storage_dir.iterdir()
            if path.is_file()
        }

    def _objects(self) -> dict[str, str]:
        """What is really in the bucket under the prefix, read with a plain S3 client."""
        import boto3
        from botocore.config import Config

        bucket, _, prefix = self.storage.removeprefix("s3://").partition("/")
        prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        client = boto3.client(
            "s3", endpoint_url=self.endpoint, config=Config(s3={"addressing_style": "path"})
        )
        found = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return {
            item["Key"].removeprefix(prefix): hashlib.sha256(
                client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            ).hexdigest()
            for item in found
        }

    def tables(self) -> list[str]:
        """The tables the database holds (none when it does not exist yet)."""
        if not self.database and not (self.instance_dir / "portal.db").exists():
            return []
        engine = create_engine(self.url)
        try:
            return inspect(engine).get_table_names()
        finally:
            engine.dispose()


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert_no_traceback(result)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)


def assert_refused(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 1 with one line on standard error, no traceback; return that line."""
    assert_no_traceback(result)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def target_site(root: Path) -> Site:
    """A new installation on the test database (PostgreSQL when configured), schema dropped."""
    if TEST_DATABASE:
        _reset_postgresql(database_url(TEST_DATABASE, root))
    root.mkdir()
    return Site(root, TEST_DATABASE)


def populate(site: Site) -> None:
    """Fill an installation with a bit of everything: every table, every column type."""
    with site.app():
        initialise()
        set_shared_password(SHARED_PASSWORD)
        admin = create_facilitator(
            "admin@example.org", ACCOUNT_PASSWORD, name="Admin", is_admin=True
        )
        anim = create_facilitator("anim@example.org", ACCOUNT_PASSWORD, name="Anim Ée")
        former = create_facilitator("former@example.org", ACCOUNT_PASSWORD)
        update_facilitator(former, acting=admin, enabled=False, is_admin=False)
        assert authenticate_facilitator("anim@example.org", ACCOUNT_PASSWORD) is not None
        update_event(
            title="Session nationale des États généraux des migrations 2020",
            description="Huit temps d'échange.",
            starts_on=dt.date(2020, 11, 21),
            ends_on=dt.date(2020, 11, 27),
            access_opens=dt.datetime(2020, 11, 20, 8, 30, tzinfo=UTC),
            access_closes=dt.datetime(2100, 1, 1, tzinfo=UTC),
        )
        start = dt.datetime(2020, 11, 21, 9, 0, 0, 123456, tzinfo=UTC)
        first = save_meeting(
            None,
            title="Fonctionnement des Assemblées locales",
            starts_at=start,
            ends_at=start + dt.timedelta(hours=2),
            slug="temps-1",
            description="Tour des Assemblées locales.",
        )
        save_meeting(
            None,
            title="Bilan des chantiers thématiques",
            starts_at=start + dt.timedelta(days=3),
            ends_at=start + dt.timedelta(days=3, hours=2),
        )
        programme = add_document(
            io.BytesIO(PDF_BYTES),
            "programme.pdf",
            meeting=first,
            tags=["Bilan 2020", "Élections municipales"],
            uploaded_by=anim,
        )
        gone = add_document(io.BytesIO(b"brouillon\n"), "brouillon.txt")
        add_document(io.BytesIO(BIG), "affiche.png", meeting=first, tags=["Bilan 2020"])
        add_document(io.BytesIO(SYNTHESIS), "compte-rendu.txt", tags=["Synthèse"])
        delete_document(gone)  # a gap in the ids: new rows must not reuse it
        count_download(programme.id)
        count_download(programme.id)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """A populated SQLite + folder installation (read-only for the tests that use it)."""
    site = Site(tmp_path_factory.mktemp("source"))
    populate(site)
    return site


@pytest.fixture(scope="module")
def backup_run(
    source: Site, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A backup of ``source``, made by the console script, and what the command printed."""
    path = tmp_path_factory.mktemp("archive") / "portal-backup.zip"
    return path, source.portal("backup", str(path))


@pytest.fixture
def archive(backup_run: tuple[Path, subprocess.CompletedProcess[str]]) -> Path:
    path, result = backup_run
    assert_ok(result)
    return path


# --- round trip --------------------------------------------------------------------------


def test_backup_writes_one_private_archive_with_a_manifest_and_a_summary(backup_run):
    path, result = backup_run

    assert_ok(result)
    (summary,) = result.stdout.strip().splitlines()
    assert "documents 3" in summary
    assert "facilitators 3" in summary
    total = len(PDF_BYTES) + len(BIG) + len(SYNTHESIS)
    assert summary.endswith(f"3 files, {total} bytes")
    assert (path.stat().st_mode & 0o777) == 0o600, "the archive holds password hashes"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file left"
    with zipfile.ZipFile(path) as opened:
        manifest = json.loads(opened.read("manifest.json"))
        assert manifest["format"] == "portail-des-supports-backup"
        assert manifest["version"] == 1
        assert manifest["tables"]["documents"] == 3
        for name, entry in manifest["members"].items():
            assert hashlib.sha256(opened.read(name)).hexdigest() == entry["sha256"]
        assert set(opened.namelist()) == {"manifest.json", *manifest["members"]}
        records = [json.loads(line) for line in opened.read("rows.jsonl").splitlines()]
    event = next(r["row"] for r in records if r["table"] == "events")
    assert event["starts_on"] == "2020-11-21"
    assert event["access_opens"] == "2020-11-20T08:30:00+00:00"
    former = next(r["row"] for r in records if r["row"].get("email") == "former@example.org")
    assert former["enabled"] is False


def test_round_trip_sqlite_to_the_test_database_and_back(source, archive, tmp_path):
    rows, files = source.rows(), source.files()
    assert len(files) == 3

    # SQLite + folder → the test database (PostgreSQL when configured) + folder.
    target = target_site(tmp_path / "target")
    assert_ok(target.portal("restore", str(archive)))
    assert target.rows() == rows
    assert target.files() == files
    with target.app():
        for document in db.session.scalars(select(Document)):
            assert target.files()[document.storage_key] == document.sha256
    assert_ok(target.portal("check"))

    # ... and back to SQLite + folder, from a backup of the restored installation.
    second = tmp_path / "second.zip"
    assert_ok(target.portal("backup", str(second)))
    with zipfile.ZipFile(archive) as one, zipfile.ZipFile(second) as two:
        assert one.read("rows.jsonl") == two.read("rows.jsonl"), "the same rows, the same bytes"
    back = Site(tmp_path / "back")
    (tmp_path / "back").mkdir()
    assert_ok(back.portal("restore", str(second)))
    assert back.rows() == rows
    assert back.files() == files

    # The restored installation works: the shared password and the accounts were carried.
    with target.web() as application:
        participant = application.test_client()
        assert unlock(participant, "not-the-password").status_code != 303
        assert unlock(participant, SHARED_PASSWORD).status_code == 303
        assert login(application.test_client(), "anim@example.org").status_code == 303
        assert login(application.test_client(), "admin@example.org").status_code == 303
        assert login(application.test_client(), "former@example.org").status_code != 303

    # New rows are numbered after the restored ones (PostgreSQL sequences were reset).
    with target.app():
        start = dt.datetime(2020, 11, 28, 10, tzinfo=UTC)
        meeting = save_meeting(
            None, title="Nouveau temps", starts_at=start, ends_at=start + dt.timedelta(hours=1)
        )
        account = create_facilitator("new@example.org", ACCOUNT_PASSWORD)
        document = add_document(io.BytesIO(PDF_BYTES), "nouveau.pdf", tags=["Nouveau"])
        assert (meeting.id, account.id, document.id) == (3, 4, 5)
        assert document.tags[0].id == 4


# --- refusals ----------------------------------------------------------------------------


def test_restore_into_an_instance_that_is_not_empty_is_refused_and_changes_nothing(
    archive, tmp_path
):
    target = target_site(tmp_path / "target")
    with target.app():
        initialise()
        add_document(io.BytesIO(PDF_BYTES), "autre.pdf", tags=["Autre"])
    rows, files = target.rows(), target.files()

    line = assert_refused(target.portal("restore", str(archive)))

    assert "not empty" in line
    assert target.rows() == rows
    assert target.files() == files


def _add_facilitator() -> None:
    create_facilitator("someone@example.org", ACCOUNT_PASSWORD)


def _add_session() -> None:
    start = dt.datetime(2021, 1, 1, 10, tzinfo=UTC)
    save_meeting(None, title="Autre", starts_at=start, ends_at=start + dt.timedelta(hours=1))


def _add_tag() -> None:
    tags_for(["Autre"])
    db.session.commit()


@pytest.mark.parametrize("fill", [_add_facilitator, _add_session, _add_tag])
def test_any_facilitator_session_or_tag_makes_an_instance_not_empty(
    archive, tmp_path, fill: Callable[[], None]
):
    target = target_site(tmp_path / "target")
    with target.app():
        initialise()
        fill()
    rows = target.rows()

    with target.app(), pytest.raises(BackupError, match="not empty"):
        restore_backup(archive, initialise)

    assert target.rows() == rows
    assert target.files() == {}


def _flip_in_member(path: Path, name: str, where: float = 0.5) -> None:
    """Flip one byte of a member's data inside the archive file itself."""
    with zipfile.ZipFile(path) as opened:
        info = opened.getinfo(name)
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26 :][:4])
    start = info.header_offset + 30 + name_length + extra_length
    raw[start + int(info.compress_size * where)] ^= 0x01
    path.write_bytes(bytes(raw))


def _rewrite(path: Path, change: Callable[[str, bytes], bytes]) -> None:
    """Rebuild the archive with ``change`` applied to each member (valid ZIP, new CRCs)."""
    with zipfile.ZipFile(path) as opened:
        members = [(info, change(info.filename, opened.read(info))) for info in opened.infolist()]
    with zipfile.ZipFile(path, "w") as rebuilt:
        for info, data in members:
            rebuilt.writestr(info, data)


def _largest_file(path: Path) -> str:
    with zipfile.ZipFile(path) as opened:
        return max(opened.infolist(), key=lambda info: info.file_size).filename


def tamper_file_bytes(path: Path) -> None:
    _flip_in_member(path, _largest_file(path))


def tamper_rows_bytes(path: Path) -> None:
    _flip_in_member(path, "rows.jsonl", 0.3)


def tamper_file_rebuilt(path: Path) -> None:
    target = _largest_file(path)

    def change(name: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 0x01]) if name == target else data

    _rewrite(path, change)


def tamper_rows_rebuilt(path: Path) -> None:
    def change(name: str, data: bytes) -> bytes:
        return (
            data.replace(b'"download_count":2', b'"download_count":3')
            if name == "rows.jsonl"
            else data
        )

    _rewrite(path, change)


def tamper_file_removed(path: Path) -> None:
    target = _largest_file(path)
    with zipfile.ZipFile(path) as opened:
        members = [(i, opened.read(i)) for i in opened.infolist() if i.filename != target]
    with zipfile.ZipFile(path, "w") as rebuilt:
        for info, data in members:
            rebuilt.writestr(info, data)


def tamper_truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def tamper_not_an_archive(path: Path) -> None:
    path.write_text("programme de la semaine\n")


TAMPERINGS = [
    tamper_file_bytes,
    tamper_rows_bytes,
    tamper_file_rebuilt,
    tamper_rows_rebuilt,
    tamper_file_removed,
    tamper_truncated,
    tamper_not_an_archive,
]


@pytest.mark.parametrize("tamper", TAMPERINGS)
def test_damaged_archive_is_detected_before_anything_is_written(
    archive, tmp_path, tamper: Callable[[Path], None]
):
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(archive.read_bytes())
    tamper(damaged)
    target = target_site(tmp_path / "target")

    with target.app(), pytest.raises(BackupError):
        restore_backup(damaged, initialise)

    assert target.tables() == [], "not even the schema"
    assert target.files() == {}


@pytest.mark.parametrize("tamper", [tamper_file_bytes, tamper_rows_rebuilt, tamper_not_an_archive])
def test_damaged_archive_is_refused_by_the_command_in_one_line(
    archive, tmp_path, tamper: Callable[[Path], None]
):
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(archive.read_bytes())
    tamper(damaged)
    target = target_site(tmp_path / "target")

    line = assert_refused(target.portal("restore", str(damaged)))

    assert "archive" in line
    assert target.tables() == [], "not even the schema"
    assert target.files() == {}


def test_rows_that_do_not_fit_are_refused_and_nothing_is_kept(archive, tmp_path):
    # A consistent archive (manifest rewritten too) whose rows break a foreign key.
    broken = tmp_path / "broken.zip"
    broken.write_bytes(archive.read_bytes())
    with zipfile.ZipFile(broken) as opened:
        rows = opened.read("rows.jsonl").replace(b'"meeting_id":1', b'"meeting_id":99')

    def change(name: str, data: bytes) -> bytes:
        if name == "rows.jsonl":
            return rows
        if name == "manifest.json":
            manifest = json.loads(data)
            manifest["members"]["rows.jsonl"] = {
                "size": len(rows),
                "sha256": hashlib.sha256(rows).hexdigest(),
            }
            return json.dumps(manifest).encode()
        return data

    _rewrite(broken, change)
    target = target_site(tmp_path / "target")

    line = assert_refused(target.portal("restore", str(broken)))

    assert "do not fit" in line
    assert all(not found for name, found in target.rows().items() if name != "events")
    assert target.files() == {}


def test_a_failure_while_writing_files_removes_them_and_rolls_back(archive, tmp_path, monkeypatch):
    target = target_site(tmp_path / "target")
    original = LocalStorage.restore
    calls = []

    def failing(self: LocalStorage, key: str, source: Any, *args: Any) -> None:
        calls.append(key)
        if len(calls) == 2:
            raise StorageError("disk on fire")
        original(self, key, source, *args)

    monkeypatch.setattr(LocalStorage, "restore", failing)
    with target.app(), pytest.raises(StorageError):
        restore_backup(archive, initialise)

    assert len(calls) == 2
    assert target.files() == {}
    assert all(not found for name, found in target.rows().items() if name != "events")


def test_restore_of_a_missing_file_is_a_usage_error(tmp_path):
    target = Site(tmp_path)
    result = target.portal("restore", str(tmp_path / "nowhere.zip"))
    assert_no_traceback(result)
    assert result.returncode == 2
    assert "Usage: portal restore" in result.stderr


def test_backup_into_a_missing_folder_is_a_usage_error(source, tmp_path, monkeypatch):
    monkeypatch.setenv("PORTAL_INSTANCE_DIR", str(source.instance_dir))
    monkeypatch.setenv("PORTAL_STORAGE", str(source.storage_dir))
    monkeypatch.delenv("PORTAL_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["backup", str(tmp_path / "nowhere" / "backup.zip")])
    assert result.exit_code == 2, result.output
    assert "does not exist" in result.output
    assert not (tmp_path / "nowhere").exists()


def test_backup_of_an_instance_with_damaged_files_is_refused_and_names_each_one(tmp_path):
    site = Site(tmp_path / "site")
    (tmp_path / "site").mkdir()
    with site.app():
        initialise()
        damaged = add_document(io.BytesIO(PDF_BYTES * 3), "programme-semaine.pdf")
        missing = add_document(io.BytesIO(b"notes\n"), "notes.txt")
        add_document(io.BytesIO(b"intact\n"), "intact.txt")
        damaged_key, missing_key = damaged.storage_key, missing.storage_key
    path = site.storage_dir / damaged_key
    data = bytearray(path.read_bytes())
    data[20] ^= 0x80
    path.write_bytes(bytes(data))
    (site.storage_dir / missing_key).unlink()
    out = tmp_path / "out"
    out.mkdir()

    result = site.portal("backup", str(out / "backup.zip"))

    assert_no_traceback(result)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    problems = "\n".join(lines[:2])
    assert "programme-semaine.pdf" in problems
    assert "notes.txt" in problems
    assert "intact.txt" not in problems
    assert lines[2].startswith("error: ")
    assert list(out.iterdir()) == [], "no archive and no temporary file"
