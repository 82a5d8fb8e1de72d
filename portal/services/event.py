"""Use cases for the event and its sessions (meetings)."""

from __future__ import annotations

import datetime as dt

from flask import g
from flask_babel import lazy_gettext as _l
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..models import Document, Event, Meeting
from .tags import slugify

EVENT_ID = 1
DEFAULT_TITLE = "Session nationale"


class EventError(Exception):
    """A change to the event or its sessions that the data refuses; ``field`` names the culprit."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(str(message))
        self.field = field


def get_event() -> Event:
    """Return the installation's event, creating it on first use."""
    cached = g.get("portal_event") if g else None
    if cached is not None:
        return cached
    event = db.session.get(Event, EVENT_ID)
    if event is None:
        try:
            event = Event(id=EVENT_ID, title=DEFAULT_TITLE, description="", password_version=1)
            db.session.add(event)
            db.session.commit()
        except IntegrityError:
            # Another process created it first.
            db.session.rollback()
            event = db.session.get(Event, EVENT_ID)
    if g:
        g.portal_event = event
    return event


def _commit() -> None:
    try:
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise


def set_access_window(opens: dt.datetime | None, closes: dt.datetime | None) -> None:
    """Set (or clear, with None) the period during which the shared password works."""
    if opens and closes and closes <= opens:
        raise EventError(_l("The closing date must come after the opening date."), "access_closes")
    event = get_event()
    event.access_opens = opens
    event.access_closes = closes
    _commit()


def update_event(
    *,
    title: str,
    description: str,
    starts_on: dt.date | None,
    ends_on: dt.date | None,
    access_opens: dt.datetime | None = None,
    access_closes: dt.datetime | None = None,
    keep_window: bool = False,
) -> None:
    """Change the event's title, description, dates and (unless kept) its access window."""
    if starts_on and ends_on and ends_on < starts_on:
        raise EventError(_l("The last day must not come before the first day."), "ends_on")
    if access_opens and access_closes and access_closes <= access_opens:
        raise EventError(_l("The closing date must come after the opening date."), "access_closes")
    event = get_event()
    event.title = title.strip()[:200] or DEFAULT_TITLE
    event.description = description.strip()
    event.starts_on = starts_on
    event.ends_on = ends_on
    if not keep_window:
        event.access_opens = access_opens
        event.access_closes = access_closes
    _commit()


def _free_slug(wanted: str, exclude_id: int | None = None) -> str:
    base = slugify(wanted, 70) or "session"
    taken = set(
        db.session.scalars(
            db.select(Meeting.slug).where(
                Meeting.slug.like(f"{base}%"), Meeting.id != (exclude_id or 0)
            )
        )
    )
    slug, number = base, 2
    while slug in taken:
        slug = f"{base}-{number}"
        number += 1
    return slug


def save_meeting(
    meeting: Meeting | None,
    *,
    title: str,
    starts_at: dt.datetime,
    ends_at: dt.datetime,
    description: str = "",
    facilitators: str = "",
    meeting_url: str = "",
    slug: str | None = None,
) -> Meeting:
    """Create a session (``meeting`` None) or change one; the slug is made unique."""
    if ends_at <= starts_at:
        raise EventError(_l("The end must come after the start."), "ends_at")
    if slug is not None and slug != slugify(slug, 80):
        raise EventError(_l("A slug may only hold lower-case letters, digits and dashes."), "slug")
    creating = meeting is None
    meeting = meeting or Meeting()
    if slug:
        clash = db.session.scalar(
            db.select(Meeting.id).where(Meeting.slug == slug, Meeting.id != (meeting.id or 0))
        )
        if clash:
            raise EventError(_l("Another session already uses this slug."), "slug")
        meeting.slug = slug
    elif creating:
        meeting.slug = _free_slug(title)
    meeting.title = title.strip()[:200]
    meeting.description = description.strip()
    meeting.facilitators = facilitators.strip()[:300]
    meeting.meeting_url = meeting_url.strip()[:500]
    meeting.starts_at = starts_at
    meeting.ends_at = ends_at
    try:
        db.session.add(meeting)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise EventError(_l("Another session already uses this slug."), "slug") from None
    except BaseException:
        db.session.rollback()
        raise
    return meeting


def delete_meeting(meeting: Meeting) -> int:
    """Delete a session; its documents become general documents. Return how many moved."""
    moved = (
        db.session.scalar(
            db.select(func.count(Document.id)).where(Document.meeting_id == meeting.id)
        )
        or 0
    )
    try:
        db.session.execute(
            db.update(Document).where(Document.meeting_id == meeting.id).values(meeting_id=None)
        )
        db.session.delete(meeting)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return moved
