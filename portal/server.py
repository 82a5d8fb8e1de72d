"""``portal run``: the portal under gunicorn, with threaded workers."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from . import download_counts
from .extensions import db
from .warmup import warm_up


class PortalServer(BaseApplication):
    """gunicorn, configured from ``portal run``'s options instead of a config file."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            # Settings that this gunicorn version does not know are left out.
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.application


class PortalThreadWorker(ThreadWorker):
    """gunicorn's threaded worker, never taking visitors it has no thread for.

    A download to a slow phone holds its thread for the whole transfer (sendfile blocks
    until the client has read it). gunicorn's threaded worker goes on accepting connections
    while all its threads are taken: they wait in its queue, however idle the other worker
    is, until some download ends, minutes later. Here a worker stops accepting while every
    one of its threads is busy and none has finished a request for a quarter of a second,
    so new visitors are taken by a worker that can answer them (`bench/run.py`, workload
    W8: 32 slow readers on 2 x 32 threads once left the listing at 0 requests/s). A worker
    that is merely busy keeps accepting: stopping as soon as every thread was taken left
    new connections in the kernel's queue under ordinary load (W1 at 128 connections: p99
    1.2-3.1 s and timeouts, against 0.4-0.5 s). Only new connections can be steered: the
    next request on a kept-alive connection still waits for its own worker. Behind nginx with
    X-Accel-Redirect (docs/deploy.md) downloads never hold the portal's threads at all.

    gunicorn 24 and later also close a finished connection "gracefully" (RFC 9112 section
    9.6): half-close, then wait up to two seconds for the client to close too. The threaded
    worker does that in its one event-loop thread, so a download that ends on a slow line
    stops every other visitor of that process for two seconds. The wait is done by a small
    pool of closing threads instead; older gunicorn versions close at once anyway.
    """

    #: Requests handed to the thread pool and not finished yet (event-loop thread only).
    in_flight = 0
    #: When this worker last finished a request (time.monotonic()).
    last_finished = 0.0
    #: How long a worker with every thread taken may go without finishing a request before
    #: it counts as stuck and stops taking visitors. Under a burst of ordinary requests a
    #: worker finishes one every few milliseconds and keeps accepting: refusing then would
    #: leave new connections waiting in the kernel's queue while both workers are busy.
    stall_after = 0.25

    def init_process(self) -> None:
        self.closer = ThreadPoolExecutor(
            max_workers=max(2, self.cfg.threads // 4), thread_name_prefix="linger"
        )
        self.last_finished = time.monotonic()
        super().init_process()

    def run(self) -> None:
        try:
            super().run()
        finally:
            # Counts still in memory are written before the worker goes.
            download_counts.flush_all()

    def stalled(self) -> bool:
        """Every thread taken, and none of them has finished a request for a while."""
        return (
            self.in_flight >= self.cfg.threads
            and time.monotonic() - self.last_finished >= self.stall_after
        )

    def set_accept_enabled(self, enabled: bool) -> None:
        # gunicorn's loop asks for accepting whenever it has room for connections; a
        # connection is only worth taking if some thread will be free to answer it soon.
        super().set_accept_enabled(enabled and not self.stalled())

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if self.in_flight >= self.cfg.threads:
            if self._accepting and self.stalled():
                super().set_accept_enabled(False)
            # Wake up in time to notice a stall that begins while nothing happens.
            timeout = min(timeout, self.stall_after)
        super().wait_for_and_dispatch_events(timeout)

    def finish_request(self, conn: Any, fs: Any) -> None:
        self.in_flight -= 1
        self.last_finished = time.monotonic()
        super().finish_request(conn, fs)
        # The loop enables accepting again on its next turn, right after this callback.

    def enqueue_req(self, conn: Any) -> None:
        self.in_flight += 1
        if self._accepting and self.stalled():
            super().set_accept_enabled(False)
        if not getattr(conn, "lingers_off_loop", False):
            close = conn.close

            def close_off_loop(graceful: bool = False) -> None:
                if graceful:
                    self.closer.submit(close, graceful=True)
                else:
                    close()

            conn.close = close_off_loop
            conn.lingers_off_loop = True
        super().enqueue_req(conn)


def serve(app: Flask, *, host: str, port: int, workers: int, threads: int) -> None:
    """Run gunicorn until it is stopped."""
    warm_up(app)
    # Connections opened by the master must not be shared with forked workers.
    db.engine.dispose()
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    PortalServer(
        app,
        {
            "bind": bind,
            "workers": workers,
            # Threads, so that one slow download never holds up other visitors.
            "worker_class": "portal.server.PortalThreadWorker",
            "threads": threads,
            "timeout": 120,
            "graceful_timeout": 30,
            "keepalive": 5,
            # No access log: the portal keeps no participant's address.
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "portal",
            # No control socket in the home folder: several portals may run on one machine.
            "control_socket_disable": True,
        },
    ).run()
