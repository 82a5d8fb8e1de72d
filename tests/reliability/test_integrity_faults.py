"""Integrity checker: every injected fault is caught by the real ``portal check`` command.

``tests/test_check.py`` calls ``check_storage`` in-process; here the faults are injected into
a real instance and ``portal check`` runs as an administrator would run it, in its own
process. Each fault must be reported on a line that names the document it concerns (its id
and its name, even when two documents share a name), no other document may be blamed, the
exit status must be 1 with nothing on standard error, and the check itself must change
nothing. ``--repair`` then moves the orphans only.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PDF_BYTES, PNG_BYTES

from portal.extensions import db
from portal.models import Document
from portal.storage import QUARANTINE_DIR

PORTAL = Path(sys.executable).parent / "portal"
NOTES = "Compte-rendu du temps d'échange\n".encode() * 40
SUPPORT_A = PDF_BYTES + b"version A " * 30
SUPPORT_B = PDF_BYTES + b"version B " * 30  # same size as A, other bytes


@dataclass
class Library:
    """The instance's documents, by a short label, as the database holds them."""

    documents: dict[str, Document]
    storage: Path

    def path(self, label: str) -> Path:
        return self.storage / self.documents[label].storage_key

    def label(self, label: str) -> str:
        document = self.documents[label]
        return f"document {document.id} ({document.original_name!r})"


@pytest.fixture
def library(make_meeting, make_document, storage_dir: Path) -> Library:
    bilan = make_meeting("Bilan des chantiers", day=21)
    cloture = make_meeting("Clôture", day=27)
    documents = {
        "support-bilan": make_document("support.pdf", SUPPORT_A, meeting=bilan),
        "support-cloture": make_document("support.pdf", SUPPORT_B, meeting=cloture),
        "notes": make_document("compte-rendu état des lieux.txt", NOTES, meeting=bilan),
        "banner": make_document("bandeau.png", PNG_BYTES),
    }
    return Library(documents, storage_dir)


def portal_check(instance_dir: Path, storage_dir: Path, cwd: Path, *args: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env["PORTAL_INSTANCE_DIR"] = str(instance_dir)
    env["PORTAL_STORAGE"] = str(storage_dir)
    if os.environ.get("PORTAL_TEST_DATABASE_URL"):
        env["PORTAL_DATABASE_URL"] = os.environ["PORTAL_TEST_DATABASE_URL"]
    return subprocess.run(
        [str(PORTAL), "check", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


@pytest.fixture
def run_check(instance_dir: Path, storage_dir: Path, tmp_path: Path):
    return lambda *args: portal_check(instance_dir, storage_dir, tmp_path, *args)


def snapshot(app, storage_dir: Path) -> tuple[dict[str, str], list[tuple]]:
    """Every file under the storage with its SHA-256, and every document row."""
    files = {
        str(p.relative_to(storage_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(storage_dir.rglob("*"))
        if p.is_file()
    }
    with app.app_context():
        rows = [
            (d.id, d.storage_key, d.size, d.sha256, d.original_name)
            for d in db.session.scalars(db.select(Document).order_by(Document.id))
        ]
    return files, rows


# --- the faults ------------------------------------------------------------------------------


def delete_file(app, library: Library, label: str) -> None:
    library.path(label).unlink()


def truncate_file(app, library: Library, label: str) -> None:
    path = library.path(label)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty_file(app, library: Library, label: str) -> None:
    library.path(label).write_bytes(b"")


def append_byte(app, library: Library, label: str) -> None:
    with library.path(label).open("ab") as handle:
        handle.write(b"\n")


def flip_one_byte(app, library: Library, label: str) -> None:
    path = library.path(label)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


def other_documents_bytes(app, library: Library, label: str) -> None:
    # The other "support.pdf" has the same size: only the checksum tells them apart.
    other = "support-cloture" if label == "support-bilan" else "support-bilan"
    library.path(label).write_bytes(library.path(other).read_bytes())


def wrong_recorded_size(app, library: Library, label: str) -> None:
    with app.app_context():
        row = db.session.get(Document, library.documents[label].id)
        row.size += 100
        db.session.commit()
        library.documents[label] = _detached(row.id)


def row_without_file(app, library: Library, label: str) -> None:
    """A row whose file never reached the storage (a database restored without its files)."""
    with app.app_context():
        row = Document(
            title="Fantôme",
            original_name="fantôme.pdf",
            content_type="application/pdf",
            size=1234,
            sha256="ab" * 32,
            storage_key=secrets.token_hex(16),
        )
        db.session.add(row)
        db.session.commit()
        library.documents[label] = _detached(row.id)


def _detached(document_id: int) -> Document:
    db.session.expire_all()
    document = db.session.get(Document, document_id)
    db.session.expunge(document)
    return document


Fault = Callable[[object, Library, str], None]

#: fault name -> (inject, document it concerns, pattern of the line that must name it)
FAULTS: dict[str, tuple[Fault, str, str]] = {
    "deleted file": (delete_file, "notes", r"^missing file: {label}"),
    "truncated file": (truncate_file, "support-bilan", r"^wrong size: {label}: \d+ bytes stored"),
    "emptied file": (empty_file, "banner", r"^wrong size: {label}: 0 bytes stored"),
    "one byte appended": (append_byte, "notes", r"^wrong size: {label}: \d+ bytes stored"),
    "one flipped byte": (flip_one_byte, "support-cloture", r"^checksum mismatch: {label}$"),
    "another document's bytes": (
        other_documents_bytes,
        "support-bilan",
        r"^checksum mismatch: {label}$",
    ),
    "wrong recorded size": (
        wrong_recorded_size,
        "banner",
        r"^wrong size: {label}: \d+ bytes stored, {size} recorded$",
    ),
    "row without file": (row_without_file, "ghost", r"^missing file: {label}, key [0-9a-f]{{32}}$"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_is_reported_naming_its_document_and_only_it(
    app, library: Library, run_check, storage_dir: Path, fault: str
):
    inject, label, pattern = FAULTS[fault]
    inject(app, library, label)
    document = library.documents[label]
    expected = re.compile(pattern.format(label=re.escape(library.label(label)), size=document.size))
    before = snapshot(app, storage_dir)

    done = run_check()

    lines = done.stdout.splitlines()
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == ""
    problems = [line for line in lines[:-1] if not line.startswith(("orphan", "temporary"))]
    assert len(problems) == 1, f"one problem expected for {fault}:\n{done.stdout}"
    assert expected.search(problems[0]), f"{problems[0]!r} does not match {expected.pattern!r}"
    assert f"document {document.id} " in problems[0]
    assert document.original_name in problems[0]
    assert re.fullmatch(
        rf"problems found: {len(before[1])} documents checked, 1 damaged or missing,"
        r" 0 orphan files",
        lines[-1],
    ), lines[-1]
    assert snapshot(app, storage_dir) == before, "portal check changed the files or the rows"


def test_an_orphan_is_reported_by_its_key_and_blames_no_document(
    app, library: Library, run_check, storage_dir: Path
):
    key = secrets.token_hex(16)
    (storage_dir / key).write_bytes(b"nobody points to me")
    before = snapshot(app, storage_dir)

    done = run_check()

    lines = done.stdout.splitlines()
    assert done.returncode == 1
    assert done.stderr == ""
    assert lines[:-1] == [f"orphan file: {key} (19 bytes), no document points to it"]
    assert lines[-1] == "problems found: 4 documents checked, 0 damaged or missing, 1 orphan files"
    assert snapshot(app, storage_dir) == before


def test_an_intact_library_is_ok_with_exit_status_0(library: Library, run_check):
    done = run_check()

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "ok: 4 documents checked, 0 damaged or missing, 0 orphan files"
    ]
    assert done.stderr == ""


def test_every_fault_at_once_is_reported_once_on_the_right_document_and_repair_moves_orphans_only(
    app, library: Library, run_check, storage_dir: Path
):
    delete_file(app, library, "notes")
    flip_one_byte(app, library, "support-cloture")
    wrong_recorded_size(app, library, "banner")
    row_without_file(app, library, "ghost")
    # support-bilan stays intact: it must not be blamed for its namesake's damage.
    orphan = secrets.token_hex(16)
    (storage_dir / orphan).write_bytes(SUPPORT_A)
    damaged = {label: library.label(label) for label in ("notes", "support-cloture", "banner")}
    damaged["ghost"] = library.label("ghost")
    before = snapshot(app, storage_dir)

    done = run_check()

    lines = done.stdout.splitlines()
    assert done.returncode == 1
    assert done.stderr == ""
    for text in damaged.values():
        named = [line for line in lines if text in line]
        assert len(named) == 1, f"{text} reported {len(named)} times:\n{done.stdout}"
    assert not [line for line in lines if library.label("support-bilan") in line]
    assert [line for line in lines if orphan in line] == [
        f"orphan file: {orphan} ({len(SUPPORT_A)} bytes), no document points to it"
    ]
    assert lines[-1] == "problems found: 5 documents checked, 4 damaged or missing, 1 orphan files"
    assert snapshot(app, storage_dir) == before

    repaired = run_check("--repair")

    assert repaired.returncode == 1, "damaged documents are still wrong after --repair"
    assert repaired.stderr == ""
    moved = list((storage_dir / QUARANTINE_DIR).iterdir())
    assert [p.name.endswith(orphan) for p in moved] == [True]
    assert moved[0].read_bytes() == SUPPORT_A
    files_after, rows_after = snapshot(app, storage_dir)
    files_before, rows_before = before
    assert rows_after == rows_before, "--repair changed a row"
    assert {k: v for k, v in files_before.items() if k != orphan} == {
        k: v for k, v in files_after.items() if not k.startswith(QUARANTINE_DIR)
    }, "--repair touched a document's file, even a damaged one"
