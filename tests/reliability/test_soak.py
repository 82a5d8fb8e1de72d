"""Soak, short variant: ``bench/soak.py`` against a real ``portal run`` (issue 4, "Soak").

50 participants browse and download while 5 facilitators upload — several of them
``compte-rendu.pdf`` to the same session at the same moment — for about half a minute, on
SQLite, or on the PostgreSQL database of ``PORTAL_TEST_DATABASE_URL`` (its public schema is
dropped first, as the rest of the suite does). The whole test takes about a minute; the
three-minute runs are done by hand and recorded under ``bench/results/`` (see
``bench/README.md``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# Starts a real server: selectable with ``-m live`` like the other live-server tests.
pytestmark = pytest.mark.live

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
LOAD_SECONDS = 30
# Set-up, load, verification and `portal check` normally take about a minute.
TIMEOUT = 170


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("soak")
    output = folder / "soak.json"
    command = [
        sys.executable,
        str(SOAK),
        "--duration",
        str(LOAD_SECONDS),
        "--participants",
        "50",
        "--facilitators",
        "5",
        "--workers",
        "2",
        # Every second upload of each facilitator is a same-name round, so a short run
        # still has several; the setup commands share one interpreter to save ~30 s.
        "--same-name-every",
        "2",
        "--setup",
        "batch",
        "--output",
        str(output),
    ]
    if os.environ.get("PORTAL_TEST_DATABASE_URL"):
        command += ["--database-url", os.environ["PORTAL_TEST_DATABASE_URL"]]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=folder
    )
    try:
        out, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the soak stop its server and remove its instance.
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
        pytest.fail(f"the soak did not finish within {TIMEOUT} s:\n{out[-6000:]}")
    assert output.exists(), f"exit {process.returncode}, no summary written:\n{out[-6000:]}"
    data = json.loads(output.read_text(encoding="utf-8"))
    data["_exit_status"] = process.returncode
    data["_output"] = out
    return data


def problems(summary: dict) -> str:
    lines = [f"{kind} x{p['count']}: {p['samples'][:5]}" for kind, p in summary["problems"].items()]
    return "\n".join(lines) + "\n" + summary["_output"][-4000:]


def test_soak_exits_zero_with_no_problem(summary):
    assert summary["_exit_status"] == 0, problems(summary)
    assert summary["ok"] is True
    assert summary["problems"] == {}


def test_no_server_error_lock_or_connection_error(summary):
    requests = summary["requests"]
    assert requests["server_errors"] == 0, problems(summary)
    assert requests["database_locked"] == 0, problems(summary)
    assert requests["connection_errors"] == 0, problems(summary)
    assert requests["unexpected_statuses"] == 0, problems(summary)
    assert summary["server"]["error_lines"] == []
    assert summary["server"]["database_locked_lines"] == []


def test_the_load_really_ran(summary):
    assert summary["timing"]["load_s"] >= LOAD_SECONDS
    steps = summary["steps"]
    for step in ("access", "programme", "session", "download", "login", "upload"):
        assert steps[step]["requests"] > 0, step
    assert summary["uploads"]["acknowledged"] > 0
    assert summary["downloads"]["verified"] > 0
    # Several facilitators sent compte-rendu.pdf at the same moment at least once.
    assert summary["uploads"]["same_name_rounds"] >= 1
    assert summary["uploads"]["same_name_simultaneous"] >= 2


def test_no_upload_lost_or_duplicated(summary):
    uploads = summary["uploads"]
    assert uploads["lost"] == 0, problems(summary)
    assert uploads["duplicated"] == 0, problems(summary)
    assert uploads["unknown_rows"] == 0
    assert uploads["refused"] == 0
    # Every acknowledged upload (plus the 5 imported seeds) is in the database exactly once.
    assert uploads["rows_in_database"] == uploads["acknowledged"] + 5
    assert uploads["not_listed_once_on_manage"] == 0


def test_every_download_was_byte_identical(summary):
    assert summary["downloads"]["mismatches"] == 0, problems(summary)
    assert summary["downloads"]["zip_invalid"] == 0, problems(summary)
    uploads = summary["uploads"]
    assert uploads["final_downloads"] == uploads["acknowledged"] + 5
    assert uploads["final_download_mismatches"] == 0
    assert uploads["final_download_failures"] == 0


def test_portal_check_is_clean_afterwards(summary):
    assert summary["check"]["exit_status"] == 0, summary["check"]["output"]
