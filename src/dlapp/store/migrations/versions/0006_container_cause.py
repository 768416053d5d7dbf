"""container cause: why each container ended (``contract.ContainerCause``), as a value

The server decides what becomes of an app from its containers' causes; it used to read them
from the start of the diagnostics' text. Rows written before carry no cause: they are given
theirs here, once, from that text (the only place it is still read).

Revision ID: 0006_container_cause
Revises: 0005_token_expiry
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_container_cause"
down_revision = "0005_token_expiry"
branch_labels = None
depends_on = None

# how the diagnostics of earlier releases told the causes apart
_BACKFILL = (
    ("node_lost", "state = 'LOST' AND diagnostics LIKE 'node lost%'"),
    ("not_started", "state = 'LOST' AND diagnostics LIKE 'did not start%'"),
    ("lost", "state = 'LOST' AND cause = ''"),
    ("killed", "state = 'EXITED' AND diagnostics = 'killed by request'"),
    ("exited", "state = 'EXITED' AND cause = ''"),
)


def upgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.add_column(sa.Column("cause", sa.String(16), nullable=False, server_default=""))
    for cause, where in _BACKFILL:
        op.execute(f"UPDATE containers SET cause = '{cause}' WHERE {where}")


def downgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.drop_column("cause")
