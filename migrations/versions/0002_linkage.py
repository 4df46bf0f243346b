"""Record linkage: linked persons, links, blocking keys, review queue, manual decisions, event log

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 04:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "linkage_person",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("merged_into", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "linkage_link",
        sa.Column("res_type", sa.String(length=40), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("person_id", sa.String(length=64), nullable=False),
        sa.Column("assurance", sa.String(length=8), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("how", sa.String(length=8), nullable=False),
        sa.Column("matched_ref", sa.String(length=110), nullable=True),
        sa.Column("nhs_number", sa.String(length=10), nullable=True),
        sa.Column("source_org", sa.String(length=16), nullable=False),
        sa.Column("features", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["person_id"], ["linkage_person.id"]),
        sa.PrimaryKeyConstraint("res_type", "res_id"),
    )
    with op.batch_alter_table("linkage_link", schema=None) as batch_op:
        batch_op.create_index("ix_linkage_link_person", ["person_id"], unique=False)

    op.create_table(
        "linkage_key",
        sa.Column("key_hash", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("res_type", sa.String(length=40), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", "res_type", "res_id"),
    )
    with op.batch_alter_table("linkage_key", schema=None) as batch_op:
        batch_op.create_index("ix_linkage_key_record", ["res_type", "res_id"], unique=False)

    op.create_table(
        "linkage_candidate",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("a_ref", sa.String(length=110), nullable=False),
        sa.Column("b_ref", sa.String(length=110), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("match_weight", sa.Float(), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=255), nullable=True),
        sa.Column("decided_reason", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("a_ref", "b_ref", name="uq_linkage_candidate_pair"),
    )
    with op.batch_alter_table("linkage_candidate", schema=None) as batch_op:
        batch_op.create_index("ix_linkage_candidate_b", ["b_ref"], unique=False)
        batch_op.create_index("ix_linkage_candidate_status", ["status", "probability"], unique=False)

    op.create_table(
        "linkage_decision",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("a_ref", sa.String(length=110), nullable=False),
        sa.Column("b_ref", sa.String(length=110), nullable=False),
        sa.Column("decision", sa.String(length=10), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("revoked_by", sa.String(length=255), nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("linkage_decision", schema=None) as batch_op:
        batch_op.create_index("ix_linkage_decision_a", ["a_ref", "active"], unique=False)
        batch_op.create_index("ix_linkage_decision_b", ["b_ref", "active"], unique=False)

    op.create_table(
        "linkage_event",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("record_ref", sa.String(length=110), nullable=True),
        sa.Column("from_person", sa.String(length=64), nullable=True),
        sa.Column("to_person", sa.String(length=64), nullable=True),
        sa.Column("candidate_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("linkage_event", schema=None) as batch_op:
        batch_op.create_index("ix_linkage_event_record", ["record_ref"], unique=False)
        batch_op.create_index("ix_linkage_event_from", ["from_person"], unique=False)
        batch_op.create_index("ix_linkage_event_to", ["to_person"], unique=False)


def downgrade() -> None:
    for table, indexes in (
        ("linkage_event", ("ix_linkage_event_to", "ix_linkage_event_from", "ix_linkage_event_record")),
        ("linkage_decision", ("ix_linkage_decision_b", "ix_linkage_decision_a")),
        ("linkage_candidate", ("ix_linkage_candidate_status", "ix_linkage_candidate_b")),
        ("linkage_key", ("ix_linkage_key_record",)),
        ("linkage_link", ("ix_linkage_link_person",)),
    ):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for ix in indexes:
                batch_op.drop_index(ix)
        op.drop_table(table)
    op.drop_table("linkage_person")
