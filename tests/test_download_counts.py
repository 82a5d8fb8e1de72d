"""Download counts written behind the downloads (portal.download_counts)."""

from __future__ import annotations

import logging
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
    attempts: list[int] = []

    def fails_twice(engine: Any, counts: Any) -> None:
        attempts.append(sum(counts.values()))
        if len(attempts) <= 2:
            refused(engine, counts)
        real_write(engine, counts)

    monkeypatch.setattr(download_counts, "_write", fails_twice)
    counter = DownloadCounter(delay=0.01, retry=0.05)
    with caplog.at_level(logging.WARNING, logger="portal.download_counts"):
        for _ in range(3):
            counter.add(engine_of(app), document.id)
        assert wait_until(lambda: written(app, document.id) == 3)
    assert len(attempts) == 3 and attempts[-1] == 3
    assert "download counts not written yet" in caplog.text


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


def test_flush_all_writes_this_process_counters_only(app, make_document, monkeypatch):
    ours, forked = make_document("a.pdf").id, make_document("b.pdf").id
    mine, inherited = DownloadCounter(delay=60), DownloadCounter(delay=60)
    mine.add(engine_of(app), ours)
    inherited.add(engine_of(app), forked)
    # A counter created before a fork: its tally belongs to the parent, which writes it.
    monkeypatch.setattr(inherited, "_pid", -1)
    download_counts.flush_all()
    assert (written(app, ours), written(app, forked)) == (1, 0)
    monkeypatch.undo()
    inherited.close()  # no writer outlives the test


def test_a_forked_process_counts_afresh(app, document, monkeypatch):
    counter = DownloadCounter(delay=60)
    counter.add(engine_of(app), document.id)
    counter.add(engine_of(app), document.id)
    real_pid = download_counts.os.getpid()
    monkeypatch.setattr(download_counts.os, "getpid", lambda: real_pid + 1)
    counter.add(engine_of(app), document.id)
    assert counter.pending() == 1
    counter.flush()
    assert written(app, document.id) == 1


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
