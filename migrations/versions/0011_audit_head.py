"""Audit head anchor: an append-only table holding each event's seq and chain hash.

Written by a database trigger on every insert into audit_event (so also by a worker still
running the code from before this migration, during a rolling deploy), and refused
UPDATE/DELETE by the same triggers as the audit store, so `familyview audit verify` sees the
newest events (or all of them) deleted from audit_event. Existing events are copied in.

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_head",
        sa.Column("seq", _BIGINT, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.execute("INSERT INTO audit_head (seq, hash) SELECT seq, hash FROM audit_event")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION familyview_audit_head() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN INSERT INTO audit_head (seq, hash) VALUES (NEW.seq, NEW.hash); RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_event_head AFTER INSERT ON audit_event "
            "FOR EACH ROW EXECUTE FUNCTION familyview_audit_head()"
        )
        # familyview_audit_append_only() is the function of migration 0003
        op.execute(
            "CREATE TRIGGER audit_head_append_only BEFORE UPDATE OR DELETE ON audit_head "
            "FOR EACH ROW EXECUTE FUNCTION familyview_audit_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head "
            "FOR EACH STATEMENT EXECUTE FUNCTION familyview_audit_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER audit_event_head AFTER INSERT ON audit_event "
            "BEGIN INSERT INTO audit_head (seq, hash) VALUES (NEW.seq, NEW.hash); END"
        )
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_head_no_{action.lower()} BEFORE {action} ON audit_head "
                f"BEGIN SELECT RAISE(ABORT, 'the audit store is append-only: {action} on audit_head refused'); END"
            )


def downgrade() -> None:
    # Dropping part of the audit store is a deliberate act of an administrator, never automatic.
    op.execute("DROP TRIGGER IF EXISTS audit_event_head" + (" ON audit_event" if op.get_bind().dialect.name == "postgresql" else ""))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS familyview_audit_head()")
        op.execute("DROP TRIGGER IF EXISTS audit_head_append_only ON audit_head")
        op.execute("DROP TRIGGER IF EXISTS audit_head_no_truncate ON audit_head")
    op.drop_table("audit_head")
