"""gpu_usage (what each container's supervisor measured) and queue_samples (plots over time)

Revision ID: 0003_gpu_usage
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_gpu_usage"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpu_usage",
        sa.Column(
            "container_id",
            sa.Integer(),
            sa.ForeignKey("containers.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "app_id", sa.String(64), sa.ForeignKey("apps.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("gpu_seconds_used", sa.Float(), nullable=False),
        sa.Column("seconds_sampled", sa.Float(), nullable=False),
        sa.Column("utilisation", sa.Float(), nullable=True),
        sa.Column("memory_used_mb", sa.Integer(), nullable=False),
        sa.Column("memory_peak_mb", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Text(), nullable=False),
        sa.Column("busy_at", sa.Float(), nullable=True),
        sa.Column("idle_flagged", sa.Float(), nullable=True),
        sa.Column("staged_in_bytes", sa.BigInteger(), nullable=False),
        sa.Column("staged_in_s", sa.Float(), nullable=False),
        sa.Column("staged_out_bytes", sa.BigInteger(), nullable=False),
        sa.Column("staged_out_s", sa.Float(), nullable=False),
    )
    op.create_index("ix_gpu_usage_app_id", "gpu_usage", ["app_id"])
    op.create_table(
        "queue_samples",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("queue", sa.String(256), nullable=False),
        sa.Column("gpus_capacity", sa.Integer(), nullable=False),
        sa.Column("gpus_allocated", sa.Integer(), nullable=False),
        sa.Column("gpus_used", sa.Float(), nullable=True),
        sa.Column("apps_running", sa.Integer(), nullable=False),
        sa.Column("apps_pending", sa.Integer(), nullable=False),
        sa.Column("wait_s", sa.Float(), nullable=False),
    )
    op.create_index("ix_queue_samples_time", "queue_samples", ["time"])


def downgrade() -> None:
    op.drop_table("queue_samples")
    op.drop_table("gpu_usage")
