"""portal.integrity.check_storage: every fault is found and named; repair moves orphans only."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import PDF_BYTES, PNG_BYTES

from portal.extensions import db
from portal.integrity import check_storage
from portal.models import Document
from portal.storage import QUARANTINE_DIR, TEMP_DIR

NOTES = "Compte-rendu du temps d'échange\n".encode()


def run_check(app, repair: bool = False):
    with app.app_context():
        report = check_storage(repair=repair)
        return report, "\n".join(report.lines())


@pytest.fixture
def documents(make_meeting, make_document):
    meeting = make_meeting("Bilan des chantiers")
    return {
        "support": make_document("support-bilan.pdf", PDF_BYTES, meeting=meeting),
        "notes": make_document("compte-rendu.txt", NOTES, meeting=meeting),
        "banner": make_document("bandeau.png", PNG_BYTES),
    }


def stored(storage_dir: Path, document: Document) -> Path:
    return storage_dir / document.storage_key


def write_temporary(storage_dir: Path, name: str, age_seconds: float) -> Path:
    path = storage_dir / TEMP_DIR / name
    path.write_bytes(b"partial upload")
    moment = time.time() - age_seconds
    os.utime(path, (moment, moment))
    return path


def test_healthy_storage_reports_nothing(app, documents):
    report, text = run_check(app)
    assert report.checked == 3
    assert report.problems == []
    assert report.orphans == []
    assert report.healthy()
    assert text.startswith("ok:")


def test_deleted_file_is_reported_naming_the_document(app, documents, storage_dir):
    stored(storage_dir, documents["notes"]).unlink()
    report, text = run_check(app)
    assert not report.healthy()
    (problem,) = report.problems
    assert "missing" in problem
    assert "compte-rendu.txt" in problem
    assert f"document {documents['notes'].id}" in problem


def test_truncated_file_is_reported_naming_the_document(app, documents, storage_dir):
    path = stored(storage_dir, documents["support"])
    path.write_bytes(path.read_bytes()[:10])
    report, _ = run_check(app)
    assert not report.healthy()
    (problem,) = report.problems
    assert "support-bilan.pdf" in problem
    assert "size" in problem


def test_one_flipped_byte_is_reported_naming_the_document(app, documents, storage_dir):
    path = stored(storage_dir, documents["banner"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report, _ = run_check(app)
    assert not report.healthy()
    (problem,) = report.problems
    assert "bandeau.png" in problem
    assert "checksum" in problem


def test_wrong_recorded_size_is_reported_naming_the_document(app, documents):
    with app.app_context():
        row = db.session.get(Document, documents["notes"].id)
        row.size += 7
        db.session.commit()
    report, _ = run_check(app)
    assert not report.healthy()
    (problem,) = report.problems
    assert "compte-rendu.txt" in problem
    assert str(documents["notes"].size + 7) in problem


def test_wrong_recorded_checksum_is_reported(app, documents):
    with app.app_context():
        row = db.session.get(Document, documents["support"].id)
        row.sha256 = "0" * 64
        db.session.commit()
    report, _ = run_check(app)
    (problem,) = report.problems
    assert "support-bilan.pdf" in problem


def test_every_fault_at_once_is_reported_once_each(app, documents, storage_dir):
    stored(storage_dir, documents["notes"]).unlink()
    support = stored(storage_dir, documents["support"])
    support.write_bytes(support.read_bytes()[:-1])
    banner = stored(storage_dir, documents["banner"])
    banner.write_bytes(b"\x00" + banner.read_bytes()[1:])
    report, text = run_check(app)
    assert len(report.problems) == 3
    for name in ("compte-rendu.txt", "support-bilan.pdf", "bandeau.png"):
        assert name in text
    assert "3 damaged or missing" in text


def test_orphan_file_is_reported(app, documents, storage_dir):
    orphan = storage_dir / ("f" * 32)
    orphan.write_bytes(b"nobody points to me")
    report, text = run_check(app)
    assert not report.healthy()
    assert report.problems == []
    assert [o.key for o in report.orphans] == ["f" * 32]
    assert "f" * 32 in text
    assert "orphan" in text


def test_old_temporary_file_is_reported(app, documents, storage_dir):
    write_temporary(storage_dir, "abandoned.part", age_seconds=2 * 3600)
    report, text = run_check(app)
    assert not report.healthy()
    assert [(o.key, o.temporary) for o in report.orphans] == [("abandoned.part", True)]
    assert "abandoned.part" in text


def test_recent_temporary_file_of_an_upload_in_progress_is_not_reported(
    app, documents, storage_dir
):
    write_temporary(storage_dir, "uploading.part", age_seconds=60)
    report, text = run_check(app)
    assert report.healthy()
    assert report.orphans == []
    assert "uploading.part" not in text


def test_files_that_are_not_keys_are_not_orphans(app, documents, storage_dir):
    (storage_dir / ".gitkeep").write_text("")
    (storage_dir / QUARANTINE_DIR).mkdir()
    (storage_dir / QUARANTINE_DIR / ("a" * 32)).write_bytes(b"already quarantined")
    report, _ = run_check(app)
    assert report.healthy()


def test_repair_quarantines_orphans_and_old_temporary_files_only(app, documents, storage_dir):
    # A damaged document, an orphan, an abandoned upload and an upload in progress.
    notes = stored(storage_dir, documents["notes"])
    notes.write_bytes(b"truncated")
    orphan = storage_dir / ("e" * 32)
    orphan.write_bytes(b"orphan")
    old = write_temporary(storage_dir, "old.part", age_seconds=3 * 3600)
    recent = write_temporary(storage_dir, "recent.part", age_seconds=10)
    before = {name: stored(storage_dir, doc).read_bytes() for name, doc in documents.items()}

    report, text = run_check(app, repair=True)

    quarantine = storage_dir / QUARANTINE_DIR
    assert not orphan.exists()
    assert not old.exists()
    assert recent.exists(), "an upload in progress is never moved"
    moved = sorted(p.name for p in quarantine.iterdir())
    assert len(moved) == 2
    assert any(name.endswith("e" * 32) for name in moved)
    assert any(name.endswith("old.part") for name in moved)
    assert sorted(report.quarantined) == sorted(str(quarantine / n) for n in moved)
    assert "moved to quarantine" in text
    # A document's file is never deleted or moved, not even a damaged one.
    for name, doc in documents.items():
        assert stored(storage_dir, doc).read_bytes() == before[name]
    assert not report.healthy(repaired=True), "the damaged document is still a problem"


def test_after_repair_only_orphans_the_storage_is_healthy(app, documents, storage_dir):
    (storage_dir / ("d" * 32)).write_bytes(b"orphan")
    report, _ = run_check(app, repair=True)
    assert report.healthy(repaired=True)
    again, _ = run_check(app)
    assert again.healthy()
    assert again.checked == 3


def test_check_without_repair_moves_nothing(app, documents, storage_dir):
    orphan = storage_dir / ("c" * 32)
    orphan.write_bytes(b"orphan")
    run_check(app)
    assert orphan.exists()
    assert not (storage_dir / QUARANTINE_DIR).exists()
