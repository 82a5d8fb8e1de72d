"""S3Storage against a real S3 protocol server: multipart streaming, atomic commits, failures.

The contract shared with the local folder is in tests/test_storage.py; this is what only
an object store has.
"""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc

import pytest
from s3server import closed_port_url, s3_bucket_fixture, s3_client, s3_endpoint_fixture  # noqa: F401 - fixtures

from portal.config import SettingsError, load_settings
from portal.storage import StorageError, storage_from_setting
from portal.storage_s3 import PART_SIZE, S3Storage, parse_setting


@pytest.fixture
def store(s3_endpoint, s3_bucket) -> S3Storage:
    storage = S3Storage(f"s3://{s3_bucket}/portal/", endpoint_url=s3_endpoint)
    storage.create()
    return storage


def uploads_in_progress(store: S3Storage) -> list[dict]:
    return store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])


def test_a_large_upload_streams_in_parts_and_appears_only_when_committed(store):
    data = os.urandom(2 * PART_SIZE + 123)
    incoming = store.incoming()
    for start in range(0, len(data), 64 * 1024):
        incoming.write(data[start : start + 64 * 1024])
    # Two parts are already in the store, yet no object exists under the final key.
    assert len(uploads_in_progress(store)) == 1
    assert [o.temporary for o in store.objects()] == [True]
    final = incoming.key.rpartition("/")[2]
    assert store.size(final) is None

    key = store.commit(incoming)
    store.discard(incoming)  # after a commit: nothing to drop

    assert key == final
    assert store.size(key) == len(data)
    assert incoming.sha256 == hashlib.sha256(data).hexdigest()
    with store.open(key) as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == incoming.sha256
    assert uploads_in_progress(store) == []
    head = store.client.head_object(Bucket=store.bucket, Key=f"portal/{key}")
    assert head["ContentLength"] == len(data)


def test_an_upload_never_holds_the_whole_file_in_memory(store):
    chunk = os.urandom(256 * 1024)
    total = 5 * PART_SIZE
    incoming = store.incoming()
    tracemalloc.start()
    try:
        for _ in range(total // len(chunk)):
            incoming.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    key = store.commit(incoming)
    assert store.size(key) == total
    # One part buffered, its copy being sent and the kept tail: about 20 MiB, not 40.
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB for a {total / 2**20:.0f} MiB file"


def test_discard_aborts_the_multipart_upload(store):
    incoming = store.incoming()
    incoming.write(os.urandom(PART_SIZE + 1))
    assert len(uploads_in_progress(store)) == 1
    store.discard(incoming)
    assert uploads_in_progress(store) == []
    assert list(store.objects()) == []


def test_stale_unfinished_uploads_are_aborted_and_stored_files_kept(store):
    kept = store.incoming()
    kept.write(b"stored")
    key = store.commit(kept)
    abandoned = store.incoming()
    abandoned.write(os.urandom(PART_SIZE))
    # moto reports every upload as started in 2010, so freshness is not testable here: any
    # unfinished upload counts as stale, and only it may go.
    assert store.remove_stale_incoming(older_than=-1) == 1
    assert uploads_in_progress(store) == []
    assert [o.key for o in store.objects()] == [key]


def test_quarantine_moves_the_object_under_the_quarantine_prefix(store):
    incoming = store.incoming()
    incoming.write(b"orphan bytes")
    key = store.commit(incoming)
    (orphan,) = list(store.objects())
    where = store.quarantine(orphan)
    assert where.startswith(f"s3://{store.bucket}/portal/quarantine/")
    moved = where.removeprefix(f"s3://{store.bucket}/")
    assert store.client.get_object(Bucket=store.bucket, Key=moved)["Body"].read() == b"orphan bytes"
    assert store.size(key) is None
    assert list(store.objects()) == [], "quarantined objects are not listed as stored files"


@pytest.mark.parametrize("size", [6, PART_SIZE + 6], ids=["one request", "multipart"])
def test_restore_is_a_conditional_write_that_never_replaces(store, monkeypatch, size):
    key = "a" * 32
    store.restore(key, io.BytesIO(b"first"))
    # Even when the look-before-writing misses a file written meanwhile, the store refuses.
    monkeypatch.setattr(store, "size", lambda key: None)
    with pytest.raises(StorageError, match="already stored"):
        store.restore(key, io.BytesIO(b"second" * (size // 6)))
    assert store.client.get_object(Bucket=store.bucket, Key=f"portal/{key}")["Body"].read() == (
        b"first"
    )
    assert uploads_in_progress(store) == []


def test_a_store_that_is_down_gives_storage_errors(s3_bucket):
    store = S3Storage(f"s3://{s3_bucket}", endpoint_url=closed_port_url())
    for call in (
        store.check,
        store.create,
        lambda: list(store.objects()),
        lambda: store.size("a" * 32),
        lambda: store.open("a" * 32),
        lambda: store.delete("a" * 32),
    ):
        with pytest.raises(StorageError):
            call()
    with pytest.raises(StorageError):
        store.incoming()  # refused before an upload's body is read
    assert store.remove_stale_incoming() == 0


def test_a_store_failing_during_an_upload_refuses_the_commit(store):
    incoming = store.incoming()
    incoming.write(b"small")
    store.client = S3Storage(store.setting, endpoint_url=closed_port_url()).client
    with pytest.raises(StorageError):
        store.commit(incoming)
    store.discard(incoming)  # never raises: an unfinished upload is cleaned up later
    assert not incoming.committed


def test_refused_credentials_give_storage_errors(store):
    from botocore.stub import Stubber

    with Stubber(store.client) as stub:
        for operation in ("head_bucket", "head_object", "get_object"):
            stub.add_client_error(operation, "InvalidAccessKeyId", http_status_code=403)
        with pytest.raises(StorageError, match="InvalidAccessKeyId"):
            store.check()
        with pytest.raises(StorageError, match="InvalidAccessKeyId"):
            store.size("a" * 32)
        with pytest.raises(StorageError, match="InvalidAccessKeyId"):
            store.open("a" * 32)


@pytest.mark.parametrize(
    ("setting", "bucket", "prefix"),
    [
        ("s3://bucket", "bucket", ""),
        ("s3://bucket/", "bucket", ""),
        ("s3://bucket/portal", "bucket", "portal/"),
        ("s3://bucket/a/b/", "bucket", "a/b/"),
    ],
)
def test_setting_names_a_bucket_and_a_prefix(setting, bucket, prefix):
    assert parse_setting(setting) == (bucket, prefix)


@pytest.mark.parametrize("setting", ["s3://", "s3:///prefix", "s3://b/../x", "s3://b/p?x=1"])
def test_bad_settings_are_refused(setting):
    with pytest.raises(StorageError):
        parse_setting(setting)


def test_portal_storage_s3_selects_s3_storage(s3_endpoint):
    storage = storage_from_setting("s3://b/p", endpoint_url=s3_endpoint, presigned=True)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.presigned) == ("b", "p/", True)


def test_s3_settings_are_read_and_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("PORTAL_STORAGE", "s3://bucket/prefix")
    monkeypatch.setenv("PORTAL_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("PORTAL_S3_PRESIGNED", "1")
    settings = load_settings({"INSTANCE_DIR": tmp_path})
    assert settings["STORAGE"] == "s3://bucket/prefix"
    assert settings["S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert settings["S3_PRESIGNED"] is True
    monkeypatch.setenv("PORTAL_S3_PRESIGNED", "maybe")
    with pytest.raises(SettingsError, match="PORTAL_S3_PRESIGNED"):
        load_settings({"INSTANCE_DIR": tmp_path})
    monkeypatch.setenv("PORTAL_S3_PRESIGNED", "0")
    monkeypatch.setenv("PORTAL_S3_ENDPOINT_URL", "127.0.0.1:9000")
    with pytest.raises(SettingsError, match="PORTAL_S3_ENDPOINT_URL"):
        load_settings({"INSTANCE_DIR": tmp_path})
