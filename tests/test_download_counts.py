"""Download counts written behind the downloads (portal.download_counts)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.exc import DBAPIError

from portal import download_counts
from portal.download_counts import DownloadCounter
from portal.extensions import db
from portal.models import Document


def written(app: Flask, document_id: int) -> int:
    """The count in the database, without writing anything first."""
    with app.app_context():
        value = db.session.get(Document, document_id).download_count
        db.session.remove()
        return value


def engine_of(app: Flask) -> Any:
    with app.app_context():
        return db.engine


def refused(engine: Any, counts: Any) -> None:
    raise DBAPIError("UPDATE", None, OSError("disk I/O error"))


def wait_until(condition: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


@pytest.fixture
def document(make_document) -> Document:
    return make_document("support.pdf", title="Support")


def test_a_download_is_counted_without_waiting_for_the_database(app, document):
    counter = DownloadCounter(delay=60)
    started = time.monotonic()
    counter.add(engine_of(app), document.id)
    assert time.monotonic() - started < 1
    assert written(app, document.id) == 0
    assert counter.pending() == 1
    counter.flush()
    assert written(app, document.id) == 1
    assert counter.pending() == 0


def test_the_writer_writes_within_its_delay_then_stops(app, document):
    counter = DownloadCounter(delay=0.02)
    counter.add(engine_of(app), document.id)
    assert wait_until(lambda: written(app, document.id) == 1)
    assert wait_until(lambda: counter._writer is None)
    # A later download starts a writer again.
    counter.add(engine_of(app), document.id)
    assert wait_until(lambda: written(app, document.id) == 2)


def test_downloads_at_once_are_written_in_few_transactions(app, make_document, monkeypatch):
    pdf, text = make_document("a.pdf").id, make_document("b.txt", content=b"b\n").id
    transactions: list[int] = []
    real_write = download_counts._write

    def recorded(engine: Any, counts: Any) -> None:
        transactions.append(sum(counts.values()))
        real_write(engine, counts)

    monkeypatch.setattr(download_counts, "_write", recorded)
    counter = DownloadCounter(delay=0.02)
    engine = engine_of(app)

    def downloads(n: int) -> None:
        for i in range(n):
            counter.add(engine, pdf if i % 2 else text)

    threads = [threading.Thread(target=downloads, args=(20,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wait_until(lambda: counter.pending() == 0 and counter._writer is None)
    assert sum(transactions) == 160
    assert len(transactions) < 160 / 4
    assert (written(app, pdf), written(app, text)) == (80, 80)


def test_counts_added_during_a_write_go_in_the_next_one(app, document, monkeypatch):
    real_write = download_counts._write
    writing, release = threading.Event(), threading.Event()
    transactions: list[int] = []

    def held(engine: Any, counts: Any) -> None:
        transactions.append(sum(counts.values()))
        if len(transactions) == 1:
            writing.set()
            release.wait(5)
        real_write(engine, counts)

    monkeypatch.setattr(download_counts, "_write", held)
    counter = DownloadCounter(delay=0.01)
    engine = engine_of(app)
    counter.add(engine, document.id)
    assert writing.wait(5)
    for _ in range(4):
        counter.add(engine, document.id)
    assert counter.pending() == 4
    release.set()
    assert wait_until(lambda: written(app, document.id) == 5)
    assert transactions == [1, 4]


def test_a_failed_write_keeps_the_counts_and_is_tried_again(app, document, monkeypatch, caplog):
    real_write = download_counts._write
    attempts: list[tuple[float, int]] = []

    def fails_twice(engine: Any, counts: Any) -> None:
        attempts.append((time.monotonic(), sum(counts.values())))
        if len(attempts) <= 2:
            refused(engine, counts)
        real_write(engine, counts)

    monkeypatch.setattr(download_counts, "_write", fails_twice)
    counter = DownloadCounter(delay=0.01, retry=0.3)
    with caplog.at_level(logging.INFO, logger="portal.download_counts"):
        for _ in range(3):
            counter.add(engine_of(app), document.id)
        assert wait_until(lambda: written(app, document.id) == 3)
    assert [n for _, n in attempts] == [3, 3, 3]
    # Tried again after ``retry``, not after ``delay``.
    assert all(b - a >= 0.25 for (a, _), (b, _) in zip(attempts, attempts[1:], strict=False))
    # One warning with its traceback while it fails, one line when it is written again.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info
    assert "download counts written again" in caplog.text


def test_a_count_for_a_document_deleted_meanwhile_is_dropped_without_error(app, make_document):
    kept, deleted = make_document("a.pdf"), make_document("b.pdf")
    counter = DownloadCounter(delay=60)
    counter.add(engine_of(app), kept.id)
    counter.add(engine_of(app), deleted.id)
    with app.app_context():
        db.session.delete(db.session.get(Document, deleted.id))
        db.session.commit()
    counter.flush()
    assert counter.pending() == 0
    assert written(app, kept.id) == 1


def test_flush_raises_the_error_and_keeps_the_counts(app, document, monkeypatch):
    counter = DownloadCounter(delay=60)
    counter.add(engine_of(app), document.id)
    monkeypatch.setattr(download_counts, "_write", refused)
    with pytest.raises(DBAPIError):
        counter.flush()
    assert counter.pending() == 1
    assert written(app, document.id) == 0
    monkeypatch.undo()
    counter.flush()
    assert written(app, document.id) == 1


def test_flush_all_writes_every_counter(app, make_document):
    first, second = make_document("a.pdf").id, make_document("b.pdf").id
    counters = DownloadCounter(delay=60), DownloadCounter(delay=60)
    counters[0].add(engine_of(app), first)
    counters[1].add(engine_of(app), second)
    download_counts.flush_all()
    assert (written(app, first), written(app, second)) == (1, 1)


def test_a_forked_process_counts_afresh(app, document):
    """A gunicorn worker is forked from the master: the parent's tally stays the parent's."""
    counter = DownloadCounter(delay=60)
    engine = engine_of(app)
    counter.add(engine, document.id)
    counter.add(engine, document.id)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            engine.dispose(close=False)  # the parent's pooled connections are not ours
            if counter.pending() == 0 and counter._writer is None:
                counter.add(engine, document.id)
                counter.flush()
                status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert written(app, document.id) == 1  # the child's one download
    assert counter.pending() == 2
    counter.flush()
    assert written(app, document.id) == 3


def test_a_process_that_exits_normally_writes_its_counts(app, document):
    """Counts still in memory are written at exit (atexit), whatever the server."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    script = (
        "import sys\n"
        "from sqlalchemy import create_engine\n"
        "from portal.download_counts import DownloadCounter\n"
        "counter = DownloadCounter(delay=3600)\n"
        "engine = create_engine(sys.argv[1])\n"
        "for _ in range(3):\n"
        "    counter.add(engine, int(sys.argv[2]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, url, str(document.id)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert written(app, document.id) == 3


def test_closing_writes_what_it_can_and_logs_the_rest_as_lost(app, document, monkeypatch, caplog):
    counter = DownloadCounter(delay=60)
    counter.add(engine_of(app), document.id)
    counter.add(engine_of(app), document.id)
    monkeypatch.setattr(download_counts, "_write", refused)
    with caplog.at_level(logging.ERROR, logger="portal.download_counts"):
        counter.close()
    assert "2 download counts lost" in caplog.text
    assert counter.pending() == 0
    monkeypatch.undo()
    counter.add(engine_of(app), document.id)
    counter.close()
    assert written(app, document.id) == 1


def test_a_writer_that_cannot_start_leaves_the_count_to_the_next_one(app, document, monkeypatch):
    counter = DownloadCounter(delay=0.01)
    real_start = threading.Thread.start

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    counter.add(engine_of(app), document.id)  # the download itself goes on
    assert counter.pending() == 1 and counter._writer is None
    monkeypatch.setattr(threading.Thread, "start", real_start)
    counter.add(engine_of(app), document.id)
    assert wait_until(lambda: written(app, document.id) == 2)


def test_a_failed_flush_with_no_writer_left_starts_one(app, document, monkeypatch):
    counter = DownloadCounter(delay=0.01, retry=0.05)
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (_ for _ in ()).throw(RuntimeError))
    counter.add(engine_of(app), document.id)  # no writer
    monkeypatch.setattr(threading.Thread, "start", real_start)
    monkeypatch.setattr(download_counts, "_write", refused)
    with pytest.raises(DBAPIError):
        counter.flush()  # the dashboard's, say
    assert counter._writer is not None
    monkeypatch.undo()
    assert wait_until(lambda: written(app, document.id) == 1)


# The writer is killed on purpose here: pytest reports any exception ending a thread.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_writer_that_dies_is_replaced_by_the_next_download(app, document, monkeypatch):
    counter = DownloadCounter(delay=0.01)
    real_flush = counter.flush

    def dies() -> None:
        raise SystemExit  # ends the thread, as an unexpected BaseException would

    monkeypatch.setattr(counter, "flush", dies)
    counter.add(engine_of(app), document.id)
    assert wait_until(lambda: counter._writer is None)
    monkeypatch.setattr(counter, "flush", real_flush)
    counter.add(engine_of(app), document.id)
    assert wait_until(lambda: written(app, document.id) == 2)
