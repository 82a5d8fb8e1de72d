"""LocalStorage: random keys, atomic commits, no way out of the storage folder (SPEC section 6)."""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import pytest
from conftest import PDF_BYTES, login
from s3server import s3_bucket_fixture, s3_endpoint_fixture  # noqa: F401 - fixtures

from portal import create_app
from portal.storage import QUARANTINE_DIR, TEMP_DIR, LocalStorage, StorageError

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    store = LocalStorage(tmp_path / "uploads")
    store.create()
    return store


def store_bytes(storage: LocalStorage, data: bytes) -> str:
    incoming = storage.incoming()
    incoming.copy_from(io.BytesIO(data))
    key = storage.commit(incoming)
    storage.discard(incoming)
    return key


def temp_files(storage: LocalStorage) -> list[str]:
    return sorted(p.name for p in storage.temp_dir.iterdir())


# --- keys and commits -------------------------------------------------------------------


def test_create_makes_root_and_private_temporary_folder(tmp_path):
    store = LocalStorage(tmp_path / "deep" / "uploads")
    store.create()
    assert store.root.is_dir()
    assert (store.root / TEMP_DIR).is_dir()
    assert (store.temp_dir.stat().st_mode & 0o777) == 0o700
    store.check()


def test_committed_file_is_named_by_32_hex_key_with_the_exact_content(storage):
    key = store_bytes(storage, b"hello world")
    assert HEX32.fullmatch(key)
    assert (storage.root / key).read_bytes() == b"hello world"
    assert storage.size(key) == 11
    with storage.open(key) as handle:
        assert handle.read() == b"hello world"
    assert storage.local_path(key) == storage.root / key
    assert temp_files(storage) == []


def test_keys_are_random_and_distinct_for_identical_content(storage):
    keys = {store_bytes(storage, b"same") for _ in range(5)}
    assert len(keys) == 5


def test_incoming_file_hashes_and_counts_what_is_written(storage):
    import hashlib

    incoming = storage.incoming()
    incoming.write(b"abc")
    incoming.write(b"def")
    assert incoming.size == 6
    assert incoming.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert incoming.head(4) == b"abcd"
    assert incoming.path.parent == storage.temp_dir
    storage.discard(incoming)


def test_commit_syncs_the_file_before_renaming_it_into_place(storage, monkeypatch):
    events: list[tuple[str, object]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(source, target):
        # At the moment of the rename the final name does not exist yet and the
        # temporary file already holds everything: the file appears only complete.
        assert not Path(target).exists()
        assert Path(source).read_bytes() == b"complete content"
        events.append(("rename", Path(target).name))
        return real_rename(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    incoming = storage.incoming()
    incoming.write(b"complete content")
    temp_path = str(incoming.path)
    key = storage.commit(incoming)

    # The file is synced before it is renamed; the folder entry is synced after the
    # rename, so the new name survives a crash.
    assert events == [("fsync", temp_path), ("rename", key), ("fsync", str(storage.root))]
    assert (storage.root / key).read_bytes() == b"complete content"
    assert not Path(temp_path).exists()


def test_commit_works_after_the_upload_handle_was_closed(storage):
    incoming = storage.incoming()
    incoming.write(b"data")
    incoming.close()  # Werkzeug closes request files at the end of the request.
    key = storage.commit(incoming)
    assert (storage.root / key).read_bytes() == b"data"


def test_discard_removes_the_temporary_file(storage):
    incoming = storage.incoming()
    incoming.write(b"abandoned")
    assert incoming.path.exists()
    storage.discard(incoming)
    assert not incoming.path.exists()
    assert temp_files(storage) == []


def test_discard_after_commit_keeps_the_stored_file(storage):
    incoming = storage.incoming()
    incoming.write(b"kept")
    key = storage.commit(incoming)
    storage.discard(incoming)
    assert (storage.root / key).read_bytes() == b"kept"


def test_delete_removes_a_file_and_tolerates_a_missing_one(storage):
    key = store_bytes(storage, b"x")
    storage.delete(key)
    assert not (storage.root / key).exists()
    storage.delete(key)  # no error
    assert storage.size(key) is None


def test_open_missing_key_raises_storage_error(storage):
    with pytest.raises(StorageError):
        storage.open("0" * 32)


# --- keys that are not keys never reach the disk ----------------------------------------

INVALID_KEYS = [
    "../x",
    "..",
    ".",
    "",
    "/etc/passwd",
    "a" * 31,
    "a" * 33,
    "A" * 32,
    "0123456789ABCDEF0123456789abcdef",
    "a" * 31 + "\x00",
    "a" * 32 + "\x00",
    "a" * 32 + "\n",
    "a" * 16 + "/" + "a" * 15,
    ".incoming",
    ".quarantine",
    "../uploads-evil/" + "a" * 32,
]


@pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
@pytest.mark.parametrize("operation", ["open", "size", "delete", "local_path"])
def test_invalid_key_raises_and_touches_nothing(storage, tmp_path, key, operation):
    victim = tmp_path / "x"
    victim.write_bytes(b"outside")
    sibling = tmp_path / "uploads-evil"
    sibling.mkdir()
    (sibling / ("a" * 32)).write_bytes(b"evil")
    uppercase = storage.root / ("A" * 32)
    uppercase.write_bytes(b"not a key")
    before = sorted(str(p) for p in tmp_path.rglob("*"))

    with pytest.raises(StorageError):
        getattr(storage, operation)(key)

    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert victim.read_bytes() == b"outside"
    assert (sibling / ("a" * 32)).read_bytes() == b"evil"
    assert uppercase.read_bytes() == b"not a key"


def test_absolute_key_is_refused(storage, tmp_path):
    target = tmp_path / ("b" * 32)
    target.write_bytes(b"outside")
    with pytest.raises(StorageError):
        storage.delete(str(target))
    assert target.exists()


def test_sibling_folder_sharing_the_root_prefix_is_unreachable(tmp_path):
    store = LocalStorage(tmp_path / "uploads")
    store.create()
    evil = tmp_path / "uploads-evil"
    evil.mkdir()
    key = "c" * 32
    (evil / key).write_bytes(b"secret")
    assert store.size(key) is None
    with pytest.raises(StorageError):
        store.open(key)
    for attempt in (f"../uploads-evil/{key}", f"-evil/{key}", f"uploads-evil/{key}"):
        with pytest.raises(StorageError):
            store.open(attempt)
    assert [obj.key for obj in store.objects()] == []
    assert (evil / key).read_bytes() == b"secret"


# --- listing, stale temporary files, quarantine ------------------------------------------


def test_objects_lists_stored_and_temporary_files(storage):
    key = store_bytes(storage, b"12345")
    incoming = storage.incoming()
    incoming.write(b"12")
    incoming.flush()
    found = {obj.key: obj for obj in storage.objects()}
    assert found[key].size == 5
    assert not found[key].temporary
    assert found[incoming.path.name].temporary
    assert found[incoming.path.name].size == 2
    storage.discard(incoming)


def test_objects_ignores_symlinks_foreign_names_and_folders(storage, tmp_path):
    outside = tmp_path / "outside.pdf"
    outside.write_bytes(b"outside")
    (storage.root / ("d" * 32)).symlink_to(outside)
    (storage.temp_dir / "link.part").symlink_to(outside)
    (storage.root / "README.txt").write_text("not a stored file")
    (storage.root / ("e" * 32)).mkdir()
    key = store_bytes(storage, b"real")
    assert [(obj.key, obj.temporary) for obj in storage.objects()] == [(key, False)]


def test_remove_stale_incoming_removes_only_files_older_than_an_hour(storage):
    old = storage.incoming()
    old.write(b"abandoned two hours ago")
    old.close()
    almost = storage.incoming()
    almost.write(b"fifty minutes")
    almost.close()
    fresh = storage.incoming()
    fresh.write(b"in progress")
    now = time.time()
    os.utime(old.path, (now - 7200, now - 7200))
    os.utime(almost.path, (now - 3000, now - 3000))
    key = store_bytes(storage, b"stored long ago")
    os.utime(storage.root / key, (now - 86400, now - 86400))

    assert storage.remove_stale_incoming() == 1

    assert not old.path.exists()
    assert almost.path.exists()
    assert fresh.path.exists()
    assert (storage.root / key).exists(), "a stored file is never a stale temporary file"
    storage.discard(fresh)


def test_quarantine_moves_an_orphan_out_of_the_storage(storage):
    key = store_bytes(storage, b"orphan content")
    (orphan,) = [obj for obj in storage.objects() if obj.key == key]
    target = Path(storage.quarantine(orphan))
    assert target.parent == storage.root / QUARANTINE_DIR
    assert target.read_bytes() == b"orphan content"
    assert not (storage.root / key).exists()
    assert [obj.key for obj in storage.objects()] == []


def test_quarantine_moves_a_temporary_file(storage):
    incoming = storage.incoming()
    incoming.write(b"left over")
    incoming.close()
    (temporary,) = list(storage.objects())
    target = Path(storage.quarantine(temporary))
    assert target.parent == storage.root / QUARANTINE_DIR
    assert target.read_bytes() == b"left over"
    assert temp_files(storage) == []


# --- a missing storage folder --------------------------------------------------------------


def test_check_raises_on_a_missing_root(tmp_path):
    with pytest.raises(StorageError):
        LocalStorage(tmp_path / "absent").check()


def test_check_raises_when_the_temporary_folder_is_missing(storage):
    storage.temp_dir.rmdir()
    with pytest.raises(StorageError):
        storage.check()


def test_incoming_refuses_to_create_a_missing_storage(tmp_path):
    store = LocalStorage(tmp_path / "absent")
    with pytest.raises(StorageError):
        store.incoming()
    assert not (tmp_path / "absent").exists()


def test_running_app_never_creates_a_missing_storage_folder(app_config, tmp_path):
    absent = tmp_path / "never-created"
    application = create_app({**app_config, "STORAGE": str(absent)})
    try:
        client = application.test_client()
        response = client.get("/healthz")
        assert response.status_code == 503
        assert response.get_json()["status"] == "error"
        assert not absent.exists()
    finally:
        with application.app_context():
            from portal.extensions import db

            db.session.remove()
            db.engine.dispose()


def test_upload_after_storage_vanished_does_not_recreate_it(app, client, storage_dir):
    import shutil

    shutil.rmtree(storage_dir)
    assert login(client).status_code == 303
    page = client.get("/manage/upload").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    response = client.post(
        "/manage/upload",
        data={
            "csrf_token": token,
            "session": "",
            "tags": "",
            "files": (io.BytesIO(PDF_BYTES), "support.pdf"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code in (400, 503, 507)
    assert not storage_dir.exists()
    assert client.get("/healthz").status_code == 503
    assert not storage_dir.exists()


# --- the contract every storage keeps: the local folder and S3 alike ---------------------


@pytest.fixture(params=["local", "s3"])
def any_storage(request, tmp_path):
    """The same tests on LocalStorage and on S3Storage against a real S3 protocol server."""
    if request.param == "local":
        store = LocalStorage(tmp_path / "uploads")
    else:
        from portal.storage_s3 import S3Storage

        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        store = S3Storage(f"s3://{bucket}/event-2020", endpoint_url=endpoint)
    store.create()
    store.check()
    return store


def test_contract_stored_file_reads_back_whole_and_by_range(any_storage):
    data = bytes(range(256)) * 40
    key = store_bytes(any_storage, data)
    assert HEX32.fullmatch(key)
    assert any_storage.size(key) == len(data)
    with any_storage.open(key) as handle:
        assert handle.read() == data
    with any_storage.open(key, 1000, 1100) as handle:
        assert handle.read(100) == data[1000:1100]
    with any_storage.open(key, len(data) - 5) as handle:
        assert handle.read() == data[-5:]
    assert [(o.key, o.size, o.temporary) for o in any_storage.objects()] == [
        (key, len(data), False)
    ]


def test_contract_incoming_hashes_and_keeps_its_first_bytes(any_storage):
    import hashlib

    incoming = any_storage.incoming()
    incoming.write(b"abc")
    incoming.write(b"def")
    assert (incoming.size, incoming.head(4)) == (6, b"abcd")
    assert incoming.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    any_storage.discard(incoming)
    assert list(any_storage.objects()) == []


def test_contract_nothing_is_stored_before_commit_or_after_discard(any_storage):
    incoming = any_storage.incoming()
    incoming.write(b"not yet")
    incoming.close()  # Werkzeug closes request files at the end of the request.
    assert [o for o in any_storage.objects() if not o.temporary] == []
    any_storage.discard(incoming)
    assert list(any_storage.objects()) == []
    key = store_bytes(any_storage, b"kept")
    assert any_storage.size(key) == 4


def test_contract_delete_removes_and_tolerates_a_missing_file(any_storage):
    key = store_bytes(any_storage, b"x")
    any_storage.delete(key)
    assert any_storage.size(key) is None
    any_storage.delete(key)
    with pytest.raises(StorageError):
        any_storage.open(key)


@pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
def test_contract_invalid_keys_are_refused(any_storage, key):
    kept = store_bytes(any_storage, b"kept")
    for operation in ("open", "size", "delete", "local_path"):
        with pytest.raises(StorageError):
            getattr(any_storage, operation)(key)
    with pytest.raises(StorageError):
        any_storage.restore(key, io.BytesIO(b"evil"))
    assert [o.key for o in any_storage.objects()] == [kept]


def test_contract_restore_places_a_file_and_never_overwrites(any_storage):
    key = "f" * 32
    any_storage.restore(key, io.BytesIO(b"restored"))
    with any_storage.open(key) as handle:
        assert handle.read() == b"restored"
    with pytest.raises(StorageError, match="already stored"):
        any_storage.restore(key, io.BytesIO(b"other"))
    with any_storage.open(key) as handle:
        assert handle.read() == b"restored"
    assert [o.key for o in any_storage.objects()] == [key]


def test_contract_quarantine_takes_an_orphan_out_of_the_listing(any_storage):
    key = store_bytes(any_storage, b"orphan")
    (orphan,) = list(any_storage.objects())
    where = any_storage.quarantine(orphan)
    assert key in where
    assert list(any_storage.objects()) == []
    assert any_storage.size(key) is None
