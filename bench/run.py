#!/usr/bin/env python3
"""Benchmark `portal run` beside nginx and copyparty: same corpus, same machine, same run.

    python bench/run.py                 # the full suite (about ten minutes)
    python bench/run.py --quick         # a smoke run of a few seconds (what CI runs)

It builds a corpus, creates a fresh portal instance with the portal's own command line
(`init`, `set-password`, `create-facilitator`, `add-session`, `import`), serves the same
files with nginx (static, `sendfile on`) and copyparty (one account, read-only volume),
pins every server to CPU 0 and the load (wrk, curl, the Python clients below) to CPU 1, runs
workloads W1-W8 against each, prints one table and writes JSON to `bench/results/`.
`bench/README.md` describes the workloads and the targets.

Only the standard library drives the load, besides wrk and curl (Debian packages). A peer
that is not installed is reported as missing and the run goes on.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import datetime as dt
import gzip
import html
import http.client
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from soak import CSRF, cli_batch, percentile, source_revision  # noqa: E402

PORTAL = Path(sys.executable).parent / "portal"
COPYPARTY = BENCH / ".copyparty" / "bin" / "copyparty"
HOST = "127.0.0.1"
SERVER_CPU = 0
LOAD_CPU = 1
MiB = 1024 * 1024
START_TIMEOUT = 90.0
DOCUMENT_LINK = re.compile(r'href="(/documents/(\d+)/([^"?]+))"')


@dataclass(frozen=True)
class Profile:
    """How big the corpus is and how long each workload lasts."""

    name: str
    sessions: int
    documents: int
    small_sizes: tuple[int, int]
    medium_count: int
    medium_size: int
    big_size: int
    seconds: int
    storm_participants: int
    storm_window: float
    slow_readers: int
    slow_rate: int
    low: int = 32
    high: int = 128
    listing_during_slow: int = 8
    w3_rounds: int = 3


FULL = Profile(
    name="full",
    sessions=8,
    documents=25,
    small_sizes=(100_000, 3_000_000),
    medium_count=4,
    medium_size=20 * MiB,
    big_size=1024 * MiB,
    seconds=10,
    storm_participants=1000,
    storm_window=60.0,
    slow_readers=32,
    slow_rate=100_000,
)
QUICK = Profile(
    name="quick",
    sessions=2,
    documents=5,
    small_sizes=(100_000, 300_000),
    medium_count=2,
    medium_size=2 * MiB,
    big_size=16 * MiB,
    seconds=1,
    storm_participants=20,
    storm_window=2.0,
    slow_readers=4,
    slow_rate=100_000,
    low=8,
    high=16,
    listing_during_slow=4,
    w3_rounds=1,
)

SMALL_DOCUMENT = "support-01-01.pdf"
SMALL_SIZE = 200_000
BIG_DOCUMENT = "enregistrement-integral.pdf"


class SetupError(Exception):
    """The run could not be prepared."""


# --- the corpus ---------------------------------------------------------------------------------


@dataclass
class Corpus:
    root: Path
    slugs: list[str]
    medium: list[str]
    bytes: int = 0
    files: int = 0


def write_document(path: Path, size: int, block: bytes) -> None:
    """A PDF header (what the upload check looks at), then incompressible filler."""
    header = b"%PDF-1.4\n% " + path.name.encode() + b" " + secrets.token_hex(8).encode() + b"\n"
    with path.open("wb") as out:
        out.write(header)
        left = size - len(header)
        while left > 0:
            chunk = min(left, len(block))
            out.write(block[:chunk])
            left -= chunk


def build_corpus(root: Path, profile: Profile, rng: random.Random) -> Corpus:
    """Sessions of small documents, a few medium ones (general), one big one (last session)."""
    block = rng.randbytes(4 * MiB)
    corpus = Corpus(root=root / "corpus", slugs=[], medium=[])
    for number in range(1, profile.sessions + 1):
        slug = f"session-{number:02d}"
        folder = corpus.root / slug
        folder.mkdir(parents=True)
        corpus.slugs.append(slug)
        for doc in range(1, profile.documents + 1):
            name = f"support-{number:02d}-{doc:02d}.pdf"
            size = SMALL_SIZE if name == SMALL_DOCUMENT else rng.randint(*profile.small_sizes)
            write_document(folder / name, size, block)
            corpus.bytes += size
            corpus.files += 1
    general = corpus.root / "general"
    general.mkdir()
    for number in range(1, profile.medium_count + 1):
        name = f"grand-support-{number}.pdf"
        write_document(general / name, profile.medium_size, block)
        corpus.medium.append(name)
        corpus.bytes += profile.medium_size
        corpus.files += 1
    write_document(corpus.root / corpus.slugs[-1] / BIG_DOCUMENT, profile.big_size, block)
    corpus.bytes += profile.big_size
    corpus.files += 1
    return corpus


# --- processes and their memory -------------------------------------------------------------------


def pinned(argv: list[str], cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if PINNING else argv


def descendants(root_pid: int) -> list[int]:
    """The process and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, queue = [], [root_pid]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root_pid: int) -> int:
    """Sum of resident set sizes (bytes): shared pages count once per process."""
    total = 0
    for pid in descendants(root_pid):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def tree_pss(root_pid: int) -> int:
    """Sum of proportional set sizes (bytes): shared pages split between their users."""
    total = 0
    for pid in descendants(root_pid):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError):
            pass
    return total


@contextmanager
def peak_rss(root_pid: int, interval: float = 0.02) -> Iterator[dict[str, int]]:
    """Sample the tree's RSS while the block runs; the result holds idle and peak."""
    result = {"idle": tree_rss(root_pid), "peak": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result["peak"] = max(result["peak"], tree_rss(root_pid))
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result["peak"] = max(result["peak"], tree_rss(root_pid))


class Server:
    """A server process in a process group of its own, pinned to the server CPU."""

    def __init__(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd=None
    ) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own commands
            pinned(argv, SERVER_CPU),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, port: int, path: str, ready: Callable[[], bool] | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SetupError(
                    f"{self.name} exited with {self.process.returncode}: {self.tail()}"
                )
            try:
                connection = http.client.HTTPConnection(HOST, port, timeout=5)
                connection.request("GET", path, headers={"Connection": "close"})
                status = connection.getresponse().status
                connection.close()
                if status < 500 and (ready is None or ready()):
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.2)
        raise SetupError(f"{self.name} did not answer within {START_TIMEOUT:.0f} s: {self.tail()}")

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log_file.close()
        if self in RUNNING:
            RUNNING.remove(self)


RUNNING: list[Server] = []
PINNING = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


# --- a tiny browser -------------------------------------------------------------------------------


#: What every simulated browser sends besides its cookies (Accept-Encoding as Chromium
#: sends it: the portal then sends its pages gzipped, copyparty and nginx as they are).
BROWSER_HEADERS = {
    "Accept-Language": "fr",
    "User-Agent": "portal-bench",
    "Accept-Encoding": "gzip, deflate, br, zstd",
}


class Browser:
    """One visitor: a cookie jar and a keep-alive connection from a chosen source address."""

    def __init__(self, port: int, source: str | None = None, timeout: float = 30.0) -> None:
        self.port = port
        self.source = source
        self.timeout = timeout
        self.cookies: dict[str, str] = {}
        self.connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.connection is None:
            self.connection = http.client.HTTPConnection(
                HOST,
                self.port,
                timeout=self.timeout,
                source_address=(self.source, 0) if self.source else None,
            )
        return self.connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        headers = dict(BROWSER_HEADERS)
        if self.cookies:
            headers["Cookie"] = self.cookie_header()
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        for attempt in (1, 2):
            connection = self._connect()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed meanwhile: browsers retry once.
                self.close()
                if attempt == 2:
                    raise
        for raw in response.headers.get_all("Set-Cookie") or []:
            jar = SimpleCookie()
            jar.load(raw)
            for name, morsel in jar.items():
                self.cookies[name] = morsel.value
        if response.will_close:
            self.close()
        if response.headers.get("Content-Encoding") == "gzip":
            try:
                data = gzip.decompress(data)
            except (EOFError, zlib.error) as error:
                raise http.client.IncompleteRead(data) from error
        return response.status, response.headers, data


def form_token(body: bytes) -> str:
    match = CSRF.search(body.decode("utf-8", "replace"))
    if not match:
        raise SetupError("no CSRF token in the form")
    return match.group(1) or match.group(2)


def unlock(browser: Browser, password: str) -> None:
    status, _, body = browser.request("GET", "/access")
    token = form_token(body)
    status, _, _ = browser.request("POST", "/access", {"password": password, "csrf_token": token})
    if status != 303:
        raise SetupError(f"POST /access answered {status}")


def login(browser: Browser, email: str, password: str) -> None:
    _, _, body = browser.request("GET", "/login")
    form = {"email": email, "password": password, "csrf_token": form_token(body)}
    status, _, _ = browser.request("POST", "/login", form)
    if status != 303:
        raise SetupError(f"POST /login answered {status}")


def document_links(page: bytes) -> dict[str, str]:
    """Map each document's file name to its download path."""
    links = {}
    for path, _, name in DOCUMENT_LINK.findall(page.decode("utf-8", "replace")):
        links[html.unescape(name)] = html.unescape(path)
    return links


# --- load generators ------------------------------------------------------------------------------

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(url: str, connections: int, seconds: int, headers: list[str]) -> dict[str, Any]:
    """Run wrk; return requests/s, latency percentiles (ms) and errors."""
    argv = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s"]
    argv += ["--timeout", "5s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run(  # noqa: S603
        [*argv, url], capture_output=True, text=True, timeout=seconds + 60, check=False
    ).stdout
    result: dict[str, Any] = {"connections": connections, "seconds": seconds}

    def number(pattern: str) -> float | None:
        match = re.search(pattern, out)
        return float(match.group(1)) if match else None

    result["requests_per_s"] = number(r"Requests/sec:\s+([\d.]+)")
    result["requests"] = int(number(r"(\d+) requests in") or 0)
    for label, key in (("50", "p50_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        result[key] = round(float(match.group(1)) * UNITS[match.group(2)], 2) if match else None
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = {"non_2xx_3xx": int(number(r"Non-2xx or 3xx responses: (\d+)") or 0)}
    if socket_errors:
        kinds = ("connect", "read", "write", "timeout")
        for name, value in zip(kinds, socket_errors.groups(), strict=True):
            errors[name] = int(value)
    result["errors"] = sum(errors.values())
    result["error_kinds"] = {k: v for k, v in errors.items() if v}
    if result["requests_per_s"] is None:
        result["failed"] = out.strip()[-500:] or "wrk printed nothing"
    return result


def curl_get(url: str, headers: list[str], dump_headers: Path | None = None) -> dict[str, Any]:
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"]
    if dump_headers:
        argv += ["-D", str(dump_headers)]
    for header in headers:
        argv += ["-H", header]
    done = subprocess.run(  # noqa: S603
        [*argv, url], capture_output=True, text=True, timeout=600, check=False
    )
    try:
        code, size, seconds = done.stdout.split()
        return {"status": int(code), "bytes": int(size), "seconds": float(seconds)}
    except ValueError:
        return {"status": 0, "bytes": 0, "seconds": 0.0, "error": done.stderr.strip()[-200:]}


def throughput(url: str, headers: list[str], clients: int, seconds: float, size: int) -> dict:
    """Download ``url`` again and again with ``clients`` curls for ``seconds``: MB/s."""
    totals = {"bytes": 0, "downloads": 0, "errors": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        while True:
            got = curl_get(url, headers)
            with lock:
                totals["bytes"] += got["bytes"]
                if got["status"] == 200 and got["bytes"] == size:
                    totals["downloads"] += 1
                else:
                    totals["errors"] += 1
            if time.monotonic() >= deadline or got["status"] != 200:
                return

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return {
        "clients": clients,
        **totals,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(totals["bytes"] / elapsed / 1e6, 1),
    }


@dataclass
class Steps:
    """Latencies (ms) and errors per step of a scripted visit."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, step: str, ms: float, ok: bool, detail: str = "") -> None:
        with self.lock:
            self.latencies.setdefault(step, []).append(ms)
            if not ok:
                self.errors[step] += 1
                if len(self.samples) < 20:
                    self.samples.append(f"{step}: {detail}")

    def summary(self) -> dict[str, Any]:
        steps = {}
        for step, values in self.latencies.items():
            ordered = sorted(values)
            steps[step] = {
                "requests": len(values),
                "errors": self.errors[step],
                "p50_ms": round(percentile(ordered, 0.50) or 0, 1),
                "p99_ms": round(percentile(ordered, 0.99) or 0, 1),
                "max_ms": round(ordered[-1], 1) if ordered else None,
            }
        return {"steps": steps, "errors": sum(self.errors.values()), "samples": self.samples}


def storm(
    port: int, password: str, slugs: list[str], participants: int, window: float, seed: int
) -> dict[str, Any]:
    """W7: participants arrive evenly over ``window`` seconds, from 249 loopback addresses."""
    steps = Steps()
    late: list[float] = []

    def timed(step: str, call: Callable[[], tuple[int, Any, bytes]], expect: int):
        started = time.perf_counter()
        try:
            status, headers, body = call()
        except (OSError, http.client.HTTPException) as error:
            steps.record(step, (time.perf_counter() - started) * 1e3, False, repr(error))
            return None
        ok = status == expect
        length = headers.get("Content-Length")
        # A gzipped page's length is its compressed one (http.client checked it as it read).
        plain = headers.get("Content-Encoding") is None
        if ok and plain and length is not None and int(length) != len(body):
            ok = False
        ms = (time.perf_counter() - started) * 1e3
        steps.record(step, ms, ok, f"status {status}")
        return body if ok else None

    def visit(number: int, due: float) -> None:
        late.append(max(0.0, time.monotonic() - due))
        rng = random.Random(seed + number)  # noqa: S311 - choice of pages, not secrets
        browser = Browser(port, source=f"127.0.0.{2 + number % 249}")
        try:
            form = timed("access_form", lambda: browser.request("GET", "/access"), 200)
            if form is None:
                return
            fields = {"password": password, "csrf_token": form_token(form)}
            if timed("unlock", lambda: browser.request("POST", "/access", fields), 303) is None:
                return
            if timed("programme", lambda: browser.request("GET", "/"), 200) is None:
                return
            slug = rng.choice(slugs)
            page = timed("session", lambda: browser.request("GET", f"/sessions/{slug}"), 200)
            if page is None:
                return
            links = [p for name, p in document_links(page).items() if name != BIG_DOCUMENT]
            for path in rng.sample(links, min(2, len(links))):
                timed("download", lambda p=path: browser.request("GET", p), 200)
        except SetupError as error:
            steps.record("access_form", 0.0, False, str(error))
        finally:
            browser.close()

    started = time.monotonic()
    # One thread per participant: arrivals keep to the schedule however slow the answers.
    with concurrent.futures.ThreadPoolExecutor(max_workers=participants) as pool:
        for number in range(participants):
            due = started + number * window / participants
            time.sleep(max(0.0, due - time.monotonic()))
            pool.submit(visit, number, due)
    result = steps.summary()
    result.update(
        participants=participants,
        window_s=window,
        seconds=round(time.monotonic() - started, 1),
        addresses=min(participants, 249),
        worst_start_delay_ms=round(max(late, default=0) * 1e3, 1),
    )
    return result


class SlowReaders:
    """W8: clients that read a large file at a fixed, low rate, holding the server's sender."""

    def __init__(self, port: int, paths: list[str], headers: list[str], count: int, rate: int):
        self.stop = threading.Event()
        self.bytes = 0
        self.statuses: Counter = Counter()
        self.errors = 0
        self.lock = threading.Lock()
        extra = "".join(f"{h}\r\n" for h in headers)
        self.threads = [
            threading.Thread(
                target=self._read,
                args=(
                    port,
                    f"GET {paths[n % len(paths)]} HTTP/1.1\r\nHost: {HOST}\r\n{extra}"
                    "Connection: close\r\n\r\n",
                    rate,
                ),
                daemon=True,
            )
            for n in range(count)
        ]

    def __enter__(self) -> SlowReaders:
        for thread in self.threads:
            thread.start()
        time.sleep(1.0)  # every reader has its answer started before the measurement
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def _read(self, port: int, request: str, rate: int) -> None:
        try:
            with socket.socket() as sock:
                # A small receive buffer: the server's send blocks soon, as over a poor line.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                sock.settimeout(30)
                sock.connect((HOST, port))
                sock.sendall(request.encode())
                first = sock.recv(8192)
                status = first.split(b" ", 2)[1].decode() if first.startswith(b"HTTP/") else "?"
                with self.lock:
                    self.statuses[status] += 1
                got, started = len(first), time.monotonic()
                while not self.stop.is_set():
                    chunk = sock.recv(8192)
                    if not chunk:
                        break
                    got += len(chunk)
                    self.stop.wait(max(0.0, started + got / rate - time.monotonic()))
                with self.lock:
                    self.bytes += got
        except OSError:
            with self.lock:
                self.errors += 1

    def summary(self) -> dict[str, Any]:
        return {
            "readers": len(self.threads),
            "statuses": dict(self.statuses),
            "connection_errors": self.errors,
            "bytes_read": self.bytes,
        }


def dd_floor(folder: Path, size: int) -> dict[str, Any]:
    """Write ``size`` bytes with dd and fsync: the disk's floor for an upload."""
    target = folder / "dd.bin"
    started = time.monotonic()
    subprocess.run(  # noqa: S603
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={size // MiB}", "conv=fsync"],  # noqa: S607
        capture_output=True,
        timeout=600,
        check=True,
    )
    seconds = time.monotonic() - started
    target.unlink()
    return {"bytes": size, "seconds": round(seconds, 3)}


# --- the three servers -------------------------------------------------------------------------


@dataclass
class Target:
    """What the workloads need to know about one server: where things are, how to log in."""

    name: str
    port: int
    server: Server
    headers: list[str]
    listing: str
    programme: str
    small: str
    big: str
    medium: list[str]
    archive: str | None = None
    upload: Callable[[Path], dict[str, Any]] | None = None


class Portal:
    """A fresh portal instance built with the command line, then `portal run`."""

    def __init__(self, work: Path, corpus: Corpus, profile: Profile) -> None:
        self.work = work
        self.corpus = corpus
        self.profile = profile
        self.password = "#SN" + secrets.token_urlsafe(9)
        self.email = "bench@portail.invalid"
        self.account_password = secrets.token_urlsafe(12)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
        self.env["PORTAL_INSTANCE_DIR"] = str(work / "instance")
        self.env["PORTAL_STORAGE"] = str(work / "uploads")
        # The 1 GiB file plus its multipart envelope is a little more than the default 1024 MiB.
        self.env["PORTAL_MAX_UPLOAD_MB"] = str(max(1024, profile.big_size // MiB + 64))

    def create(self) -> float:
        started = time.monotonic()
        tasks: list[tuple[tuple[str, ...], str | None]] = [
            (("init",), None),
            (("set-password", "--password-stdin"), self.password + "\n"),
            (
                (
                    "create-facilitator",
                    self.email,
                    "--name",
                    "Bench",
                    "--admin",
                    "--password-stdin",
                ),
                self.account_password + "\n",
            ),
        ]
        day = dt.datetime(2020, 11, 21, 10, 0)
        for number, slug in enumerate(self.corpus.slugs):
            starts = day + dt.timedelta(hours=12 * number)
            tasks.append(
                (
                    (
                        "add-session",
                        f"Temps d'échange {number + 1}",
                        "--starts",
                        starts.isoformat(timespec="minutes"),
                        "--ends",
                        (starts + dt.timedelta(hours=2)).isoformat(timespec="minutes"),
                        "--slug",
                        slug,
                    ),
                    None,
                )
            )
        for slug in self.corpus.slugs:
            tasks.append(
                (
                    ("import", str(self.corpus.root / slug), "--session", slug, "--tag", "support"),
                    None,
                )
            )
        tasks.append((("import", str(self.corpus.root / "general"), "--tag", "général"), None))
        cli_batch(self.work, self.env, tasks)
        return time.monotonic() - started

    def start(self, extra_env: dict[str, str] | None = None, log: str = "portal.log") -> Server:
        env = {**self.env, **(extra_env or {})}
        self.port = free_port()
        argv = [str(PORTAL), "run", "--host", HOST, "--port", str(self.port), "--workers", "2"]
        server = Server("portal", argv, self.work / log, env=env, cwd=self.work)

        def booted() -> bool:
            return server.tail().count("Booting worker") >= 2 or (
                (self.work / log).read_text(errors="replace").count("Booting worker") >= 2
            )

        server.wait_ready(self.port, "/healthz", booted)
        return server

    def target(self, server: Server) -> Target:
        participant = Browser(self.port)
        unlock(participant, self.password)
        # What the participant's browser sends with every request: its cookies, and the same
        # user agent and languages as when it unlocked (runs 1-9 sent the cookie alone, so
        # Flask-Login's session protection signed the cookie again on every page).
        cookie = [f"Cookie: {participant.cookie_header()}"]
        cookie += [f"{name}: {value}" for name, value in BROWSER_HEADERS.items()]
        first, last = self.corpus.slugs[0], self.corpus.slugs[-1]
        _, _, page = participant.request("GET", f"/sessions/{first}")
        small = document_links(page)
        _, _, page = participant.request("GET", f"/sessions/{last}")
        big = document_links(page)
        _, _, page = participant.request("GET", "/")
        general = document_links(page)
        participant.close()
        missing = [n for n in (SMALL_DOCUMENT,) if n not in small] + (
            [BIG_DOCUMENT] if BIG_DOCUMENT not in big else []
        )
        missing += [n for n in self.corpus.medium if n not in general]
        if missing:
            raise SetupError(f"documents not listed by the portal: {missing}")
        return Target(
            name="portal",
            port=self.port,
            server=server,
            headers=cookie,
            listing=f"/sessions/{first}",
            programme="/",
            small=small[SMALL_DOCUMENT],
            big=big[BIG_DOCUMENT],
            medium=[general[n] for n in self.corpus.medium],
            archive=f"/sessions/{last}/archive.zip",
            upload=self.upload,
        )

    def upload(self, path: Path) -> dict[str, Any]:
        facilitator = Browser(self.port)
        login(facilitator, self.email, self.account_password)
        _, _, body = facilitator.request("GET", "/manage/upload")
        token = form_token(body)
        cookie = facilitator.cookie_header()
        facilitator.close()
        out = self.work / "upload-answer.html"
        argv = ["curl", "-s", "-o", str(out), "-w", "%{http_code} %{time_total}"]
        argv += ["-H", f"Cookie: {cookie}", "-F", f"csrf_token={token}", "-F", "session="]
        argv += [
            "-F",
            "tags=bench",
            "-F",
            f"files=@{path};type=application/pdf;filename=upload.pdf",
        ]
        done = subprocess.run(  # noqa: S603
            [*argv, f"http://{HOST}:{self.port}/manage/upload"],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        code, seconds = (done.stdout.split() + ["0", "0"])[:2]
        accepted = (
            'class="result accepted"' in out.read_text(errors="replace") if out.exists() else False
        )
        return {"status": int(code), "seconds": float(seconds), "accepted": accepted}


NGINX_STATIC = """
{user}worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen {host}:{port};
        root {root};
        autoindex on;
    }}
}}
"""

NGINX_PROXY = """
{user}worker_processes 1;
daemon off;
pid {work}/nginx-proxy.pid;
error_log {work}/nginx-proxy-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream portal {{
        server {host}:{upstream};
        keepalive 32;
    }}
    server {{
        listen {host}:{port};
        client_max_body_size 1100m;
        proxy_request_buffering off;
        location / {{
            proxy_pass http://portal;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
        location /protected/ {{
            internal;
            alias {storage}/;
            add_header X-Content-Type-Options nosniff always;
            add_header Content-Security-Policy "default-src 'none'; sandbox" always;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def start_nginx(work: Path, template: str, name: str, **values: Any) -> tuple[Server, int]:
    binary = nginx_binary()
    if binary is None:
        raise SetupError("nginx is not installed")
    port = free_port()
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / sub).mkdir(exist_ok=True)
    conf = work / f"{name}.conf"
    # As root, nginx's workers would otherwise drop to "nobody", who cannot read the
    # portal's private storage folder.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(template.format(user=user, work=work, host=HOST, port=port, **values))
    server = Server(name, [binary, "-p", str(work), "-c", str(conf)], work / f"{name}.log")
    server.wait_ready(port, "/")
    return server, port


def nginx_target(work: Path, corpus: Corpus) -> Target:
    server, port = start_nginx(work, NGINX_STATIC, "nginx", root=corpus.root)
    first, last = corpus.slugs[0], corpus.slugs[-1]
    return Target(
        name="nginx",
        port=port,
        server=server,
        headers=[],
        listing=f"/{first}/",
        programme="/",
        small=f"/{first}/{SMALL_DOCUMENT}",
        big=f"/{last}/{BIG_DOCUMENT}",
        medium=[f"/general/{quote(n)}" for n in corpus.medium],
    )


def copyparty_target(work: Path, corpus: Corpus) -> Target:
    if not COPYPARTY.exists():
        raise SetupError(f"copyparty is not installed in {COPYPARTY.parent.parent} (see README)")
    port = free_port()
    password = secrets.token_urlsafe(12)
    inbox = work / "copyparty-inbox"
    inbox.mkdir()
    argv = [
        str(COPYPARTY),
        "-i", HOST, "-p", str(port), "-q",
        "-a", f"bench:{password}",
        "-v", f"{corpus.root}:/:r,bench",
        "-v", f"{inbox}:/inbox:w,bench",
        "--hist", str(work / "copyparty-hist"),
        "--no-thumb",
    ]  # fmt: skip
    server = Server("copyparty", argv, work / "copyparty.log")
    server.wait_ready(port, "/")
    first, last = corpus.slugs[0], corpus.slugs[-1]
    headers = [f"PW: {password}"]

    def upload(path: Path) -> dict[str, Any]:
        argv = [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_total}",
            "-T",
            str(path),
        ]
        argv += ["-H", f"PW: {password}", f"http://{HOST}:{port}/inbox/upload.pdf"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)  # noqa: S603
        code, seconds = (done.stdout.split() + ["0", "0"])[:2]
        return {"status": int(code), "seconds": float(seconds), "accepted": code in ("200", "201")}

    return Target(
        name="copyparty",
        port=port,
        server=server,
        headers=headers,
        listing=f"/{first}/",
        programme="/",
        small=f"/{first}/{SMALL_DOCUMENT}",
        big=f"/{last}/{BIG_DOCUMENT}",
        medium=[f"/general/{quote(n)}" for n in corpus.medium],
        archive=f"/{last}/?zip",
        upload=upload,
    )


# --- the workloads --------------------------------------------------------------------------------


def check_answer(target: Target, path: str) -> str | None:
    """A load test on a page that answers a redirect or an error measures nothing: refuse it."""
    connection = http.client.HTTPConnection(HOST, target.port, timeout=30)
    headers = dict(h.split(": ", 1) for h in target.headers)
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return None if response.status == 200 else f"GET {path} answered {response.status}"


def load(target: Target, path: str, connections: int, seconds: int) -> dict[str, Any]:
    problem = check_answer(target, path)
    if problem:
        return {"failed": problem}
    return wrk(f"http://{HOST}:{target.port}{path}", connections, seconds, target.headers)


def w3(servers: dict[str, Target], profile: Profile) -> dict[str, dict[str, Any]]:
    """Large downloads in rounds, every server in turn each round, summed per server.

    A single 10-second window per server is at the mercy of whatever else the machine
    does at that moment; rounds spread each server's share over the whole measurement.
    """
    totals: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in servers}
    seconds = max(1.0, profile.seconds / profile.w3_rounds)
    for _ in range(profile.w3_rounds):
        for clients in (1, 4):
            for name, target in servers.items():
                url = f"http://{HOST}:{target.port}{target.big}"
                got = throughput(url, target.headers, clients, seconds, profile.big_size)
                total = totals[name].setdefault(
                    f"c{clients}",
                    {"clients": clients, "bytes": 0, "downloads": 0, "errors": 0, "seconds": 0.0,
                     "rounds_mb_per_s": []},
                )  # fmt: skip
                for key in ("bytes", "downloads", "errors", "seconds"):
                    total[key] += got[key]
                total["rounds_mb_per_s"].append(got["mb_per_s"])
    for per_server in totals.values():
        for total in per_server.values():
            total["seconds"] = round(total["seconds"], 3)
            total["mb_per_s"] = round(total["bytes"] / total["seconds"] / 1e6, 1)
    return totals


def w4(target: Target, big: Path) -> dict[str, Any]:
    if target.upload is None:
        return {"skipped": "no upload for this server"}
    with peak_rss(target.server.pid) as memory:
        result = target.upload(big)
    result["idle_rss_mb"] = round(memory["idle"] / 1e6, 1)
    result["peak_rss_mb"] = round(memory["peak"] / 1e6, 1)
    result["peak_above_idle_mb"] = round((memory["peak"] - memory["idle"]) / 1e6, 1)
    return result


def w5(target: Target) -> dict[str, Any]:
    return {
        "processes": len(descendants(target.server.pid)),
        "rss_mib": round(tree_rss(target.server.pid) / MiB, 1),
        "pss_mib": round(tree_pss(target.server.pid) / MiB, 1),
    }


def w6(target: Target, work: Path) -> dict[str, Any]:
    if target.archive is None:
        return {"skipped": "no archive for this server"}
    dump = work / f"{target.name}-zip-headers.txt"
    with peak_rss(target.server.pid) as memory:
        got = curl_get(f"http://{HOST}:{target.port}{target.archive}", target.headers, dump)
    headers = dump.read_text(errors="replace").lower() if dump.exists() else ""
    length = re.search(r"^content-length:\s*(\d+)", headers, re.M)
    got.update(
        content_length_announced=bool(length),
        mb_per_s=round(got["bytes"] / got["seconds"] / 1e6, 1) if got["seconds"] else None,
        peak_above_idle_mb=round((memory["peak"] - memory["idle"]) / 1e6, 1),
    )
    return got


def w8(target: Target, profile: Profile) -> dict[str, Any]:
    problem = check_answer(target, target.listing)
    if problem:
        return {"failed": problem}
    with SlowReaders(
        target.port, target.medium, target.headers, profile.slow_readers, profile.slow_rate
    ) as readers:
        listing = wrk(
            f"http://{HOST}:{target.port}{target.listing}",
            profile.listing_during_slow,
            profile.seconds,
            target.headers,
        )
    return {"listing": listing, "slow_readers": readers.summary()}


def measure(
    targets_by_name: dict[str, Target],
    profile: Profile,
    work: Path,
    big: Path,
    log: Callable,
    workloads: set[str],
) -> dict[str, dict[str, Any]]:
    """Every workload but W7, one workload at a time against every server in turn.

    All servers stay up (idle ones cost nothing), so that each comparison is made within
    a minute or so: on a shared machine the background load changes faster than a run.
    """
    results: dict[str, dict[str, Any]] = {name: {} for name in targets_by_name}
    static = {n: t for n, t in targets_by_name.items() if n != "portal-nginx-accel"}

    def wanted(key: str) -> bool:
        return not workloads or key in workloads

    def each(key: str, servers: dict[str, Target], work_on: Callable[[Target], Any]) -> None:
        if not wanted(key):
            return
        for name, target in servers.items():
            results[name][key] = work_on(target)
            log(f"{name}: {key} {brief(results[name][key])}")

    each("W5", static, w5)
    each(
        "W1",
        static,
        lambda t: {
            f"c{c}": load(t, t.listing, c, profile.seconds) for c in (profile.low, profile.high)
        },
    )
    each(
        "W1b",
        static,
        lambda t: {
            f"c{c}": load(t, t.programme, c, profile.seconds) for c in (profile.low, profile.high)
        },
    )
    if "portal" in static:
        each(
            "W0",
            {"portal": static["portal"]},
            lambda t: load(t, "/healthz", profile.low, profile.seconds),
        )
    each("W2", targets_by_name, lambda t: load(t, t.small, profile.low, profile.seconds))
    if wanted("W3"):
        for name, result in w3(targets_by_name, profile).items():
            results[name]["W3"] = result
            log(f"{name}: W3 {brief(result)}")
    each("W8", static, lambda t: w8(t, profile))
    each("W6", static, lambda t: w6(t, work))
    each("W4", static, lambda t: w4(t, big))
    return results


def brief(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) < 400 else text[:400] + "..."


# --- targets and the table ------------------------------------------------------------------------


def get(results: dict, *keys: str) -> Any:
    for key in keys:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of bench/README.md: measured value, reference, ratio, met or not."""
    portal = summary["servers"].get("portal", {})
    nginx = summary["servers"].get("nginx", {})
    copyparty = summary["servers"].get("copyparty", {})
    accel = summary["servers"].get("portal-nginx-accel", {})
    low, high = f"c{summary['profile']['low']}", f"c{summary['profile']['high']}"
    rows: list[dict[str, Any]] = []

    def add(name: str, measured: Any, rule: str, ok: bool | None, reference: Any = None,
            ratio: float | None = None) -> None:  # fmt: skip
        rows.append(
            {
                "target": name,
                "measured": measured,
                "reference": reference,
                "ratio": None if ratio is None else round(ratio, 2),
                "rule": rule,
                "met": ok,
            }
        )

    def relative(name: str, value: Any, reference: Any, factor: float, rule: str) -> None:
        if value is None or reference in (None, 0):
            add(name, value, rule, None, reference)
            return
        ratio = value / reference
        add(name, value, rule, ratio >= factor, reference, ratio)

    def at_most(name: str, value: Any, limit: float, rule: str) -> None:
        add(name, value, rule, None if value is None else value <= limit)

    for key, label in (("W1", "W1 listing"), ("W1b", "W1b programme")):
        relative(
            f"{label} {low} req/s",
            get(portal, key, low, "requests_per_s"),
            get(copyparty, key, low, "requests_per_s"),
            1.2,
            ">= 1.2 x copyparty",
        )
        at_most(f"{label} {low} p99 ms", get(portal, key, low, "p99_ms"), 60, "<= 60 ms")
        at_most(f"{label} {high} errors", get(portal, key, high, "errors"), 0, "0")
        at_most(f"{label} {high} p99 ms", get(portal, key, high, "p99_ms"), 250, "<= 250 ms")
    relative(
        "W2 small download req/s",
        get(portal, "W2", "requests_per_s"),
        get(copyparty, "W2", "requests_per_s"),
        0.5,
        ">= 0.5 x copyparty",
    )
    relative(
        "W2 behind nginx (X-Accel-Redirect) req/s",
        get(accel, "W2", "requests_per_s"),
        get(copyparty, "W2", "requests_per_s"),
        1.0,
        ">= 1 x copyparty",
    )
    for clients in ("c1", "c4"):
        relative(
            f"W3 large download {clients[1:]} client(s) MB/s",
            get(portal, "W3", clients, "mb_per_s"),
            get(nginx, "W3", clients, "mb_per_s"),
            0.9,
            ">= 0.9 x nginx",
        )
    floor = get(summary, "dd_fsync", "seconds")
    upload = get(portal, "W4", "seconds") if get(portal, "W4", "accepted") else None
    if upload is not None and floor:
        add("W4 upload s", upload, "<= 1.5 x dd fsync", upload / floor <= 1.5, floor,
            upload / floor)  # fmt: skip
    else:
        add("W4 upload s", upload, "<= 1.5 x dd fsync", None, floor)
    at_most("W4 peak RSS above idle MB", get(portal, "W4", "peak_above_idle_mb"), 64, "<= 64 MB")
    at_most("W5 idle PSS MiB (2 workers)", get(portal, "W5", "pss_mib"), 150, "<= 150 MiB")
    zip_rate = get(portal, "W6", "mb_per_s")
    add("W6 ZIP MB/s", zip_rate, ">= 500 MB/s", None if zip_rate is None else zip_rate >= 500)
    at_most("W6 peak RSS above idle MB", get(portal, "W6", "peak_above_idle_mb"), 32, "<= 32 MB")
    announced = get(portal, "W6", "content_length_announced")
    add("W6 Content-Length announced", announced, "yes", announced)
    at_most("W7 errors", get(portal, "W7", "errors"), 0, "0")
    at_most("W7 unlock p99 ms", get(portal, "W7", "steps", "unlock", "p99_ms"), 2000, "<= 2000 ms")
    relative(
        "W8 listing during slow readers req/s",
        get(portal, "W8", "listing", "requests_per_s"),
        get(portal, "W1", low, "requests_per_s"),
        0.5,
        ">= 0.5 x own W1",
    )
    at_most("W8 p99 ms", get(portal, "W8", "listing", "p99_ms"), 1000, "<= 1000 ms")
    w8_errors = get(portal, "W8", "listing", "errors")
    reader_errors = get(portal, "W8", "slow_readers", "connection_errors")
    at_most(
        "W8 errors (listing + readers)",
        None if w8_errors is None else w8_errors + (reader_errors or 0),
        0,
        "0",
    )
    return rows


SERVER_COLUMNS = ("portal", "nginx", "copyparty", "portal-nginx-accel")


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def table(summary: dict[str, Any]) -> str:
    servers = summary["servers"]
    low, high = f"c{summary['profile']['low']}", f"c{summary['profile']['high']}"
    rows: list[tuple[str, list[tuple[str, ...]]]] = [
        (f"W1 listing {low} req/s", [("W1", low, "requests_per_s")]),
        (f"W1 listing {low} p50 / p99 ms", [("W1", low, "p50_ms"), ("W1", low, "p99_ms")]),
        (f"W1 listing {low} errors", [("W1", low, "errors")]),
        (f"W1 listing {high} req/s", [("W1", high, "requests_per_s")]),
        (f"W1 listing {high} p50 / p99 ms", [("W1", high, "p50_ms"), ("W1", high, "p99_ms")]),
        (f"W1 listing {high} errors", [("W1", high, "errors")]),
        (f"W1b programme {low} req/s", [("W1b", low, "requests_per_s")]),
        (f"W1b programme {low} p50 / p99 ms", [("W1b", low, "p50_ms"), ("W1b", low, "p99_ms")]),
        (f"W1b programme {low} errors", [("W1b", low, "errors")]),
        (f"W1b programme {high} req/s", [("W1b", high, "requests_per_s")]),
        (
            f"W1b programme {high} p50 / p99 ms",
            [("W1b", high, "p50_ms"), ("W1b", high, "p99_ms")],
        ),
        (f"W1b programme {high} errors", [("W1b", high, "errors")]),
        (
            f"W0 /healthz {low} req/s (no page: the framework's own cost)",
            [("W0", "requests_per_s")],
        ),
        (f"W2 200 KB download {low} req/s", [("W2", "requests_per_s")]),
        ("W3 big download, 1 client MB/s", [("W3", "c1", "mb_per_s")]),
        ("W3 big download, 4 clients MB/s", [("W3", "c4", "mb_per_s")]),
        ("W4 upload s", [("W4", "seconds")]),
        ("W4 peak RSS above idle MB", [("W4", "peak_above_idle_mb")]),
        ("W5 idle RSS / PSS MiB", [("W5", "rss_mib"), ("W5", "pss_mib")]),
        ("W6 session ZIP MB/s", [("W6", "mb_per_s")]),
        ("W6 peak RSS above idle MB", [("W6", "peak_above_idle_mb")]),
        ("W6 Content-Length announced", [("W6", "content_length_announced")]),
        ("W8 listing with slow readers req/s", [("W8", "listing", "requests_per_s")]),
        (
            "W8 listing p99 ms / errors",
            [("W8", "listing", "p99_ms"), ("W8", "listing", "errors")],
        ),
    ]

    def cell(name: str, paths: list[tuple[str, ...]]) -> str:
        result = servers.get(name)
        if result is None:
            return "—"
        if "missing" in result:
            return "missing"
        values = []
        for path in paths:
            value = get(result, *path)
            if value is None and get(result, *path[:-1], "failed"):
                values.append("failed")
            else:
                values.append(fmt(value))
        return " / ".join(values)

    lines = [
        "| workload | " + " | ".join(SERVER_COLUMNS) + " |",
        "|---|" + "---:|" * len(SERVER_COLUMNS),
    ]
    for label, path in rows:
        lines.append(f"| {label} | " + " | ".join(cell(n, path) for n in SERVER_COLUMNS) + " |")
    floor = get(summary, "dd_fsync", "seconds")
    lines.append(f"| dd of the W4 file with fsync, s (the floor for W4) | {fmt(floor)} | | | |")
    storm_result = get(servers, "portal", "W7")
    lines.append("")
    if storm_result and "steps" in storm_result:
        lines.append(
            f"W7 storm: {storm_result['participants']} participants in "
            f"{storm_result['window_s']:.0f} s from {storm_result['addresses']} addresses, "
            f"{storm_result['errors']} errors, worst start delay of the client "
            f"{storm_result['worst_start_delay_ms']} ms"
        )
        lines.append("")
        lines.append("| W7 step | requests | errors | p50 ms | p99 ms | max ms |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for step, s in storm_result["steps"].items():
            lines.append(
                f"| {step} | {s['requests']} | {s['errors']} | {fmt(s['p50_ms'])} | "
                f"{fmt(s['p99_ms'])} | {fmt(s['max_ms'])} |"
            )
        lines.append("")
    lines.append("| target | rule | measured | reference | ratio | met |")
    lines.append("|---|---|---:|---:|---:|---|")
    for row in summary["targets"]:
        met = {True: "met", False: "**not met**", None: "n/a"}[row["met"]]
        lines.append(
            f"| {row['target']} | {row['rule']} | {fmt(row['measured'])} | "
            f"{fmt(row['reference'])} | {ratio(row['ratio'])} | {met} |"
        )
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument(
        "--peers",
        choices=("auto", "none"),
        default=None,
        help="run nginx and copyparty too (default: auto, none with --quick)",
    )
    parser.add_argument("--results", type=Path, default=BENCH / "results", help="JSON folder")
    parser.add_argument("--workdir", type=Path, default=None, help="where the corpus goes")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and instance")
    parser.add_argument("--only", default="", help="comma-separated servers to run")
    parser.add_argument("--workloads", default="", help="comma-separated workloads (W1,W3...)")
    return parser.parse_args(argv)


def machine() -> dict[str, Any]:
    load_average = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "pinning": {"servers": SERVER_CPU, "load": LOAD_CPU} if PINNING else None,
        "load_average": [round(x, 2) for x in load_average],
        "python": sys.version.split()[0],
        **source_revision(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    profile = QUICK if args.quick else FULL
    peers = args.peers or ("none" if args.quick else "auto")
    only = {name for name in args.only.split(",") if name}
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", flush=True)

    def wanted(name: str) -> bool:
        return (not only or name in only) and (name == "portal" or peers != "none")

    if PINNING:
        os.sched_setaffinity(0, {LOAD_CPU})
    if shutil.which("wrk") is None or shutil.which("curl") is None:
        raise SetupError("wrk and curl are needed (apt-get install wrk curl)")
    work = Path(tempfile.mkdtemp(prefix="portal-bench-", dir=args.workdir))
    # nginx's workers and copyparty read the corpus: let them through the temporary folder.
    work.chmod(0o755)
    summary: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "profile": asdict(profile),
        "environment": machine(),
        "servers": {},
    }
    try:
        rng = random.Random(20201121)  # noqa: S311 - filler bytes, reproducible sizes
        corpus = build_corpus(work, profile, rng)
        summary["corpus"] = {"files": corpus.files, "bytes": corpus.bytes}
        log(f"corpus: {corpus.files} files, {corpus.bytes / 1e6:,.0f} MB")
        big = corpus.root / corpus.slugs[-1] / BIG_DOCUMENT
        summary["dd_fsync"] = dd_floor(work, profile.big_size)
        log(f"dd with fsync: {summary['dd_fsync']}")

        portal = Portal(work, corpus, profile)
        summary["instance_seconds"] = round(portal.create(), 1)
        log(f"instance created with the command line in {summary['instance_seconds']} s")

        started_targets: dict[str, Target] = {}
        if wanted("portal"):
            server = portal.start()
            time.sleep(1.0)  # let the workers settle before the idle figure
            started_targets["portal"] = portal.target(server)
        for name, starter in (
            ("nginx", lambda: nginx_target(work, corpus)),
            ("copyparty", lambda: copyparty_target(work, corpus)),
            ("portal-nginx-accel", lambda: accel_target(work, portal)),
        ):
            if not wanted(name):
                continue
            try:
                started_targets[name] = starter()
            except SetupError as error:
                summary["servers"][name] = {"missing": str(error)}
                log(f"{name}: missing: {error}")
        workloads = {key for key in args.workloads.split(",") if key}
        measured = measure(started_targets, profile, work, big, log, workloads)
        summary["servers"].update(measured)
        if "portal" in started_targets and (not workloads or "W7" in workloads):
            storm_result = storm(
                started_targets["portal"].port,
                portal.password,
                corpus.slugs,
                profile.storm_participants,
                profile.storm_window,
                seed=7,
            )
            summary["servers"]["portal"]["W7"] = storm_result
            log(f"portal: W7 {brief(storm_result)}")
    finally:
        for server in list(RUNNING):
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    summary["targets"] = targets(summary)
    return summary


def accel_target(work: Path, instance: Portal) -> Target:
    """A second `portal run` on the same instance, behind nginx with X-Accel-Redirect."""
    if nginx_binary() is None:
        raise SetupError("nginx is not installed")
    portal = copy.copy(instance)
    server = portal.start(
        {"PORTAL_ACCEL_REDIRECT": "/protected/", "PORTAL_PROXY_FIX": "1"}, log="portal-accel.log"
    )
    direct = portal.target(server)
    proxy, port = start_nginx(
        work,
        NGINX_PROXY,
        "nginx-proxy",
        upstream=portal.port,
        storage=portal.env["PORTAL_STORAGE"],
    )
    return Target(**{**direct.__dict__, "name": "portal-nginx-accel", "port": port})


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        summary = run(args)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    suffix = "-quick" if args.quick else ""
    output = args.results / f"run-{stamp}{suffix}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print(table(summary))
    print()
    print(f"results written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
