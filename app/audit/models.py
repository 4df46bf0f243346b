"""The audit store. Rows are only ever inserted: database triggers refuse UPDATE and DELETE,
and each row carries the hash of the one before, so `familyview audit verify` can prove
the chain untouched or name the first broken link."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

AUDIT_TABLES = ("audit_event", "audit_index", "audit_head")


class AuditRecord(Base):
    __tablename__ = "audit_event"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    recorded: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    type_code: Mapped[str] = mapped_column(String(40), nullable=False)
    subtype_code: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[str] = mapped_column(String(1), nullable=False)
    outcome: Mapped[str] = mapped_column(String(2), nullable=False)
    purpose_of_use: Mapped[str | None] = mapped_column(String(16))
    agent_sub: Mapped[str] = mapped_column(String(255), nullable=False)
    agent_org: Mapped[str] = mapped_column(String(16), nullable=False)
    agent_role: Mapped[str] = mapped_column(String(32), nullable=False)
    review_required: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    policy_version: Mapped[str | None] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text, nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)
    # what the hash covers (app.audit.walk: FORM_BODY, FORM_SEALED); a row that does not say was
    # written before migration 0020, over its body alone
    hash_form: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default="1")

    __table_args__ = (
        Index("ix_audit_event_recorded", "recorded"),
        Index("ix_audit_event_agent", "agent_sub"),
        Index("ix_audit_event_agent_org", "agent_org"),
        Index("ix_audit_event_review", "review_required"),
        Index("ix_audit_event_purpose", "purpose_of_use"),
    )


class AuditIndex(Base):
    """Search rows for an audit event: patient (every data subject's references and NHS
    numbers) and entity (every record disclosed or withheld)."""

    __tablename__ = "audit_index"

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    event_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), nullable=False)
    param: Mapped[str] = mapped_column(String(16), nullable=False)
    value: Mapped[str] = mapped_column(String(255), nullable=False)

    __table_args__ = (Index("ix_audit_index_lookup", "param", "value"), Index("ix_audit_index_event", "event_seq"))


class AuditHead(Base):
    """The head anchor: one row per event (its seq and chain hash), written in the same
    transaction as the event and protected by the same append-only triggers. Deleting the
    newest events (or all of them) without also bypassing this table is seen by verify;
    bypassing both is seen against an anchor the IG officer kept (`verify --expect-head`)."""

    __tablename__ = "audit_head"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)
