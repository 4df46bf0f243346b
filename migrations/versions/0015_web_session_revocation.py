"""Page sessions ended by signing out: a copied session cookie is refused from then on.

Revision ID: 0015_web_session_revocation
Revises: 0014_linkage_queue_keys
"""
from alembic import op
import sqlalchemy as sa

revision = "0015_web_session_revocation"
down_revision = "0014_linkage_queue_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_session_revoked",
        sa.Column("sid", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_web_session_revoked_expires_at", "web_session_revoked", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_web_session_revoked_expires_at", table_name="web_session_revoked")
    op.drop_table("web_session_revoked")
