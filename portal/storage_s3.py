"""Document files in S3-compatible object storage (AWS S3, MinIO, Garage, Ceph...), with boto3.

Objects are named ``<prefix><32 random hex digits>``, like the files of a local folder.
An upload streams into a multipart upload under its final key, a part at a time; the
object exists only once the upload is completed, so it is always whole. Nothing of an
upload is kept on the server's disk; memory holds the part being filled, the copy being
sent, and the first and last bytes the content checks need (about 20 MiB), never the file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from .storage import (
    KEY_PATTERN,
    STALE_AFTER_SECONDS,
    IncomingFile,
    Storage,
    StorageError,
    StoredObject,
)

#: S3 wants parts of at least 5 MiB (the last aside); 8 MiB allows files up to 80 GB.
PART_SIZE = 8 * 1024 * 1024
#: The first bytes, for the signature checks of every file type.
HEAD_SIZE = 64 * 1024
#: The last bytes: a ZIP-based format (docx, xlsx, pptx) is checked by its central directory.
TAIL_SIZE = 1024 * 1024
QUARANTINE_PREFIX = "quarantine/"
#: Presigned download links stay valid this long: enough to start, too short to share.
PRESIGNED_SECONDS = 300
_MISSING = {"404", "NoSuchKey", "NotFound"}
_ALREADY_THERE = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}


def parse_setting(setting: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into the bucket and a prefix ending with ``/`` (or empty)."""
    parts = urlsplit(setting)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise StorageError(f"PORTAL_STORAGE must look like s3://bucket/prefix, not {setting!r}")
    prefix = parts.path.strip("/")
    if ".." in prefix.split("/") or "//" in prefix:
        raise StorageError(f"PORTAL_STORAGE: the prefix {prefix!r} is not a plain path")
    return parts.netloc, f"{prefix}/" if prefix else ""


def _code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class _SparseView:
    """The kept first and last bytes of an upload, seekable like the whole file.

    ``zipfile`` only reads the end of an archive to list it; reading anywhere else raises
    OSError, which the content check takes as "does not match".
    """

    def __init__(self, head: bytes, tail: bytes, size: int) -> None:
        self.head, self.tail, self.size = head, tail, size
        self.position = 0

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.position + size)
        start = self.position
        if start >= end:
            return b""
        tail_start = self.size - len(self.tail)
        if end <= len(self.head):
            data = self.head[start:end]
        elif start >= tail_start:
            data = self.tail[start - tail_start : end - tail_start]
        else:
            raise OSError("this part of the upload is not kept for checking")
        self.position = end
        return data

    def close(self) -> None:
        pass


class S3IncomingFile(IncomingFile):
    """An upload streaming into a multipart upload; ``path`` is a view for the content check."""

    def __init__(self, storage: S3Storage, key: str) -> None:  # no local file: no super()
        self.storage = storage
        self.key = key
        self._sha256 = hashlib.sha256()
        self.size = 0
        self.committed = False
        self._buffer = bytearray()
        self._head = bytearray()
        self._tail = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._closed = False
        self._aborted = False

    @property
    def name(self) -> str:
        return self.key

    @property
    def path(self) -> _SparseView:  # type: ignore[override]
        return _SparseView(bytes(self._head), bytes(self._tail), self.size)

    def write(self, data: bytes) -> int:
        if self.committed or self._aborted:
            raise StorageError("this upload is finished")
        self._sha256.update(data)
        self.size += len(data)
        if len(self._head) < HEAD_SIZE:
            self._head += data[: HEAD_SIZE - len(self._head)]
        self._tail += data
        if len(self._tail) > 2 * TAIL_SIZE:
            del self._tail[:-TAIL_SIZE]
        self._buffer += data
        while len(self._buffer) >= PART_SIZE:
            with memoryview(self._buffer) as view:
                part = bytes(view[:PART_SIZE])  # the one copy a part needs
            del self._buffer[:PART_SIZE]
            self._send_part(part)
        return len(data)

    def _send_part(self, data: bytes) -> None:
        client, bucket = self.storage.client, self.storage.bucket
        with self.storage.errors("cannot write to the object storage"):
            if self._upload_id is None:
                self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self.key)[
                    "UploadId"
                ]
            number = len(self._parts) + 1
            answer = client.upload_part(
                Bucket=bucket,
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=_md5(data),
            )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def read(self, size: int = -1) -> bytes:
        raise StorageError("an upload to the object storage cannot be read back")

    def seek(self, offset: int, whence: int = 0) -> int:
        # Werkzeug rewinds each uploaded file once it is parsed: nothing to do.
        return 0

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        # Werkzeug closes request files at the end of the request; the storage then
        # completes or aborts the upload.
        self._closed = True

    def head(self, length: int = 8192) -> bytes:
        return bytes(self._head[:length])

    def copy_from(self, source: BinaryIO, chunk_size: int = 1024 * 1024) -> None:
        while chunk := source.read(chunk_size):
            self.write(chunk)

    def complete(self, *, only_if_new: bool = False) -> None:
        """Make the object appear, whole; with ``only_if_new``, never over an existing one."""
        client, bucket = self.storage.client, self.storage.bucket
        condition = {"IfNoneMatch": "*"} if only_if_new else {}
        with self.storage.errors("cannot write to the object storage", conflict=self.key):
            if self._upload_id is None:
                client.put_object(
                    Bucket=bucket,
                    Key=self.key,
                    Body=bytes(self._buffer),
                    ContentMD5=_md5(self._buffer),
                    **condition,
                )
            else:
                if self._buffer:
                    self._send_part(bytes(self._buffer))
                client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                    **condition,
                )
        self._buffer.clear()
        self.committed = True

    def abort(self) -> None:
        """Drop what was sent of an upload that will not be kept."""
        self._buffer.clear()
        if self._upload_id is None or self.committed or self._aborted:
            self._aborted = True
            return
        with self.storage.errors("cannot abort an upload in the object storage"):
            self.storage.client.abort_multipart_upload(
                Bucket=self.storage.bucket, Key=self.key, UploadId=self._upload_id
            )
        self._aborted = True


def _md5(data: bytes | bytearray) -> str:
    # Every S3-compatible store checks Content-MD5, so a part damaged on the way is refused.
    # It guards the transfer only; the file's identity is its SHA-256, computed as it streams.
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


class _ObjectReader(io.RawIOBase):
    """A stored object's body; a failing connection is a StorageError, not a library error."""

    def __init__(self, storage: S3Storage, body: Any, key: str) -> None:
        self.storage, self.body, self.key = storage, body, key

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        with self.storage.errors(f"cannot read stored file {self.key}"):
            return self.body.read(None if size is None or size < 0 else size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.body.close()
        super().close()


class S3Storage(Storage):
    """Files in one bucket of an S3-compatible object store, under one prefix."""

    def __init__(
        self,
        setting: str,
        *,
        endpoint_url: str | None = None,
        presigned: bool = False,
        client: Any = None,
    ) -> None:
        self.setting = setting
        self.bucket, self.prefix = parse_setting(setting)
        self.endpoint_url = endpoint_url or None
        self.presigned = presigned
        self._client: Any = None
        self._client_pid = 0
        # Made now, so that a bad setting fails at start, not at the first request.
        self.client = client if client is not None else _make_client(self.endpoint_url)

    @property
    def client(self) -> Any:
        """boto3's client for this process: a forked gunicorn worker never shares sockets."""
        if self._client is None or self._client_pid != os.getpid():
            self._client = _make_client(self.endpoint_url)
            self._client_pid = os.getpid()
        return self._client

    @client.setter
    def client(self, client: Any) -> None:
        self._client, self._client_pid = client, os.getpid()

    def __repr__(self) -> str:
        return f"S3Storage({self.setting!r})"

    @contextmanager
    def errors(self, what: str, conflict: str | None = None) -> Iterator[None]:
        """Turn the library's and the network's failures into one StorageError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as error:
            code = _code(error)
            if conflict and code in _ALREADY_THERE:
                raise StorageError(f"a file is already stored under key {conflict}") from None
            raise StorageError(f"{what}: {code or error}") from None
        except (BotoCoreError, OSError) as error:
            raise StorageError(f"{what}: {error}") from None

    def _object(self, key: str) -> str:
        # Keys are generated by the portal; anything else never reaches the store.
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            raise StorageError("invalid storage key")
        return self.prefix + key

    def create(self) -> None:
        from botocore.exceptions import ClientError

        with self.errors(f"cannot use the bucket {self.bucket}"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as error:
                if _code(error) not in _MISSING | {"NoSuchBucket"}:
                    raise
            # Outside us-east-1, AWS wants the bucket's region spelled out.
            region = self.client.meta.region_name
            where = (
                {"CreateBucketConfiguration": {"LocationConstraint": region}}
                if region and region != "us-east-1"
                else {}
            )
            self.client.create_bucket(Bucket=self.bucket, **where)

    def check(self) -> None:
        with self.errors(f"object storage not reachable: bucket {self.bucket}"):
            self.client.head_bucket(Bucket=self.bucket)

    def incoming(self) -> S3IncomingFile:
        # One request before taking an upload in: a store that is down or refuses the
        # credentials gives a clear 503 before the body is read, not a failure at the end.
        self.check()
        return S3IncomingFile(self, self._object(secrets.token_hex(16)))

    def commit(self, incoming: IncomingFile) -> str:
        if not isinstance(incoming, S3IncomingFile):
            raise StorageError("not an upload of this storage")
        incoming.complete()
        return incoming.key[len(self.prefix) :]

    def discard(self, incoming: IncomingFile) -> None:
        if not isinstance(incoming, S3IncomingFile) or incoming.committed:
            return
        try:
            incoming.abort()
        except StorageError:
            # Left for `portal run` to clean up, like a local temporary file.
            pass

    def open(self, key: str, start: int = 0, stop: int | None = None) -> BinaryIO:
        """Open a stored object, or the bytes ``start`` to ``stop`` (excluded) of it."""
        arguments = {"Bucket": self.bucket, "Key": self._object(key)}
        if start or stop is not None:
            arguments["Range"] = f"bytes={start}-{'' if stop is None else stop - 1}"
        with self.errors(f"cannot read stored file {key}"):
            body = self.client.get_object(**arguments)["Body"]
        return _ObjectReader(self, body, key)  # type: ignore[return-value]

    def local_path(self, key: str) -> None:
        self._object(key)
        return None

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        name = self._object(key)
        with self.errors(f"cannot reach stored file {key}"):
            try:
                answer = self.client.head_object(Bucket=self.bucket, Key=name)
            except ClientError as error:
                if _code(error) in _MISSING:
                    return None
                raise
        return int(answer["ContentLength"])

    def delete(self, key: str) -> None:
        name = self._object(key)
        with self.errors(f"cannot delete stored file {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=name)

    def download_url(self, key: str, *, content_type: str, disposition: str) -> str | None:
        """With PORTAL_S3_PRESIGNED, a presigned link that makes the store send these headers."""
        if not self.presigned:
            return None
        with self.errors(f"cannot sign a link to stored file {key}"):
            return self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": self._object(key),
                    "ResponseContentType": content_type,
                    "ResponseContentDisposition": disposition,
                    "ResponseCacheControl": "private, no-cache",
                },
                ExpiresIn=PRESIGNED_SECONDS,
            )

    def objects(self) -> Iterator[StoredObject]:
        with self.errors("cannot list the object storage"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix) :]
                    if KEY_PATTERN.fullmatch(name):
                        modified = item["LastModified"].timestamp()
                        yield StoredObject(name, int(item["Size"]), modified)
            uploads = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in uploads:
                for upload in page.get("Uploads", []):
                    name = upload["Key"][len(self.prefix) :]
                    if KEY_PATTERN.fullmatch(name):
                        # Unfinished upload: its size is unknown until it completes.
                        started = upload["Initiated"].timestamp()
                        temporary = f"{name}.{upload['UploadId']}"
                        yield StoredObject(temporary, 0, started, temporary=True)

    def remove_stale_incoming(self, older_than: float = STALE_AFTER_SECONDS) -> int:
        try:
            return super().remove_stale_incoming(older_than)
        except StorageError:
            # Cleaning up is for later: `portal run` has already warned the store is down.
            return 0

    def _remove_temporary(self, name: str) -> None:
        key, _, upload_id = name.partition(".")
        with self.errors("cannot abort an upload in the object storage"):
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self._object(key), UploadId=upload_id
            )

    def quarantine(self, obj: StoredObject) -> str:
        if obj.temporary:
            # An unfinished multipart upload cannot be moved, only dropped.
            self._remove_temporary(obj.key)
            return f"s3://{self.bucket}/{self.prefix}{obj.key} (unfinished upload, aborted)"
        source = self._object(obj.key)
        target = f"{self.prefix}{QUARANTINE_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{obj.key}"
        with self.errors(f"cannot move stored file {obj.key} to quarantine"):
            # The managed copy switches to a multipart copy for objects over 5 GB.
            self.client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, target)
            self.client.delete_object(Bucket=self.bucket, Key=source)
        return f"s3://{self.bucket}/{target}"

    def restore(self, key: str, source: BinaryIO) -> None:
        name = self._object(key)
        if self.size(key) is not None:
            raise StorageError(f"a file is already stored under key {key}")
        incoming = S3IncomingFile(self, name)
        try:
            incoming.copy_from(source)
            # Conditional write: a file stored meanwhile under this key is never replaced.
            incoming.complete(only_if_new=True)
        except BaseException:
            self.discard(incoming)
            raise


def _make_client(endpoint_url: str | None) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StorageError(
            'S3 storage needs boto3: pip install "portail-des-supports[s3]"'
        ) from None
    config = Config(
        # Signature version 4 everywhere, presigned links included (AWS refuses version 2).
        signature_version="s3v4",
        connect_timeout=5,
        read_timeout=60,
        retries={"mode": "standard", "max_attempts": 3},
        # Compatible stores (MinIO, Garage...) are addressed by path, not by host name.
        s3={"addressing_style": "path"} if endpoint_url else {},
        # Only ask for checksums where the portal gives one: some compatible stores
        # do not know the newer default ones.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()
    try:
        return session.client("s3", endpoint_url=endpoint_url, config=config)
    except ValueError as error:
        raise StorageError(f"PORTAL_S3_ENDPOINT_URL: {error}") from None
