"""Alembic environment: migrations run against the application's own engine and metadata."""

from alembic import context
from flask import current_app

from portal.models import UTCDateTime

target_db = current_app.extensions["migrate"].db


def render_item(type_, obj, autogen_context):
    """Write the portal's UTC column type as a plain DateTime: migrations must not import it."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def run_migrations_offline() -> None:
    """Print the SQL instead of running it (``portal db upgrade --sql``)."""
    context.configure(
        url=target_db.engine.url.render_as_string(hide_password=False),
        target_metadata=target_db.metadata,
        literal_binds=True,
        render_as_batch=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a connection of the application's engine."""
    with target_db.engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_db.metadata,
            # Batch mode lets SQLite alter tables by copying them.
            render_as_batch=True,
            compare_type=True,
            render_item=render_item,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
