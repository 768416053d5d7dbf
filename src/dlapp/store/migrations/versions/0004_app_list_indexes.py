"""indexes for lists at scale: apps by user or queue newest first, and by state and user

The single-column indexes on apps.user, apps.queue and apps.state made SQLite sort every app of
a user (or queue) to show the newest page, and count a user's waiting apps row by row; each is
replaced by a composite index whose first column is the same, so nothing loses its index.

Revision ID: 0004_app_list_indexes
Revises: 0003_gpu_usage
Create Date: 2026-11-29
"""

from alembic import op

revision = "0004_app_list_indexes"
down_revision = "0003_gpu_usage"
branch_labels = None
depends_on = None

REPLACED = {
    "ix_apps_user": ["user"],
    "ix_apps_queue": ["queue"],
    "ix_apps_state": ["state"],
}
ADDED = {
    "ix_apps_user_seq": ["user", "seq"],
    "ix_apps_queue_seq": ["queue", "seq"],
    "ix_apps_state_user": ["state", "user"],
}


def upgrade() -> None:
    for name, columns in ADDED.items():
        op.create_index(name, "apps", columns)
    for name in REPLACED:
        op.drop_index(name, table_name="apps")


def downgrade() -> None:
    for name, columns in REPLACED.items():
        op.create_index(name, "apps", columns)
    for name in ADDED:
        op.drop_index(name, table_name="apps")
