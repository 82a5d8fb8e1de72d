"""Crash during upload: a real ``portal run`` killed with SIGKILL at many points of an upload.

The harness (``crash_harness.py``, with the trapping launcher ``crash_launcher.py``) runs
``PORTAL_CRASH_TRIALS`` trials (20 by default; the 100-trial run is done by hand, see
``bench/crash/README.md``), on SQLite or on the PostgreSQL database of
``PORTAL_TEST_DATABASE_URL``. A failure names each promise broken and the trials that
broke it. The other tests make sure the harness's own checks do fail when a stored file or
a row is wrong, so that a green run means something.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from conftest import PDF_BYTES, _reset_postgresql
from crash_harness import POINTS, Entry, Harness, Point

from portal.extensions import db
from portal.models import Document
from portal.services.documents import add_document

TRIALS = int(os.environ.get("PORTAL_CRASH_TRIALS", "20"))


#: Each promise of the issue, and the kinds of harness failures that break it.
PROMISES = {
    "every chosen point was reached and killed": ("unreached",),
    "uploads and replaces between the crashes were acknowledged": ("upload", "replace"),
    "no committed document lost or changed (SHA-256 against the manifest)": ("lost", "changed"),
    "no row points at a missing or short file": ("row-without-file", "short-file", "changed-file"),
    "no partial file visible to participants": ("visible",),
    "a crash while replacing keeps the previous version whole": ("replace-lost-previous",),
    "a killed request committed whole files or nothing": ("outcome", "unexpected-row"),
    "a crash leaves at most a temporary file or an orphan": ("leftover",),
    "portal check reports orphans and temporary files only": ("check",),
    "portal check --repair quarantines them and deletes no document": ("repair",),
}


def broken_promises(report: dict) -> dict[str, list[str]]:
    broken: dict[str, list[str]] = {}
    known = {kind for kinds in PROMISES.values() for kind in kinds}
    for promise, kinds in {**PROMISES, "anything else": ()}.items():
        lines = [
            f"trial {f['trial']} [{f['point']}] {f['kind']}: {f['detail']}"
            for f in report["failures"]
            if f["kind"] in kinds or (not kinds and f["kind"] not in known)
        ]
        if lines:
            broken[promise] = lines
    return broken


# One test for the whole run: under pytest-xdist the tests of a module may be spread over
# several workers, and each would pay for its own run of the harness.
@pytest.mark.live
def test_kill_9_at_every_point_of_uploads_and_replaces_loses_nothing(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    harness = Harness(
        root,
        trials=TRIALS,
        database_url=os.environ.get("PORTAL_TEST_DATABASE_URL") or None,
        reset_database=_reset_postgresql,
        restart_every=6,
    )

    report = harness.run()

    (root / "crash-summary.json").write_text(json.dumps(report, indent=2))
    broken = broken_promises(report)
    assert broken == {}, "\n".join(
        f"{promise}:\n  " + "\n  ".join(lines) for promise, lines in broken.items()
    )
    # The run tested what it claims: every point, both kinds of leftovers, many documents.
    assert report["kills"] == TRIALS
    assert report["points_reached"] == report["points"]
    if TRIALS >= len(POINTS):
        assert {name for name, n in report["points"].items() if n} == {p.name for p in POINTS}
        assert report["orphans_found"] > 0
        assert report["temporary_files_found"] > 0
    assert report["quarantined"] == report["orphans_found"] + report["temporary_files_found"]
    assert report["documents_verified"] >= TRIALS
    assert report["downloads_verified"] >= report["documents_verified"]


# --- the harness's checks can fail ------------------------------------------------------------


@pytest.fixture
def offline_harness(app, tmp_path: Path, make_document):
    """A harness pointed at the test instance (same layout), with three documents."""
    documents = [make_document(f"support-{n}.pdf", PDF_BYTES + bytes([n]) * 50) for n in range(3)]
    harness = Harness(
        tmp_path,
        trials=0,
        database_url=os.environ.get("PORTAL_TEST_DATABASE_URL") or None,
    )
    for document in documents:
        harness.manifest[document.id] = Entry(
            document.sha256, document.size, document.original_name
        )
    yield harness, documents
    harness.engine.dispose()


NO_CRASH = Point("self-test", "upload")


def verify(harness: Harness) -> list[str]:
    harness.failures.clear()
    harness.verify_database(0, NO_CRASH, harness.rows(), {}, None)
    return [f.kind for f in harness.failures]


def test_harness_passes_an_intact_instance(offline_harness):
    harness, _ = offline_harness
    assert verify(harness) == []


def test_harness_catches_a_short_file(offline_harness, storage_dir):
    harness, documents = offline_harness
    path = storage_dir / documents[1].storage_key
    path.write_bytes(path.read_bytes()[:-1])
    assert verify(harness) == ["short-file"]


def test_harness_catches_a_changed_byte(offline_harness, storage_dir):
    harness, documents = offline_harness
    path = storage_dir / documents[0].storage_key
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert verify(harness) == ["changed-file"]


def test_harness_catches_a_row_without_file_and_a_lost_document(offline_harness, app, storage_dir):
    harness, documents = offline_harness
    (storage_dir / documents[2].storage_key).unlink()
    with app.app_context():
        db.session.delete(db.session.get(Document, documents[0].id))
        db.session.commit()
    assert sorted(verify(harness)) == ["lost", "row-without-file"]


def test_harness_catches_a_row_the_crash_should_not_have_committed(offline_harness, app):
    harness, _ = offline_harness
    before = harness.rows()
    content = PDF_BYTES + b"killed before its commit"
    with app.app_context():
        add_document(io.BytesIO(content), "ghost.pdf")
    harness.failures.clear()
    sent = {hashlib.sha256(content).hexdigest(): "ghost.pdf"}
    harness.verify_database(0, NO_CRASH, before, sent, None)
    assert [f.kind for f in harness.failures] == ["outcome"]
