"""Tables of the sync from upstream FHIR servers: one row per upstream and source, its cursor per
resource type (high-water mark and the page in progress), and the upstream-id -> local-id map."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class SyncUpstream(Base):
    """An upstream FHIR server read on behalf of one source organisation."""

    __tablename__ = "sync_upstream"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    base_url: Mapped[str] = mapped_column(String(512), nullable=False)
    source_org: Mapped[str] = mapped_column(String(16), nullable=False)
    service: Mapped[str] = mapped_column(String(40), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (UniqueConstraint("base_url", "source_org", name="uq_sync_upstream_base_org"),)


class SyncCursor(Base):
    """Per upstream and resource type: everything up to high_water is in; a pass in progress
    records where it is (the upstream's next-page link), so an interrupted run resumes there."""

    __tablename__ = "sync_cursor"

    upstream_id: Mapped[int] = mapped_column(ForeignKey("sync_upstream.id", ondelete="CASCADE"), primary_key=True)
    res_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    high_water: Mapped[str | None] = mapped_column(String(40))  # the upstream's meta.lastUpdated, as it wrote it
    pass_since: Mapped[str | None] = mapped_column(String(40))  # the lower bound of the pass in progress
    pass_high: Mapped[str | None] = mapped_column(String(40))  # the newest lastUpdated seen by that pass so far
    next_url: Mapped[str | None] = mapped_column(Text)  # the page to fetch next; NULL when no pass is in progress
    pages: Mapped[int] = mapped_column(Integer, nullable=False, default=0)  # pages committed by the pass
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class SyncLink(Base):
    """Which local record an upstream record became, so references between synced records resolve."""

    __tablename__ = "sync_link"

    upstream_id: Mapped[int] = mapped_column(ForeignKey("sync_upstream.id", ondelete="CASCADE"), primary_key=True)
    res_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    upstream_res_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    local_res_id: Mapped[str] = mapped_column(String(64), nullable=False)
    upstream_version: Mapped[str | None] = mapped_column(String(64))
    upstream_last_updated: Mapped[str | None] = mapped_column(String(40))
