"""Partial search_reference indexes on PostgreSQL: the target index holds only literal
references (target_id IS NOT NULL), the identifier index only logical ones (ident_value IS
NOT NULL). Every look-up binds the column its index probes (=, IN, ANY), which implies the
predicate, so the planner still takes them; a Bundle's ~150 reference rows no longer make
~150 index entries of NULLs. SQLite keeps full indexes (its planner proves the predicate
for fewer forms of IN).

Revision ID: 0017_search_reference_partial
Revises: 0016_ingest_queue_key_arrays
"""
from alembic import op
import sqlalchemy as sa

revision = "0017_search_reference_partial"
down_revision = "0016_ingest_queue_key_arrays"
branch_labels = None
depends_on = None

_INDEXES = [
    ("ix_search_reference_target", ["param", "target_type", "target_id"], "target_id IS NOT NULL"),
    ("ix_search_reference_ident", ["param", "ident_value", "ident_system"], "ident_value IS NOT NULL"),
]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, cols, where in _INDEXES:
        op.drop_index(name, table_name="search_reference")
        op.create_index(name, "search_reference", cols, postgresql_where=sa.text(where))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, cols, _where in _INDEXES:
        op.drop_index(name, table_name="search_reference")
        op.create_index(name, "search_reference", cols)
