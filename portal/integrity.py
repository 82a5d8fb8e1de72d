"""``portal check``: every document's file present, whole and unchanged; no stray files."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from flask import current_app

from .extensions import db
from .models import Document
from .storage import STALE_AFTER_SECONDS, StorageError, StoredObject
from .tus import remove_stale_partials, stale_partials


@dataclass
class Report:
    """What ``portal check`` found."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)
    orphans: list[StoredObject] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    #: Files of resumable uploads abandoned past their expiry (private instance folder).
    abandoned_uploads: list[str] = field(default_factory=list)
    removed_uploads: int = 0
    storage_error: str = ""

    def lines(self) -> list[str]:
        """Return the report as lines for a terminal."""
        out = [*self.problems]
        for orphan in self.orphans:
            kind = "temporary file" if orphan.temporary else "orphan file"
            out.append(f"{kind}: {orphan.key} ({orphan.size} bytes), no document points to it")
        out.extend(f"moved to quarantine: {target}" for target in self.quarantined)
        out.extend(
            f"abandoned resumable upload: {name}, expired" for name in self.abandoned_uploads
        )
        if self.removed_uploads:
            out.append(f"removed {self.removed_uploads} abandoned resumable upload file(s)")
        wrong = self.problems or self.orphans or self.abandoned_uploads
        summary = (
            f"{'problems found' if wrong else 'ok'}: {self.checked} documents checked,"
            f" {len(self.problems)} damaged or missing, {len(self.orphans)} orphan files"
        )
        if self.abandoned_uploads:
            summary += f", {len(self.abandoned_uploads)} abandoned upload files"
        out.append(summary)
        return out

    def healthy(self, repaired: bool = False) -> bool:
        """Say whether nothing is wrong (orphans moved by ``--repair`` no longer count)."""
        orphans_left = len(self.orphans) - (len(self.quarantined) if repaired else 0)
        uploads_left = len(self.abandoned_uploads) - (self.removed_uploads if repaired else 0)
        return (
            not self.problems and not self.storage_error and orphans_left == 0 and uploads_left <= 0
        )


def _sha256(storage, key: str) -> str:  # type: ignore[no-untyped-def]
    digest = hashlib.sha256()
    with storage.open(key) as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def check_storage(repair: bool = False) -> Report:
    """Compare every document with its stored file and find files no document points to."""
    storage = current_app.extensions["portal.storage"]
    report = Report()
    try:
        storage.check()
    except StorageError as error:
        # Go on: every document whose file is gone must still be named.
        report.storage_error = str(error)
    # List the files first: an upload finishing meanwhile then looks complete, not orphaned.
    try:
        objects = list(storage.objects())
    except (OSError, StorageError):
        objects = []
    known: set[str] = set()
    for document in db.session.scalars(db.select(Document).order_by(Document.id)):
        report.checked += 1
        known.add(document.storage_key)
        label = f"document {document.id} ({document.original_name!r})"
        try:
            size = storage.size(document.storage_key)
        except StorageError as error:
            report.problems.append(f"unreadable file: {label}: {error}")
            continue
        if size is None:
            report.problems.append(f"missing file: {label}, key {document.storage_key}")
        elif size != document.size:
            report.problems.append(
                f"wrong size: {label}: {size} bytes stored, {document.size} recorded"
            )
        else:
            try:
                digest = _sha256(storage, document.storage_key)
            except StorageError as error:
                report.problems.append(f"unreadable file: {label}: {error}")
                continue
            if digest != document.sha256:
                report.problems.append(f"checksum mismatch: {label}")
    stale = time.time() - STALE_AFTER_SECONDS
    for obj in objects:
        if obj.temporary:
            if obj.modified < stale:
                report.orphans.append(obj)
        elif obj.key not in known:
            report.orphans.append(obj)
    if repair:
        # Only files no document points to move; a document's file is never touched.
        still_unknown = set(
            db.session.scalars(
                db.select(Document.storage_key).where(
                    Document.storage_key.in_([o.key for o in report.orphans if not o.temporary])
                )
            )
        )
        for orphan in report.orphans:
            if not orphan.temporary and orphan.key in still_unknown:
                continue
            report.quarantined.append(storage.quarantine(orphan))
    instance_dir = current_app.config["INSTANCE_DIR"]
    report.abandoned_uploads = [path.name for path in stale_partials(instance_dir)]
    if repair and report.abandoned_uploads:
        report.removed_uploads = remove_stale_partials(instance_dir)
    db.session.rollback()
    return report
