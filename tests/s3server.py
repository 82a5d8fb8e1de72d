"""A real S3 protocol server on loopback for the tests: moto's standalone ``moto_server``.

It runs as its own process (one per pytest worker), so the portal talks to it over HTTP
exactly as it would to MinIO or AWS. Tests that need it are skipped, with the reason,
where it cannot start.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from liveserver import answers

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "portal-test",
    "AWS_SECRET_ACCESS_KEY": "portal-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Never read the developer's own ~/.aws files.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session", name="s3_endpoint")
def s3_endpoint_fixture() -> Iterator[str]:
    """Start ``moto_server`` on a free loopback port; yield its URL, AWS_* variables set."""
    pytest.importorskip("boto3", reason='boto3 is not installed (pip install ".[test]")')
    if not MOTO_SERVER.exists():
        pytest.skip(f'no moto_server next to {sys.executable} (pip install "moto[server]")')
    port = _free_port()
    log = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"moto_server did not start on 127.0.0.1:{port}")
            time.sleep(0.1)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in CREDENTIALS.items():
                patch.setenv(name, value)
            yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture(name="s3_bucket")
def s3_bucket_fixture(s3_endpoint: str) -> str:
    """A bucket name no other test uses (created by the storage, as `portal init` does)."""
    return f"portal-{secrets.token_hex(6)}"


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    """A plain boto3 client, to look at the bucket behind the portal's back."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))


def closed_port_url() -> str:
    """The address of a port nothing listens on: an object store that is down."""
    return f"http://127.0.0.1:{_free_port()}"
