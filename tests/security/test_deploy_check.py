"""Deployment self-check: ``portal check --deploy`` (issue 4; portal/deployment.py, portal/cli.py).

The real console script runs in a subprocess, on an instance and storage of its own under
``tmp_path`` (and on the test PostgreSQL database when ``PORTAL_TEST_DATABASE_URL`` is set;
another test may have dropped its schema, so every instance is made with ``portal init``
first). It must exit non-zero, naming the problem, when the instance would be unsafe behind an
HTTPS reverse proxy: a default, short or missing secret key, debug mode, cookies that would not
be ``Secure``, an instance or storage folder open to other users; and 0 when all is right.
It never prints a traceback, and never prints the secret key it judges.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PORTAL = Path(sys.executable).parent / "portal"
PROJECT_DIR = Path(__file__).resolve().parents[2]


@dataclass
class Site:
    """One installation in a temporary folder, as an operator would set it up."""

    root: Path

    @property
    def instance(self) -> Path:
        return self.root / "instance"

    @property
    def storage(self) -> Path:
        return self.root / "uploads"

    @property
    def key_file(self) -> Path:
        return self.instance / "secret_key"

    def env(self, **settings: str | None) -> dict[str, str]:
        """A production-like environment: one trusted proxy, generated key, no debug.

        ``settings`` override it; ``None`` removes a variable.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "FLASK_"))}
        env["PORTAL_INSTANCE_DIR"] = str(self.instance)
        env["PORTAL_STORAGE"] = str(self.storage)
        env["PORTAL_PROXY_FIX"] = "1"
        if os.environ.get("PORTAL_TEST_DATABASE_URL"):
            env["PORTAL_DATABASE_URL"] = os.environ["PORTAL_TEST_DATABASE_URL"]
        for name, value in settings.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def portal(self, *args: str, **settings: str | None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PORTAL), *args],
            input="",
            capture_output=True,
            text=True,
            cwd=self.root,
            env=self.env(**settings),
            timeout=120,
            umask=0o022,
        )

    def check(self, **settings: str | None) -> subprocess.CompletedProcess[str]:
        result = self.portal("check", "--deploy", **settings)
        assert_no_traceback(result)
        return result


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream, stream
        assert 'File "' not in stream, stream


def output(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stdout + result.stderr).lower()


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit non-zero, and say which setting is wrong."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    text = output(result)
    for word in words:
        assert word.lower() in text, (word, result.stdout, result.stderr)


def assert_passes(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert not [line for line in result.stdout.splitlines() if line.startswith("problem")]


def initialised(root: Path) -> Site:
    root.mkdir()
    installation = Site(root)
    init = installation.portal("init")
    assert_no_traceback(init)
    assert init.returncode == 0, (init.stdout, init.stderr)
    return installation


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """One ``portal init`` for the module; each test works on a copy of it."""
    return initialised(tmp_path_factory.mktemp("deploy") / "site")


@pytest.fixture
def site(template: Site, tmp_path: Path) -> Site:
    """An initialised instance with the modes an operator would set (700 and 750)."""
    installation = Site(tmp_path / "site")
    shutil.copytree(template.root, installation.root, symlinks=True)
    if os.environ.get("PORTAL_TEST_DATABASE_URL"):
        # Another test may have dropped the PostgreSQL schema since: migrate again.
        init = installation.portal("init")
        assert init.returncode == 0, (init.stdout, init.stderr)
    installation.instance.chmod(0o700)
    installation.storage.chmod(0o750)
    installation.key_file.chmod(0o600)
    return installation


# --- all right ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("instance_mode", "storage_mode"), [(0o700, 0o700), (0o700, 0o750)])
def test_a_well_configured_instance_passes(site, instance_mode, storage_mode):
    site.instance.chmod(instance_mode)
    site.storage.chmod(storage_mode)
    result = site.check()
    assert_passes(result)
    assert "deployment: ok" in result.stdout


def test_an_instance_fresh_from_portal_init_passes_with_only_the_proxy_setting(tmp_path):
    """What ``portal init`` creates (folders, generated key) is already private enough."""
    fresh = initialised(tmp_path / "fresh")
    assert_passes(fresh.check())


def test_a_long_random_key_from_the_environment_passes(site):
    assert_passes(site.check(PORTAL_SECRET_KEY=secrets.token_urlsafe(48)))


# --- the secret key -------------------------------------------------------------------------------

WEAK_KEYS = [
    "changeme",
    "CHANGEME",
    "secret",
    "short-random-Zq8v",  # not a known default, but far too short
    "0123456789abcdef0123456789abcde",  # 31 characters
]


@pytest.mark.parametrize("key", WEAK_KEYS)
def test_a_default_or_short_secret_key_is_refused(site, key):
    result = site.check(PORTAL_SECRET_KEY=key)
    assert_refused(result, "secret key")


def test_the_secret_key_is_never_printed(site):
    key = "my-own-secret-that-is-too-short"
    result = site.check(PORTAL_SECRET_KEY=key)
    assert_refused(result, "secret key")
    assert key not in result.stdout + result.stderr


def test_an_empty_generated_key_file_is_a_missing_key(site):
    site.key_file.write_text("")
    result = site.check()
    assert_refused(result, "secret key")


def test_a_key_file_readable_by_others_is_refused(site):
    site.key_file.chmod(0o644)
    result = site.check()
    assert_refused(result, "secret_key")


# --- debug and cookies ----------------------------------------------------------------------------


def test_debug_mode_is_refused(site):
    result = site.check(FLASK_DEBUG="1")
    assert_refused(result, "debug")


@pytest.mark.parametrize("proxy_fix", [None, "0"])
def test_cookies_that_would_not_be_secure_behind_https_are_refused(site, proxy_fix):
    result = site.check(PORTAL_PROXY_FIX=proxy_fix)
    assert_refused(result, "secure", "PORTAL_PROXY_FIX")


# --- folders open to other users ------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o755, 0o701])
def test_a_storage_folder_open_to_other_users_is_refused(site, mode):
    site.storage.chmod(mode)
    result = site.check()
    assert_refused(result, "storage")
    assert str(site.storage).lower() in output(result)


@pytest.mark.parametrize("mode", [0o755])
def test_an_instance_folder_open_to_other_users_is_refused(site, mode):
    site.instance.chmod(mode)
    result = site.check()
    assert_refused(result, "instance")


def test_a_missing_storage_folder_is_refused_without_creating_it(site):
    for child in sorted(site.storage.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    site.storage.rmdir()
    result = site.check()
    assert_refused(result, "storage")
    assert not site.storage.exists(), "the check created the storage folder"


# --- many problems at once ------------------------------------------------------------------------


def test_every_problem_is_reported_in_one_run(site):
    site.storage.chmod(0o755)
    site.instance.chmod(0o755)
    result = site.check(PORTAL_SECRET_KEY="changeme", FLASK_DEBUG="1", PORTAL_PROXY_FIX=None)
    assert_refused(result, "secret key", "debug", "secure", "storage", "instance")
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem:")]
    assert len(problems) >= 5, result.stdout


def test_the_check_leaves_the_instance_as_it_was(site):
    def listing() -> list[tuple[str, int]]:
        return sorted(
            (str(p.relative_to(site.root)), p.stat().st_mode)
            for p in site.root.rglob("*")
            if p.name != "ratelimit.sqlite" and not p.name.startswith("portal.db")
        )

    before = listing()
    site.instance.chmod(0o755)
    assert site.check().returncode != 0
    site.instance.chmod(0o700)
    assert listing() == before
    assert_passes(site.check())


# --- the deployment documentation -----------------------------------------------------------------


def test_the_deployment_documentation_uses_the_check():
    """Issue 4: "the deployment docs use it"."""
    docs = [PROJECT_DIR / "README.md", *sorted((PROJECT_DIR / "docs").glob("**/*.md"))]
    text = "\n".join(path.read_text(encoding="utf-8") for path in docs if path.is_file())
    assert "portal check --deploy" in text
