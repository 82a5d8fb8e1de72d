"""The benchmark's smoke run (``bench/run.py --quick``): the script must not rot.

It builds a tiny corpus and instance with the command line, starts ``portal run`` and runs
every workload for a second or so. The figures of such a short run on a shared machine mean
little, so only what must hold whatever the load is checked: every workload produced a
result, nothing failed, and the listing kept answering while slow readers held downloads
open (W8) — a threaded worker that lingers on closing sockets in its event loop stalls there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.live

RUN = Path(__file__).resolve().parents[1] / "bench" / "run.py"
WORKLOADS = ("W1", "W1b", "W2", "W3", "W4", "W5", "W6", "W7", "W8")


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict:
    for tool in ("wrk", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install {tool})")
    folder = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--results", str(folder), "--workdir", str(folder)],
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = folder.glob("run-*-quick.json")
    return json.loads(result.read_text(encoding="utf-8"))


def test_every_workload_has_a_result(summary: dict) -> None:
    portal = summary["servers"]["portal"]
    assert set(WORKLOADS) <= set(portal)
    low, high = f"c{summary['profile']['low']}", f"c{summary['profile']['high']}"
    for key in ("W1", "W1b"):
        for connections in (low, high):
            assert portal[key][connections]["requests_per_s"] > 0, portal[key]
    assert portal["W2"]["requests_per_s"] > 0
    for clients in ("c1", "c4"):
        assert portal["W3"][clients]["downloads"] >= 1
        assert portal["W3"][clients]["errors"] == 0
    assert portal["W5"]["processes"] == 3  # gunicorn's master and two workers
    assert portal["W5"]["pss_mib"] > 0


def test_upload_zip_and_storm_succeed(summary: dict) -> None:
    portal = summary["servers"]["portal"]
    assert portal["W4"]["status"] == 200 and portal["W4"]["accepted"]
    assert portal["W6"]["status"] == 200 and portal["W6"]["content_length_announced"]
    storm = portal["W7"]
    assert storm["errors"] == 0, storm["samples"]
    assert storm["steps"]["unlock"]["requests"] == summary["profile"]["storm_participants"]
    assert storm["steps"]["download"]["requests"] > 0


def test_listing_answers_while_slow_readers_hold_downloads(summary: dict) -> None:
    w8 = summary["servers"]["portal"]["W8"]
    assert w8["slow_readers"]["statuses"] == {"200": summary["profile"]["slow_readers"]}
    assert w8["listing"]["requests"] > 0
    assert w8["listing"]["errors"] == 0


def test_targets_are_evaluated(summary: dict) -> None:
    names = {row["target"] for row in summary["targets"]}
    assert any(name.startswith("W7 unlock") for name in names)
    assert all(row["met"] in (True, False, None) for row in summary["targets"])
