"""content version on the event

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 09:15:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("events") as batch_op:
        batch_op.add_column(
            sa.Column("content_version", sa.Integer(), nullable=False, server_default="1")
        )


def downgrade():
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_column("content_version")
