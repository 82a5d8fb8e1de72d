"""Fixtures: a fresh portal per test, on a temporary instance and storage.

The suite runs on SQLite by default, and on PostgreSQL when PORTAL_TEST_DATABASE_URL is set
(the schema is dropped and rebuilt through the migrations for every test).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jinja2.bccache import Bucket, BytecodeCache
from sqlalchemy import create_engine, make_url, text

from portal import create_app, download_counts
from portal.cli import initialise
from portal.config import database_url
from portal.extensions import db
from portal.models import Document, Facilitator, Meeting
from portal.services.accounts import create_facilitator, set_shared_password
from portal.services.documents import add_document
from portal.services.event import save_meeting

SHARED_PASSWORD = "#SN2020egm"
FACILITATOR_EMAIL = "anim@example.org"
ADMIN_EMAIL = "admin@example.org"
ACCOUNT_PASSWORD = "facilitator-pass"


def _database_per_worker() -> None:
    """Give each pytest-xdist worker its own PostgreSQL database (``test_gw0``, ``test_gw1``...).

    The environment variable is rewritten so that tests starting `portal` subprocesses use
    the worker's database too.
    """
    url = os.environ.get("PORTAL_TEST_DATABASE_URL")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not url or not worker:
        return
    base = make_url(database_url(url, Path(".")))
    if base.database.endswith(f"_{worker}"):
        # Already the worker's (this file imported a second time under another name).
        return
    name = f"{base.database}_{worker}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        exists = connection.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
        )
        if not exists:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    os.environ["PORTAL_TEST_DATABASE_URL"] = base.set(database=name).render_as_string(
        hide_password=False
    )


_database_per_worker()
TEST_DATABASE_URL = (
    database_url(os.environ["PORTAL_TEST_DATABASE_URL"], Path("."))
    if os.environ.get("PORTAL_TEST_DATABASE_URL")
    else None
)

CSRF_PATTERN = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
#: A form token as a page with a form holds it (``form.hidden_tag()``).
FORM_PAGE = "/with-form"

# A tiny but real PDF, PNG and JPEG header for upload tests.
PDF_BYTES = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
JPEG_BYTES = b"\xff\xd8\xff\xe0" + b"\x00" * 64


class MemoryBytecodeCache(BytecodeCache):
    """Share compiled templates between the many apps of a test run (compiling is the slow part)."""

    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        if bucket.key in self.store:
            bucket.bytecode_from_string(self.store[bucket.key])

    def dump_bytecode(self, bucket: Bucket) -> None:
        self.store[bucket.key] = bucket.bytecode_to_string()


TEMPLATE_CACHE = MemoryBytecodeCache()


def _reset_postgresql(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def _empty_postgresql(url: str) -> bool:
    """Remove every row (the schema stays); say whether the schema was there at all."""
    engine = create_engine(url)
    with engine.begin() as connection:
        tables = connection.scalars(
            text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'alembic_version'"
            )
        ).all()
        if tables:
            names = ", ".join(f'"{name}"' for name in tables)
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return "documents" in tables


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """Run the migrations once: into a template SQLite file, or into the test PostgreSQL."""
    root = tmp_path_factory.mktemp("template")
    if TEST_DATABASE_URL:
        _reset_postgresql(TEST_DATABASE_URL)
    config = {
        "TESTING": True,
        "INSTANCE_DIR": str(root / "instance"),
        "STORAGE": str(root / "uploads"),
        "SECRET_KEY": "template",
    }
    if TEST_DATABASE_URL:
        config["SQLALCHEMY_DATABASE_URI"] = TEST_DATABASE_URL
    application = create_app(config)
    with application.app_context():
        initialise()
        db.session.remove()
        db.engine.dispose()
    return None if TEST_DATABASE_URL else root / "instance" / "portal.db"


@pytest.fixture
def instance_dir(tmp_path: Path) -> Path:
    return tmp_path / "instance"


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "uploads"


@pytest.fixture
def app_config(instance_dir: Path, storage_dir: Path) -> dict:
    config = {
        "TESTING": True,
        "INSTANCE_DIR": str(instance_dir),
        "STORAGE": str(storage_dir),
        "SECRET_KEY": "test-secret-key",
        # Cheap hashing keeps the suite fast; production uses OWASP's parameters.
        "PASSWORD_HASH": {"time_cost": 1, "memory_cost": 8, "parallelism": 1},
        "RATELIMIT_STORAGE_URI": f"sqlite://{instance_dir / 'ratelimit.sqlite'}",
    }
    if TEST_DATABASE_URL:
        config["SQLALCHEMY_DATABASE_URI"] = TEST_DATABASE_URL
    return config


@pytest.fixture
def app(app_config: dict, migrated_database: Path | None, instance_dir: Path) -> Iterator[Flask]:
    # Tests of the command line may drop the PostgreSQL schema: migrate again then.
    needs_schema = bool(TEST_DATABASE_URL) and not _empty_postgresql(TEST_DATABASE_URL)
    if not TEST_DATABASE_URL:
        instance_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_database, instance_dir / "portal.db")
    application = create_app(app_config)
    application.jinja_env.bytecode_cache = TEMPLATE_CACHE
    with application.app_context():
        application.extensions["portal.storage"].create()
        if needs_schema:
            initialise()
        set_shared_password(SHARED_PASSWORD)
        create_facilitator(FACILITATOR_EMAIL, ACCOUNT_PASSWORD, name="Anim")
        create_facilitator(ADMIN_EMAIL, ACCOUNT_PASSWORD, name="Admin", is_admin=True)
        db.session.remove()
    yield application
    close_app(application)


def close_app(application: Flask) -> None:
    """Close the app's database connections (its download counts: _no_count_outlives_its_test)."""
    with application.app_context():
        db.session.remove()
        db.engine.dispose()


@contextmanager
def fresh_app(config: dict[str, Any]) -> Iterator[Flask]:
    """An app built from ``config``; its database connections closed after."""
    application = create_app(config)
    try:
        yield application
    finally:
        close_app(application)


def app_variant(app_config: dict, **settings: Any):  # type: ignore[no-untyped-def]
    """A second app on the test instance, with other settings; its connections closed after."""
    return fresh_app({**app_config, **settings})


@contextmanager
def app_with_form_page(app_config: dict, **settings: Any) -> Iterator[Flask]:
    """An app with one more participant page, cached, holding a form and its token.

    The portal's own participant pages hold none (their "Leave" is a link), so they may be
    sent compressed; the page cache must still keep each session's token to its session
    should a page ever hold one.
    """
    from flask import render_template_string

    from portal.access import unlocked_required
    from portal.page_cache import cached_page, window

    def with_form() -> str:
        window([], dt.datetime.now(dt.UTC))
        return render_template_string(
            '<form method="post" action="/leave"><input id="csrf_token" name="csrf_token"'
            ' type="hidden" value="{{ csrf_token() }}"></form>' + "<p>page</p>" * 200
        )

    with app_variant(app_config, **settings) as application:
        view = unlocked_required(cached_page()(with_form))
        application.add_url_rule(FORM_PAGE, "with_form", view)
        yield application


def leave_token(client: FlaskClient) -> str:
    """The token of the form that signs a participant out (on the "Leave" page)."""
    return csrf_token(client, "/leave")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask):
    return app.test_cli_runner()


def csrf_token(client: FlaskClient, url: str = "/access") -> str:
    """Fetch a page and return the CSRF token of its first form."""
    response = client.get(url)
    match = CSRF_PATTERN.search(response.get_data(as_text=True))
    assert match, f"no CSRF token on {url} ({response.status_code})"
    return match.group(1)


def unlock(client: FlaskClient, password: str = SHARED_PASSWORD):
    """Type the shared password at the gate."""
    return client.post("/access", data={"password": password, "csrf_token": csrf_token(client)})


def login(client: FlaskClient, email: str = FACILITATOR_EMAIL, password: str = ACCOUNT_PASSWORD):
    """Sign a facilitator in."""
    token = csrf_token(client, "/login")
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


@pytest.fixture
def participant(client: FlaskClient) -> FlaskClient:
    assert unlock(client).status_code == 303
    return client


@pytest.fixture
def facilitator(client: FlaskClient) -> FlaskClient:
    assert login(client).status_code == 303
    return client


@pytest.fixture
def admin(client: FlaskClient) -> FlaskClient:
    assert login(client, ADMIN_EMAIL).status_code == 303
    return client


@pytest.fixture
def make_meeting(app: Flask):
    def make(title: str = "Temps d'échange", day: int = 21, hour: int = 10, **kwargs) -> Meeting:
        start = dt.datetime(2020, 11, day, hour, tzinfo=dt.UTC)
        with app.app_context():
            meeting = save_meeting(
                None, title=title, starts_at=start, ends_at=start + dt.timedelta(hours=2), **kwargs
            )
            db.session.refresh(meeting)
            db.session.expunge(meeting)
            return meeting

    return make


@pytest.fixture
def make_document(app: Flask):
    def make(
        name: str = "support.pdf",
        content: bytes = PDF_BYTES,
        meeting: Meeting | None = None,
        tags: list[str] | tuple[str, ...] = (),
        title: str = "",
        description: str = "",
    ) -> Document:
        with app.app_context():
            owner = db.session.get(Meeting, meeting.id) if meeting else None
            document = add_document(
                io.BytesIO(content),
                name,
                meeting=owner,
                tags=list(tags),
                title=title,
                description=description,
            )
            document_id = document.id
            db.session.remove()
            found = db.session.get(Document, document_id)
            _ = found.tags
            db.session.expunge(found)
            return found

    return make


@pytest.fixture(autouse=True)
def _no_count_outlives_its_test() -> Iterator[None]:
    """Write (or drop) every download count a test left: a writer thread that woke later
    could add it to another test's document of the same id."""
    yield
    download_counts.flush_all()


def flush_counts(app: Flask) -> None:
    """Write the download counts ``app`` has not written yet (``portal.download_counts``)."""
    app.extensions["portal.download_counts"].flush()


def count_rows(app: Flask, model: type) -> int:
    with app.app_context():
        return db.session.scalar(db.select(db.func.count()).select_from(model))


def stored_files(storage_dir: Path) -> list[str]:
    """Names of the stored files (temporary ones included), hidden folders aside."""
    found = [p.name for p in storage_dir.iterdir() if p.is_file()]
    incoming = storage_dir / ".incoming"
    if incoming.is_dir():
        found += [f".incoming/{p.name}" for p in incoming.iterdir()]
    return sorted(found)


__all__ = [
    "ADMIN_EMAIL",
    "ACCOUNT_PASSWORD",
    "FACILITATOR_EMAIL",
    "Facilitator",
    "JPEG_BYTES",
    "PDF_BYTES",
    "PNG_BYTES",
    "SHARED_PASSWORD",
    "count_rows",
    "csrf_token",
    "login",
    "stored_files",
    "unlock",
]
