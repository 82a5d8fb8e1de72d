"""Where document files live: an interface, and the local-folder implementation.

Files are named by random keys only; the name a user gave is kept in the database.
An upload is written to a private temporary folder, hashed on the way, synced, and
only then moved into place, so a stored file is always complete.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from .disk_writer import BackgroundWriter

KEY_PATTERN = re.compile(r"[0-9a-f]{32}")
TEMP_DIR = ".incoming"
QUARANTINE_DIR = ".quarantine"
STALE_AFTER_SECONDS = 3600
#: Bytes of an upload handed to the disk at once, by a thread of its own.
WRITE_PIECE = 1024 * 1024


class StorageError(Exception):
    """The storage cannot do what was asked (missing folder, disk full, bad key)."""


class StorageFull(StorageError):
    """No space left (or quota reached) while writing an upload."""


#: What the system says when the disk or the quota is full.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextmanager
def _full_disk_is_storage_full() -> Iterator[None]:
    try:
        yield
    except OSError as error:
        if error.errno in FULL_ERRNOS:
            raise StorageFull("no space left in the storage") from error
        raise


@dataclass(frozen=True)
class StoredObject:
    """A file found in storage: its key (or temporary name), size and age."""

    key: str
    size: int
    modified: float
    temporary: bool = False


class IncomingFile:
    """A temporary file in the storage that counts and hashes what is written to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] = open(path, "x+b")  # noqa: SIM115 - closed by commit/discard
        self._sha256 = hashlib.sha256()
        self.size = 0
        self.committed = False
        # Small writes are gathered into pieces of WRITE_PIECE bytes; the first full piece
        # starts a writing thread, so a small file never needs one.
        self._piece: list[bytes] = []
        self._piece_size = 0
        self._writer: BackgroundWriter | None = None

    # The file-like surface Werkzeug's multipart parser and FileStorage use.
    @property
    def name(self) -> str:
        return str(self.path)

    def write(self, data: bytes) -> int:
        data = bytes(data)
        with _full_disk_is_storage_full():
            if self._writer is not None:
                self._writer.check()
            self._piece.append(data)
            self._piece_size += len(data)
            if self._piece_size >= WRITE_PIECE:
                if self._writer is None:
                    self._writer = BackgroundWriter(self._file)
                self._writer.put(self._take_piece())
        self._sha256.update(data)
        self.size += len(data)
        return len(data)

    def _take_piece(self) -> bytes:
        piece = b"".join(self._piece)
        self._piece.clear()
        self._piece_size = 0
        return piece

    def _settle(self) -> None:
        """Get every byte written so far to the file object (not yet to the disk)."""
        if self._writer is not None:
            if self._piece:
                self._writer.put(self._take_piece())
            self._writer.drain()
        elif self._piece:
            self._file.write(self._take_piece())

    def read(self, size: int = -1) -> bytes:
        with _full_disk_is_storage_full():
            self._settle()
            return self._file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        # Seeking flushes the buffer: that is where a full disk often shows.
        with _full_disk_is_storage_full():
            self._settle()
            return self._file.seek(offset, whence)

    def tell(self) -> int:
        with _full_disk_is_storage_full():
            self._settle()
            return self._file.tell()

    def flush(self) -> None:
        with _full_disk_is_storage_full():
            self._settle()
            self._file.flush()

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        # Werkzeug closes request files at the end of a request; the content stays
        # on disk until the storage commits or discards it.
        with _full_disk_is_storage_full():
            try:
                self._settle()
            finally:
                if self._writer is not None:
                    self._writer.stop()
                self._file.close()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def head(self, length: int = 8192) -> bytes:
        """Return the first bytes written, without moving the file position."""
        self.flush()
        with open(self.path, "rb") as handle:
            return handle.read(length)

    def copy_from(self, source: BinaryIO, chunk_size: int = 1024 * 1024) -> None:
        """Write everything ``source`` yields, chunk by chunk."""
        while chunk := source.read(chunk_size):
            self.write(chunk)


class Storage(ABC):
    """What the portal needs from a place that keeps files."""

    @abstractmethod
    def create(self) -> None:
        """Create the storage's folders (``portal init`` only)."""

    @abstractmethod
    def check(self) -> None:
        """Raise StorageError unless the storage can be read and written."""

    @abstractmethod
    def incoming(self) -> IncomingFile:
        """Open a new temporary file for an upload."""

    @abstractmethod
    def commit(self, incoming: IncomingFile) -> str:
        """Make the temporary file durable under a new random key and return the key."""

    @abstractmethod
    def discard(self, incoming: IncomingFile) -> None:
        """Remove a temporary file that will not be kept."""

    @abstractmethod
    def open(self, key: str, start: int = 0, stop: int | None = None) -> BinaryIO:
        """Open a stored file for reading, from byte ``start`` up to ``stop`` (excluded)."""

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """Return the file's path when it is on this machine's disk (for sendfile)."""

    def download_url(self, key: str, *, content_type: str, disposition: str) -> str | None:
        """A short-lived link the client may fetch the file from directly, if any.

        The store must answer it with ``content_type`` and ``disposition``.
        """
        return None

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Return the stored file's size, or None when it is missing."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a stored file; a missing one is not an error."""

    @abstractmethod
    def objects(self) -> Iterator[StoredObject]:
        """List every stored file and every temporary file."""

    @abstractmethod
    def quarantine(self, obj: StoredObject) -> str:
        """Move a file no document points to out of the way; return where it went."""

    @abstractmethod
    def restore(self, key: str, source: BinaryIO) -> None:
        """Store what ``source`` yields under the given ``key`` (``portal restore`` only).

        The file appears complete or not at all; an invalid key, or a key that already
        holds a file, raises StorageError and changes nothing.
        """

    def remove_stale_incoming(self, older_than: float = STALE_AFTER_SECONDS) -> int:
        """Delete temporary upload files older than ``older_than`` seconds."""
        limit = time.time() - older_than
        removed = 0
        for obj in self.objects():
            if obj.temporary and obj.modified < limit:
                self._remove_temporary(obj.key)
                removed += 1
        return removed

    @abstractmethod
    def _remove_temporary(self, name: str) -> None: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage(Storage):
    """Files in one folder of the local disk, named by 32 random hex digits."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.temp_dir = self.root / TEMP_DIR
        self.quarantine_dir = self.root / QUARANTINE_DIR

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def create(self) -> None:
        # Only the portal's user (and its group, e.g. a web server's) may read the files.
        self.root.mkdir(mode=0o750, parents=True, exist_ok=True)
        # Temporary uploads are private to the portal's user.
        self.temp_dir.mkdir(mode=0o700, exist_ok=True)

    def check(self) -> None:
        if not self.root.is_dir() or not self.temp_dir.is_dir():
            raise StorageError(f"storage folder missing: {self.root}")
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise StorageError(f"storage folder not writable: {self.root}")

    def _path(self, key: str) -> Path:
        # Keys are generated by the portal; anything else never reaches the disk.
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            raise StorageError("invalid storage key")
        return self.root / key

    def incoming(self) -> IncomingFile:
        if not self.temp_dir.is_dir():
            raise StorageError(f"storage folder missing: {self.root}")
        return IncomingFile(self.temp_dir / f"{secrets.token_hex(16)}.part")

    def commit(self, incoming: IncomingFile) -> str:
        # Reopen to sync: Werkzeug may already have closed the upload's handle.
        with _full_disk_is_storage_full():
            if not incoming.closed:
                incoming.flush()
                incoming.close()
            with open(incoming.path, "rb+") as handle:
                os.fsync(handle.fileno())
        key = secrets.token_hex(16)
        target = self._path(key)
        os.rename(incoming.path, target)
        try:
            _fsync_dir(self.root)
        except OSError:
            # Not known durable: the caller will record nothing, so keep nothing.
            target.unlink(missing_ok=True)
            raise
        incoming.committed = True
        return key

    def discard(self, incoming: IncomingFile) -> None:
        try:
            if not incoming.closed:
                # Flushing the last buffered bytes may fail too (disk full): remove anyway.
                incoming.close()
        except (OSError, StorageError):
            pass
        finally:
            if not incoming.committed:
                incoming.path.unlink(missing_ok=True)

    def open(self, key: str, start: int = 0, stop: int | None = None) -> BinaryIO:
        # ``stop`` only matters to stores that fetch ranges; a local reader just stops reading.
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_NOFOLLOW)
            handle = os.fdopen(fd, "rb")
        except OSError as error:
            raise StorageError(f"cannot read stored file {key}") from error
        if start:
            handle.seek(start)
        return handle

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def size(self, key: str) -> int | None:
        # lstat, and regular files only: a symlink planted in the storage is never followed.
        try:
            info = self._path(key).lstat()
        except FileNotFoundError:
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def objects(self) -> Iterator[StoredObject]:
        for entry in os.scandir(self.root):
            if entry.is_file(follow_symlinks=False) and KEY_PATTERN.fullmatch(entry.name):
                info = entry.stat(follow_symlinks=False)
                yield StoredObject(entry.name, info.st_size, info.st_mtime)
        if self.temp_dir.is_dir():
            for entry in os.scandir(self.temp_dir):
                if entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    yield StoredObject(entry.name, info.st_size, info.st_mtime, temporary=True)

    def _remove_temporary(self, name: str) -> None:
        (self.temp_dir / Path(name).name).unlink(missing_ok=True)

    def restore(self, key: str, source: BinaryIO, chunk_size: int = 1024 * 1024) -> None:
        target = self._path(key)
        if not self.temp_dir.is_dir():
            raise StorageError(f"storage folder missing: {self.root}")
        if target.exists():
            raise StorageError(f"a file is already stored under key {key}")
        temp = self.temp_dir / f"{secrets.token_hex(16)}.part"
        placed = False
        try:
            with open(temp, "xb") as handle:
                while chunk := source.read(chunk_size):
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                # A hard link never replaces an existing file, unlike a rename.
                os.link(temp, target)
            except FileExistsError:
                raise StorageError(f"a file is already stored under key {key}") from None
            except OSError:
                # A file system without hard links: the check above has to do.
                if target.exists():
                    raise StorageError(f"a file is already stored under key {key}") from None
                os.rename(temp, target)
            placed = True
            _fsync_dir(self.root)
        except OSError as error:
            if placed:
                target.unlink(missing_ok=True)
            if error.errno in FULL_ERRNOS:
                raise StorageFull("no space left in the storage") from error
            raise
        except BaseException:
            if placed:
                target.unlink(missing_ok=True)
            raise
        finally:
            temp.unlink(missing_ok=True)

    def quarantine(self, obj: StoredObject) -> str:
        self.quarantine_dir.mkdir(mode=0o700, exist_ok=True)
        source = (self.temp_dir / Path(obj.key).name) if obj.temporary else self._path(obj.key)
        target = self.quarantine_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{source.name}"
        shutil.move(source, target)
        return str(target)


def storage_from_setting(
    setting: str, *, endpoint_url: str | None = None, presigned: bool = False
) -> Storage:
    """Build the storage named by ``PORTAL_STORAGE``: a folder, or ``s3://bucket/prefix``."""
    if setting.startswith("s3://"):
        from .storage_s3 import S3Storage

        return S3Storage(setting, endpoint_url=endpoint_url, presigned=presigned)
    return LocalStorage(setting)
