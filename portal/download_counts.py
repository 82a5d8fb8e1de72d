"""Download counts, written in batches: one transaction for the downloads of a moment.

Every download adds one to its document's count before its answer leaves, as before; but
when many arrive at once, the threads of a process no longer each wait for a transaction
of their own. The first one writes; the others, meanwhile, add theirs to the next batch,
which one of them writes as soon as the first has finished; each thread returns once the
batch holding its count is committed, or raises the error that stopped it. At 32
downloads at once, one transaction per download and a lock to keep SQLite's writers from
colliding made the threads queue for the lock (``bench/run.py`` W2).
"""

from __future__ import annotations

import copy
import threading
from collections import Counter

from sqlalchemy import Engine, bindparam, update

from .database import unsynced
from .models import Document

_documents = Document.__table__
_ADD = (
    update(_documents)
    .where(_documents.c.id == bindparam("document_id"))
    .values(
        download_count=_documents.c.download_count + bindparam("downloads"),
        # Not the column's onupdate: a download changes no document, so its Last-Modified
        # stays.
        updated_at=_documents.c.updated_at,
    )
)


class _Batch:
    __slots__ = ("counts", "done", "error")

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.done = False
        self.error: BaseException | None = None


class DownloadCounter:
    """A process's download counts on their way to the database."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._filling = _Batch()
        self._writing = False

    def add(self, engine: Engine, document_id: int) -> None:
        """Count one download of ``document_id``; return once it is committed.

        The caller must hold no pooled connection: the thread that writes needs one.
        """
        with self._changed:
            batch = self._filling
            batch.counts[document_id] += 1
            while not batch.done:
                if self._writing:
                    self._changed.wait()
                    continue
                # Nobody writes: this thread writes the batch that holds its own count
                # while the next one fills.
                self._writing = True
                self._filling = _Batch()
                self._changed.release()
                try:
                    _write(engine, batch.counts)
                except BaseException as error:
                    # Whatever stopped the write, nobody in this batch was counted.
                    batch.error = error
                    raise
                finally:
                    self._changed.acquire()
                    batch.done = True
                    self._writing = False
                    self._changed.notify_all()
        if batch.error is not None:
            # Each waiter raises its own copy: one exception raised in several threads at
            # once would collect all their tracebacks.
            raise _copy_of(batch.error) from batch.error


def _copy_of(error: BaseException) -> BaseException:
    try:
        return copy.copy(error)
    except Exception:  # noqa: BLE001 - an exception that cannot be copied
        return RuntimeError(f"download not counted: {error!r}")


def _write(engine: Engine, counts: Counter[int]) -> None:
    """One atomic transaction that skips the fsync (``database.unsynced``).

    Waiting for the disk on each download used to halve the download rate.
    """
    rows = [{"document_id": key, "downloads": n} for key, n in sorted(counts.items())]
    with engine.connect() as connection, unsynced(connection):
        connection.execute(_ADD, rows)
