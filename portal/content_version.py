"""One integer that changes with anything a participant's listing shows.

Every flush that adds, changes or deletes a session, a document (its download counter
aside), a tag or the event, and every bulk statement on those tables, increments
``events.content_version`` in the same transaction: a rollback undoes both, a commit makes
both visible to every process at once. The page cache (``portal/page_cache.py``) keys its
entries by this number, read from the database on each request, so no process can serve a
page older than the data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import g, has_request_context, request
from sqlalchemy import event, inspect, select, update
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import ORMExecuteState, Session

from .extensions import db
from .models import Document, Event, Meeting, Tag, window_state

EVENT_ID = 1
WATCHED = (Meeting, Document, Tag, Event)
CONTENT_TABLES = frozenset({"meetings", "documents", "tags", "document_tags", "events"})
#: Changes that no listing shows: counting a download must not empty every cache.
IGNORED = {
    Document: frozenset({"download_count", "updated_at"}),
    Event: frozenset({"content_version"}),
}
IGNORED_BULK = frozenset({"download_count", "updated_at", "content_version"})

#: Where a state read before Flask took the request waits for ``event_state`` (WSGI environ).
READ_EARLIER = "portal.event_state"

_events = Event.__table__
BUMP = (
    update(_events)
    .where(_events.c.id == EVENT_ID)
    .values(content_version=_events.c.content_version + 1)
)


_STATE = select(
    _events.c.shared_password_hash.is_not(None),
    _events.c.password_version,
    _events.c.access_opens,
    _events.c.access_closes,
    _events.c.content_version,
).where(_events.c.id == EVENT_ID)


@dataclass(frozen=True)
class EventState:
    """What every participant request needs of the event row, without the ORM's cost."""

    has_password: bool
    password_version: int
    access_opens: dt.datetime | None
    access_closes: dt.datetime | None
    content_version: int

    def window_state(self, now: dt.datetime | None = None) -> str:
        return window_state(self.access_opens, self.access_closes, now)


@dataclass(frozen=True)
class _CompiledState:
    """``_STATE`` as the driver's SQL text, with the column types' result conversions."""

    sql: str
    converters: tuple[Callable[[Any], Any] | None, ...]

    @classmethod
    def for_dialect(cls, dialect: Dialect) -> _CompiledState:
        # EVENT_ID is this module's constant, never a visitor's value: safe to inline.
        compiled = _STATE.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
        converters = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in _STATE.selected_columns
        )
        return cls(str(compiled), converters)

    def convert(self, row: Sequence[Any]) -> EventState:
        return EventState(
            *(
                value if convert is None else convert(value)
                for convert, value in zip(self.converters, row, strict=True)
            )
        )


_COMPILED: dict[tuple[str, str], _CompiledState] = {}


def _read_state(connection: Connection, compiled: _CompiledState) -> Sequence[Any] | None:
    """Run the state query on ``connection``'s driver cursor; errors as SQLAlchemy's."""
    dialect = connection.dialect
    driver_connection = connection.connection.dbapi_connection
    try:
        cursor = driver_connection.cursor()
        try:
            cursor.execute(compiled.sql)
            return cursor.fetchone()
        finally:
            cursor.close()
    except dialect.loaded_dbapi.Error as error:
        lost = dialect.is_disconnect(error, driver_connection, None)
        if lost:
            # As SQLAlchemy does on a lost connection: this one is closed, and the pool's
            # others, opened before the loss (a database restart), are not handed out again.
            connection.invalidate(error)
            connection.engine.dispose(close=False)
        raise DBAPIError.instance(
            compiled.sql,
            None,
            error,
            dialect.loaded_dbapi.Error,
            connection_invalidated=lost,
            dialect=dialect,
        ) from error


def read_event_state(engine: Engine) -> EventState | None:
    """Read the event's version numbers and window on a pooled connection (None: no event).

    A plain pooled connection, outside the ORM session. The statement goes straight to the
    driver's cursor: SQLAlchemy's execution machinery cost twice the query itself on every
    participant page (``bench/run.py`` W1). A driver error still reaches the error pages as
    SQLAlchemy's DBAPIError, and a lost connection is dropped from the pool, as Core would
    do.
    """
    dialect = engine.dialect
    compiled = _COMPILED.get((dialect.name, dialect.driver))
    if compiled is None:
        compiled = _COMPILED[dialect.name, dialect.driver] = _CompiledState.for_dialect(dialect)
    with engine.connect() as connection:
        row = _read_state(connection, compiled)
    return None if row is None else compiled.convert(row)


def event_state() -> EventState | None:
    """The event's state, read once per request.

    On a cached page this is the request's only query. It runs before the view reads any
    content, so a page rendered after it can only be newer than the version it is filed
    under, never older.
    """
    if "portal_event_state" in g:
        return g.portal_event_state
    if has_request_context() and READ_EARLIER in request.environ:
        # Read at the start of this request already, by portal/replay.py.
        state = request.environ[READ_EARLIER]
    else:
        state = read_event_state(db.engine)
    g.portal_event_state = state
    return state


def _changed(instance: Any) -> bool:
    if not isinstance(instance, WATCHED):
        return False
    ignored = IGNORED.get(type(instance), frozenset())
    state = inspect(instance)
    return any(attr.history.has_changes() for attr in state.attrs if attr.key not in ignored)


def _before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    # Bumped before the flush writes anything: every transaction that changes content then
    # locks the event row first, so two of them (on PostgreSQL) queue instead of deadlocking.
    if (
        any(isinstance(o, WATCHED) for o in session.new)
        or any(isinstance(o, WATCHED) for o in session.deleted)
        or any(_changed(o) for o in session.dirty)
    ):
        session.connection().execute(BUMP)


def _table_name(statement: Any) -> str | None:
    table = getattr(statement, "table", None)
    return getattr(table, "name", None)


def _only_ignored_columns(statement: Any) -> bool:
    values = getattr(statement, "_values", None)
    if not values:
        return False  # unknown shape: count it as a change
    return {getattr(column, "key", column) for column in values} <= IGNORED_BULK


def _bulk_statement(state: ORMExecuteState) -> None:
    if not (state.is_insert or state.is_update or state.is_delete):
        return
    if _table_name(state.statement) not in CONTENT_TABLES:
        return
    if state.is_update and _only_ignored_columns(state.statement):
        return
    if state.is_insert and not state.all_mappers:
        # Plain table inserts come only from ``portal restore``, into an empty instance
        # whose event row it writes as archived: counting them would change that row.
        return
    state.session.connection().execute(BUMP)


def install() -> None:
    """Listen on every ORM session (idempotent: several apps may live in one process)."""
    if event.contains(Session, "before_flush", _before_flush):
        return
    event.listen(Session, "before_flush", _before_flush)
    event.listen(Session, "do_orm_execute", _bulk_statement)
