"""The notification outbox: each notification to the holder of records disclosed by a
safeguarding override, written in the disclosure's transaction and delivered after commit
(a restart loses nothing; retries back off; sent, failed or awaiting pick-up).

Revision ID: 0013_ig_outbox
Revises: 0012_ig_reviews
"""
from alembic import op
import sqlalchemy as sa

revision = "0013_ig_outbox"
down_revision = "0012_ig_reviews"
branch_labels = None
depends_on = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ig_notification",
        sa.Column("id", _BIGINT, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("target_org", sa.String(16), nullable=False),
        sa.Column("communication_id", sa.String(64), nullable=False),
        sa.Column("audit_event_id", sa.String(64), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(255), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("endpoint", sa.String(512), nullable=True),
    )
    op.create_index("ix_ig_notification_due", "ig_notification", ["status", "next_attempt_at"])
    op.create_index("ix_ig_notification_target", "ig_notification", ["target_org", "id"])


def downgrade() -> None:
    op.drop_index("ix_ig_notification_target", table_name="ig_notification")
    op.drop_index("ix_ig_notification_due", table_name="ig_notification")
    op.drop_table("ig_notification")
