"""The blocking keys of queued records: a reader of linkage (the family view) settles only the
queued records that could join the people it reads, not a whole bulk load of unrelated ones.

Records queued before this revision have no keys yet: each gets the ANY_KEY row (hash 0),
which every reader settles, as every reader settled every queued record before.

Revision ID: 0014_linkage_queue_keys
Revises: 0013_ig_outbox
"""
from alembic import op
import sqlalchemy as sa

revision = "0014_linkage_queue_keys"
down_revision = "0013_ig_outbox"
branch_labels = None
depends_on = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "linkage_queue_key",
        sa.Column("id", _BIGINT, primary_key=True, autoincrement=True),
        sa.Column("key_hash", sa.BigInteger(), nullable=False),
        sa.Column("res_type", sa.String(40), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_linkage_queue_key_hash", "linkage_queue_key", ["key_hash"])
    op.create_index("ix_linkage_queue_key_record", "linkage_queue_key", ["res_type", "res_id"])
    op.create_index("ix_linkage_queue_record", "linkage_queue", ["res_type", "res_id"])
    op.execute("INSERT INTO linkage_queue_key (key_hash, res_type, res_id) SELECT DISTINCT 0, res_type, res_id FROM linkage_queue")


def downgrade() -> None:
    op.drop_index("ix_linkage_queue_record", table_name="linkage_queue")
    op.drop_index("ix_linkage_queue_key_record", table_name="linkage_queue_key")
    op.drop_index("ix_linkage_queue_key_hash", table_name="linkage_queue_key")
    op.drop_table("linkage_queue_key")
