"""Download counts, written behind the downloads: one transaction for those of a moment.

A download adds one to its process's tally and leaves at once; a writer thread commits
the tally a moment later (``DELAY``), every download of that moment in one transaction.
Waiting for its own count's commit made each download pay for a transaction: under a
burst, batches formed behind the one being written held one or two downloads, and the
waiting cost more than the sending (``bench/run.py`` W2: 1,315 against 2,160 req/s
without any count, on one core).

What this gives up, knowingly: a count reaches the database up to ``DELAY`` after its
download (the dashboard writes its own process's tally first, so a facilitator's page
after their own download shows it when the same process served both; another process's
within about ``DELAY``), and counts not yet written when a process is killed without
warning are lost. A process that stops normally writes its tally first (``portal.server``,
and ``atexit`` under any other server). A write that fails (database down) keeps the tally
in memory and tries again every ``RETRY`` seconds: downloads never fail for a statistic.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import Counter

from sqlalchemy import Engine, bindparam, update

from .database import unsynced
from .models import Document

#: How long a count waits for others before the writer commits them (seconds).
DELAY = 0.02
#: How long the writer waits after a failed write before trying again (seconds).
RETRY = 1.0

logger = logging.getLogger(__name__)

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

#: Every counter of this process, for the tallies written at exit.
_counters: weakref.WeakSet[DownloadCounter] = weakref.WeakSet()


class DownloadCounter:
    """A process's download counts on their way to the database."""

    def __init__(self, delay: float = DELAY, retry: float = RETRY) -> None:
        self.delay = delay
        self.retry = retry
        self._start()
        _counters.add(self)

    def _start(self) -> None:
        self._lock = threading.Lock()
        #: One write at a time, whether the writer's or ``flush``'s.
        self._writing = threading.Lock()
        self._tally: Counter[int] = Counter()
        self._engine: Engine | None = None
        self._writer: threading.Thread | None = None

    def add(self, engine: Engine, document_id: int) -> None:
        """Count one download of ``document_id``: written within ``delay`` seconds."""
        with self._lock:
            self._tally[document_id] += 1
            self._engine = engine
            self._ensure_writer()

    def _ensure_writer(self) -> None:
        """Start the writer thread unless it runs (the caller holds ``_lock``)."""
        if self._writer is not None:
            return
        writer = threading.Thread(target=self._write_behind, name="download-counts", daemon=True)
        try:
            writer.start()
        except Exception:  # noqa: BLE001 - never fail a download for its count
            # The counts wait for the next download's writer, the dashboard or the exit.
            logger.warning("no thread to write download counts", exc_info=True)
            return
        self._writer = writer

    def pending(self) -> int:
        """Downloads counted and not written yet."""
        with self._lock:
            return sum(self._tally.values())

    def flush(self) -> None:
        """Write every count added so far; on error, keep them and raise it."""
        with self._writing:
            with self._lock:
                tally, self._tally = self._tally, Counter()
                engine = self._engine
            if not tally or engine is None:
                return
            try:
                _write(engine, tally)
            except BaseException:
                with self._lock:
                    self._tally.update(tally)
                    # The writer may have gone meanwhile: someone must try again.
                    self._ensure_writer()
                raise

    def close(self) -> None:
        """Write the counts not written yet, or log them as lost: the process, or its
        database, goes away."""
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - nothing more can be done for them
            with self._lock:
                lost = sum(self._tally.values())
                self._tally.clear()
            logger.error("%d download counts lost", lost, exc_info=True)

    def _write_behind(self) -> None:
        wait, failing = self.delay, False
        try:
            while True:
                time.sleep(wait)
                try:
                    self.flush()
                except Exception:  # noqa: BLE001 - the database may come back: try again
                    if not failing:
                        logger.warning(
                            "download counts not written yet; trying again every %s s",
                            self.retry,
                            exc_info=True,
                        )
                    wait, failing = self.retry, True
                else:
                    if failing:
                        logger.info("download counts written again")
                    wait, failing = self.delay, False
                with self._lock:
                    if not self._tally:
                        # The next add starts a writer again.
                        self._writer = None
                        return
        finally:
            # Whatever ended this thread, the next add must be able to start another.
            with self._lock:
                if self._writer is threading.current_thread():
                    self._writer = None


def flush_all() -> None:
    """Close this process's counters (a process that stops)."""
    for counter in list(_counters):
        counter.close()


def _after_fork() -> None:
    # A forked process (a gunicorn worker) has no writer thread, and its parent's tally
    # and locks are not its own: it starts afresh.
    for counter in list(_counters):
        counter._start()


atexit.register(flush_all)
os.register_at_fork(after_in_child=_after_fork)


def _write(engine: Engine, counts: Counter[int]) -> None:
    """One atomic transaction that skips the fsync (``database.unsynced``).

    Waiting for the disk on each write used to halve the download rate.
    """
    rows = [{"document_id": key, "downloads": n} for key, n in sorted(counts.items())]
    with engine.connect() as connection, unsynced(connection):
        connection.execute(_ADD, rows)
