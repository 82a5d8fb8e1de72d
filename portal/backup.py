"""``portal backup`` and ``portal restore``: one portable archive of every row and file.

The archive is a ZIP file:

``rows.jsonl``
    every row of every table, one JSON object per line (``{"table": ..., "row": {...}}``),
    tables in dependency order, rows by primary key; datetimes in ISO 8601 UTC, dates in
    ISO 8601, booleans and integers as JSON has them. Nothing database-specific.
``files/<key>``
    each document's stored file, byte for byte, under its storage key.
``manifest.json`` (written last)
    the format and its version, the schema revision, the number of rows per table, and
    the size and SHA-256 of every other member.

A backup never carries damage: a document whose file is missing or does not match its
recorded SHA-256 makes it refuse. A restore reads and checks the whole archive before it
writes anything, then inserts the rows in one transaction and writes the files through
the storage; when anything fails it rolls back and removes the files it wrote.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from flask import current_app
from sqlalchemy import Boolean, Date, Integer, String, Table, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from . import models
from .extensions import db
from .storage import Storage, StorageError

FORMAT = "portail-des-supports-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ROWS = "rows.jsonl"
FILES_PREFIX = "files/"
CHUNK = 1024 * 1024
#: The table the portal creates on its own (``initialise``): a restore may overwrite it.
SINGLETON_TABLES = frozenset({"events"})


class BackupError(Exception):
    """A backup or restore the data refuses; the message is one line for the terminal."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


@dataclass
class Summary:
    """What a backup wrote or a restore loaded."""

    tables: dict[str, int] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0

    def line(self) -> str:
        """Return the summary as one line: rows per table, files, bytes."""
        rows = ", ".join(f"{name} {count}" for name, count in self.tables.items())
        return f"{rows}; {self.files} files, {self.bytes} bytes"


def _tables() -> list[Table]:
    """Return the portal's tables, each after the tables it refers to."""
    return list(db.metadata.sorted_tables)


def _storage() -> Storage:
    return current_app.extensions["portal.storage"]


# --- values: database ⇄ JSON -----------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise TypeError("naive datetime read from the database")
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot put a {type(value).__name__} into a backup")


def _decode(table: Table, name: str, value: Any) -> Any:
    """Turn a JSON value back into what the column holds, or raise ValueError."""
    column = table.columns[name]
    if value is None:
        if not column.nullable:
            raise ValueError(f"{table.name}.{name} must not be empty")
        return None
    kind = column.type
    if isinstance(kind, models.UTCDateTime):
        if not isinstance(value, str):
            raise ValueError(f"{table.name}.{name}: not a date-time")
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError(f"{table.name}.{name}: date-time without a UTC offset")
        return parsed.astimezone(dt.UTC)
    if isinstance(kind, Date):
        if not isinstance(value, str):
            raise ValueError(f"{table.name}.{name}: not a date")
        return dt.date.fromisoformat(value)
    if isinstance(kind, Boolean):
        if not isinstance(value, bool):
            raise ValueError(f"{table.name}.{name}: not true or false")
        return value
    if isinstance(kind, Integer):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{table.name}.{name}: not a whole number")
        return value
    if isinstance(kind, String):
        if not isinstance(value, str):
            raise ValueError(f"{table.name}.{name}: not text")
        return value
    return value


def _line(table: str, row: dict[str, Any]) -> bytes:
    record = {"table": table, "row": {key: _encode(value) for key, value in row.items()}}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# --- backup ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StoredFile:
    """What a backup needs to know of a document to copy and check its file."""

    id: int
    original_name: str
    storage_key: str
    size: int
    sha256: str

    FIELDS = ("id", "original_name", "storage_key", "size", "sha256")


class _HashingWriter:
    """Pass writes through to ``target``, counting and hashing them."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.target.write(data)
        self.sha256.update(data)
        self.size += len(data)


def _snapshot(connection: Connection) -> None:
    """Make every following read of ``connection`` see one consistent state."""
    if connection.dialect.name == "postgresql":
        connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    elif connection.dialect.name == "sqlite":
        # pysqlite opens no transaction for reads on its own; a read transaction is a snapshot.
        connection.exec_driver_sql("BEGIN")


def _write_rows(archive: zipfile.ZipFile, summary: Summary) -> tuple[dict, list[_StoredFile]]:
    """Write ``rows.jsonl`` from one snapshot; return its entry and the documents' files."""
    stored: list[_StoredFile] = []
    info = _member(ROWS, zipfile.ZIP_DEFLATED)
    with db.engine.connect() as connection:
        _snapshot(connection)
        revision = connection.scalar(text("SELECT version_num FROM alembic_version"))
        with archive.open(info, "w", force_zip64=True) as member:
            writer = _HashingWriter(member)
            for table in _tables():
                order = list(table.primary_key.columns) or list(table.columns)
                count = 0
                for row in connection.execute(select(table).order_by(*order)).mappings():
                    writer.write(_line(table.name, dict(row)))
                    count += 1
                    if table.name == "documents":
                        stored.append(_StoredFile(**{k: row[k] for k in _StoredFile.FIELDS}))
                summary.tables[table.name] = count
        connection.rollback()
    entry = {"size": writer.size, "sha256": writer.sha256.hexdigest()}
    return {"revision": revision, "entry": entry}, stored


def _member(name: str, compression: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=dt.datetime.now().timetuple()[:6])
    info.compress_type = compression
    # Password hashes inside: whoever unpacks the archive gets private files.
    info.external_attr = 0o600 << 16
    return info


def _copy_file(archive: zipfile.ZipFile, item: _StoredFile) -> tuple[dict | None, str | None]:
    """Copy one document's file into the archive; return its entry, or the problem found."""
    storage = _storage()
    label = f"document {item.id} ({item.original_name!r}), key {item.storage_key}"
    try:
        size = storage.size(item.storage_key)
    except StorageError as error:
        return None, f"unreadable file: {label}: {error}"
    if size is None:
        return None, f"missing file: {label}"
    if size != item.size:
        return None, f"wrong size: {label}: {size} bytes stored, {item.size} recorded"
    try:
        source = storage.open(item.storage_key)
    except StorageError as error:
        return None, f"unreadable file: {label}: {error}"
    # Documents are mostly compressed already (PDF, office, images, video): store as is.
    info = _member(FILES_PREFIX + item.storage_key, zipfile.ZIP_STORED)
    with source, archive.open(info, "w", force_zip64=True) as member:
        writer = _HashingWriter(member)
        while True:
            try:
                chunk = source.read(CHUNK)
            except OSError as error:
                return None, f"unreadable file: {label}: {error.strerror or error}"
            if not chunk:
                break
            writer.write(chunk)
    digest = writer.sha256.hexdigest()
    if writer.size != item.size or digest != item.sha256:
        return None, f"checksum mismatch: {label}"
    return {"size": writer.size, "sha256": digest}, None


def write_backup(target: Path) -> Summary:
    """Write the whole instance into the archive ``target``, atomically."""
    target = target.absolute()
    summary = Summary()
    temp = target.parent / f".{target.name}.{secrets.token_hex(8)}.part"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise BackupError(f"cannot write in {target.parent}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", allowZip64=True) as archive:
                rows, stored = _write_rows(archive, summary)
                members = {ROWS: rows["entry"]}
                problems = []
                for item in stored:
                    entry, problem = _copy_file(archive, item)
                    if problem:
                        problems.append(problem)
                        continue
                    members[FILES_PREFIX + item.storage_key] = {"key": item.storage_key, **entry}
                    summary.files += 1
                    summary.bytes += entry["size"]
                if problems:
                    raise BackupError(
                        f"backup refused: {len(problems)} document file(s) missing or damaged"
                        " (see `portal check`); nothing written",
                        problems,
                    )
                manifest = {
                    "format": FORMAT,
                    "version": FORMAT_VERSION,
                    "created_at": models.utcnow().isoformat(),
                    "schema_revision": rows["revision"],
                    "tables": summary.tables,
                    "members": members,
                }
                archive.writestr(
                    _member(MANIFEST, zipfile.ZIP_DEFLATED),
                    json.dumps(manifest, ensure_ascii=False, indent=1),
                )
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temp, target)
        _fsync_folder(target.parent)
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise BackupError(f"cannot write {target}: {error.strerror or error}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return summary


def _fsync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading an archive ------------------------------------------------------------------

#: What a damaged or foreign archive raises while read; zipfile raises NotImplementedError
#: for a compression method it does not support (the archive is refused, not half-read).
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


class _HashingReader:
    """Read a member, hashing it, and refuse to read more than the manifest announced."""

    def __init__(self, source: IO[bytes], name: str, limit: int) -> None:
        self.source = source
        self.name = name
        self.limit = limit
        self.size = 0
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(CHUNK if size is None or size < 0 else size)
        self.size += len(data)
        if self.size > self.limit:
            raise BackupError(f"damaged archive: {self.name} is longer than the manifest says")
        self.sha256.update(data)
        return data

    def matches(self, entry: dict) -> bool:
        return self.size == entry["size"] and self.sha256.hexdigest() == entry["sha256"]


@dataclass
class _Archive:
    """An opened, fully verified archive: its manifest and its rows, decoded."""

    zip: zipfile.ZipFile
    manifest: dict
    rows: dict[str, list[dict[str, Any]]]
    files: dict[str, dict]  # storage key → manifest entry (size, sha256)

    def open_file(self, key: str) -> _HashingReader:
        name = FILES_PREFIX + key
        entry = self.files[key]
        return _HashingReader(self.zip.open(name), name, entry["size"])


def _read_manifest(archive: zipfile.ZipFile) -> dict:
    try:
        with archive.open(MANIFEST) as handle:
            manifest = json.loads(handle.read(16 * 1024 * 1024))
    except KeyError:
        raise BackupError("not a portal backup: no manifest.json in the archive") from None
    except (ValueError, UnicodeDecodeError):
        raise BackupError("damaged archive: manifest.json is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError("not a portal backup: unknown manifest format")
    if manifest.get("version") != FORMAT_VERSION:
        raise BackupError(
            f"unsupported backup format version {manifest.get('version')!r}"
            f" (this portal reads version {FORMAT_VERSION})"
        )
    members = manifest.get("members")
    tables = manifest.get("tables")
    if not isinstance(members, dict) or not isinstance(tables, dict) or ROWS not in members:
        raise BackupError("damaged archive: incomplete manifest")
    for name, entry in members.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
            and (name == ROWS or name == FILES_PREFIX + str(entry.get("key")))
        ):
            raise BackupError(f"damaged archive: bad manifest entry for {name!r}")
    return manifest


def _verify_members(archive: zipfile.ZipFile, members: dict) -> None:
    """Check that the archive holds exactly the manifest's members, each with its SHA-256."""
    names = archive.namelist()
    if len(names) != len(set(names)):
        raise BackupError("damaged archive: a member appears twice")
    listed = set(members) | {MANIFEST}
    if unexpected := sorted(set(names) - listed):
        raise BackupError(f"damaged archive: {unexpected[0]} is not in the manifest")
    if missing := sorted(listed - set(names)):
        raise BackupError(f"damaged archive: {missing[0]} is missing")
    for name, entry in members.items():
        if name == ROWS:
            continue  # checked by _read_rows as it reads them
        with archive.open(name) as handle:
            reader = _HashingReader(handle, name, entry["size"])
            while reader.read(CHUNK):
                pass
        if not reader.matches(entry):
            raise BackupError(f"damaged archive: {name} does not match its SHA-256")


def _read_rows(archive: zipfile.ZipFile, entry: dict) -> dict[str, list[dict[str, Any]]]:
    """Read and decode ``rows.jsonl``, checking its SHA-256 on the way."""
    known = {table.name: table for table in _tables()}
    rows: dict[str, list[dict[str, Any]]] = {}
    with archive.open(ROWS) as handle:
        reader = _HashingReader(handle, ROWS, entry["size"])
        buffer = b""
        lines: list[bytes] = []
        while chunk := reader.read(CHUNK):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(complete)
        if buffer:
            lines.append(buffer)
    if not reader.matches(entry):
        raise BackupError(f"damaged archive: {ROWS} does not match its SHA-256")
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            name, row = record["table"], record["row"]
            if not isinstance(row, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise BackupError(f"damaged archive: {ROWS} line {number} is not a row") from None
        table = known.get(name)
        if table is None:
            raise BackupError(
                f"the backup has a table this portal does not know ({name}); restore it with"
                " the version of the portal that made it"
            )
        if unknown := sorted(set(row) - set(table.columns.keys())):
            raise BackupError(
                f"the backup has a column this portal does not know ({name}.{unknown[0]});"
                " restore it with the version of the portal that made it"
            )
        try:
            decoded = {key: _decode(table, key, value) for key, value in row.items()}
        except ValueError as error:
            raise BackupError(f"damaged archive: {ROWS} line {number}: {error}") from None
        rows.setdefault(name, []).append(decoded)
    return rows


def open_archive(path: Path) -> _Archive:
    """Open and verify the archive at ``path`` entirely; raise BackupError on any mismatch."""
    try:
        archive = zipfile.ZipFile(path)
    except _ARCHIVE_ERRORS:
        raise BackupError(f"not a portal backup: {path} is not a ZIP archive") from None
    except OSError as error:
        raise BackupError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        manifest = _read_manifest(archive)
        members = manifest["members"]
        _verify_members(archive, members)
        rows = _read_rows(archive, members[ROWS])
        counts = {name: len(found) for name, found in rows.items() if found}
        if counts != {name: n for name, n in manifest["tables"].items() if n}:
            raise BackupError("damaged archive: the rows do not match the manifest's counts")
        files = {entry["key"]: entry for name, entry in members.items() if name != ROWS}
        documents = rows.get("documents", [])
        for document in documents:
            entry = files.get(document["storage_key"])
            if entry is None:
                raise BackupError(f"damaged archive: no file for document {document['id']}")
            if entry["sha256"] != document["sha256"] or entry["size"] != document["size"]:
                raise BackupError(
                    f"damaged archive: the file of document {document['id']} does not match"
                    " its recorded SHA-256"
                )
        if len(files) != len({d["storage_key"] for d in documents}):
            raise BackupError("damaged archive: a file belongs to no document")
    except _ARCHIVE_ERRORS as error:
        archive.close()
        raise BackupError(f"damaged archive: {error}") from None
    except OSError as error:
        archive.close()
        raise BackupError(f"cannot read {path}: {error.strerror or error}") from None
    except BaseException:
        archive.close()
        raise
    return _Archive(archive, manifest, rows, files)


# --- restore -----------------------------------------------------------------------------


def _existing_rows() -> dict[str, int]:
    found = {}
    for table in _tables():
        if table.name in SINGLETON_TABLES:
            continue
        count = db.session.scalar(select(func.count()).select_from(table)) or 0
        if count:
            found[table.name] = count
    return found


def _reset_sequences(connection: Connection) -> None:
    """Let PostgreSQL number new rows after the restored ones."""
    if connection.dialect.name != "postgresql":
        return
    preparer = connection.dialect.identifier_preparer
    for table in _tables():
        for column in table.primary_key.columns:
            if not isinstance(column.type, Integer) or len(table.primary_key.columns) != 1:
                continue
            highest = connection.scalar(select(func.max(column)))
            connection.execute(
                select(
                    func.setval(
                        func.pg_get_serial_sequence(preparer.format_table(table), column.name),
                        (highest or 0) + 1,
                        False,
                    )
                )
            )


def _chunks(items: list[dict[str, Any]], size: int = 1000) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextmanager
def _pipeline_errors_reported_once() -> Iterator[None]:
    """Keep psycopg from printing a second line about the failed insert it already raised.

    When rows break a constraint, psycopg raises the error and also logs, as a warning,
    that closing its pipeline failed because of it; the refusal line says everything.
    """
    logger = logging.getLogger("psycopg")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def restore_backup(path: Path, initialise: Callable[[], None]) -> Summary:
    """Load the archive at ``path`` into this (empty) instance."""
    archive = open_archive(path)
    with archive.zip:
        # Only a verified archive gets this far: now the instance may be created.
        initialise()
        db.session.remove()
        if existing := _existing_rows():
            described = ", ".join(f"{count} {name}" for name, count in existing.items())
            raise BackupError(
                f"this instance is not empty ({described}); restore only into a new instance"
            )
        storage = _storage()
        for key in archive.files:
            if storage.size(key) is not None:
                raise BackupError(f"the storage already holds a file under key {key}")
        summary = Summary()
        written: list[str] = []
        try:
            with _pipeline_errors_reported_once():
                for table in _tables():
                    found = archive.rows.get(table.name, [])
                    if table.name in SINGLETON_TABLES:
                        db.session.execute(table.delete())
                    for chunk in _chunks(found):
                        db.session.execute(table.insert(), chunk)
                    summary.tables[table.name] = len(found)
            for key, entry in archive.files.items():
                reader = archive.open_file(key)
                storage.restore(key, reader)
                written.append(key)
                if not reader.matches(entry):
                    raise BackupError(f"damaged archive: files/{key} changed while restoring")
                summary.files += 1
                summary.bytes += entry["size"]
            _reset_sequences(db.session.connection())
            db.session.commit()
        except BaseException as error:
            for key in written:
                try:
                    storage.delete(key)
                except (StorageError, OSError):
                    current_app.logger.warning("could not remove restored file %s", key)
            # A connection that died took its transaction with it.
            with suppress(SQLAlchemyError):
                db.session.rollback()
            if isinstance(error, IntegrityError | DataError):
                reason = str(error.orig or error).strip().splitlines()[0]
                raise BackupError(f"the rows do not fit this database: {reason}") from None
            if isinstance(error, _ARCHIVE_ERRORS):
                raise BackupError(f"damaged archive: {error}") from None
            raise
    return summary


__all__ = ["BackupError", "Summary", "open_archive", "restore_backup", "write_backup"]
