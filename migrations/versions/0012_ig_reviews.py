"""IG reviews of safeguarding overrides and break-glass views: one row per review of an audit
event (the latest closes or keeps it open). Each review is also an AuditEvent on the chain.

Revision ID: 0012_ig_reviews
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa

revision = "0012_ig_reviews"
down_revision = "0011"
branch_labels = None
depends_on = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ig_review",
        sa.Column("id", _BIGINT, primary_key=True, autoincrement=True),
        sa.Column("event_seq", _BIGINT, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("reviewer_sub", sa.String(255), nullable=False),
        sa.Column("reviewer_org", sa.String(16), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("review_event_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_ig_review_event", "ig_review", ["event_seq", "id"])
    # the queue reads events needing review oldest first
    op.create_index("ix_audit_event_purpose", "audit_event", ["purpose_of_use"])


def downgrade() -> None:
    op.drop_index("ix_audit_event_purpose", table_name="audit_event")
    op.drop_index("ix_ig_review_event", table_name="ig_review")
    op.drop_table("ig_review")
