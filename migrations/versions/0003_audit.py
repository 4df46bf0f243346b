"""Audit store: append-only, hash-chained AuditEvents and their search rows.

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TABLES = ("audit_event", "audit_index")


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("seq", _BIGINT, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("recorded", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type_code", sa.String(40), nullable=False),
        sa.Column("subtype_code", sa.String(64), nullable=False),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("outcome", sa.String(2), nullable=False),
        sa.Column("purpose_of_use", sa.String(16)),
        sa.Column("agent_sub", sa.String(255), nullable=False),
        sa.Column("agent_org", sa.String(16), nullable=False),
        sa.Column("agent_role", sa.String(32), nullable=False),
        sa.Column("review_required", sa.Boolean(), nullable=False),
        sa.Column("policy_version", sa.String(32)),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_event_recorded", "audit_event", ["recorded"])
    op.create_index("ix_audit_event_agent", "audit_event", ["agent_sub"])
    op.create_index("ix_audit_event_agent_org", "audit_event", ["agent_org"])
    op.create_index("ix_audit_event_review", "audit_event", ["review_required"])
    op.create_table(
        "audit_index",
        sa.Column("pk", _BIGINT, primary_key=True, autoincrement=True),
        sa.Column("event_seq", _BIGINT, nullable=False),
        sa.Column("param", sa.String(16), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
    )
    op.create_index("ix_audit_index_lookup", "audit_index", ["param", "value"])
    op.create_index("ix_audit_index_event", "audit_index", ["event_seq"])

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION familyview_audit_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION 'the audit store is append-only: % on % refused', TG_OP, TG_TABLE_NAME
                    USING ERRCODE = 'insufficient_privilege';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        for table in TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION familyview_audit_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION familyview_audit_append_only()"
            )
    else:
        for table in TABLES:
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, 'the audit store is append-only: {action} on {table} refused'); END"
                )


def downgrade() -> None:
    # Dropping the audit store is a deliberate act of an administrator, never automatic.
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS familyview_audit_append_only()")
    op.drop_table("audit_index")
    op.drop_table("audit_event")
