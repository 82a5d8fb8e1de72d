"""Times as people type and read them (the event's zone) and as the database keeps them (UTC)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from flask import current_app


def event_zone() -> ZoneInfo:
    """Return the event's time zone (``PORTAL_TIMEZONE``)."""
    return ZoneInfo(current_app.config["TIMEZONE"])


def to_utc(value: dt.datetime | None) -> dt.datetime | None:
    """Read a naive time as the event's local time; convert any time to aware UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=event_zone())
    return value.astimezone(dt.UTC)


def to_local(value: dt.datetime | None) -> dt.datetime | None:
    """Return an aware time in the event's zone, or None."""
    return None if value is None else value.astimezone(event_zone())


def local_naive(value: dt.datetime | None) -> dt.datetime | None:
    """Return the event-local wall time without zone, as a ``datetime-local`` field wants."""
    local = to_local(value)
    return None if local is None else local.replace(tzinfo=None)


def parse_iso(text: str) -> dt.datetime:
    """Parse an ISO 8601 date-time; one without an offset is in the event's zone."""
    value = dt.datetime.fromisoformat(text.strip())
    converted = to_utc(value)
    assert converted is not None  # noqa: S101 - a parsed value is never None
    return converted
