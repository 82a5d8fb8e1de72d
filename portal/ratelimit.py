"""Wrong-password limits: keys, the moving-window checks and the store they count in.

The portal limits failures, not requests: a right password never counts, and a check holds
a place while it runs (``password_check``). That is the ``limits`` library's store and
moving-window strategy used directly; no route carries a per-request limit, so nothing runs
on the other requests.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from flask import Flask, current_app, request
from limits import parse_many
from limits.storage import (
    MemoryStorage,
    MovingWindowSupport,
    RedisStorage,
    Storage,
    storage_from_string,
)
from limits.strategies import MovingWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

#: Wrong passwords allowed from one client: SPEC's 10 a minute, then 30 an hour, so that a
#: patient attacker is slowed further while a participant who mistypes is never locked out.
CLIENT_LIMITS = "10 per minute; 30 per hour"
#: Wrong passwords allowed for one facilitator account, whatever the addresses they come from.
ACCOUNT_LIMITS = "20 per hour"


class TooManyAttempts(TooManyRequests):
    """429, with how many seconds to wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = retry_after

    def get_headers(self, environ=None, scope=None):  # type: ignore[no-untyped-def]
        return [*super().get_headers(environ, scope), ("Retry-After", str(self.retry_after))]


@dataclass(frozen=True)
class LimitStore:
    """The app's counting store and the moving-window strategy that reads it."""

    storage: Storage
    strategy: MovingWindowRateLimiter


def init_app(app: Flask) -> None:
    """Open the store named by ``RATELIMIT_STORAGE_URI`` (one per application)."""
    storage = storage_from_string(
        app.config["RATELIMIT_STORAGE_URI"], **app.config.get("RATELIMIT_STORAGE_OPTIONS", {})
    )
    app.extensions["portal.ratelimit"] = LimitStore(storage, MovingWindowRateLimiter(storage))


def limit_store() -> LimitStore:
    return current_app.extensions["portal.ratelimit"]


class AttemptLimit:
    """Wrong passwords allowed for one key (a client, an account) in moving windows."""

    def __init__(self, limits: str, scope: str) -> None:
        self.items = parse_many(limits)
        self.scope = scope

    def check(self, key: str) -> None:
        """Raise TooManyAttempts when ``key`` has used up its wrong tries."""
        strategy = limit_store().strategy
        for item in self.items:
            if not strategy.test(item, key, self.scope):
                reset = strategy.get_window_stats(item, key, self.scope).reset_time
                raise TooManyAttempts(max(1, math.ceil(reset - time.time())))

    def count_failure(self, key: str) -> None:
        """Record one wrong try for ``key``."""
        strategy = limit_store().strategy
        for item in self.items:
            strategy.hit(item, key, self.scope)


#: How long a check may hold its place; a worker that dies holding one frees it by then.
CHECK_SECONDS = 30
#: How long a right password may wait for a place (an office where fifty people unlock at
#: once) before the portal gives up with 429.
WAIT_FOR_TURN_SECONDS = 30.0


def _remaining(limits: list[tuple[AttemptLimit, str]]) -> int:
    strategy = limit_store().strategy
    return min(
        strategy.get_window_stats(item, key, limit.scope).remaining
        for limit, key in limits
        for item in limit.items
    )


@contextmanager
def password_check(turn_key: str, limits: list[tuple[AttemptLimit, str]]) -> Iterator[None]:
    """Let a password check run only while wrong tries left > checks already running.

    Testing the count, hashing, then counting a failure is unsafe on its own: a burst of
    simultaneous wrong tries would all pass the test before any is counted. Holding a place
    among at most ``remaining`` running checks (in the shared limits store) keeps
    failures + running checks within the limit, while right passwords never count and
    people behind one address only wait for a free place.
    """
    storage = limit_store().storage
    deadline = time.monotonic() + WAIT_FOR_TURN_SECONDS
    pause = 0.01
    while True:
        for limit, key in limits:
            limit.check(key)
        places = _remaining(limits)
        if places > 0 and storage.acquire_entry(turn_key, places, CHECK_SECONDS):
            # ``places`` may be stale: a failure counted meanwhile. Checked again now that
            # this check is visible to every later one, it is exact.
            _, running = storage.get_moving_window(turn_key, places, CHECK_SECONDS)
            if running <= _remaining(limits):
                break
            _give_back(turn_key)
        if time.monotonic() > deadline:
            raise TooManyAttempts(1)
        time.sleep(pause)
        pause = min(pause * 2, 0.2)
    try:
        yield
    finally:
        _give_back(turn_key)


def _give_back(storage_key: str) -> None:
    storage = limit_store().storage
    if isinstance(storage, SQLiteStorage):
        storage.remove_newest(storage_key)
    elif isinstance(storage, RedisStorage):
        # Moving windows are Redis lists, newest entry first.
        storage.get_connection().lpop(storage.prefixed_key(storage_key))
    elif isinstance(storage, MemoryStorage):
        entries = storage.events.get(storage_key)
        if entries:
            entries.pop(0)


def _keyed(value: str) -> str:
    secret = current_app.config["SECRET_KEY"].encode()
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()[:32]


def account_key() -> str:
    """Name the facilitator account a login attempt is for, by a keyed hash of its e-mail."""
    return "account:" + _keyed(request.form.get("email", "").strip().lower()[:254])


def client_key() -> str:
    """Name the client by a keyed hash of its address (an IPv6 client by its /64)."""
    raw = request.remote_addr or ""
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        network = raw
    else:
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            network = str(mapped)
        elif address.version == 6:
            network = str(ipaddress.ip_network(f"{address}/64", strict=False))
        else:
            network = str(address)
    return _keyed(network)


class SQLiteStorage(Storage, MovingWindowSupport):
    """A moving-window store in one SQLite file, shared by every worker process.

    The ``memory://`` store is per process, so ``portal run --workers 2``
    would allow twice the tries; Redis is the choice when several machines share the load.
    """

    STORAGE_SCHEME = ["sqlite"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: object) -> None:
        parsed = urlparse(uri)
        self.path = Path(parsed.netloc + parsed.path)
        self._local = threading.local()
        super().__init__(uri, wrap_exceptions=wrap_exceptions)

    @property
    def base_exceptions(self) -> type[Exception]:
        return sqlite3.Error

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._use_wal(connection)
            # Counters need no fsync per change: a power cut may forget the last second of
            # tries, while each unlock otherwise waits for two syncs of the disk.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS hits (key TEXT NOT NULL, at REAL NOT NULL,"
                " expires REAL NOT NULL)"
            )
            connection.execute("CREATE INDEX IF NOT EXISTS hits_key ON hits (key, at)")
            self._local.connection = connection
        return connection

    @staticmethod
    def _use_wal(connection: sqlite3.Connection) -> None:
        # Switching a new file to WAL fails at once (no busy wait) when several workers
        # open it together; the first one to succeed does it for everyone.
        for _ in range(100):
            try:
                if connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                    return
                connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError:
                time.sleep(0.05)
        connection.execute("PRAGMA journal_mode=WAL")

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Forget every entry whose counting window is over: no address outlives it.
            connection.execute("DELETE FROM hits WHERE expires < ?", (now,))
            (count,) = connection.execute(
                "SELECT COUNT(*) FROM hits WHERE key = ? AND at >= ?", (key, now - expiry)
            ).fetchone()
            if count + amount > limit:
                connection.execute("COMMIT")
                return False
            connection.executemany(
                "INSERT INTO hits (key, at, expires) VALUES (?, ?, ?)",
                [(key, now, now + expiry)] * amount,
            )
            connection.execute("COMMIT")
            return True
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def remove_newest(self, key: str) -> None:
        """Remove the most recent entry of ``key`` (an attempt that turned out right)."""
        self._connection().execute(
            "DELETE FROM hits WHERE rowid = (SELECT MAX(rowid) FROM hits WHERE key = ?)", (key,)
        )

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = time.time()
        oldest, count = (
            self._connection()
            .execute(
                "SELECT MIN(at), COUNT(*) FROM hits WHERE key = ? AND at >= ?", (key, now - expiry)
            )
            .fetchone()
        )
        return (oldest if count else now), count

    # Fixed-window operations, required by the interface; the portal uses moving windows.
    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        connection = self._connection()
        connection.executemany(
            "INSERT INTO hits (key, at, expires) VALUES (?, ?, ?)",
            [(key, now, now + expiry)] * amount,
        )
        return self.get(key)

    def get(self, key: str) -> int:
        (count,) = (
            self._connection()
            .execute("SELECT COUNT(*) FROM hits WHERE key = ? AND expires >= ?", (key, time.time()))
            .fetchone()
        )
        return count

    def get_expiry(self, key: str) -> float:
        (expires,) = (
            self._connection()
            .execute("SELECT MAX(expires) FROM hits WHERE key = ?", (key,))
            .fetchone()
        )
        return expires or time.time()

    def check(self) -> bool:
        try:
            self._connection().execute("SELECT 1")
        except sqlite3.Error:
            return False
        return True

    def reset(self) -> int | None:
        return self._connection().execute("DELETE FROM hits").rowcount

    def clear(self, key: str) -> None:
        self._connection().execute("DELETE FROM hits WHERE key = ?", (key,))


GATE_FAILURES = AttemptLimit(CLIENT_LIMITS, "access")
LOGIN_FAILURES = AttemptLimit(CLIENT_LIMITS, "login")
ACCOUNT_FAILURES = AttemptLimit(ACCOUNT_LIMITS, "login-account")
