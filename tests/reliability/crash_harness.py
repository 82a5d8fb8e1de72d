"""Crash-during-upload harness: SIGKILL a real ``portal run`` at many points of an upload.

One instance (SQLite, or the PostgreSQL database given), one server started through
``crash_launcher.py`` (``portal run --workers 1`` with traps), one facilitator created with
``portal create-facilitator --admin --password-stdin``. Each trial:

1. uploads a new file through ``/manage/upload`` and waits for the answer: when it is 200
   and lists the file, the document goes into the *manifest* (id, SHA-256, size);
2. sends one more upload or replace (``/manage/documents/<id>/replace``) that is killed at
   the trial's point (see ``POINTS``): by the server itself through a trap of the launcher
   (the worker sends itself SIGKILL at the chosen call), or from outside with
   ``os.killpg(..., SIGKILL)`` on the whole server process group (``receive``: after part
   of the multipart body was sent slowly and the server began writing it; ``random``: at
   a random moment of a larger upload);
3. restarts the server when the whole group was killed (and every ``restart_every``
   trials, killing the group first), else waits for gunicorn's master to start a new
   worker;
4. verifies: every manifest document still has its row, file, size and SHA-256; every row
   points at a whole file; a row the crashed request committed matches what was sent (and
   joins the manifest); a change killed before its commit left no trace in the database
   (a replaced document keeps its previous version); only the points that may leave a
   temporary file or an orphan left one; participants see exactly the documents of the
   database on the programme, and each downloads whole (SHA-256 of the body).

At the end the server is stopped, the temporary files are aged past the hour after which
``portal check`` reports them, and ``portal check`` must report orphans and temporary files
only (exit 1 because of them alone); ``portal check --repair`` must move exactly those into
``storage/.quarantine`` and leave every document's file as it was; a last ``portal check``
must find everything in order.

Run by hand (``bench/crash/README.md``)::

    python tests/reliability/crash_harness.py --trials 100 --output bench/results/crash-100.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import html
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from portal.storage import WRITE_PIECE

PORTAL = Path(sys.executable).parent / "portal"
LAUNCHER = Path(__file__).with_name("crash_launcher.py")
KEY = re.compile(r"[0-9a-f]{32}")
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')
ACCEPTED = re.compile(r'href="/manage/documents/(\d+)/edit">([^<]*)</a>')
DOCUMENT_LINK = re.compile(r'href="(/documents/(\d+)/[^"?]+)"')
EMAIL = "crash@example.org"
ACCOUNT_PASSWORD = "crash-harness-password"
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 60.0


# --- the points where an upload is killed ----------------------------------------------------


@dataclass(frozen=True)
class Point:
    """Where a trial kills the server, and what may be left afterwards."""

    name: str
    action: str  # "upload", "upload2" (two files in one request) or "replace"
    trap: str | None = None  # X-Crash-Point for the launcher; None: killed from outside
    external: str | None = None  # "receive" or "random"
    #: How many of the request's files are committed when it dies (None: it depends).
    committed: int | None = 0
    leaves: frozenset[str] = frozenset()  # "temporary" and/or "orphan"


TEMP = frozenset({"temporary"})
ORPHAN = frozenset({"orphan"})
ANY = frozenset({"temporary", "orphan"})

POINTS: tuple[Point, ...] = (
    Point("upload/receive", "upload", external="receive", leaves=TEMP),
    Point("upload/write", "upload", trap="write:before:2", leaves=TEMP),
    Point("upload/fsync-file", "upload", trap="fsync-file:before:1", leaves=TEMP),
    Point("upload/rename-before", "upload", trap="rename:before:1", leaves=TEMP),
    Point("upload/rename-after", "upload", trap="rename:after:1", leaves=ORPHAN),
    Point("upload/fsync-dir", "upload", trap="fsync-dir:after:1", leaves=ORPHAN),
    Point("upload/flush", "upload", trap="flush:after:1", leaves=ORPHAN),
    Point("upload/commit", "upload", trap="commit:before:1", leaves=ORPHAN),
    Point("upload/committed", "upload", trap="commit:after:1", committed=1),
    Point("replace/receive", "replace", external="receive", leaves=TEMP),
    Point("replace/write", "replace", trap="write:before:2", leaves=TEMP),
    Point("replace/fsync-file", "replace", trap="fsync-file:after:1", leaves=TEMP),
    Point("replace/rename-after", "replace", trap="rename:after:1", leaves=ORPHAN),
    Point("replace/flush", "replace", trap="flush:after:1", leaves=ORPHAN),
    Point("replace/commit", "replace", trap="commit:before:1", leaves=ORPHAN),
    # Committed, old file not yet removed: the old version's file is left as an orphan.
    Point("replace/committed", "replace", trap="commit:after:1", committed=1, leaves=ORPHAN),
    # Two files in one request: the first is committed, the second dies at its commit.
    Point("upload2/commit-second", "upload2", trap="commit:before:2", committed=1, leaves=ORPHAN),
    Point("upload/random", "upload", external="random", committed=None, leaves=ANY),
)
POINT_NAMES = tuple(p.name for p in POINTS)


# --- HTTP ------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Dropped(Exception):
    """The server closed the connection without an answer (it was killed)."""


def multipart(fields: Iterable[tuple[str, str]], files: Iterable[tuple[str, str, bytes]]):
    """Return (body, content type) of a multipart/form-data request."""
    boundary = "crash" + os.urandom(12).hex()
    chunks: list[bytes] = []
    for name, value in fields:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for name, filename, content in files:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/pdf\r\n\r\n'.encode()
        )
        chunks.append(content + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


@dataclass
class Client:
    """A small HTTP client that keeps its cookies; one connection per request."""

    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Connection": "close", "Accept-Language": "en"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        headers.update(extra or {})
        return headers

    def _keep_cookies(self, headers: http.client.HTTPMessage) -> None:
        for raw in headers.get_all("Set-Cookie") or []:
            jar: SimpleCookie = SimpleCookie()
            jar.load(raw)
            for name, morsel in jar.items():
                self.cookies[name] = morsel.value

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> Reply:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            try:
                connection.request(method, path, body=body, headers=self._headers(headers))
                response = connection.getresponse()
                reply = Reply(response.status, response.headers, response.read())
            except (OSError, http.client.HTTPException) as error:
                raise Dropped(f"{method} {path}: {error!r}") from error
        finally:
            connection.close()
        self._keep_cookies(reply.headers)
        return reply

    def get(self, path: str, timeout: float = REQUEST_TIMEOUT) -> Reply:
        return self.request("GET", path, timeout=timeout)

    def post_form(self, path: str, form: dict[str, str]) -> Reply:
        return self.request(
            "POST",
            path,
            urlencode(form).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )

    def csrf(self, path: str) -> str:
        page = self.get(path)
        match = CSRF.search(page.text)
        if page.status != 200 or not match:
            raise RuntimeError(f"no CSRF token on {path} (status {page.status})")
        return match.group(1) or match.group(2)

    def start_slow_post(self, path: str, body: bytes, content_type: str, upto: int):
        """Send the headers and the first ``upto`` bytes of the body, in small pieces."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        connection.putrequest("POST", path, skip_accept_encoding=True)
        headers = self._headers({"Content-Type": content_type, "Content-Length": str(len(body))})
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        for start in range(0, upto, 16 * 1024):
            connection.send(body[start : min(start + 16 * 1024, upto)])
            time.sleep(0.005)
        return connection


# --- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def group_members(pgid: int) -> list[int]:
    """Return the live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ")".
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


class Server:
    """``crash_launcher.py run`` in its own process group; output goes to log files."""

    def __init__(self, root: Path, env: dict[str, str], port: int) -> None:
        self.root = root
        self.env = env
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        stdout = open(self.root / "server.out", "ab")  # noqa: SIM115 - handed to the process
        stderr = open(self.root / "server.err", "ab")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [sys.executable, str(LAUNCHER), "run", "--port", str(self.port), "--workers", "1"],
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                env=self.env,
                start_new_session=True,
            )
        finally:
            stdout.close()
            stderr.close()
        self.starts += 1
        self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until /healthz answers 200 (a new worker after a crash, or a new server)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log_tail()}")
            try:
                if Client(self.port).get("/healthz", timeout=5).status == 200:
                    return
            except Dropped:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"/healthz did not answer 200 within {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group (gunicorn's master and its worker)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self._wait_group_gone()

    def stop(self) -> None:
        """SIGTERM (gunicorn's graceful stop), SIGKILL to the group after a timeout."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def _wait_group_gone(self) -> None:
        # The worker may outlive the master by a moment; nothing of the group may go on
        # writing while the harness inspects the files.
        assert self.process is not None
        deadline = time.monotonic() + 10
        while (alive := group_members(self.process.pid)) and time.monotonic() < deadline:
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        if alive:
            raise RuntimeError(f"processes {alive} of the server survived SIGKILL")

    def printed(self, label: str) -> list[str]:
        pattern = re.compile(rf"^{re.escape(label)}: (\S+)$", re.MULTILINE)
        return pattern.findall((self.root / "server.out").read_text(errors="replace"))

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for name in ("server.out", "server.err"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}")
                parts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(parts)


# --- the harness -----------------------------------------------------------------------------


@dataclass
class Row:
    id: int
    key: str
    size: int
    sha256: str
    name: str


@dataclass
class Entry:
    """A document the harness knows to be committed, with its expected content."""

    sha256: str
    size: int
    name: str
    acknowledged: bool = True


@dataclass
class Failure:
    trial: int
    point: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"trial {self.trial} [{self.point}] {self.kind}: {self.detail}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def pdf(rng: random.Random, size: int) -> bytes:
    """A file the portal accepts as a PDF, of ``size`` bytes of mostly random content."""
    head = b"%PDF-1.4\n% crash harness\n"
    return head + rng.randbytes(size - len(head))


def portal_env(root: Path, database_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env["PORTAL_INSTANCE_DIR"] = str(root / "instance")
    env["PORTAL_STORAGE"] = str(root / "uploads")
    if database_url:
        env["PORTAL_DATABASE_URL"] = database_url
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Harness:
    """One instance, one server, many trials; see the module's docstring."""

    def __init__(
        self,
        root: Path,
        *,
        trials: int,
        database_url: str | None = None,
        reset_database: Callable[[str], None] | None = None,
        seed: int = 2020,
        restart_every: int = 6,
        points: Iterable[str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        from portal.config import database_url as normalise

        self.root = root
        self.trials = trials
        self.raw_database_url = database_url
        self.sqlalchemy_url = normalise(database_url, root / "instance")
        self.reset_database = reset_database
        self.rng = random.Random(seed)  # noqa: S311 - reproducible test data, no secret
        self.seed = seed
        self.restart_every = restart_every
        chosen = list(points) if points else list(POINT_NAMES)
        unknown = set(chosen) - set(POINT_NAMES)
        if unknown:
            raise ValueError(f"unknown points: {sorted(unknown)}")
        self.points = [p for name in chosen for p in POINTS if p.name == name]
        self.log = log or (lambda message: None)
        self.storage = root / "uploads"
        self.incoming = self.storage / ".incoming"
        self.env = portal_env(root, database_url)
        self.server = Server(root, self.env, free_port())
        self.manifest: dict[int, Entry] = {}
        self.failures: list[Failure] = []
        self.reached: Counter[str] = Counter()
        self.tried: Counter[str] = Counter()
        self.downloads_verified = 0
        self.committed_unacknowledged = 0
        self.kills = 0
        self.random_outcomes: Counter[str] = Counter()
        self.report: dict = {}
        self.engine = create_engine(self.sqlalchemy_url, poolclass=NullPool)
        self.facilitator = Client(self.server.port)
        self.participant = Client(self.server.port)
        self._counter = 0

    # -- set-up and tear-down

    def run(self) -> dict:
        started = time.monotonic()
        try:
            self.set_up()
            for trial in range(1, self.trials + 1):
                self.trial(trial, self.points[(trial - 1) % len(self.points)])
            self.server.stop()
            self.final_check()
        finally:
            self.server.stop()
            self.engine.dispose()
        return self.summary(time.monotonic() - started)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PORTAL), *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.root,
            env=self.env,
            timeout=120,
        )

    def set_up(self) -> None:
        """Start on an empty instance (``portal run`` initialises it), add the facilitator."""
        if self.raw_database_url and self.reset_database:
            self.reset_database(self.sqlalchemy_url)
        self.server.start()
        shared = self.server.printed("shared password")
        if len(shared) != 1:
            raise RuntimeError(f"no shared password printed:\n{self.server.log_tail()}")
        done = self.cli(
            "create-facilitator",
            EMAIL,
            "--admin",
            "--password-stdin",
            stdin=ACCOUNT_PASSWORD + "\n",
        )
        if done.returncode != 0:
            raise RuntimeError(f"portal create-facilitator failed: {done.stdout}{done.stderr}")
        self.log_in(shared[0])

    def log_in(self, shared_password: str) -> None:
        token = self.facilitator.csrf("/login")
        reply = self.facilitator.post_form(
            "/login", {"email": EMAIL, "password": ACCOUNT_PASSWORD, "csrf_token": token}
        )
        if reply.status != 303:
            raise RuntimeError(f"facilitator login answered {reply.status}")
        token = self.participant.csrf("/access")
        reply = self.participant.post_form(
            "/access", {"password": shared_password, "csrf_token": token}
        )
        if reply.status != 303:
            raise RuntimeError(f"participant gate answered {reply.status}")

    # -- requests

    def new_file(self, trial: int, label: str, size: int | None = None) -> tuple[str, bytes]:
        self._counter += 1
        size = size or self.rng.randrange(96 * 1024, 320 * 1024)
        return f"crash-{trial:03d}-{self._counter:04d}-{label}.pdf", pdf(self.rng, size)

    def upload_request(self, files: list[tuple[str, bytes]]) -> tuple[str, bytes, str]:
        token = self.facilitator.csrf("/manage/upload")
        fields = [("csrf_token", token), ("session", ""), ("tags", "crash"), ("title", "")]
        body, content_type = multipart(fields, [("files", n, c) for n, c in files])
        return "/manage/upload", body, content_type

    def replace_request(self, document_id: int, name: str, content: bytes):
        token = self.facilitator.csrf(f"/manage/documents/{document_id}/edit")
        body, content_type = multipart([("csrf_token", token)], [("file", name, content)])
        return f"/manage/documents/{document_id}/replace", body, content_type

    def acknowledged_upload(self, trial: int, point: str) -> None:
        """Upload one file; when the portal says it is stored, it joins the manifest."""
        name, content = self.new_file(trial, "ok")
        path, body, content_type = self.upload_request([(name, content)])
        reply = self.facilitator.request("POST", path, body, {"Content-Type": content_type})
        accepted = {html.unescape(n): int(i) for i, n in ACCEPTED.findall(reply.text)}
        if reply.status != 200 or name not in accepted:
            self.fail(trial, point, "upload", f"upload of {name} answered {reply.status}")
            return
        self.manifest[accepted[name]] = Entry(sha256(content), len(content), name)

    def acknowledged_replace(self, trial: int, point: str) -> None:
        document_id = self.rng.choice(sorted(self.manifest))
        name, content = self.new_file(trial, "replaced")
        path, body, content_type = self.replace_request(document_id, name, content)
        reply = self.facilitator.request("POST", path, body, {"Content-Type": content_type})
        if reply.status != 303:
            self.fail(trial, point, "replace", f"replace of {document_id} answered {reply.status}")
            return
        self.manifest[document_id] = Entry(sha256(content), len(content), name)

    # -- one trial

    def trial(self, trial: int, point: Point) -> None:
        self.tried[point.name] += 1
        known = {i: e.sha256 for i, e in self.manifest.items()}
        self.acknowledged_upload(trial, point.name)
        if trial % 3 == 0 and self.manifest:
            self.acknowledged_replace(trial, point.name)
        before_files = self.stored_files()
        before_rows = self.rows()
        target = None
        # The server reads and writes an upload WRITE_PIECE bytes at a time: an upload killed
        # while receiving must be large enough for the server to be writing it when half of
        # it has been sent.
        size = {"random": 2 * 1024 * 1024, "receive": 5 * WRITE_PIECE}.get(point.external or "")
        if point.action == "replace":
            target = self.rng.choice(sorted(self.manifest))
            files = [self.new_file(trial, "crash-replace", size)]
            path, body, content_type = self.replace_request(target, *files[0])
        else:
            count = 2 if point.action == "upload2" else 1
            files = [self.new_file(trial, f"crash{i}", size) for i in range(count)]
            path, body, content_type = self.upload_request(files)
        sent = {sha256(content): name for name, content in files}

        if point.external == "receive":
            reached = self.kill_while_receiving(path, body, content_type)
            restart = True
        elif point.external == "random":
            reached = self.kill_at_random(path, body, content_type, files)
            restart = True
        else:
            reached = self.trapped(path, body, content_type, point)
            restart = trial % self.restart_every == 0
            if reached and restart:
                self.server.kill()
        if reached:
            self.reached[point.name] += 1
            self.kills += 1
        else:
            self.fail(trial, point.name, "unreached", "the request was answered: no crash")

        restarted = not self.server.running
        if restarted:
            # Looked at while nothing runs, then started again on what the crash left.
            self.verify_database(trial, point, before_rows, sent, target)
            self.verify_leftovers(trial, point, before_files)
            self.server.start()
        else:
            self.server.wait_ready()
            self.verify_database(trial, point, before_rows, sent, target)
            self.verify_leftovers(trial, point, before_files)
        touched = {i for i, e in self.manifest.items() if known.get(i) != e.sha256}
        if target is not None:
            touched.add(target)
        self.verify_served(trial, point.name, touched, full=restarted or trial == self.trials)
        self.log(
            f"trial {trial}/{self.trials} {point.name}: "
            f"{'restarted' if restarted else 'new worker'}, {len(self.manifest)} documents, "
            f"{len(self.failures)} failures"
        )

    def trapped(self, path: str, body: bytes, content_type: str, point: Point) -> bool:
        assert point.trap is not None
        headers = {"Content-Type": content_type, "X-Crash-Point": point.trap}
        try:
            reply = self.facilitator.request("POST", path, body, headers)
        except Dropped:
            return True
        self.log(f"{point.name}: answered {reply.status} instead of dying")
        return False

    def kill_while_receiving(self, path: str, body: bytes, content_type: str) -> bool:
        """Send half the body slowly; once the server writes it to a temporary file, kill."""
        before = set(os.listdir(self.incoming))
        connection = self.facilitator.start_slow_post(path, body, content_type, len(body) // 2)
        reached = False
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                writing = [
                    name
                    for name in set(os.listdir(self.incoming)) - before
                    if _size(self.incoming / name) > 0
                ]
                if writing:
                    reached = True
                    break
                time.sleep(0.01)
            self.server.kill()
        finally:
            connection.close()
        return reached

    def kill_at_random(
        self, path: str, body: bytes, content_type: str, files: list[tuple[str, bytes]]
    ) -> bool:
        """Upload in a thread and kill the server group at a random moment."""
        outcome: dict[str, object] = {}

        def send() -> None:
            try:
                outcome["reply"] = self.facilitator.request(
                    "POST", path, body, {"Content-Type": content_type}
                )
            except Dropped as error:
                outcome["dropped"] = error

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        time.sleep(self.rng.uniform(0.0, 0.4))
        self.server.kill()
        sender.join(timeout=REQUEST_TIMEOUT)
        reply = outcome.get("reply")
        self.random_outcomes["answered" if isinstance(reply, Reply) else "killed"] += 1
        if isinstance(reply, Reply) and reply.status == 200:
            # Answered before the kill: an acknowledged upload like any other.
            accepted = {html.unescape(n): int(i) for i, n in ACCEPTED.findall(reply.text)}
            for name, content in files:
                if name in accepted:
                    self.manifest[accepted[name]] = Entry(sha256(content), len(content), name)
        return True

    # -- checks

    def fail(self, trial: int, point: str, kind: str, detail: str) -> None:
        failure = Failure(trial, point, kind, detail)
        self.failures.append(failure)
        self.log(f"FAILURE {failure}")

    def rows(self) -> dict[int, Row]:
        with self.engine.connect() as connection:
            result = connection.execute(
                text("SELECT id, storage_key, size, sha256, original_name FROM documents")
            )
            return {r[0]: Row(r[0], r[1], r[2], r[3], r[4]) for r in result}

    def stored_files(self) -> dict[str, set[str]]:
        keys = {p.name for p in self.storage.iterdir() if p.is_file() and KEY.fullmatch(p.name)}
        temps = {p.name for p in self.incoming.iterdir() if p.is_file()}
        return {"keys": keys, "temporary": temps}

    def verify_database(
        self,
        trial: int,
        point: Point,
        before: dict[int, Row],
        sent: dict[str, str],
        target: int | None,
    ) -> None:
        """Rows against files, the manifest, and what the killed request may have committed."""
        rows = self.rows()
        for row in rows.values():
            path = self.storage / row.key
            if not path.is_file():
                self.fail(trial, point.name, "row-without-file", f"document {row.id} ({row.name})")
            elif path.stat().st_size != row.size:
                self.fail(
                    trial,
                    point.name,
                    "short-file",
                    f"document {row.id} ({row.name}): {path.stat().st_size} bytes on disk,"
                    f" {row.size} recorded",
                )
            elif file_sha256(path) != row.sha256:
                self.fail(trial, point.name, "changed-file", f"document {row.id} ({row.name})")
        new_rows = {i: r for i, r in rows.items() if i not in before}
        committed_now = [r for r in new_rows.values() if r.sha256 in sent]
        if target is not None and target in rows and rows[target].sha256 in sent:
            committed_now.append(rows[target])
        for document_id, entry in self.manifest.items():
            row = rows.get(document_id)
            if row is None:
                self.fail(trial, point.name, "lost", f"document {document_id} ({entry.name})")
            elif (row.sha256, row.size) != (entry.sha256, entry.size):
                if document_id == target and row.sha256 in sent:
                    continue  # the replace was committed; checked below
                kind = "replace-lost-previous" if document_id == target else "changed"
                self.fail(trial, point.name, kind, f"document {document_id} ({entry.name})")
        for row in new_rows.values():
            if row.sha256 not in sent and row.id not in self.manifest:
                self.fail(trial, point.name, "unexpected-row", f"document {row.id} ({row.name})")
        if point.committed is not None and len(committed_now) != point.committed:
            self.fail(
                trial,
                point.name,
                "outcome",
                f"{len(committed_now)} of the killed request's files committed,"
                f" {point.committed} expected",
            )
        # Committed but never answered: as committed as any other, so watched from now on.
        for row in committed_now:
            if row.id not in self.manifest or self.manifest[row.id].sha256 != row.sha256:
                self.manifest[row.id] = Entry(row.sha256, row.size, row.name, acknowledged=False)
                self.committed_unacknowledged += 1

    def verify_leftovers(self, trial: int, point: Point, before: dict[str, set[str]]) -> None:
        """Only the points that may leave a temporary file or an orphan left one."""
        after = self.stored_files()
        referenced = {r.key for r in self.rows().values()}
        new_orphans = (after["keys"] - referenced) - (before["keys"] - referenced)
        new_temps = after["temporary"] - before["temporary"]
        if new_orphans and "orphan" not in point.leaves:
            self.fail(trial, point.name, "leftover", f"orphan files {sorted(new_orphans)}")
        if new_temps and "temporary" not in point.leaves:
            self.fail(trial, point.name, "leftover", f"temporary files {sorted(new_temps)}")

    def verify_served(self, trial: int, point: str, touched: set[int], full: bool) -> None:
        """Participants see exactly the database's documents, each one whole.

        The programme is compared with the database on every trial; the files are
        downloaded all after a restart and on the last trial, else those the trial touched
        and a few others (the files on disk are compared with every row on every trial).
        """
        rows = self.rows()
        page = self.participant.get("/")
        if page.status != 200:
            self.fail(trial, point, "visible", f"the programme answered {page.status}")
            return
        links = {int(i): html.unescape(link) for link, i in DOCUMENT_LINK.findall(page.text)}
        if set(links) != set(rows):
            self.fail(
                trial,
                point,
                "visible",
                f"programme lists {sorted(set(links) - set(rows))} not in the database and"
                f" misses {sorted(set(rows) - set(links))}",
            )
        chosen = sorted(links)
        if not full:
            others = sorted(set(chosen) - touched)
            chosen = sorted(
                (touched & set(chosen)) | set(self.rng.sample(others, min(6, len(others))))
            )
        for document_id in chosen:
            link = links[document_id]
            reply = self.participant.get(link)
            row = rows.get(document_id)
            if reply.status != 200 or row is None:
                self.fail(trial, point, "visible", f"{link} answered {reply.status}")
            elif sha256(reply.body) != row.sha256 or len(reply.body) != row.size:
                self.fail(
                    trial,
                    point,
                    "visible",
                    f"{link}: {len(reply.body)} bytes that do not match the document",
                )
            else:
                self.downloads_verified += 1
                entry = self.manifest.get(document_id)
                if entry is not None and entry.sha256 != sha256(reply.body):
                    self.fail(trial, point, "changed", f"{link} is not the committed version")

    # -- portal check

    def final_check(self) -> None:
        """``portal check`` reports orphans only; ``--repair`` quarantines them, deletes none."""
        rows = self.rows()
        files = self.stored_files()
        orphans = files["keys"] - {r.key for r in rows.values()}
        temporary = files["temporary"]
        two_hours_ago = time.time() - 7200
        for name in temporary:
            os.utime(self.incoming / name, (two_hours_ago, two_hours_ago))
        documents = {r.key: file_sha256(self.storage / r.key) for r in rows.values()}
        self.report.update(orphans_found=len(orphans), temporary_files_found=len(temporary))

        checked = self.cli("check")
        reported_orphans, reported_temps, others = set(), set(), []
        for line in checked.stdout.splitlines():
            if match := re.match(r"orphan file: (\S+) \(\d+ bytes\), no document points", line):
                reported_orphans.add(match.group(1))
            elif match := re.match(r"temporary file: (\S+) \(\d+ bytes\), no document", line):
                reported_temps.add(match.group(1))
            elif not re.match(r"(ok|problems found): \d+ documents checked, 0 damaged", line):
                others.append(line)
        expected_status = 1 if orphans or temporary else 0
        if others or checked.stderr.strip():
            self.fail(0, "check", "check", f"lines other than orphans: {others} {checked.stderr}")
        if checked.returncode != expected_status:
            self.fail(0, "check", "check", f"exit {checked.returncode}, {expected_status} expected")
        if reported_orphans != orphans or reported_temps != temporary:
            self.fail(
                0,
                "check",
                "check",
                f"reported {len(reported_orphans)} orphans and {len(reported_temps)} temporary"
                f" files, {len(orphans)} and {len(temporary)} on disk",
            )

        repaired = self.cli("check", "--repair")
        quarantine = self.storage / ".quarantine"
        moved = sorted(p.name for p in quarantine.iterdir()) if quarantine.is_dir() else []
        self.report["quarantined"] = len(moved)
        if repaired.returncode != 0:
            self.fail(0, "repair", "repair", f"exit {repaired.returncode}: {repaired.stdout}")
        expected = orphans | temporary
        if sorted(n.split("-", 1)[-1] for n in moved) != sorted(expected):
            self.fail(
                0, "repair", "repair", f"quarantine holds {moved}, {sorted(expected)} expected"
            )
        left = self.stored_files()
        if left["keys"] != set(documents) or left["temporary"]:
            self.fail(0, "repair", "repair", f"storage after repair: {left}")
        for key, digest in documents.items():
            path = self.storage / key
            if not path.is_file() or file_sha256(path) != digest:
                self.fail(0, "repair", "repair", f"a document's file was touched: {key}")
        if self.rows().keys() != rows.keys():
            self.fail(0, "repair", "repair", "rows changed")

        again = self.cli("check")
        if again.returncode != 0 or not again.stdout.splitlines()[-1:][0].startswith("ok:"):
            self.fail(0, "repair", "repair", f"check after repair: {again.stdout}{again.stderr}")

    def summary(self, seconds: float) -> dict:
        return {
            "trials": self.trials,
            "database": "postgresql" if self.raw_database_url else "sqlite",
            "seed": self.seed,
            "points": {p.name: self.tried[p.name] for p in self.points},
            "points_reached": {p.name: self.reached[p.name] for p in self.points},
            "kills": self.kills,
            "random_kills": dict(self.random_outcomes),
            "server_starts": self.server.starts,
            "documents_verified": len(self.manifest),
            "documents_acknowledged": sum(e.acknowledged for e in self.manifest.values()),
            "committed_unacknowledged": self.committed_unacknowledged,
            "downloads_verified": self.downloads_verified,
            **self.report,
            "failures": [dataclasses.asdict(f) for f in self.failures],
            "seconds": round(seconds, 1),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --- by hand ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--trials", type=int, default=int(os.environ.get("PORTAL_CRASH_TRIALS", 100))
    )
    parser.add_argument("--output", type=Path, help="where to write the JSON summary")
    parser.add_argument("--database-url", default=os.environ.get("PORTAL_TEST_DATABASE_URL"))
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--restart-every", type=int, default=3)
    parser.add_argument(
        "--points",
        type=lambda text: [name for name in text.split(",") if name],
        help=f"comma-separated points to cycle through (default: all of {', '.join(POINT_NAMES)})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the instance folder")
    args = parser.parse_args(argv)

    # A SIGTERM (or Ctrl-C) still stops the server: SystemExit runs the ``finally`` clauses.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    reset = None
    if args.database_url:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from conftest import _reset_postgresql as reset

    root = Path(tempfile.mkdtemp(prefix="portal-crash-"))
    try:
        harness = Harness(
            root,
            trials=args.trials,
            database_url=args.database_url,
            reset_database=reset,
            seed=args.seed,
            restart_every=args.restart_every,
            points=args.points,
            log=lambda message: print(message, flush=True),
        )
        report = harness.run()
    finally:
        if args.keep:
            print(f"instance kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    text_report = json.dumps(report, indent=2, ensure_ascii=False)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text_report + "\n")
    print(text_report)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
