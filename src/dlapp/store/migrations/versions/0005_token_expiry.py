"""token expiry: when a token stops working, set when it is made (``--expires-in``)

NULL, the value of every token made before, is no expiry of its own: only the server's
``token_lifetime_days`` (counted from ``created``) then limits it.

Revision ID: 0005_token_expiry
Revises: 0004_app_list_indexes
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_token_expiry"
down_revision = "0004_app_list_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("expires", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("expires")
