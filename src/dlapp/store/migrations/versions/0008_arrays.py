"""arrays: app arrays and parameter sweeps made by one request (``dlapp.arrays``)

A table of arrays (owner, size, running limit, the one workspace its members share) and, on
each app, the array it belongs to, its index there and its sweep values. Apps stored before
belong to no array.

Revision ID: 0008_arrays
Revises: 0007_gpu_share
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_arrays"
down_revision = "0007_gpu_share"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "arrays",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False, unique=True),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("queue", sa.String(256), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("indices", sa.Text(), nullable=False),
        sa.Column("sweep", sa.Text(), nullable=False),
        sa.Column("workspace", sa.Text(), nullable=False),
        sa.Column("submit_time", sa.Float(), nullable=False),
    )
    op.create_index("ix_arrays_user_seq", "arrays", ["user", "seq"])
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("array_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("array_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("array_values", sa.Text(), nullable=False, server_default=""))
        batch.create_foreign_key(
            "fk_apps_array_id", "arrays", ["array_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_index("ix_apps_array_index", ["array_id", "array_index"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.drop_index("ix_apps_array_index")
        batch.drop_constraint("fk_apps_array_id", type_="foreignkey")
        batch.drop_column("array_values")
        batch.drop_column("array_id")
        batch.drop_column("array_index")
    op.drop_index("ix_arrays_user_seq", "arrays")
    op.drop_table("arrays")
