"""Source keys looked up by identifier value: one index probe per identifier in a Bundle

The unique constraint leads with type and system, so a lookup of a Bundle's identifiers
through it probes every combination of the Bundle's types, systems and values.

Revision ID: 0005
Revises: 0004
"""
from alembic import op


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_source_key_value", "source_key", ["source_org", "value"])


def downgrade() -> None:
    op.drop_index("ix_source_key_value", table_name="source_key")
