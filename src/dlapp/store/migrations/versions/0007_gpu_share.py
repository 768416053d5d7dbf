"""gpu share: an app's GPUs per container as a share (``0.25`` of one GPU shared, ``2`` whole
GPUs, or the share of its MIG instances), so the column holds fractions

Every app stored before asked for whole GPUs: its value stays as it was.

Revision ID: 0007_gpu_share
Revises: 0006_container_cause
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_gpu_share"
down_revision = "0006_container_cause"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.alter_column("gpus", existing_type=sa.Integer(), type_=sa.Float())


def downgrade() -> None:
    with op.batch_alter_table("apps") as batch:  # fractions are rounded up to whole GPUs
        batch.alter_column("gpus", existing_type=sa.Float(), type_=sa.Integer())
