#!/usr/bin/env python3
"""Soak test: participants browse and download while facilitators upload, against `portal run`.

    python bench/soak.py --duration 180 --participants 50 --facilitators 5 \
        [--database-url postgresql://postgres@127.0.0.1:5432/test] [--workers 2] \
        [--output bench/results/soak-sqlite-....json]

It builds a fresh instance in a temporary folder with the portal's own command line (init,
set-password, create-facilitator, add-session, import), starts `portal run` on a free
loopback port and drives it over plain HTTP with threads (standard library only):

- participants unlock through /access with the right shared password (wrong tries would
  meet the gate's rate limit: every simulated participant comes from 127.0.0.1), then loop:
  programme, a session page, one download checked against the SHA-256 of the bytes that
  were uploaded, sometimes the session's ZIP (opened and checked with zipfile);
- facilitators log in and upload small PDFs with unique content through /manage/upload;
  every few uploads they meet at a barrier and all send `compte-rendu.pdf` to the same
  session at the same moment, with a tag none of them has created yet.

Afterwards it downloads every acknowledged upload once more, stops the server, compares
what the database holds with what was acknowledged (each upload exactly once, same name,
size and SHA-256), runs `portal check`, writes a JSON summary and prints a table. The exit
status is 1 on any server error (5xx), "database is locked", connection error, unexpected
status, wrong bytes, lost or duplicated upload, error line in the server's log or failed
check; 2 when the run could not be set up.

Only loopback addresses are used; every loop is bounded both in iterations and in time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import html
import http.client
import io
import ipaddress
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

REPO = Path(__file__).resolve().parent.parent
PORTAL = Path(sys.executable).parent / "portal"
HOST = "127.0.0.1"

HTTP_TIMEOUT = 30.0
START_TIMEOUT = 60.0
CLI_TIMEOUT = 120.0
STOP_TIMEOUT = 45.0
BARRIER_TIMEOUT = 20.0
SAMPLES_PER_KIND = 20

CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')
DOCUMENT_LINK = re.compile(r'href="(/documents/(\d+)/[^"?]+)"')
SESSION_OPTION = re.compile(r'<option[^>]*value="(\d+)"')
ACCEPTED_LIST = re.compile(r'<ul class="result accepted">(.*?)</ul>', re.S)
ACCEPTED_ITEM = re.compile(r'<a href="/manage/documents/(\d+)/edit">(.*?)</a>', re.S)
MANAGE_EDIT_LINK = re.compile(r'href="/manage/documents/(\d+)/edit"')
LOCKED = "database is locked"
# What a healthy gunicorn + Flask log never contains.
LOG_ERROR = re.compile(
    r"Traceback|\[(ERROR|CRITICAL)\]|\bERROR in\b|WORKER TIMEOUT|OperationalError|"
    r"IntegrityError|Worker \(pid:\d+\) was sent|database is locked",
    re.I,
)

SESSION_TITLES = [
    "Ouverture : pourquoi des états généraux ?",
    "Accueil et hospitalité dans les territoires",
    "Droit d'asile et procédures",
    "Travail, régularisation et droits sociaux",
    "Frontières et solidarités",
    "Enfermement et expulsions",
    "Mobilisations locales : retours d'expérience",
    "Synthèse et suites de la session nationale",
]


# --- measurements -----------------------------------------------------------------------------


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class Step:
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    connection_errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        values = sorted(self.latencies)

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 1)

        return {
            "requests": self.requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "server_errors": sum(v for k, v in self.statuses.items() if k >= 500),
            "connection_errors": self.connection_errors,
            "p50_ms": ms(percentile(values, 0.50)),
            "p90_ms": ms(percentile(values, 0.90)),
            "p99_ms": ms(percentile(values, 0.99)),
            "max_ms": ms(values[-1] if values else None),
        }


class Recorder:
    """Per-step counts and latencies, and every problem seen (counted, first ones kept)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.steps: dict[str, Step] = {}
        self.problem_counts: Counter = Counter()
        self.problem_samples: dict[str, list[str]] = {}
        self.counters: Counter = Counter()

    def request(self, step: str, status: int | None, seconds: float) -> None:
        with self.lock:
            entry = self.steps.setdefault(step, Step())
            entry.requests += 1
            if status is None:
                entry.connection_errors += 1
            else:
                entry.statuses[status] += 1
                entry.latencies.append(seconds)

    def problem(self, kind: str, detail: str) -> None:
        with self.lock:
            self.problem_counts[kind] += 1
            samples = self.problem_samples.setdefault(kind, [])
            if len(samples) < SAMPLES_PER_KIND:
                samples.append(f"{time.strftime('%H:%M:%S')} {detail}")

    def count(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self.counters[name] += amount


# --- what was uploaded ------------------------------------------------------------------------


@dataclass
class Upload:
    document_id: int
    name: str
    sha256: str
    size: int
    session_id: str
    facilitator: int
    same_name_round: int | None


class Registry:
    """Every content the soak produced, and the uploads the portal acknowledged."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.known_shas: set[str] = set()
        self.by_id: dict[int, str] = {}
        self.uploads: list[Upload] = []
        self.seeds: list[Upload] = []

    def expect(self, sha: str) -> None:
        """Note a content before it is sent (a participant may see it before the answer)."""
        with self.lock:
            self.known_shas.add(sha)

    def acknowledge(self, upload: Upload, seed: bool = False) -> int | None:
        """Record an acknowledged upload; return the SHA-256 already bound to its id, if any."""
        with self.lock:
            previous = self.by_id.get(upload.document_id)
            self.by_id[upload.document_id] = upload.sha256
            self.known_shas.add(upload.sha256)
            (self.seeds if seed else self.uploads).append(upload)
            return previous

    def expected(self, document_id: int) -> str | None:
        with self.lock:
            return self.by_id.get(document_id)

    def is_known(self, sha: str) -> bool:
        with self.lock:
            return sha in self.known_shas


def make_pdf(label: str, rng: random.Random) -> bytes:
    """A small PDF (header, catalogue, one stream, trailer) whose content is unique."""
    padding = rng.randbytes(rng.randint(512, 48 * 1024)).hex().encode()
    token = f"{label} {secrets.token_hex(16)}".encode()
    return (
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n% " + token + b"\n"
        b"1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
        b"3 0 obj << /Length "
        + str(len(padding)).encode()
        + b" >> stream\n"
        + padding
        + b"\nendstream endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- HTTP -------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Client:
    """One browser: keeps its cookies, opens a new connection per request, times each one."""

    def __init__(self, port: int, recorder: Recorder) -> None:
        self.port = port
        self.recorder = recorder
        self.cookies: dict[str, str] = {}

    def request(
        self,
        step: str,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> Reply | None:
        headers = {"Connection": "close", "Accept-Language": "en", "User-Agent": "portal-soak"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if content_type:
            headers["Content-Type"] = content_type
        started = time.perf_counter()
        connection = http.client.HTTPConnection(HOST, self.port, timeout=HTTP_TIMEOUT)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            reply = Reply(response.status, response.headers, response.read())
        except (OSError, http.client.HTTPException) as error:
            self.recorder.request(step, None, time.perf_counter() - started)
            self.recorder.problem(
                "connection_error", f"{method} {path}: {type(error).__name__}: {error}"
            )
            return None
        finally:
            connection.close()
        elapsed = time.perf_counter() - started
        self.recorder.request(step, reply.status, elapsed)
        for raw in reply.headers.get_all("Set-Cookie") or []:
            jar = SimpleCookie()
            jar.load(raw)
            for name, morsel in jar.items():
                self.cookies[name] = morsel.value
        if LOCKED.encode() in reply.body:
            self.recorder.problem("database_locked", f"{method} {path} -> {reply.status} body")
        if reply.status >= 500:
            first = " ".join(re.sub(r"<[^>]+>", " ", reply.text).split())[:160]
            self.recorder.problem("server_error", f"{method} {path} -> {reply.status}: {first}")
        elif reply.status not in expect:
            self.recorder.problem("unexpected_status", f"{method} {path} -> {reply.status}")
        return reply

    def get(self, step: str, path: str, expect: tuple[int, ...] = (200,)) -> Reply | None:
        return self.request(step, "GET", path, expect=expect)

    def post_form(
        self, step: str, path: str, form: dict[str, str], expect: tuple[int, ...]
    ) -> Reply | None:
        return self.request(
            step,
            "POST",
            path,
            urlencode(form).encode(),
            "application/x-www-form-urlencoded",
            expect,
        )

    def post_multipart(
        self,
        step: str,
        path: str,
        fields: dict[str, str],
        files: list[tuple[str, bytes]],
        expect: tuple[int, ...] = (200,),
    ) -> Reply | None:
        boundary = "soak" + secrets.token_hex(16)
        chunks = []
        for name, value in fields.items():
            chunks.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n".encode()
            )
        for filename, data in files:
            chunks.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                f'filename="{filename}"\r\nContent-Type: application/pdf\r\n\r\n'.encode()
                + data
                + b"\r\n"
            )
        chunks.append(f"--{boundary}--\r\n".encode())
        return self.request(
            step,
            "POST",
            path,
            b"".join(chunks),
            f"multipart/form-data; boundary={boundary}",
            expect,
        )


def csrf_token(reply: Reply | None) -> str | None:
    if reply is None or reply.status != 200:
        return None
    match = CSRF.search(reply.text)
    return (match.group(1) or match.group(2)) if match else None


def document_links(page: str) -> list[tuple[int, str]]:
    found = {int(i): html.unescape(link) for link, i in DOCUMENT_LINK.findall(page)}
    return sorted(found.items())


# --- the server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class Server:
    """A `portal run` process whose output is collected line by line, with timestamps."""

    def __init__(self, root: Path, env: dict[str, str], port: int, workers: int) -> None:
        self.port = port
        self.workers = workers
        self.lines: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(  # noqa: S603 - our own console script
            [str(PORTAL), "run", "--host", HOST, "--port", str(port), "--workers", str(workers)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            cwd=root,
            env=env,
            start_new_session=True,
        )
        self._readers = [
            threading.Thread(
                target=self._collect, args=(self.process.stdout, "stdout"), daemon=True
            ),
            threading.Thread(
                target=self._collect, args=(self.process.stderr, "stderr"), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    def _collect(self, stream: Any, name: str) -> None:
        for line in stream:
            with self._lock:
                self.lines.append((time.time(), name, line.rstrip("\n")))

    def output(self) -> list[str]:
        with self._lock:
            return [line for _, _, line in self.lines]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SetupError(
                    f"portal run exited with {self.process.returncode}:\n"
                    + "\n".join(self.output())
                )
            try:
                connection = http.client.HTTPConnection(HOST, self.port, timeout=5)
                try:
                    connection.request("GET", "/healthz", headers={"Connection": "close"})
                    if connection.getresponse().status == 200:
                        booted = sum("Booting worker" in line for line in self.output())
                        if booted >= self.workers:
                            return
                finally:
                    connection.close()
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.2)
        raise SetupError(f"/healthz did not answer 200 within {START_TIMEOUT:.0f} s")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL to the server's own process group after a timeout."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                # Longer than gunicorn's own graceful timeout (30 s), so that a slow stop
                # shows in the timings rather than as a kill.
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)
        return self.process.returncode


class SetupError(Exception):
    """The run could not be prepared (exit status 2)."""


# --- the instance -----------------------------------------------------------------------------


def sqlalchemy_url(raw: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    return raw


def require_loopback(raw: str) -> None:
    """Refuse a database that is not on this machine's loopback (or a local socket)."""
    host = urlsplit(raw.replace("+psycopg", "")).hostname
    if host in (None, "", "localhost"):
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SetupError(f"the soak only targets loopback addresses, not {host!r}")


def reset_postgresql(url: str, wait_idle: float) -> int:
    """Drop and recreate the public schema; return how many other sessions were connected.

    The database may be shared (a test suite uses the same one): with ``wait_idle`` the reset
    waits, up to that many seconds, until no other session is connected to it.
    """
    from sqlalchemy import create_engine, text

    others_query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    engine = create_engine(sqlalchemy_url(url))
    try:
        deadline = time.monotonic() + wait_idle
        while True:
            with engine.connect() as connection:
                others = int(connection.scalar(others_query) or 0)
            if not others or time.monotonic() >= deadline:
                break
            time.sleep(2)
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()
    return others


def read_documents(database_url: str | None, instance: Path) -> list[dict[str, Any]]:
    """Every documents row, read straight from the database (the server is stopped)."""
    query = "SELECT id, original_name, sha256, size, storage_key, meeting_id FROM documents"
    if not database_url:
        path = instance / "portal.db"
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = connection.execute(query).fetchall()
        finally:
            connection.close()
    else:
        from sqlalchemy import create_engine, text

        engine = create_engine(sqlalchemy_url(database_url))
        try:
            with engine.connect() as connection:
                rows = [tuple(row) for row in connection.execute(text(query))]
        finally:
            engine.dispose()
    keys = ("id", "original_name", "sha256", "size", "storage_key", "meeting_id")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def cli(root: Path, env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """Run one `portal` command; return its standard output; raise SetupError on failure."""
    result = subprocess.run(  # noqa: S603 - our own console script
        [str(PORTAL), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise SetupError(
            f"portal {' '.join(args)} exited with {result.returncode}: {result.stderr.strip()}"
        )
    return result.stdout


# The same `portal` commands, run one after the other in a single interpreter: the import of
# the application (about two seconds of CPU on a small machine) is then paid once, not 16 times.
BATCH = """
import io, json, sys
import click
from portal.cli import cli
results = []
for args, stdin in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin or ""), out, err
    try:
        cli.main(args=args, prog_name="portal", standalone_mode=False)
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except click.ClickException as error:
        error.show()
        code = error.exit_code
    finally:
        sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__
    results.append([code, out.getvalue(), err.getvalue()])
    if code:
        break
print(json.dumps(results))
"""


def cli_batch(
    root: Path, env: dict[str, str], tasks: list[tuple[tuple[str, ...], str | None]]
) -> list[str]:
    """Run several `portal` commands in one interpreter; return each one's standard output."""
    result = subprocess.run(  # noqa: S603 - our own interpreter and package
        [sys.executable, "-c", BATCH],
        input=json.dumps([[list(args), stdin] for args, stdin in tasks]),
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    try:
        results = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise SetupError(f"the command batch failed: {result.stderr.strip()[-2000:]}") from None
    for (args, _), (code, _, err) in zip(tasks, results, strict=False):
        if code:
            raise SetupError(f"portal {' '.join(args)} exited with {code}: {err.strip()}")
    if len(results) != len(tasks):
        raise SetupError("the command batch stopped early")
    return [out for _, out, _ in results]


@dataclass
class Instance:
    root: Path
    env: dict[str, str]
    shared_password: str
    facilitators: list[tuple[str, str]]
    slugs: list[str]
    seconds: float


def build_instance(
    root: Path,
    database_url: str | None,
    facilitators: int,
    sessions: int,
    jobs: int,
    batch: bool,
) -> tuple[Instance, list[tuple[str, bytes]]]:
    """Create the instance with the command line; return it and the seed documents."""
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env["PORTAL_INSTANCE_DIR"] = str(root / "instance")
    env["PORTAL_STORAGE"] = str(root / "uploads")
    if database_url:
        env["PORTAL_DATABASE_URL"] = database_url
    shared_password = "#SN" + secrets.token_urlsafe(9)
    accounts = [
        (f"animation{n}@soak.invalid", secrets.token_urlsafe(12))
        for n in range(1, facilitators + 1)
    ]
    seed_dir = root / "seed"
    seed_dir.mkdir()
    rng = random.Random(secrets.randbits(32))  # noqa: S311 - filler bytes, not secrets
    seeds = []
    for n in range(1, 6):
        name = f"support-general-{n}.pdf"
        data = make_pdf(name, rng)
        (seed_dir / name).write_bytes(data)
        seeds.append((name, data))

    tasks: list[tuple[tuple[str, ...], str | None]] = [
        (("set-password", "--password-stdin"), shared_password + "\n"),
        (("import", str(seed_dir), "--tag", "documents généraux"), None),
    ]
    for n, (email, password) in enumerate(accounts, start=1):
        extra = ("--admin",) if n == 1 else ()
        tasks.append(
            (
                (
                    "create-facilitator",
                    email,
                    "--name",
                    f"Animation {n}",
                    *extra,
                    "--password-stdin",
                ),
                password + "\n",
            )
        )
    day = dt.datetime(2020, 11, 21, 10, 0)
    for n in range(sessions):
        title = SESSION_TITLES[n % len(SESSION_TITLES)]
        if n >= len(SESSION_TITLES):
            title = f"{title} ({n + 1})"
        starts = day + dt.timedelta(hours=12 * n)
        tasks.append(
            (
                (
                    "add-session",
                    title,
                    "--starts",
                    starts.isoformat(timespec="minutes"),
                    "--ends",
                    (starts + dt.timedelta(hours=2)).isoformat(timespec="minutes"),
                    "--slug",
                    f"temps-{n + 1}",
                ),
                None,
            )
        )
    if batch:
        outputs = cli_batch(root, env, [(("init",), None), *tasks])
    else:
        cli(root, env, "init")
        # One `portal` process per command, as an operator types them; a few at once.
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            outputs = list(pool.map(lambda task: cli(root, env, *task[0], stdin=task[1]), tasks))
    slugs = [out.strip().splitlines()[-1] for out in outputs[-sessions:]]
    instance = Instance(root, env, shared_password, accounts, slugs, time.monotonic() - started)
    return instance, seeds


# --- the simulated people ---------------------------------------------------------------------


@dataclass
class Context:
    port: int
    recorder: Recorder
    registry: Registry
    shared_password: str
    slugs: list[str]
    deadline: float
    max_iterations: int
    zip_probability: float
    same_name_every: int
    rounds: list[threading.Barrier]
    seed: int
    stop: threading.Event = field(default_factory=threading.Event)

    def time_up(self) -> bool:
        return self.stop.is_set() or time.monotonic() >= self.deadline

    def think(self, rng: random.Random, low: float, high: float) -> None:
        pause = min(rng.uniform(low, high), max(0.0, self.deadline - time.monotonic()))
        self.stop.wait(pause)


def unlock(ctx: Context, client: Client) -> bool:
    for _ in range(3):
        if ctx.time_up():
            return False
        token = csrf_token(client.get("access_form", "/access"))
        if token:
            form = {"password": ctx.shared_password, "csrf_token": token}
            reply = client.post_form("access", "/access", form, expect=(303,))
            if reply is not None and reply.status == 303:
                return True
            if reply is not None and reply.status == 429:
                # SPEC 4: only wrong tries count towards the gate's limit.
                ctx.recorder.problem("right_password_refused_429", "POST /access")
        ctx.stop.wait(1.0)
    ctx.recorder.problem("unlock_failed", "a participant could not unlock the portal")
    return False


def verify_download(ctx: Context, document_id: int, path: str, reply: Reply | None) -> None:
    if reply is None or reply.status != 200:
        return
    actual = sha256(reply.body)
    expected = ctx.registry.expected(document_id)
    length = reply.headers.get("Content-Length")
    if length is not None and int(length) != len(reply.body):
        ctx.recorder.problem("download_mismatch", f"{path}: {len(reply.body)} bytes of {length}")
    elif expected is not None and actual != expected:
        ctx.recorder.problem(
            "download_mismatch", f"{path}: SHA-256 {actual[:12]} not {expected[:12]}"
        )
    elif expected is None and not ctx.registry.is_known(actual):
        ctx.recorder.problem("download_mismatch", f"{path}: bytes the soak never uploaded")
    else:
        ctx.recorder.count("downloads_verified")


def verify_zip(ctx: Context, path: str, reply: Reply | None) -> None:
    if reply is None or reply.status != 200:
        return
    try:
        with zipfile.ZipFile(io.BytesIO(reply.body)) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"member {bad!r} is damaged")
            members = archive.namelist()
            for name in members:
                if "/" in name or "\\" in name:
                    raise zipfile.BadZipFile(f"member {name!r} has a folder part")
                if not ctx.registry.is_known(sha256(archive.read(name))):
                    raise zipfile.BadZipFile(f"member {name!r} holds bytes never uploaded")
            if len(set(members)) != len(members):
                raise zipfile.BadZipFile("two members have the same name")
    except zipfile.BadZipFile as error:
        ctx.recorder.problem("zip_invalid", f"{path}: {error}")
        return
    ctx.recorder.count("zips_verified")
    ctx.recorder.count("zip_members", len(members))


def participant(ctx: Context, number: int) -> None:
    rng = random.Random(ctx.seed * 1000 + number)  # noqa: S311 - think times
    client = Client(ctx.port, ctx.recorder)
    ctx.stop.wait(rng.uniform(0, 2.0))  # people do not all arrive in the same millisecond
    if not unlock(ctx, client):
        return
    for _ in range(ctx.max_iterations):
        if ctx.time_up():
            break
        programme = client.get("programme", "/")
        general = document_links(programme.text) if programme and programme.status == 200 else []
        ctx.think(rng, 0.1, 0.6)
        if ctx.time_up():
            break
        slug = rng.choice(ctx.slugs)
        page = client.get("session", f"/sessions/{slug}")
        links = document_links(page.text) if page and page.status == 200 else []
        ctx.think(rng, 0.1, 0.6)
        if ctx.time_up():
            break
        choices = links or general
        if choices:
            document_id, path = rng.choice(choices)
            verify_download(ctx, document_id, path, client.get("download", path))
        if links and rng.random() < ctx.zip_probability and not ctx.time_up():
            ctx.think(rng, 0.1, 0.6)
            path = f"/sessions/{slug}/archive.zip"
            verify_zip(ctx, path, client.get("zip", path))
        ctx.think(rng, 0.1, 0.6)


def login(ctx: Context, client: Client, email: str, password: str) -> bool:
    for _ in range(3):
        if ctx.time_up():
            return False
        token = csrf_token(client.get("login_form", "/login"))
        if token:
            form = {"email": email, "password": password, "csrf_token": token}
            reply = client.post_form("login", "/login", form, expect=(303,))
            if reply is not None and reply.status == 303:
                return True
            if reply is not None and reply.status == 429:
                ctx.recorder.problem("right_password_refused_429", f"POST /login ({email})")
        ctx.stop.wait(1.0)
    ctx.recorder.problem("login_failed", f"{email} could not log in")
    return False


def facilitator(ctx: Context, number: int, email: str, password: str) -> None:
    rng = random.Random(ctx.seed * 1000 + 500 + number)  # noqa: S311 - think times
    client = Client(ctx.port, ctx.recorder)
    round_index = 0
    try:
        if not login(ctx, client, email, password):
            return
        for iteration in range(1, ctx.max_iterations + 1):
            if ctx.time_up():
                break
            form_page = client.get("upload_form", "/manage/upload")
            token = csrf_token(form_page)
            if not token or form_page is None:
                ctx.think(rng, 0.5, 1.5)
                continue
            session_ids = sorted(set(SESSION_OPTION.findall(form_page.text)), key=int)
            same_name = iteration % ctx.same_name_every == 0 and round_index < len(ctx.rounds)
            if same_name:
                this_round = round_index
                round_index += 1
                session_id = session_ids[this_round % len(session_ids)] if session_ids else ""
                names = ["compte-rendu.pdf"]
                tags = f"compte-rendu, synthèse tour {this_round + 1}"
                step = "upload_same_name"
            else:
                this_round = None
                roll = rng.random()
                session_id = "" if roll < 0.1 or not session_ids else rng.choice(session_ids)
                count = 2 if rng.random() < 0.2 else 1
                stems = ["support", "synthèse", "présentation", "notes"]
                names = [
                    unicodedata.normalize(
                        "NFC", f"{rng.choice(stems)}-a{number}-{iteration}-{k}.pdf"
                    )
                    for k in range(1, count + 1)
                ]
                tags = f"support, animation {number}"
                step = "upload"
            files = [(name, make_pdf(f"{email} {name}", rng)) for name in names]
            for _, data in files:
                ctx.registry.expect(sha256(data))
            fields = {
                "csrf_token": token,
                "session": session_id,
                "tags": tags,
                "title": "",
                "description": "",
            }
            if same_name:
                barrier = ctx.rounds[this_round]
                try:
                    if barrier.wait(timeout=BARRIER_TIMEOUT) == 0:
                        ctx.recorder.count("same_name_rounds")
                    ctx.recorder.count("same_name_simultaneous_uploads")
                except threading.BrokenBarrierError:
                    ctx.recorder.count("same_name_alone_uploads")
            reply = client.post_multipart(step, "/manage/upload", fields, files)
            acknowledge(ctx, number, reply, files, session_id, this_round)
            if iteration % 5 == 0 and not ctx.time_up():
                dashboard = client.get("manage", "/manage")
                if dashboard is not None and dashboard.status == 200:
                    ctx.recorder.count("manage_pages")
            ctx.think(rng, 0.5, 2.5)
    finally:
        # Nobody will meet this facilitator at a later barrier: release whoever waits there.
        for barrier in ctx.rounds[round_index:]:
            barrier.abort()


def acknowledge(
    ctx: Context,
    number: int,
    reply: Reply | None,
    files: list[tuple[str, bytes]],
    session_id: str,
    same_name_round: int | None,
) -> None:
    if reply is None:
        ctx.recorder.count("uploads_without_answer", len(files))
        return
    if reply.status != 200:
        return
    block = ACCEPTED_LIST.search(reply.text)
    accepted = (
        [(int(i), html.unescape(name).strip()) for i, name in ACCEPTED_ITEM.findall(block.group(1))]
        if block
        else []
    )
    for name, data in files:
        match = next((item for item in accepted if item[1] == name), None)
        if match is None:
            ctx.recorder.problem(
                "upload_refused", f"{name} ({len(data)} bytes) not in the accepted list"
            )
            continue
        accepted.remove(match)
        upload = Upload(
            match[0], name, sha256(data), len(data), session_id, number, same_name_round
        )
        previous = ctx.registry.acknowledge(upload)
        if previous is not None:
            ctx.recorder.problem(
                "duplicated_upload", f"document {match[0]} acknowledged twice ({name})"
            )


# --- after the load ---------------------------------------------------------------------------


def final_pass(ctx: Context, account: tuple[str, str]) -> dict[str, Any]:
    """Download every known document once more, and count each on the /manage dashboard."""
    after = dataclasses.replace(ctx, deadline=time.monotonic() + 300, stop=threading.Event())
    documents = ctx.registry.uploads + ctx.registry.seeds
    result: dict[str, Any] = {"documents": len(documents), "mismatches": 0, "failed": 0}
    reader = Client(ctx.port, ctx.recorder)
    if not unlock(after, reader):
        result["failed"] = len(documents)
        return result
    lock = threading.Lock()

    def one(upload: Upload) -> None:
        path = f"/documents/{upload.document_id}/{upload.document_id}.pdf"
        reply = reader.get("verify_download", path)
        with lock:
            if reply is None or reply.status != 200:
                result["failed"] += 1
            elif sha256(reply.body) != upload.sha256:
                result["mismatches"] += 1
                ctx.recorder.problem(
                    "final_download_mismatch", f"document {upload.document_id} ({upload.name})"
                )

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, documents))

    manager = Client(ctx.port, ctx.recorder)
    listed: Counter = Counter()
    if login(after, manager, *account):
        dashboard = manager.get("verify_manage", "/manage")
        if dashboard is not None and dashboard.status == 200:
            listed = Counter(int(i) for i in MANAGE_EDIT_LINK.findall(dashboard.text))
    wrong = [u.document_id for u in documents if listed[u.document_id] != 1]
    result["manage_rows"] = sum(listed.values())
    result["not_listed_once_on_manage"] = len(wrong)
    for document_id in wrong[:SAMPLES_PER_KIND]:
        ctx.recorder.problem(
            "manage_listing",
            f"document {document_id} listed {listed[document_id]} times on /manage",
        )
    return result


def compare_with_database(
    registry: Registry, rows: list[dict[str, Any]], recorder: Recorder, without_answer: int
) -> dict[str, int]:
    """Every acknowledged upload exactly once, with its name, size and SHA-256."""
    by_id = {row["id"]: row for row in rows}
    per_sha = Counter(row["sha256"] for row in rows)
    acknowledged = registry.uploads + registry.seeds
    acknowledged_ids = {u.document_id for u in acknowledged}
    lost = duplicated = 0
    for upload in acknowledged:
        row = by_id.get(upload.document_id)
        if row is None:
            lost += 1
            recorder.problem(
                "lost_upload", f"document {upload.document_id} ({upload.name}) missing"
            )
        elif (row["sha256"], row["size"], row["original_name"]) != (
            upload.sha256,
            upload.size,
            upload.name,
        ):
            lost += 1
            recorder.problem(
                "lost_upload",
                f"document {upload.document_id}: database holds {row['original_name']!r}, "
                f"{row['size']} bytes, {row['sha256'][:12]}; sent {upload.name!r}, "
                f"{upload.size} bytes, {upload.sha256[:12]}",
            )
        if per_sha[upload.sha256] > 1:
            duplicated += 1
            recorder.problem(
                "duplicated_upload",
                f"{upload.name} ({upload.sha256[:12]}) stored {per_sha[upload.sha256]} times",
            )
    unacknowledged = [
        row
        for row in rows
        if row["id"] not in acknowledged_ids and registry.is_known(row["sha256"])
    ]
    unknown = [row for row in rows if not registry.is_known(row["sha256"])]
    # An upload whose answer never came may have been stored: that is not a lost upload.
    if len(unacknowledged) > without_answer:
        for row in unacknowledged[:SAMPLES_PER_KIND]:
            recorder.problem(
                "unacknowledged_row",
                f"document {row['id']} ({row['original_name']}) stored but never acknowledged",
            )
    for row in unknown[:SAMPLES_PER_KIND]:
        recorder.problem("unknown_row", f"document {row['id']} ({row['original_name']})")
    return {
        "rows_in_database": len(rows),
        "lost": lost,
        "duplicated": duplicated,
        "stored_without_answer": len(unacknowledged),
        "unknown_rows": len(unknown),
    }


def read_log(server: Server, recorder: Recorder) -> dict[str, Any]:
    lines = server.output()
    errors = [line for line in lines if LOG_ERROR.search(line)]
    locked = [line for line in lines if LOCKED in line.lower()]
    warnings = [line for line in lines if "WARNING" in line]
    # Whole tracebacks, for the diagnosis: from "Traceback" to the next log record.
    tracebacks: list[str] = []
    for index, line in enumerate(lines):
        if line.startswith("Traceback") and len(tracebacks) < 10:
            end = index + 1
            while end < len(lines) and not lines[end].startswith("["):
                end += 1
            tracebacks.append("\n".join(lines[max(0, index - 1) : end]))
    boots = sum("Booting worker" in line for line in lines)
    for line in errors:
        recorder.problem("server_log_error", line[:300])
    for line in locked:
        recorder.problem("database_locked", f"server log: {line[:300]}")
    if boots > server.workers:
        recorder.problem(
            "worker_restart", f"{boots} workers booted for {server.workers} (a worker died)"
        )
    return {
        "lines": len(lines),
        "error_lines": errors[:50],
        "database_locked_lines": locked[:50],
        "warning_lines": warnings[:50],
        "tracebacks": tracebacks,
        "log_tail": lines[-200:],
        "workers_booted": boots,
    }


def source_revision() -> dict[str, Any]:
    """The commit the soak ran against (read-only git queries)."""
    revision: dict[str, Any] = {}
    for key, args in (("commit", ["rev-parse", "HEAD"]), ("changed", ["status", "--porcelain"])):
        try:
            out = subprocess.run(  # noqa: S603
                ["git", "-C", str(REPO), *args],  # noqa: S607
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return revision
        revision[key] = out.strip() if key == "commit" else len(out.splitlines())
    revision["uncommitted_changes"] = revision.pop("changed", 0)
    return revision


# --- report -----------------------------------------------------------------------------------


STEP_ORDER = [
    "access_form",
    "access",
    "programme",
    "session",
    "download",
    "zip",
    "login_form",
    "login",
    "upload_form",
    "upload",
    "upload_same_name",
    "manage",
    "verify_download",
    "verify_manage",
]


def table(summary: dict[str, Any]) -> str:
    def cell(value: Any) -> str:
        return "–" if value is None else str(value)

    out = [
        "| step | requests | 5xx | conn. errors | 4xx | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    steps = summary["steps"]
    for name in sorted(steps, key=lambda n: (STEP_ORDER + [n]).index(n)):
        step = steps[name]
        other = sum(count for status, count in step["statuses"].items() if 400 <= int(status) < 500)
        out.append(
            f"| {name} | {step['requests']} | {step['server_errors']} | "
            f"{step['connection_errors']} | {other} | {cell(step['p50_ms'])} | "
            f"{cell(step['p90_ms'])} | {cell(step['p99_ms'])} | {cell(step['max_ms'])} |"
        )
    return "\n".join(out)


def headline(summary: dict[str, Any]) -> str:
    r, u, d, t = summary["requests"], summary["uploads"], summary["downloads"], summary["timing"]
    return "\n".join(
        [
            f"{summary['database']}: {summary['settings']['participants']} participants, "
            f"{summary['settings']['facilitators']} facilitators, "
            f"{summary['settings']['workers']} workers, {t['load_s']} s of load "
            f"(setup {t['setup_s']} s, whole run {t['wall_s']} s)",
            f"requests {r['total']} ({r['per_second']}/s), 5xx {r['server_errors']}, "
            f"'database is locked' {r['database_locked']}, connection errors "
            f"{r['connection_errors']}, unexpected statuses {r['unexpected_statuses']}",
            f"uploads acknowledged {u['acknowledged']} (same name at once: "
            f"{u['same_name_rounds']} rounds, {u['same_name_simultaneous']} uploads), "
            f"in database {u['rows_in_database']} (5 seeds), lost {u['lost']}, "
            f"duplicated {u['duplicated']}, re-downloaded {u['final_downloads']} with "
            f"{u['final_download_mismatches']} mismatches",
            f"downloads verified {d['verified']} (mismatches {d['mismatches']}), ZIPs verified "
            f"{d['zips_verified']} ({d['zip_members']} members, {d['zip_invalid']} invalid)",
            f"portal check: exit {summary['check']['exit_status']}; "
            f"result: {'OK' if summary['ok'] else 'FAILED'}",
        ]
    )


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180, help="seconds of load (180)")
    parser.add_argument("--participants", type=int, default=50)
    parser.add_argument("--facilitators", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="portal run --workers (2)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL on loopback; its public schema is dropped first (default: SQLite)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        help="PostgreSQL: wait up to this many seconds for no other session on the database",
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON summary to write")
    parser.add_argument("--zip-probability", type=float, default=0.15)
    parser.add_argument(
        "--same-name-every", type=int, default=4, help="every Nth upload is a same-name round"
    )
    parser.add_argument(
        "--setup",
        choices=("commands", "batch"),
        default="commands",
        help="run each setup command as its own `portal` process (default), or all of them"
        " through the same command-line group in one interpreter (faster: for CI)",
    )
    parser.add_argument(
        "--setup-jobs", type=int, default=3, help="`portal` processes run at once in setup"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary instance folder")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 3600:
        parser.error("--duration must be between 1 and 3600 seconds")
    if not 1 <= args.participants <= 500 or not 1 <= args.facilitators <= 50:
        parser.error("--participants must be 1..500 and --facilitators 1..50")
    if not 1 <= args.sessions <= 50 or not 1 <= args.workers <= 16:
        parser.error("--sessions must be 1..50 and --workers 1..16")
    if args.same_name_every < 1 or not 0 <= args.zip_probability <= 1:
        parser.error("--same-name-every must be at least 1, --zip-probability within 0..1")
    return args


def seed_documents(
    registry: Registry, database_url: str | None, instance: Path, seeds: list[tuple[str, bytes]]
) -> None:
    """Register the imported seed documents by the ids the database gave them."""
    by_name = {row["original_name"]: row for row in read_documents(database_url, instance)}
    for name, data in seeds:
        row = by_name.get(name)
        if row is None or row["sha256"] != sha256(data):
            raise SetupError(f"the imported seed {name} is missing or differs")
        upload = Upload(row["id"], name, sha256(data), len(data), "", 0, None)
        registry.acknowledge(upload, seed=True)


def drive(ctx: Context, instance: Instance, participants: int) -> None:
    """Run every simulated person until the deadline; note threads that never came back."""
    threads = [
        threading.Thread(
            target=facilitator, args=(ctx, n, *account), name=f"facilitator-{n}", daemon=True
        )
        for n, account in enumerate(instance.facilitators, start=1)
    ] + [
        threading.Thread(target=participant, args=(ctx, n), name=f"participant-{n}", daemon=True)
        for n in range(1, participants + 1)
    ]
    for thread in threads:
        thread.start()
    join_by = ctx.deadline + HTTP_TIMEOUT + BARRIER_TIMEOUT + 30
    for thread in threads:
        thread.join(timeout=max(0.1, join_by - time.monotonic()))
    ctx.stop.set()
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        ctx.recorder.problem("stuck_thread", ", ".join(stuck[:10]))


def portal_check(instance: Instance, recorder: Recorder) -> dict[str, Any]:
    check = subprocess.run(  # noqa: S603 - our own console script
        [str(PORTAL), "check"],
        capture_output=True,
        text=True,
        cwd=instance.root,
        env=instance.env,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    if check.returncode != 0:
        recorder.problem("check_failed", f"portal check exited {check.returncode}")
    lines = (check.stdout + check.stderr).strip().splitlines()
    return {"exit_status": check.returncode, "output": lines[-20:]}


def run(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Set up, load, verify; return the summary and the exit status."""
    clock = time.monotonic
    timing: dict[str, float] = {}
    wall_start = clock()
    kind = "postgresql" if args.database_url else "sqlite"
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    recorder, registry = Recorder(), Registry()
    root = Path(tempfile.mkdtemp(prefix=f"portal-soak-{kind}-"))
    server: Server | None = None
    summary: dict[str, Any] = {
        "tool": "bench/soak.py",
        "database": kind,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "duration_s": args.duration,
            "participants": args.participants,
            "facilitators": args.facilitators,
            "sessions": args.sessions,
            "workers": args.workers,
            "zip_probability": args.zip_probability,
            "same_name_every": args.same_name_every,
            "seed": seed,
            "setup": args.setup,
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            # The client shares the machine with the server (and with whatever else runs).
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            **source_revision(),
        },
    }
    try:
        # 1. A fresh instance, through the command line.
        if args.database_url:
            require_loopback(args.database_url)
            others = reset_postgresql(args.database_url, args.wait_idle)
            summary["environment"]["postgresql_other_sessions_at_reset"] = others
            if others:
                print(f"warning: {others} other session(s) use this database", file=sys.stderr)
        print(f"setting up an instance in {root} ...", flush=True)
        instance, seeds = build_instance(
            root,
            args.database_url,
            args.facilitators,
            args.sessions,
            args.setup_jobs,
            args.setup == "batch",
        )
        timing["cli_setup_s"] = instance.seconds
        seed_documents(registry, args.database_url, root / "instance", seeds)
        server = Server(root, instance.env, free_port(), args.workers)
        server.wait_ready()
        timing["setup_s"] = clock() - wall_start

        # 2. The load.
        print(
            f"portal run on {HOST}:{server.port} ({args.workers} workers); "
            f"{args.duration:.0f} s of load ...",
            flush=True,
        )
        max_iterations = int(args.duration * 4) + 10
        ctx = Context(
            port=server.port,
            recorder=recorder,
            registry=registry,
            shared_password=instance.shared_password,
            slugs=instance.slugs,
            deadline=clock() + args.duration,
            max_iterations=max_iterations,
            zip_probability=args.zip_probability,
            same_name_every=args.same_name_every,
            rounds=[
                threading.Barrier(args.facilitators)
                for _ in range(max_iterations // args.same_name_every + 1)
            ],
            seed=seed,
        )
        load_start = clock()
        drive(ctx, instance, args.participants)
        timing["load_s"] = clock() - load_start
        if server.process.poll() is not None:
            recorder.problem("server_exited", f"portal run exited with {server.process.returncode}")

        # 3. Every upload once more over HTTP, then the database and the files at rest.
        print("load over; verifying every upload ...", flush=True)
        verify_start = clock()
        final = final_pass(ctx, instance.facilitators[0])
        timing["final_pass_s"] = clock() - verify_start
        stop_start = clock()
        server_exit = server.stop()
        timing["server_stop_s"] = clock() - stop_start
        server_log = read_log(server, recorder)
        server_log["exit_status"] = server_exit
        without_answer = recorder.counters["uploads_without_answer"]
        rows = read_documents(args.database_url, root / "instance")
        database = compare_with_database(registry, rows, recorder, without_answer)
        check_start = clock()
        check = portal_check(instance, recorder)
        timing["check_s"] = clock() - check_start
        timing["verify_s"] = clock() - verify_start
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return summary, 2
    finally:
        if server is not None and server.process.poll() is None:
            server.stop()
        if args.keep:
            print(f"instance kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    timing["wall_s"] = clock() - wall_start
    summary["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    steps = {name: step.summary() for name, step in recorder.steps.items()}
    counters, problems = recorder.counters, recorder.problem_counts
    total = sum(s["requests"] for name, s in steps.items() if not name.startswith("verify"))
    if not registry.uploads:
        recorder.problem("no_upload", "no upload was acknowledged")
    if not counters["downloads_verified"]:
        recorder.problem("no_download", "no download was verified")
    summary.update(
        {
            "ok": not problems,
            "timing": {key: round(value, 1) for key, value in timing.items()},
            "requests": {
                "total": total,
                "per_second": round(total / timing["load_s"], 1),
                "server_errors": sum(s["server_errors"] for s in steps.values()),
                "database_locked": problems["database_locked"],
                "connection_errors": sum(s["connection_errors"] for s in steps.values()),
                "unexpected_statuses": problems["unexpected_status"],
            },
            "steps": {
                name: steps[name]
                for name in sorted(steps, key=lambda n: (STEP_ORDER + [n]).index(n))
            },
            "uploads": {
                "acknowledged": len(registry.uploads),
                "same_name_rounds": counters["same_name_rounds"],
                "same_name_simultaneous": counters["same_name_simultaneous_uploads"],
                "same_name_alone": counters["same_name_alone_uploads"],
                "refused": problems["upload_refused"],
                "without_answer": without_answer,
                **database,
                "final_downloads": final["documents"],
                "final_download_mismatches": final["mismatches"],
                "final_download_failures": final["failed"],
                "manage_rows": final.get("manage_rows", 0),
                "not_listed_once_on_manage": final.get("not_listed_once_on_manage", 0),
            },
            "downloads": {
                "verified": counters["downloads_verified"],
                "mismatches": problems["download_mismatch"],
                "zips_verified": counters["zips_verified"],
                "zip_members": counters["zip_members"],
                "zip_invalid": problems["zip_invalid"],
            },
            "server": server_log,
            "check": check,
            "problems": {
                kind: {"count": count, "samples": recorder.problem_samples.get(kind, [])}
                for kind, count in sorted(problems.items())
            },
        }
    )
    return summary, 0 if summary["ok"] else 1


def _terminate(signum: int, _frame: Any) -> None:
    # SIGTERM (a test's timeout, a CI runner) unwinds like Ctrl-C: the server is stopped
    # and the temporary instance removed by run()'s cleanup.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    kind = "postgresql" if args.database_url else "sqlite"
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    output = args.output or REPO / "bench" / "results" / f"soak-{kind}-{stamp}.json"
    summary, status = run(args)
    if status == 2:
        return 2
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print(table(summary))
    print()
    print(headline(summary))
    for kind_name, problem in summary["problems"].items():
        print(f"problem: {kind_name} x{problem['count']}")
        for sample in problem["samples"][:5]:
            print(f"    {sample}")
    print(f"summary written to {output}")
    return status


if __name__ == "__main__":
    sys.exit(main())
