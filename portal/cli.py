"""The ``portal`` command line (SPEC section 3)."""

from __future__ import annotations

import datetime as dt
import functools
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, routes_command, shell_command, with_appcontext
from flask_babel import force_locale
from sqlalchemy.exc import SQLAlchemyError

from .config import SettingsError
from .storage import StorageError
from .tus import remove_stale_partials


class Refused(click.ClickException):
    """A request the data refuses: one line on standard error, exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _make_app() -> Flask:
    from . import create_app

    try:
        return create_app()
    except (SettingsError, StorageError, OSError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


def refusals(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn foreseeable failures (database down, storage missing) into one line and exit 1."""

    @functools.wraps(command)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            with force_locale("en"):
                return command(*args, **kwargs)
        except SQLAlchemyError as error:
            reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
            raise Refused(f"database not reachable or not usable: {reason}") from None
        except (StorageError, OSError) as error:
            raise Refused(f"storage: {error}") from None

    return wrapped


class IsoDateTime(click.ParamType):
    """An ISO 8601 date-time; without an offset it is in the event's time zone."""

    name = "ISO-DATETIME"

    def convert(self, value: Any, param: Any, ctx: Any) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        try:
            return dt.datetime.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not an ISO date-time such as 2020-11-21T10:00", param, ctx)


ISO = IsoDateTime()


def _read_password(from_stdin: bool, prompt: str) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=True)


def initialise(create_storage: bool = True) -> None:
    """Create the storage and bring the database schema to the latest migration."""
    from flask_migrate import upgrade

    from .services.event import get_event

    if create_storage:
        current_app.extensions["portal.storage"].create()
    upgrade(directory=current_app.extensions["migrate"].directory)
    get_event()


def instance_is_new() -> bool:
    """Say whether the database has no schema yet (a new instance)."""
    from sqlalchemy import inspect

    from .extensions import db

    return not inspect(db.engine).has_table("alembic_version")


@click.command("init")
@with_appcontext
@refusals
def init_command() -> None:
    """Create the instance folder, the storage folder and the database schema."""
    initialise()
    click.echo(f"instance ready: {current_app.config['INSTANCE_DIR']}")
    click.echo(f"storage ready: {current_app.config['STORAGE']}")


@click.command("set-password")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_appcontext
@refusals
def set_password_command(password_stdin: bool) -> None:
    """Set the shared password; every participant is signed out."""
    from .services.accounts import AccountError, set_shared_password

    password = _read_password(password_stdin, "Shared password")
    try:
        set_shared_password(password)
    except AccountError as error:
        raise Refused(str(error)) from None
    click.echo("shared password changed; every participant is signed out")


@click.command("create-facilitator")
@click.argument("email")
@click.option("--name", default="", help="The facilitator's name.")
@click.option("--admin", is_flag=True, help="Give administrator rights.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_appcontext
@refusals
def create_facilitator_command(email: str, name: str, admin: bool, password_stdin: bool) -> None:
    """Create a facilitator account."""
    from .services.accounts import AccountError, create_facilitator

    password = _read_password(password_stdin, "Password")
    try:
        account = create_facilitator(email, password, name=name, is_admin=admin)
    except AccountError as error:
        raise Refused(str(error)) from None
    click.echo(f"facilitator created: {account.email}{' (admin)' if admin else ''}")


@click.command("add-session")
@click.argument("title")
@click.option("--starts", type=ISO, required=True, help="Start, ISO 8601.")
@click.option("--ends", type=ISO, required=True, help="End, ISO 8601.")
@click.option("--slug", default=None, help="Address of the session page.")
@click.option("--description", default="", help="What the session is about.")
@with_appcontext
@refusals
def add_session_command(
    title: str, starts: dt.datetime, ends: dt.datetime, slug: str | None, description: str
) -> None:
    """Create a session and print its slug."""
    from .services.event import EventError, save_meeting
    from .timezones import to_utc

    if not title.strip():
        raise click.BadParameter("the title must not be empty", param_hint="TITLE")
    try:
        meeting = save_meeting(
            None,
            title=title,
            starts_at=to_utc(starts),
            ends_at=to_utc(ends),
            slug=slug,
            description=description,
        )
    except EventError as error:
        raise Refused(str(error)) from None
    click.echo(meeting.slug)


@click.command("set-window")
@click.option("--opens", type=ISO, default=None, help="When the password starts to work.")
@click.option("--closes", type=ISO, default=None, help="When it stops working.")
@click.option("--clear", is_flag=True, help="Remove both limits.")
@with_appcontext
@refusals
def set_window_command(opens: dt.datetime | None, closes: dt.datetime | None, clear: bool) -> None:
    """Set or clear the access window."""
    from .services.event import EventError, set_access_window
    from .timezones import to_utc

    if clear and (opens or closes):
        raise click.UsageError("--clear cannot be combined with --opens or --closes")
    if not clear and not (opens or closes):
        raise click.UsageError("give --opens, --closes or --clear")
    try:
        set_access_window(to_utc(opens), to_utc(closes))
    except EventError as error:
        raise Refused(str(error)) from None
    if clear:
        click.echo("access window cleared")
    else:
        click.echo(f"access window: {opens or '-'} → {closes or '-'}")


@click.command("import")
@click.argument(
    "directory", type=click.Path(exists=True, file_okay=False, dir_okay=True, path_type=Path)
)
@click.option("--session", "session_slug", default=None, help="Slug of the session.")
@click.option("--tag", "tags", multiple=True, help="Tag for every file (repeatable).")
@with_appcontext
@refusals
def import_command(directory: Path, session_slug: str | None, tags: tuple[str, ...]) -> None:
    """Import every regular file of DIRECTORY as documents."""
    from .extensions import db
    from .models import Meeting
    from .services.documents import UploadRejected, add_document

    meeting = None
    if session_slug:
        meeting = db.session.scalars(db.select(Meeting).where(Meeting.slug == session_slug)).first()
        if meeting is None:
            raise Refused(f"unknown session: {session_slug}")
    rejected = 0
    for path in sorted(directory.iterdir()):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            with path.open("rb") as source:
                add_document(source, path.name, meeting=meeting, tags=tags)
        except UploadRejected as rejection:
            rejected += 1
            click.echo(f"rejected: {path.name}: {rejection.reason}")
        except StorageError as error:
            rejected += 1
            click.echo(f"rejected: {path.name}: {error}")
        except OSError as error:
            rejected += 1
            click.echo(f"rejected: {path.name}: {error.strerror or error}")
        else:
            click.echo(f"imported: {path.name}")
    if rejected:
        sys.exit(1)


@click.command("demo")
@with_appcontext
@refusals
def demo_command() -> None:
    """Fill an empty instance with the November 2020 demonstration programme."""
    from .demo import DemoRefused, load_demo

    initialise()
    try:
        sessions, documents = load_demo()
    except DemoRefused as error:
        raise Refused(str(error)) from None
    click.echo(f"demo loaded: {sessions} sessions, {documents} documents")


@click.command("check")
@click.option("--repair", is_flag=True, help="Move orphan files into the quarantine folder.")
@click.option(
    "--deploy", is_flag=True, help="Check the settings for production instead of the files."
)
@with_appcontext
@refusals
def check_command(repair: bool, deploy: bool) -> None:
    """Verify every stored file against its document; list orphans."""
    from .integrity import check_storage

    if deploy:
        from .deployment import deployment_problems

        problems = deployment_problems(current_app._get_current_object())
        for problem in problems:
            click.echo(f"problem: {problem}")
        click.echo("deployment: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
        if problems:
            sys.exit(1)
        return

    report = check_storage(repair=repair)
    for line in report.lines():
        click.echo(line)
    if report.storage_error:
        raise Refused(f"storage: {report.storage_error}")
    if not report.healthy(repaired=repair):
        sys.exit(1)


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, writable=True, path_type=Path))
@with_appcontext
@refusals
def backup_command(file: Path) -> None:
    """Write every row and every stored file into the archive FILE."""
    from .backup import BackupError, write_backup

    if not file.absolute().parent.is_dir():
        raise click.BadParameter(
            f"folder {file.absolute().parent} does not exist",
            ctx=click.get_current_context(),
            param_hint="FILE",
        )
    try:
        summary = write_backup(file)
    except BackupError as error:
        for problem in error.problems:
            click.echo(f"problem: {problem}", err=True)
        raise Refused(str(error)) from None
    click.echo(f"backup written: {file}: {summary.line()}")


@click.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@with_appcontext
@refusals
def restore_command(file: Path) -> None:
    """Load the archive FILE into this instance, which must be empty."""
    from .backup import BackupError, restore_backup

    try:
        summary = restore_backup(file, initialise)
    except BackupError as error:
        raise Refused(str(error)) from None
    click.echo(f"restored: {file}: {summary.line()}")


@click.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--threads", default=32, show_default=True, type=click.IntRange(1, 256))
@with_appcontext
@refusals
def run_command(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the portal with gunicorn (threaded workers)."""
    from .server import serve
    from .services.accounts import (
        AccountError,
        admin_exists,
        create_facilitator,
        set_shared_password,
    )
    from .services.event import get_event
    from .storage import StorageError

    # Only a new instance gets its storage folder created: on a running installation a
    # missing folder is a fault to repair (restore it), not something to paper over.
    initialise(create_storage=instance_is_new())
    try:
        current_app.extensions["portal.storage"].check()
    except StorageError as error:
        click.echo(f"warning: {error}; documents cannot be served until it is restored", err=True)
    if not get_event().shared_password_hash:
        password = secrets.token_urlsafe(9)
        set_shared_password(password)
        click.echo(f"shared password: {password}")
    if not admin_exists():
        email, password = "admin@portail.local", secrets.token_urlsafe(12)
        try:
            create_facilitator(email, password, name="Admin", is_admin=True)
        except AccountError:
            # Another `portal run` starting at the same moment created it first.
            pass
        else:
            click.echo(f"admin e-mail: {email}")
            click.echo(f"admin password: {password}")
    try:
        removed = current_app.extensions["portal.storage"].remove_stale_incoming()
        removed += remove_stale_partials(current_app.config["INSTANCE_DIR"])
    except (OSError, StorageError):
        removed = 0
    if removed:
        click.echo(f"removed {removed} abandoned temporary upload file(s)")
    sys.stdout.flush()
    serve(current_app._get_current_object(), host=host, port=port, workers=workers, threads=threads)


COMMANDS = (
    init_command,
    set_password_command,
    create_facilitator_command,
    add_session_command,
    set_window_command,
    import_command,
    demo_command,
    check_command,
    backup_command,
    restore_command,
    run_command,
)


def register_commands(app: Flask) -> None:
    """Add the portal's commands to ``flask --app wsgi``."""
    for command in COMMANDS:
        app.cli.add_command(command)


cli = FlaskGroup(
    name="portal",
    create_app=_make_app,
    add_default_commands=False,
    load_dotenv=False,
    set_debug_flag=False,
    help="Portail des supports: share an event week's documents behind one password.",
)
cli.add_command(shell_command)
cli.add_command(routes_command)


def main() -> None:
    """Entry point of the ``portal`` console script."""
    cli.main(prog_name="portal")
