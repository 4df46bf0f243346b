"""The linkage queue: records written but not linked yet

With ``linkage_mode`` queued (the default on PostgreSQL), a write no longer links its
Patients and RelatedPersons in its own transaction: it names them in ``linkage_queue`` there,
and a worker process links them right after commit, while the server goes on with the next
request. Readers of linkage link whatever is still queued before they read.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "linkage_queue",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("res_type", sa.String(40), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("linkage_queue")
