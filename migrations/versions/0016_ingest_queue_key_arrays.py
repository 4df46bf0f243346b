"""The blocking keys of a queued record in one row: ``linkage_queue_key`` holds one row per
queued record with its key hashes in an array (bigint[] with a GIN index on PostgreSQL, a
JSON array on SQLite) instead of one row per key. A Bundle's 40 people wrote ~370 key rows
with three index entries each in the write's transaction, its costliest statement on
PostgreSQL, and the worker deleted as many.

The keys of records queued when this revision runs are not carried over: each such record
gets the ANY_KEY row (hash 0), which every reader settles, as migration 0014 did.

Revision ID: 0016_ingest_queue_key_arrays
Revises: 0015_web_session_revocation
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "0016_ingest_queue_key_arrays"
down_revision = "0015_web_session_revocation"
branch_labels = None
depends_on = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_KEY_HASHES = sa.JSON().with_variant(postgresql.ARRAY(sa.BigInteger()), "postgresql")


def upgrade() -> None:
    op.drop_index("ix_linkage_queue_key_record", table_name="linkage_queue_key")
    op.drop_index("ix_linkage_queue_key_hash", table_name="linkage_queue_key")
    op.drop_table("linkage_queue_key")
    op.create_table(
        "linkage_queue_key",
        sa.Column("id", _BIGINT, primary_key=True, autoincrement=True),
        sa.Column("res_type", sa.String(40), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("key_hashes", _KEY_HASHES, nullable=False),
    )
    op.create_index("ix_linkage_queue_key_hashes", "linkage_queue_key", ["key_hashes"], postgresql_using="gin")
    op.create_index("ix_linkage_queue_key_record", "linkage_queue_key", ["res_type", "res_id"])
    any_key = "ARRAY[0]::bigint[]" if op.get_bind().dialect.name == "postgresql" else "'[0]'"
    op.execute(f"INSERT INTO linkage_queue_key (res_type, res_id, key_hashes) SELECT DISTINCT res_type, res_id, {any_key} FROM linkage_queue")


def downgrade() -> None:
    op.drop_index("ix_linkage_queue_key_record", table_name="linkage_queue_key")
    op.drop_index("ix_linkage_queue_key_hashes", table_name="linkage_queue_key")
    op.drop_table("linkage_queue_key")
    op.create_table(
        "linkage_queue_key",
        sa.Column("id", _BIGINT, primary_key=True, autoincrement=True),
        sa.Column("key_hash", sa.BigInteger(), nullable=False),
        sa.Column("res_type", sa.String(40), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_linkage_queue_key_hash", "linkage_queue_key", ["key_hash"])
    op.create_index("ix_linkage_queue_key_record", "linkage_queue_key", ["res_type", "res_id"])
    op.execute("INSERT INTO linkage_queue_key (key_hash, res_type, res_id) SELECT DISTINCT 0, res_type, res_id FROM linkage_queue")
