"""Resumable uploads (tus 1.0: core, creation, termination): the partial files and their rules.

A partial upload lives in ``<instance>/tus/`` as two files named by a random id: ``<id>.bin``
(the bytes received so far, so its size is the upload's offset) and ``<id>.json`` (owner,
declared length, metadata, and the result once the last byte is in). The instance folder is
private (mode 0700) and no URL serves it: the only way to these bytes is the owner's tus
endpoints. A finished upload is handed to the documents service like a plain upload.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination"
#: An upload untouched for a day is abandoned: a closed laptop reopens well within that.
EXPIRE_AFTER_SECONDS = 24 * 3600
#: Bytes read from the request and written to disk at a time: memory stays bounded.
WRITE_CHUNK = 1024 * 1024
#: What the browser sends per request: well under a proxy's usual 100 MB body cap.
CLIENT_CHUNK_BYTES = 8 * 1024 * 1024
FOLDER = "tus"
ID_PATTERN = re.compile(r"[0-9a-f]{32}")
METADATA_KEYS = frozenset({"filename", "filetype", "session", "tags", "title", "description"})
MAX_METADATA_VALUE = 5000


class TusError(Exception):
    """A tus request the portal refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message or str(status))
        self.status = status
        self.message = message


class UploadBusy(Exception):
    """Another request is writing to this upload right now."""


def parse_metadata(header: str | None) -> dict[str, str]:
    """Decode an ``Upload-Metadata`` header (``key base64,key base64``); ValueError if malformed."""
    result: dict[str, str] = {}
    if not header or not header.strip():
        return result
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        if len(parts) not in (1, 2) or not parts[0]:
            raise ValueError("malformed metadata pair")
        key = parts[0]
        if key in result:
            raise ValueError("duplicate metadata key")
        try:
            raw = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
            value = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as error:
            raise ValueError("metadata value is not base64 UTF-8") from error
        if "\x00" in value or len(value) > MAX_METADATA_VALUE:
            raise ValueError("metadata value refused")
        if key in METADATA_KEYS:
            result[key] = value
    return result


@dataclass
class Partial:
    """One upload in progress (or finished, keeping its result until it expires)."""

    folder: Path
    id: str
    info: dict[str, Any]

    @property
    def data_path(self) -> Path:
        return self.folder / f"{self.id}.bin"

    @property
    def info_path(self) -> Path:
        return self.folder / f"{self.id}.json"

    @property
    def length(self) -> int:
        return int(self.info["length"])

    @property
    def owner(self) -> int:
        return int(self.info["owner"])

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.info.get("metadata", {}))

    @property
    def result(self) -> dict[str, Any] | None:
        return self.info.get("result")

    @property
    def offset(self) -> int:
        if self.result is not None:
            return self.length
        try:
            return self.data_path.lstat().st_size
        except FileNotFoundError:
            return 0

    def open_data(self) -> IO[bytes]:
        """Open the received bytes for reading (never through a planted link)."""
        return os.fdopen(_open_regular(self.data_path, os.O_RDONLY), "rb")

    def save_info(self) -> None:
        """Write the description atomically: a reader never sees half a JSON file."""
        temp = self.folder / f"{self.id}.json.tmp"
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(self.info, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.info_path)

    def touch(self) -> None:
        self.info["updated"] = time.time()

    @contextlib.contextmanager
    def locked(self) -> Iterator[IO[bytes]]:
        """Hold the upload's lock and yield its data file opened for appending."""
        fd = _open_regular(self.data_path, os.O_WRONLY | os.O_APPEND)
        handle = os.fdopen(fd, "ab")
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise UploadBusy() from error
            yield handle
        finally:
            handle.close()

    def append(self, handle: IO[bytes], stream: IO[bytes], expected_offset: int) -> int:
        """Append what ``stream`` yields at ``expected_offset``; return the new offset.

        Whatever arrived before the client stopped sending is kept (and synced), so an
        interrupted request resumes from the last byte really stored.
        """
        offset = os.fstat(handle.fileno()).st_size
        if offset != expected_offset:
            raise TusError(409)
        remaining = self.length - offset
        try:
            while remaining > 0:
                chunk = stream.read(min(WRITE_CHUNK, remaining))
                if not chunk:
                    break
                handle.write(chunk)
                remaining -= len(chunk)
            if remaining == 0 and stream.read(1):
                # More bytes than declared: keep none of this request's bytes.
                handle.flush()
                os.ftruncate(handle.fileno(), offset)
                raise TusError(413)
        finally:
            handle.flush()
            os.fsync(handle.fileno())
            self.touch()
            self.save_info()
        return self.length - remaining


class PartialStore:
    """The private folder of partial uploads."""

    def __init__(self, instance_dir: str | os.PathLike[str]) -> None:
        self.folder = Path(instance_dir) / FOLDER

    def _ensure_folder(self) -> None:
        self.folder.mkdir(mode=0o700, exist_ok=True)

    def create(self, owner: int, length: int, metadata: dict[str, str]) -> Partial:
        """Start a new upload of ``length`` bytes for the facilitator ``owner``."""
        self._ensure_folder()
        now = time.time()
        partial = Partial(
            self.folder,
            secrets.token_hex(16),
            {"owner": owner, "length": length, "metadata": metadata, "created": now},
        )
        partial.touch()
        partial.data_path.touch(mode=0o600, exist_ok=False)
        partial.save_info()
        return partial

    def get(self, upload_id: str) -> Partial | None:
        """Return the upload ``upload_id``, or None when it does not exist (or has expired)."""
        if not ID_PATTERN.fullmatch(upload_id):
            return None
        try:
            with open(self.folder / f"{upload_id}.json", encoding="utf-8") as handle:
                info = json.load(handle)
        except (FileNotFoundError, ValueError):
            return None
        partial = Partial(self.folder, upload_id, info)
        if _expired(partial, time.time()):
            return None
        return partial

    def delete(self, partial: Partial) -> None:
        """Forget an upload: its bytes, then its description."""
        partial.data_path.unlink(missing_ok=True)
        partial.info_path.unlink(missing_ok=True)

    def drop_data(self, partial: Partial) -> None:
        """Remove the received bytes of a finished upload; its result stays readable."""
        partial.data_path.unlink(missing_ok=True)

    def stale(self, now: float | None = None) -> list[Path]:
        """List the files of uploads abandoned for longer than the expiry."""
        now = time.time() if now is None else now
        if not self.folder.is_dir():
            return []
        found: list[Path] = []
        for entry in sorted(self.folder.iterdir()):
            upload_id = entry.name.split(".", 1)[0]
            if not ID_PATTERN.fullmatch(upload_id) or not entry.is_file():
                continue
            try:
                with open(self.folder / f"{upload_id}.json", encoding="utf-8") as handle:
                    partial = Partial(self.folder, upload_id, json.load(handle))
                stale = _expired(partial, now)
            except (FileNotFoundError, ValueError):
                # Bytes without a readable description: judge by the file's own age.
                stale = entry.stat().st_mtime < now - EXPIRE_AFTER_SECONDS
            if stale:
                found.append(entry)
        return found

    def remove_stale(self, now: float | None = None) -> int:
        """Delete abandoned uploads; return how many files went."""
        removed = 0
        for path in self.stale(now):
            path.unlink(missing_ok=True)
            removed += 1
        return removed


def _open_regular(path: Path, flags: int) -> int:
    """Open ``path`` only if it is a regular file; anything else is as good as missing."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise FileNotFoundError(str(path)) from error
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileNotFoundError(str(path))
    return fd


def _expired(partial: Partial, now: float) -> bool:
    last = max(float(partial.info.get("updated", 0)), float(partial.info.get("created", 0)))
    return last < now - EXPIRE_AFTER_SECONDS


def stale_partials(instance_dir: str | os.PathLike[str]) -> list[Path]:
    """List the files of abandoned resumable uploads (for ``portal check``)."""
    return PartialStore(instance_dir).stale()


def remove_stale_partials(instance_dir: str | os.PathLike[str]) -> int:
    """Delete abandoned resumable uploads (for ``portal run`` start-up and ``check --repair``)."""
    return PartialStore(instance_dir).remove_stale()
