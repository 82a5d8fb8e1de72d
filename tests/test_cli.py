"""The ``portal`` console script, run as a real process (SPEC section 3).

Every command runs in a subprocess with its own instance folder, storage and (on SQLite)
database, from a working folder without a ``.env``. The state before and after a command
is prepared and read in-process, on the same instance.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import PDF_BYTES, TEST_DATABASE_URL, _reset_postgresql, login, unlock
from flask import Flask

from portal import create_app
from portal.cli import initialise
from portal.extensions import db
from portal.models import Document, Event, Facilitator, Meeting, Tag
from portal.services.accounts import create_facilitator, set_shared_password
from portal.services.documents import add_document
from portal.services.event import get_event, save_meeting, set_access_window

PORTAL = Path(sys.executable).parent / "portal"
UNREACHABLE_DATABASE = "postgresql://nobody@127.0.0.1:1/none"
UTC = dt.UTC


@dataclass
class Instance:
    """One portal installation in a temporary folder, driven through the console script."""

    root: Path

    @property
    def instance_dir(self) -> Path:
        return self.root / "instance"

    @property
    def storage_dir(self) -> Path:
        return self.root / "uploads"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
        env["PORTAL_INSTANCE_DIR"] = str(self.instance_dir)
        env["PORTAL_STORAGE"] = str(self.storage_dir)
        if os.environ.get("PORTAL_TEST_DATABASE_URL"):
            env["PORTAL_DATABASE_URL"] = os.environ["PORTAL_TEST_DATABASE_URL"]
        env.update(extra)
        return env

    def portal(
        self, *args: str, stdin: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PORTAL), *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            cwd=self.root,
            env=self.env(**env),
            timeout=120,
        )

    @contextmanager
    def app(self) -> Iterator[Flask]:
        """The same instance, in-process, inside an application context."""
        config = {
            "INSTANCE_DIR": str(self.instance_dir),
            "STORAGE": str(self.storage_dir),
            "PASSWORD_HASH": {"time_cost": 1, "memory_cost": 8, "parallelism": 1},
        }
        if TEST_DATABASE_URL:
            config["SQLALCHEMY_DATABASE_URI"] = TEST_DATABASE_URL
        application = create_app(config)
        try:
            with application.app_context():
                yield application
                db.session.remove()
        finally:
            with application.app_context():
                db.engine.dispose()

    def count(self, model: type) -> int:
        with self.app():
            return db.session.scalar(db.select(db.func.count()).select_from(model))


@pytest.fixture
def fresh(tmp_path: Path) -> Instance:
    """An instance that does not exist yet."""
    if TEST_DATABASE_URL:
        _reset_postgresql(TEST_DATABASE_URL)
    root = tmp_path / "site"
    root.mkdir()
    return Instance(root)


@pytest.fixture
def ready(fresh: Instance) -> Instance:
    """An initialised instance: folders and schema, nothing else."""
    with fresh.app():
        initialise()
    return fresh


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout


def assert_refused(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 1 with one line on standard error, no traceback; return that line."""
    assert_no_traceback(result)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_usage_error(result: subprocess.CompletedProcess[str]) -> None:
    """Exit 2 with the usage text, no traceback."""
    assert_no_traceback(result)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Usage: portal" in result.stderr


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert_no_traceback(result)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)


def add_pdf(instance: Instance, name: str = "support.pdf", content: bytes = PDF_BYTES) -> None:
    with instance.app():
        add_document(io.BytesIO(content), name)


# --- init --------------------------------------------------------------------------------------


def test_init_creates_instance_storage_and_schema(fresh):
    assert not fresh.instance_dir.exists()
    assert not fresh.storage_dir.exists()

    result = fresh.portal("init")

    assert_ok(result)
    assert fresh.instance_dir.is_dir()
    assert fresh.storage_dir.is_dir()
    assert (fresh.storage_dir / ".incoming").is_dir()
    secret = fresh.instance_dir / "secret_key"
    assert secret.is_file()
    assert secret.stat().st_mode & 0o777 == 0o600
    with fresh.app():
        tables = set(db.inspect(db.engine).get_table_names())
        assert {"events", "meetings", "documents", "tags", "facilitators"} <= tables
        assert "alembic_version" in tables


def test_init_twice_is_harmless_and_keeps_the_data(ready):
    with ready.app():
        set_shared_password("#SN2020egm")
    add_pdf(ready)
    secret_before = (ready.instance_dir / "secret_key").read_text()

    assert_ok(ready.portal("init"))
    assert_ok(ready.portal("init"))

    assert (ready.instance_dir / "secret_key").read_text() == secret_before
    assert ready.count(Event) == 1
    assert ready.count(Document) == 1
    with ready.app():
        assert get_event().shared_password_hash


# --- set-password ------------------------------------------------------------------------------


def test_set_password_from_stdin_opens_the_gate_and_signs_participants_out(ready):
    with ready.app():
        set_shared_password("old-password")
        version_before = get_event().password_version

    result = ready.portal("set-password", "--password-stdin", stdin="#SN2020egm\n")

    assert_ok(result)
    with ready.app() as application:
        assert get_event().password_version > version_before
        client = application.test_client()
        assert unlock(client, "old-password").status_code == 401
        assert unlock(client, "#SN2020egm").status_code == 303


def test_set_password_too_short_is_refused_in_one_line(ready):
    result = ready.portal("set-password", "--password-stdin", stdin="short\n")
    line = assert_refused(result)
    assert "8" in line
    with ready.app():
        assert get_event().shared_password_hash is None


# --- create-facilitator ------------------------------------------------------------------------


def test_create_facilitator_with_name_and_admin_flag_can_log_in(ready):
    result = ready.portal(
        "create-facilitator",
        "Coord@Example.org",
        "--name",
        "Coordination",
        "--admin",
        "--password-stdin",
        stdin="a-long-password\n",
    )
    assert_ok(result)
    with ready.app() as application:
        (account,) = db.session.scalars(db.select(Facilitator)).all()
        assert account.email == "coord@example.org"
        assert account.name == "Coordination"
        assert account.is_admin
        assert account.password_hash != "a-long-password"
        client = application.test_client()
        assert login(client, "coord@example.org", "a-long-password").status_code == 303


def test_create_facilitator_without_admin_flag_is_not_admin(ready):
    result = ready.portal(
        "create-facilitator", "anim@example.org", "--password-stdin", stdin="a-long-password\n"
    )
    assert_ok(result)
    with ready.app():
        (account,) = db.session.scalars(db.select(Facilitator)).all()
        assert not account.is_admin


def test_create_facilitator_duplicate_email_is_refused_in_one_line(ready):
    with ready.app():
        create_facilitator("anim@example.org", "first-password")

    result = ready.portal(
        "create-facilitator", "ANIM@example.org", "--password-stdin", stdin="other-password\n"
    )

    line = assert_refused(result)
    assert "exist" in line
    assert ready.count(Facilitator) == 1


def test_create_facilitator_invalid_email_is_refused(ready):
    result = ready.portal(
        "create-facilitator", "not-an-address", "--password-stdin", stdin="a-long-password\n"
    )
    assert_refused(result)
    assert ready.count(Facilitator) == 0


# --- add-session -------------------------------------------------------------------------------


def test_add_session_prints_its_slug_and_reads_a_naive_time_in_paris(ready):
    result = ready.portal(
        "add-session",
        "Accès aux droits",
        "--starts",
        "2020-11-21T10:00",
        "--ends",
        "2020-11-21T12:00",
    )
    assert_ok(result)
    assert result.stdout.strip() == "acces-aux-droits"
    with ready.app():
        meeting = db.session.scalars(db.select(Meeting)).one()
        assert meeting.title == "Accès aux droits"
        # Paris is UTC+1 in November.
        assert meeting.starts_at == dt.datetime(2020, 11, 21, 9, 0, tzinfo=UTC)
        assert meeting.ends_at == dt.datetime(2020, 11, 21, 11, 0, tzinfo=UTC)


def test_add_session_keeps_an_explicit_offset_slug_and_description(ready):
    result = ready.portal(
        "add-session",
        "Bilan 2020",
        "--starts",
        "2020-11-24T18:00+00:00",
        "--ends",
        "2020-11-24T20:00+00:00",
        "--slug",
        "bilan",
        "--description",
        "Le groupe de travail présente son année.",
    )
    assert_ok(result)
    assert result.stdout.strip() == "bilan"
    with ready.app():
        meeting = db.session.scalars(db.select(Meeting)).one()
        assert meeting.slug == "bilan"
        assert meeting.description == "Le groupe de travail présente son année."
        assert meeting.starts_at == dt.datetime(2020, 11, 24, 18, 0, tzinfo=UTC)


def test_add_session_bad_date_is_a_usage_error(ready):
    result = ready.portal(
        "add-session", "Titre", "--starts", "21/11/2020 10h", "--ends", "2020-11-21T12:00"
    )
    assert_usage_error(result)
    assert "--starts" in result.stderr
    assert ready.count(Meeting) == 0


def test_add_session_ending_before_it_starts_is_refused(ready):
    result = ready.portal(
        "add-session", "Titre", "--starts", "2020-11-21T12:00", "--ends", "2020-11-21T10:00"
    )
    assert_refused(result)
    assert ready.count(Meeting) == 0


def test_add_session_with_a_taken_slug_is_refused(ready):
    with ready.app():
        start = dt.datetime(2020, 11, 21, 9, tzinfo=UTC)
        save_meeting(
            None, title="Existing", starts_at=start, ends_at=start + dt.timedelta(hours=1), slug="s"
        )
    result = ready.portal(
        "add-session",
        "Other",
        "--starts",
        "2020-11-22T10:00",
        "--ends",
        "2020-11-22T11:00",
        "--slug",
        "s",
    )
    assert_refused(result)
    assert ready.count(Meeting) == 1


# --- set-window --------------------------------------------------------------------------------


def test_set_window_sets_both_limits_reading_naive_times_in_paris(ready):
    result = ready.portal(
        "set-window", "--opens", "2020-11-20T08:00", "--closes", "2020-11-28T00:00+01:00"
    )
    assert_ok(result)
    with ready.app():
        event = get_event()
        assert event.access_opens == dt.datetime(2020, 11, 20, 7, 0, tzinfo=UTC)
        assert event.access_closes == dt.datetime(2020, 11, 27, 23, 0, tzinfo=UTC)


def test_set_window_closes_only_closes_the_gate(ready):
    with ready.app():
        set_shared_password("#SN2020egm")
    assert_ok(ready.portal("set-window", "--closes", "2020-11-28T00:00"))
    with ready.app() as application:
        event = get_event()
        assert event.access_opens is None
        assert event.access_closes == dt.datetime(2020, 11, 27, 23, 0, tzinfo=UTC)
        client = application.test_client()
        assert client.get("/access").status_code == 403


def test_set_window_clear_removes_both_limits(ready):
    with ready.app():
        set_access_window(
            dt.datetime(2020, 11, 20, tzinfo=UTC), dt.datetime(2020, 11, 28, tzinfo=UTC)
        )
    assert_ok(ready.portal("set-window", "--clear"))
    with ready.app():
        event = get_event()
        assert event.access_opens is None
        assert event.access_closes is None


def test_set_window_without_any_option_is_a_usage_error(ready):
    assert_usage_error(ready.portal("set-window"))


def test_set_window_bad_date_is_a_usage_error(ready):
    result = ready.portal("set-window", "--opens", "tomorrow")
    assert_usage_error(result)
    with ready.app():
        assert get_event().access_opens is None


def test_set_window_closing_before_opening_is_refused(ready):
    result = ready.portal(
        "set-window", "--opens", "2020-11-28T00:00", "--closes", "2020-11-20T00:00"
    )
    assert_refused(result)
    with ready.app():
        assert get_event().access_opens is None


# --- import ------------------------------------------------------------------------------------


def make_meeting_in(instance: Instance, slug: str) -> None:
    with instance.app():
        start = dt.datetime(2020, 11, 21, 9, tzinfo=UTC)
        save_meeting(
            None, title="Temps 1", starts_at=start, ends_at=start + dt.timedelta(hours=2), slug=slug
        )


def stored_keys(instance: Instance) -> list[str]:
    return sorted(p.name for p in instance.storage_dir.iterdir() if p.is_file())


def test_import_reports_every_file_and_exits_1_when_any_is_rejected(ready, tmp_path):
    make_meeting_in(ready, "temps-1")
    folder = tmp_path / "supports"
    folder.mkdir()
    (folder / "support.pdf").write_bytes(PDF_BYTES)
    (folder / "compte-rendu.txt").write_text("Synthèse des échanges\n")
    (folder / "page.html").write_text("<html><script>alert(1)</script></html>")
    (folder / "photo.png").write_text("<html>not a picture</html>")
    (folder / "vide.pdf").write_bytes(b"")

    result = ready.portal(
        "import", str(folder), "--session", "temps-1", "--tag", "Support", "--tag", "Bilan 2020"
    )

    assert_no_traceback(result)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5, lines
    by_file = {}
    for line in lines:
        verdict, _, rest = line.partition(": ")
        name, _, reason = rest.partition(": ")
        by_file[name] = (verdict, reason)
    assert by_file["support.pdf"][0] == "imported"
    assert by_file["compte-rendu.txt"][0] == "imported"
    for rejected in ("page.html", "photo.png", "vide.pdf"):
        verdict, reason = by_file[rejected]
        assert verdict == "rejected"
        assert reason.strip(), f"no reason given for {rejected}"
    # The reasons differ: type refused, content that lies, empty file.
    assert len({by_file[n][1] for n in ("page.html", "photo.png", "vide.pdf")}) == 3

    with ready.app():
        documents = db.session.scalars(db.select(Document).order_by(Document.original_name)).all()
        assert [d.original_name for d in documents] == ["compte-rendu.txt", "support.pdf"]
        for document in documents:
            assert document.meeting.slug == "temps-1"
            assert sorted(t.name for t in document.tags) == ["Bilan 2020", "Support"]
        keys = sorted(d.storage_key for d in documents)
    assert stored_keys(ready) == keys
    assert list((ready.storage_dir / ".incoming").iterdir()) == []


def test_import_is_not_recursive_and_does_not_follow_symlinks(ready, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.pdf").write_bytes(PDF_BYTES)
    folder = tmp_path / "supports"
    (folder / "sous-dossier").mkdir(parents=True)
    (folder / "sous-dossier" / "inner.pdf").write_bytes(PDF_BYTES)
    (folder / "lien.pdf").symlink_to(outside / "secret.pdf")
    (folder / "lien-dossier").symlink_to(outside)
    (folder / "programme.pdf").write_bytes(PDF_BYTES)

    result = ready.portal("import", str(folder))

    assert_ok(result)
    assert result.stdout.strip().splitlines() == ["imported: programme.pdf"]
    with ready.app():
        names = db.session.scalars(db.select(Document.original_name)).all()
        assert names == ["programme.pdf"]
        assert db.session.scalar(db.select(db.func.count()).select_from(Tag)) == 0


def test_import_of_a_missing_folder_is_a_usage_error(ready, tmp_path):
    result = ready.portal("import", str(tmp_path / "does-not-exist"))
    assert_usage_error(result)
    assert ready.count(Document) == 0


def test_import_into_an_unknown_session_is_refused_and_imports_nothing(ready, tmp_path):
    folder = tmp_path / "supports"
    folder.mkdir()
    (folder / "support.pdf").write_bytes(PDF_BYTES)
    result = ready.portal("import", str(folder), "--session", "no-such-session")
    line = assert_refused(result)
    assert "no-such-session" in line
    assert ready.count(Document) == 0
    assert stored_keys(ready) == []


# --- demo --------------------------------------------------------------------------------------


def test_demo_fills_an_empty_instance_with_the_november_2020_programme(fresh):
    result = fresh.portal("demo")
    assert_ok(result)
    paris = ZoneInfo("Europe/Paris")
    with fresh.app():
        meetings = db.session.scalars(db.select(Meeting).order_by(Meeting.starts_at)).all()
        assert len(meetings) == 8
        days = [m.starts_at.astimezone(paris).date() for m in meetings]
        assert days[0] == dt.date(2020, 11, 21)
        assert days[-1] == dt.date(2020, 11, 27)
        assert {d.day for d in days} == set(range(21, 28))
        assert all(m.ends_at > m.starts_at for m in meetings)
        documents = db.session.scalars(db.select(Document)).all()
        assert len(documents) >= 8
        assert all(any(d.meeting_id == m.id for d in documents) for m in meetings)
        assert db.session.scalar(db.select(db.func.count()).select_from(Tag)) > 0
        assert all(d.tags for d in documents)
        for document in documents:
            path = fresh.storage_dir / document.storage_key
            assert path.stat().st_size == document.size

    check = fresh.portal("check")
    assert_ok(check)


def test_second_demo_is_refused_and_changes_nothing(fresh):
    assert_ok(fresh.portal("demo"))
    meetings, documents = fresh.count(Meeting), fresh.count(Document)
    files = stored_keys(fresh)

    assert_refused(fresh.portal("demo"))

    assert fresh.count(Meeting) == meetings
    assert fresh.count(Document) == documents
    assert stored_keys(fresh) == files


def test_demo_refuses_an_instance_that_already_has_documents(ready):
    add_pdf(ready, "document-general.pdf")
    assert_refused(ready.portal("demo"))
    assert ready.count(Meeting) == 0
    assert ready.count(Document) == 1


# --- check -------------------------------------------------------------------------------------


@pytest.fixture
def with_document(ready: Instance) -> tuple[Instance, Path]:
    """An instance with one document, ``programme-semaine.pdf``; returns its stored file."""
    add_pdf(ready, "programme-semaine.pdf", PDF_BYTES * 4)
    (key,) = stored_keys(ready)
    return ready, ready.storage_dir / key


def test_check_healthy_instance_exits_0(with_document):
    instance, _ = with_document
    assert_ok(instance.portal("check"))


def damage_missing(path: Path) -> None:
    path.unlink()


def damage_truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-5])


def damage_flipped_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[20] ^= 0x80
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [damage_missing, damage_truncated, damage_flipped_byte])
def test_check_exits_1_and_names_the_damaged_document(with_document, damage):
    instance, path = with_document
    damage(path)
    result = instance.portal("check")
    assert_no_traceback(result)
    assert result.returncode == 1, result.stdout
    assert "programme-semaine.pdf" in result.stdout


def test_check_exits_1_on_an_orphan_file(with_document):
    instance, _ = with_document
    orphan = instance.storage_dir / ("ab" * 16)
    orphan.write_bytes(b"left behind")
    result = instance.portal("check")
    assert_no_traceback(result)
    assert result.returncode == 1
    assert "ab" * 16 in result.stdout
    assert orphan.exists(), "check without --repair moves nothing"


def test_check_exits_1_on_an_old_temporary_file(with_document):
    instance, _ = with_document
    old = instance.storage_dir / ".incoming" / "abandoned.part"
    old.write_bytes(b"partial")
    os.utime(old, (0, 0))
    result = instance.portal("check")
    assert result.returncode == 1
    assert "abandoned.part" in result.stdout


def test_check_repair_quarantines_orphans_and_never_touches_a_documents_file(with_document):
    instance, document_file = with_document
    damage_truncated(document_file)  # damaged, but still the document's file
    damaged_bytes = document_file.read_bytes()
    orphan = instance.storage_dir / ("cd" * 16)
    orphan.write_bytes(b"left behind")

    result = instance.portal("check", "--repair")

    assert_no_traceback(result)
    assert result.returncode == 1, "the damaged document is still wrong after --repair"
    assert not orphan.exists()
    (moved,) = (instance.storage_dir / ".quarantine").iterdir()
    assert moved.read_bytes() == b"left behind"
    assert document_file.read_bytes() == damaged_bytes
    assert "programme-semaine.pdf" in result.stdout


def test_check_after_repairing_orphans_is_healthy(with_document):
    instance, document_file = with_document
    content = document_file.read_bytes()
    (instance.storage_dir / ("ef" * 16)).write_bytes(b"left behind")

    repaired = instance.portal("check", "--repair")
    assert_ok(repaired)
    assert_ok(instance.portal("check"))
    assert document_file.read_bytes() == content
    assert len(list((instance.storage_dir / ".quarantine").iterdir())) == 1


def test_check_unknown_option_is_a_usage_error(ready):
    assert_usage_error(ready.portal("check", "--fix-everything"))


def test_check_with_a_missing_storage_folder_is_refused(ready):
    (ready.storage_dir / ".incoming").rmdir()
    ready.storage_dir.rmdir()
    line = assert_refused(ready.portal("check"))
    assert "storage" in line
    assert not ready.storage_dir.exists()


# --- foreseeable problems never show a traceback -----------------------------------------------


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        pytest.param(["init"], "", id="init"),
        pytest.param(["check"], "", id="check"),
        pytest.param(["demo"], "", id="demo"),
        pytest.param(
            ["create-facilitator", "a@example.org", "--password-stdin"],
            "a-long-password\n",
            id="create-facilitator",
        ),
        pytest.param(
            ["add-session", "T", "--starts", "2020-11-21T10:00", "--ends", "2020-11-21T11:00"],
            "",
            id="add-session",
        ),
    ],
)
def test_unreachable_database_is_refused_in_one_line(fresh, args, stdin):
    result = fresh.portal(*args, stdin=stdin, PORTAL_DATABASE_URL=UNREACHABLE_DATABASE)
    line = assert_refused(result)
    assert "database" in line


def test_import_with_an_unreachable_database_is_refused_and_leaves_no_file(ready, tmp_path):
    folder = tmp_path / "supports"
    folder.mkdir()
    (folder / "support.pdf").write_bytes(PDF_BYTES)
    result = ready.portal("import", str(folder), PORTAL_DATABASE_URL=UNREACHABLE_DATABASE)
    assert_no_traceback(result)
    assert result.returncode == 1
    assert stored_keys(ready) == []


def test_commands_before_init_are_refused_without_traceback(fresh):
    result = fresh.portal(
        "add-session", "T", "--starts", "2020-11-21T10:00", "--ends", "2020-11-21T11:00"
    )
    assert_refused(result)


def test_unusable_setting_is_refused_in_one_line(fresh):
    result = fresh.portal("check", PORTAL_TIMEZONE="Mars/Olympus_Mons")
    line = assert_refused(result)
    assert "PORTAL_TIMEZONE" in line


def test_instance_folder_that_cannot_be_created_is_refused_in_one_line(fresh):
    blocker = fresh.root / "a-file"
    blocker.write_text("not a folder")
    result = fresh.portal("check", PORTAL_INSTANCE_DIR=str(blocker / "instance"))
    assert_refused(result)
