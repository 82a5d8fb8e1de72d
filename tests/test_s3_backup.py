"""Backup and restore across engines: SQLite + folder → PostgreSQL + S3 → SQLite + folder.

Through the console script, as an administrator moves an installation; every row of every
table and every file's bytes must come back equal. Needs PORTAL_TEST_DATABASE_URL (CI sets
it in its second pass) and moto's S3 server.
"""

# ruff: noqa: F811 - the fixtures of test_backup.py are imported, then used by name

from __future__ import annotations

import zipfile

import pytest
from conftest import PDF_BYTES, unlock
from s3server import s3_bucket_fixture, s3_endpoint_fixture  # noqa: F401 - fixtures
from sqlalchemy import select
from test_backup import (  # noqa: F401 - fixtures
    TEST_DATABASE,
    Site,
    archive,
    assert_ok,
    assert_refused,
    backup_run,
    source,
    target_site,
)

from portal.extensions import db
from portal.models import Document

pytestmark = pytest.mark.skipif(
    not TEST_DATABASE,
    reason="PORTAL_TEST_DATABASE_URL is not set: the round trip goes through PostgreSQL",
)


def s3_site(root, endpoint: str, bucket: str) -> Site:
    site = target_site(root)
    site.storage, site.endpoint = f"s3://{bucket}/restored", endpoint
    return site


def test_round_trip_sqlite_folder_to_postgresql_s3_and_back(
    source, archive, tmp_path, s3_endpoint, s3_bucket
):
    rows, files = source.rows(), source.files()
    assert len(files) == 3

    target = s3_site(tmp_path / "target", s3_endpoint, s3_bucket)
    assert_ok(target.portal("init"))  # creates the bucket, as an administrator would
    assert_ok(target.portal("restore", str(archive)))
    assert target.rows() == rows
    assert target.files() == files, "byte-identical objects under the same keys"
    check = target.portal("check")
    assert_ok(check)
    assert "ok: 3 documents checked" in check.stdout

    # ... and back to SQLite + folder, from a backup of the PostgreSQL + S3 installation.
    second = tmp_path / "second.zip"
    assert_ok(target.portal("backup", str(second)))
    with zipfile.ZipFile(archive) as one, zipfile.ZipFile(second) as two:
        assert one.read("rows.jsonl") == two.read("rows.jsonl"), "the same rows, the same bytes"
    back = Site(tmp_path / "back")
    (tmp_path / "back").mkdir()
    assert_ok(back.portal("restore", str(second)))
    assert back.rows() == rows
    assert back.files() == files

    # The restored portal serves the files from the bucket.
    with target.web() as application:
        client = application.test_client()
        assert unlock(client).status_code == 303
        with application.app_context():
            programme = db.session.scalars(
                select(Document).where(Document.original_name == "programme.pdf")
            ).one()
            db.session.remove()
        response = client.get(f"/documents/{programme.id}/programme.pdf")
        assert response.data == PDF_BYTES
        response.close()


def test_restore_never_overwrites_objects_already_in_the_bucket(
    archive, tmp_path, s3_endpoint, s3_bucket
):
    first = s3_site(tmp_path / "first", s3_endpoint, s3_bucket)
    assert_ok(first.portal("restore", str(archive)))
    stored = first.files()

    # A new, empty database, but the same bucket and prefix: the files are already there.
    again = s3_site(tmp_path / "again", s3_endpoint, s3_bucket)
    line = assert_refused(again.portal("restore", str(archive)))
    assert "already holds a file" in line
    assert again.files() == stored
