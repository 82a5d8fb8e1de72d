"""The portal's data: one event, its meetings, documents, tags and facilitators."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask_login import UserMixin
from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .extensions import db


def utcnow() -> dt.datetime:
    """Return the current time, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def window_state(
    opens: dt.datetime | None, closes: dt.datetime | None, now: dt.datetime | None = None
) -> str:
    """Say whether an access window is ``"open"``, ``"not_yet"`` or ``"closed"``."""
    now = now or utcnow()
    if opens and now < opens:
        return "not_yet"
    if closes and now >= closes:
        return "closed"
    return "open"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Store naive UTC on every engine and always hand back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


document_tags = Table(
    "document_tags",
    db.metadata,
    Column("document_id", ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True),
)


class Event(db.Model):
    """The event week: one row per installation."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    starts_on: Mapped[dt.date | None] = mapped_column(Date)
    ends_on: Mapped[dt.date | None] = mapped_column(Date)
    shared_password_hash: Mapped[str | None] = mapped_column(String(255))
    # Part of every participant's session: bumping it signs every participant out.
    password_version: Mapped[int] = mapped_column(Integer, default=1)
    access_opens: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    access_closes: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Bumped in the same transaction as any change a participant's listing shows
    # (portal/content_version.py): cached pages are keyed by it, so none outlives a change.
    content_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    def window_state(self, now: dt.datetime | None = None) -> str:
        """Say whether the access window is ``"open"``, ``"not_yet"`` or ``"closed"``."""
        return window_state(self.access_opens, self.access_closes, now)


class Meeting(db.Model):
    """One video-conference session of the week."""

    __tablename__ = "meetings"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    facilitators: Mapped[str] = mapped_column(String(300), default="")
    meeting_url: Mapped[str] = mapped_column(String(500), default="")
    starts_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    ends_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    documents: Mapped[list[Document]] = relationship(
        back_populates="meeting", order_by="Document.created_at, Document.id"
    )


class Tag(db.Model):
    """A free label used to filter documents."""

    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(60))
    slug: Mapped[str] = mapped_column(String(60), unique=True)


class Document(db.Model):
    """A support document: a stored file for one session or for the event as a whole."""

    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(primary_key=True)
    meeting_id: Mapped[int | None] = mapped_column(
        ForeignKey("meetings.id", ondelete="SET NULL"), index=True
    )
    title: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    original_name: Mapped[str] = mapped_column(String(400), default="")
    content_type: Mapped[str] = mapped_column(String(120), default="application/octet-stream")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    storage_key: Mapped[str] = mapped_column(String(200), unique=True)
    download_count: Mapped[int] = mapped_column(Integer, default=0)
    uploaded_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("facilitators.id", ondelete="SET NULL")
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    meeting: Mapped[Meeting | None] = relationship(back_populates="documents")
    tags: Mapped[list[Tag]] = relationship(secondary=document_tags, order_by="Tag.name")
    uploaded_by: Mapped[Facilitator | None] = relationship()

    @property
    def extension(self) -> str:
        """Return the lower-case extension of the original name, without its dot."""
        _, dot, ext = self.original_name.rpartition(".")
        return ext.lower() if dot else ""


class Facilitator(UserMixin, db.Model):
    """A personal account for the people who prepare the sessions."""

    __tablename__ = "facilitators"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(120), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(default=False)
    enabled: Mapped[bool] = mapped_column(default=True)
    # Part of the login session: bumping it (logout, disable, new password) revokes old cookies.
    auth_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    is_participant = False
    is_facilitator = True

    @property
    def is_active(self) -> bool:  # type: ignore[override]
        return self.enabled

    def get_id(self) -> str:
        return f"f:{self.id}:{self.auth_version}"

    @property
    def display_name(self) -> str:
        """Return the name, or the e-mail when no name was given."""
        return self.name or self.email


def count_documents_by_meeting() -> dict[int | None, int]:
    """Return the number of documents of each meeting (None: general documents)."""
    rows = db.session.execute(
        db.select(Document.meeting_id, func.count(Document.id)).group_by(Document.meeting_id)
    )
    return {meeting_id: count for meeting_id, count in rows}
