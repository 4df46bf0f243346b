"""Audit events say what their hash covers (audit_event.hash_form). Events appended from here on
are of form 2: the hash seals the event's searchable columns and search rows with its body, so
altering a column an IG search reads, or a search row, breaks the chain as altering the body
does, and `familyview audit verify` proves the chain without parsing a million bodies. Events
already in the chain keep their hash (the audit is append-only) and say form 1, the body alone;
verify proves their columns and search rows by reading their bodies, as before.

Revision ID: 0020_audit_hash_form
Revises: 0019_audit_body_lz4
"""
import sqlalchemy as sa
from alembic import op

revision = "0020_audit_hash_form"
down_revision = "0019_audit_body_lz4"
branch_labels = None
depends_on = None


def _has_column(bind: sa.engine.Connection) -> bool:
    return any(c["name"] == "hash_form" for c in sa.inspect(bind).get_columns("audit_event"))


def upgrade() -> None:
    # a constant default: PostgreSQL adds the column without rewriting the table (no UPDATE, which
    # the append-only triggers refuse); SQLite likewise. Already there after a downgrade (below)
    if not _has_column(op.get_bind()):
        op.add_column("audit_event", sa.Column("hash_form", sa.SmallInteger(), nullable=False, server_default="1"))


def downgrade() -> None:
    # The column stays: dropping it would lose which events seal their columns (form 2), and
    # they would never verify again, not even after upgrading back. Code from before 0020
    # ignores it (and appends form 1, its default); its verify reports events of form 2 as
    # altered until the database is upgraded again.
    pass
