"""Tables of information governance: reviews of overrides (migration 0012_ig_reviews)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

_BIGINT = BigInteger().with_variant(Integer, "sqlite")


class Review(Base):
    """One IG officer's review of an audited override or break-glass view. An event may be
    reviewed more than once (needs-follow-up, then a final outcome); the latest stands."""

    __tablename__ = "ig_review"

    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    event_seq: Mapped[int] = mapped_column(_BIGINT, nullable=False)
    event_id: Mapped[str] = mapped_column(String(64), nullable=False)
    outcome: Mapped[str] = mapped_column(String(20), nullable=False)
    note: Mapped[str] = mapped_column(Text, nullable=False)
    reviewer_sub: Mapped[str] = mapped_column(String(255), nullable=False)
    reviewer_org: Mapped[str] = mapped_column(String(16), nullable=False)
    reviewed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    review_event_id: Mapped[str] = mapped_column(String(64), nullable=False)

    __table_args__ = (Index("ix_ig_review_event", "event_seq", "id"),)


class Notification(Base):
    """The outbox: one notification to a record holder, written in the disclosure's transaction
    (migration 0013_ig_outbox). status: pending (to deliver, at next_attempt_at), sent, failed
    (retries exhausted), awaiting-pickup (no endpoint configured: the holder fetches it)."""

    __tablename__ = "ig_notification"

    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    target_org: Mapped[str] = mapped_column(String(16), nullable=False)
    communication_id: Mapped[str] = mapped_column(String(64), nullable=False)
    audit_event_id: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(255))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    endpoint: Mapped[str | None] = mapped_column(String(512))

    __table_args__ = (Index("ix_ig_notification_due", "status", "next_attempt_at"),
                      Index("ix_ig_notification_target", "target_org", "id"))
