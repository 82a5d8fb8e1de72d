"""A ``portal run`` worker whose threads are all held by slow downloads takes no new visitors.

A download to a slow phone holds its thread until the phone has read it all. gunicorn's
threaded worker used to go on accepting connections while every thread was taken, and those
visitors waited in its queue, however idle the other worker was (``bench/run.py`` W8 once
measured 0 requests/s). ``portal.server.PortalThreadWorker`` stops accepting instead, but
only while its threads are stuck: a worker that is busy yet finishing requests keeps taking
connections, or they would wait in the kernel's queue under ordinary load.
"""

from __future__ import annotations

import http.client
import re
import selectors
import socket
import time
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
from liveserver import Browser, Server, demo_instance, free_port, portal_command, printed

from portal.server import PortalThreadWorker

#: Far more than loopback's socket buffers hold, so that the server's sendfile blocks.
BIG_FILE_BYTES = 48 * 1024 * 1024


class _Pool:
    """Takes requests and never runs them, like a pool whose threads are all busy."""

    def submit(self, function, *args):  # type: ignore[no-untyped-def]
        return Future()


class _Connection:
    closed = False

    def close(self, graceful: bool = False) -> None:
        self.closed = True


@pytest.fixture
def worker():  # type: ignore[no-untyped-def]
    listener = socket.create_server(("127.0.0.1", 0))
    worker = PortalThreadWorker.__new__(PortalThreadWorker)
    worker.cfg = SimpleNamespace(threads=2, worker_connections=1000, keepalive=5)
    worker.sockets = [listener]
    worker.poller = selectors.DefaultSelector()
    worker.tpool = _Pool()
    worker.method_queue = SimpleNamespace(defer=lambda *args: None)
    worker.closer = SimpleNamespace(submit=lambda function, **kwargs: function(**kwargs))
    worker._accepting = False
    worker.nr_conns = 0
    worker.last_finished = time.monotonic()
    worker.alive = True
    yield worker
    worker.poller.close()
    listener.close()


def test_a_worker_whose_threads_are_all_stuck_stops_accepting_and_resumes_after(worker):
    worker.last_finished = time.monotonic() - worker.stall_after  # nothing finished lately
    worker.set_accept_enabled(True)
    assert worker._accepting
    first, second = _Connection(), _Connection()
    worker.enqueue_req(first)
    assert worker._accepting  # one thread still free
    worker.enqueue_req(second)
    assert not worker._accepting
    worker.set_accept_enabled(True)  # what gunicorn's loop asks on each turn
    assert not worker._accepting
    done: Future = Future()
    done.set_result(False)  # the request ended and its connection is closed
    worker.finish_request(first, done)
    assert first.closed
    worker.set_accept_enabled(True)
    assert worker._accepting


def test_a_busy_worker_that_keeps_finishing_requests_keeps_accepting(worker):
    """Under a burst of ordinary requests every thread is taken, yet each frees up soon."""
    worker.set_accept_enabled(True)
    connections = [_Connection() for _ in range(5)]
    for connection in connections[:3]:
        worker.enqueue_req(connection)
    done: Future = Future()
    done.set_result(False)  # answered
    worker.finish_request(connections[0], done)
    for connection in connections[3:]:
        worker.enqueue_req(connection)
    assert worker.in_flight == 4
    assert worker._accepting
    worker.set_accept_enabled(True)
    assert worker._accepting


def test_a_worker_notices_on_its_own_that_its_threads_got_stuck(worker):
    worker.set_accept_enabled(True)
    for _ in range(2):
        worker.enqueue_req(_Connection())
    assert worker._accepting  # the worker had just finished a request
    worker.last_finished -= worker.stall_after  # ... and since then none
    started = time.monotonic()
    worker.wait_for_and_dispatch_events(timeout=5.0)  # one turn of gunicorn's loop
    assert not worker._accepting
    assert time.monotonic() - started < 1.0  # it did not sleep the loop's whole timeout


@pytest.mark.live
def test_visitors_are_answered_while_slow_downloads_hold_one_workers_threads(tmp_path):
    demo_instance(tmp_path)
    folder = tmp_path / "big"
    folder.mkdir()
    line = b"Une ligne de texte du support de la session, pour remplir le fichier.\n"
    with (folder / "gros-support.txt").open("wb") as out:
        for _ in range(BIG_FILE_BYTES // len(line)):
            out.write(line)
    portal_command(tmp_path, "import", str(folder))
    server = Server(tmp_path, free_port(), workers=2, threads=2)
    readers: list[socket.socket] = []
    try:
        server.wait_ready()
        browser = Browser(server.port)
        token = browser.csrf("/access")
        password = printed(server.stdout, "shared password")[0]
        assert browser.post("/access", {"password": password, "csrf_token": token}).status == 303
        link = re.search(r'href="(/documents/\d+/gros-support\.txt)"', browser.get("/").text)
        assert link, "the big document is not listed"
        cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
        # Two phones that read nothing: their downloads hold two of the four threads,
        # usually both of one worker (the connections arrive together).
        for _ in range(2):
            reader = socket.create_connection(("127.0.0.1", server.port))
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            request = f"GET {link.group(1)} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n"
            reader.sendall(request.encode())
            readers.append(reader)
        time.sleep(1.5)
        for reader in readers:  # both downloads started and are stuck on their readers
            assert reader.recv(16, socket.MSG_PEEK).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        for _ in range(12):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            connection.request("GET", "/", headers={"Cookie": cookie, "Connection": "close"})
            response = connection.getresponse()
            assert response.status == 200
            response.read()
            connection.close()
        assert time.monotonic() - started < 5
    finally:
        for reader in readers:
            reader.close()
        server.stop()
