"""Sync from upstream FHIR servers: upstreams, per-type cursors, upstream-id -> local-id links

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_upstream",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("base_url", sa.String(length=512), nullable=False),
        sa.Column("source_org", sa.String(length=16), nullable=False),
        sa.Column("service", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_started", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_finished", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("base_url", "source_org", name="uq_sync_upstream_base_org"),
    )
    op.create_table(
        "sync_cursor",
        sa.Column("upstream_id", sa.Integer(), nullable=False),
        sa.Column("res_type", sa.String(length=40), nullable=False),
        sa.Column("high_water", sa.String(length=40), nullable=True),
        sa.Column("pass_since", sa.String(length=40), nullable=True),
        sa.Column("pass_high", sa.String(length=40), nullable=True),
        sa.Column("next_url", sa.Text(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["upstream_id"], ["sync_upstream.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("upstream_id", "res_type"),
    )
    op.create_table(
        "sync_link",
        sa.Column("upstream_id", sa.Integer(), nullable=False),
        sa.Column("res_type", sa.String(length=40), nullable=False),
        sa.Column("upstream_res_id", sa.String(length=64), nullable=False),
        sa.Column("local_res_id", sa.String(length=64), nullable=False),
        sa.Column("upstream_version", sa.String(length=64), nullable=True),
        sa.Column("upstream_last_updated", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(["upstream_id"], ["sync_upstream.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("upstream_id", "res_type", "upstream_res_id"),
    )


def downgrade() -> None:
    op.drop_table("sync_link")
    op.drop_table("sync_cursor")
    op.drop_table("sync_upstream")
