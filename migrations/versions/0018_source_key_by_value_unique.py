"""One index on source_key for both its uses: the unique constraint now leads with the value
(source_org, value, res_type, system), so it serves the write path's look-up of a Bundle's
identifiers by value (one probe each), and ix_source_key_value, which 0005 added for that
look-up, goes. Each source key a Bundle writes (~130) made one index entry fewer.

Revision ID: 0018_source_key_by_value_unique
Revises: 0017_search_reference_partial
"""
from alembic import op

revision = "0018_source_key_by_value_unique"
down_revision = "0017_search_reference_partial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("source_key") as batch:  # SQLite: the table is rebuilt
        batch.drop_constraint("uq_source_key", type_="unique")
        batch.create_unique_constraint("uq_source_key", ["source_org", "value", "res_type", "system"])
    op.drop_index("ix_source_key_value", table_name="source_key")


def downgrade() -> None:
    op.create_index("ix_source_key_value", "source_key", ["source_org", "value"])
    with op.batch_alter_table("source_key") as batch:
        batch.drop_constraint("uq_source_key", type_="unique")
        batch.create_unique_constraint("uq_source_key", ["source_org", "res_type", "system", "value"])
