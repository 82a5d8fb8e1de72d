"""Use cases for documents: add, replace, edit, delete, count downloads.

Each owns its transaction. A stored file is recorded only once it is complete, and
removed again when the database refuses the row, so no file and no row is left half-done.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

from flask import current_app
from flask_babel import lazy_gettext as _l
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.datastructures import FileStorage

from ..extensions import db
from ..filetypes import clean_filename, content_matches, extension_of, media_type
from ..models import Document, Facilitator, Meeting
from ..storage import IncomingFile, Storage, StorageError, StorageFull
from .tags import tags_for


class UploadRejected(Exception):
    """An uploaded file the portal refuses; ``reason`` is a message for the user."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.status = status


def storage() -> Storage:
    """Return the application's storage."""
    return current_app.extensions["portal.storage"]


def incoming_from(source: FileStorage | BinaryIO) -> IncomingFile:
    """Return the upload as a temporary file of the storage, copying it there if needed."""
    stream = source.stream if isinstance(source, FileStorage) else source
    if isinstance(stream, IncomingFile):
        return stream
    try:
        incoming = storage().incoming()
    except (StorageError, OSError) as error:
        raise UploadRejected(_l("The storage is not available."), 503) from error
    try:
        incoming.copy_from(stream)
    except (StorageError, OSError) as error:
        storage().discard(incoming)
        raise UploadRejected(
            _l("The file could not be written: the storage is full or failing."), 507
        ) from error
    return incoming


def check_name(filename: str) -> tuple[str, str]:
    """Check an upload's name against the allow-list; return its clean name and extension.

    Resumable uploads ask this before the first byte is sent, then again with the content.
    """
    name = clean_filename(filename)
    ext = extension_of(name)
    if ext not in current_app.config["ALLOWED_EXTENSIONS"]:
        raise UploadRejected(_l("This type of file is not accepted."))
    return name, ext


def _accepted(incoming: IncomingFile, filename: str) -> tuple[str, str]:
    """Check an upload against the rules; return its clean name and extension."""
    name, ext = check_name(filename)
    if incoming.size == 0:
        raise UploadRejected(_l("The file is empty."))
    if not content_matches(ext, incoming.head(), incoming.path):
        raise UploadRejected(_l("The content of the file does not match its extension."))
    return name, ext


def _store(incoming: IncomingFile) -> str:
    try:
        return storage().commit(incoming)
    except StorageFull:
        # No room left: the request ends with the "storage full" page (507).
        raise
    except (StorageError, OSError) as error:
        raise UploadRejected(
            _l("The file could not be written: the storage is full or failing."), 507
        ) from error


def add_document(
    source: FileStorage | BinaryIO,
    filename: str,
    *,
    meeting: Meeting | None = None,
    tags: Iterable[str] = (),
    title: str = "",
    description: str = "",
    uploaded_by: Facilitator | None = None,
) -> Document:
    """Check an uploaded file, store it under a random key and record it."""
    incoming = incoming_from(source)
    key = None
    try:
        name, ext = _accepted(incoming, filename)
        key = _store(incoming)
        document = Document(
            meeting=meeting,
            title=(title.strip() or name.rsplit(".", 1)[0] or name)[:255],
            description=description.strip(),
            original_name=name,
            content_type=media_type(ext),
            size=incoming.size,
            sha256=incoming.sha256,
            storage_key=key,
            uploaded_by=uploaded_by,
        )
        db.session.add(document)
        document.tags = tags_for(tags)
        db.session.commit()
        return document
    except BaseException:
        db.session.rollback()
        if key is not None:
            storage().delete(key)
        raise
    finally:
        storage().discard(incoming)


def replace_document(document: Document, source: FileStorage | BinaryIO, filename: str) -> None:
    """Put a new file in place of a document's file; the old one goes only after the commit."""
    incoming = incoming_from(source)
    key = None
    old_key = document.storage_key
    try:
        name, ext = _accepted(incoming, filename)
        key = _store(incoming)
        document.original_name = name
        document.content_type = media_type(ext)
        document.size = incoming.size
        document.sha256 = incoming.sha256
        document.storage_key = key
        db.session.commit()
    except BaseException:
        db.session.rollback()
        if key is not None:
            storage().delete(key)
        raise
    finally:
        storage().discard(incoming)
    _forget_file(old_key)


def update_document(
    document: Document,
    *,
    title: str,
    description: str,
    meeting: Meeting | None,
    tags: Iterable[str],
) -> None:
    """Change a document's title, description, session and tags."""
    try:
        document.title = title.strip()[:255] or document.original_name
        document.description = description.strip()
        document.meeting = meeting
        document.tags = tags_for(tags)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise


def delete_document(document: Document) -> None:
    """Delete a document's row, then its file."""
    key = document.storage_key
    try:
        db.session.delete(document)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    _forget_file(key)


def _forget_file(key: str) -> None:
    # The row is gone already; a file that cannot be removed now is an orphan that
    # `portal check` reports, never a document that points nowhere.
    try:
        storage().delete(key)
    except (StorageError, OSError):
        current_app.logger.warning("could not remove stored file %s", key)


def count_download(document_id: int) -> None:
    """Count a download sent by the current request (``portal.download_counts``)."""
    current_app.extensions["portal.download_counts"].add(db.engine, document_id)


def write_download_counts() -> None:
    """Write this process's counts not written yet, before a page shows counts.

    Other processes write theirs within ``download_counts.DELAY``. Should the database
    refuse, the page shows the counts already written and the writer tries again.
    """
    try:
        current_app.extensions["portal.download_counts"].flush()
    except SQLAlchemyError:
        current_app.logger.warning("download counts not written yet", exc_info=True)
