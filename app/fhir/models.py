"""Tables of the FHIR store: current resources, their full history, search index rows and
the source keys that make a re-sent record an update rather than a duplicate."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class StoredResource(Base):
    __tablename__ = "resource"

    res_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    res_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, nullable=False)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    source_org: Mapped[str] = mapped_column(String(16), nullable=False)
    source_system: Mapped[str] = mapped_column(String(64), nullable=False)

    __table_args__ = (
        Index("ix_resource_type_updated", "res_type", "last_updated"),
        Index("ix_resource_source", "source_org", "res_type"),
    )


class ResourceVersion(Base):
    __tablename__ = "resource_version"

    res_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    res_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    method: Mapped[str] = mapped_column(String(8), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    source_org: Mapped[str] = mapped_column(String(16), nullable=False)
    source_system: Mapped[str] = mapped_column(String(64), nullable=False)


class SearchToken(Base):
    __tablename__ = "search_token"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(40), nullable=False)
    res_id: Mapped[str] = mapped_column(String(64), nullable=False)
    param: Mapped[str] = mapped_column(String(40), nullable=False)
    system: Mapped[str | None] = mapped_column(String(255))
    code: Mapped[str] = mapped_column(String(255), nullable=False)

    __table_args__ = (
        Index("ix_search_token_lookup", "res_type", "param", "code", "system"),
        Index("ix_search_token_resource", "res_type", "res_id"),
    )


class SearchString(Base):
    __tablename__ = "search_string"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(40), nullable=False)
    res_id: Mapped[str] = mapped_column(String(64), nullable=False)
    param: Mapped[str] = mapped_column(String(40), nullable=False)
    value: Mapped[str] = mapped_column(String(255), nullable=False)

    __table_args__ = (
        Index("ix_search_string_lookup", "res_type", "param", "value"),
        Index("ix_search_string_resource", "res_type", "res_id"),
    )


class SearchDate(Base):
    __tablename__ = "search_date"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(40), nullable=False)
    res_id: Mapped[str] = mapped_column(String(64), nullable=False)
    param: Mapped[str] = mapped_column(String(40), nullable=False)
    # ISO-8601 UTC strings "YYYY-MM-DDTHH:MM:SS" so that ranges compare the same on both databases
    low: Mapped[str] = mapped_column(String(32), nullable=False)
    high: Mapped[str] = mapped_column(String(32), nullable=False)

    __table_args__ = (
        Index("ix_search_date_lookup", "res_type", "param", "low", "high"),
        Index("ix_search_date_resource", "res_type", "res_id"),
    )


class SearchReference(Base):
    """A reference from one resource to another: literal (target_id) or logical (identifier)."""

    __tablename__ = "search_reference"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(40), nullable=False)
    res_id: Mapped[str] = mapped_column(String(64), nullable=False)
    param: Mapped[str] = mapped_column(String(40), nullable=False)
    target_type: Mapped[str | None] = mapped_column(String(40))
    target_id: Mapped[str | None] = mapped_column(String(64))
    ident_system: Mapped[str | None] = mapped_column(String(255))
    ident_value: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        # partial on PostgreSQL: a reference is literal (target) or logical (identifier), rarely
        # both, and every look-up binds the column it probes, so the index holds only the rows
        # a look-up can find (a Bundle's ~150 references made ~150 entries of NULLs)
        Index("ix_search_reference_target", "param", "target_type", "target_id", postgresql_where=text("target_id IS NOT NULL")),
        Index("ix_search_reference_ident", "param", "ident_value", "ident_system", postgresql_where=text("ident_value IS NOT NULL")),
        Index("ix_search_reference_resource", "res_type", "res_id"),
    )


class SourceKey(Base):
    """(source organisation, type, identifier) -> resource: the same record sent again is an update."""

    __tablename__ = "source_key"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_org: Mapped[str] = mapped_column(String(16), nullable=False)
    res_type: Mapped[str] = mapped_column(String(40), nullable=False)
    system: Mapped[str] = mapped_column(String(255), nullable=False)
    value: Mapped[str] = mapped_column(String(255), nullable=False)
    res_id: Mapped[str] = mapped_column(String(64), nullable=False)

    __table_args__ = (
        # led by value: the write path looks a Bundle's identifiers up by value alone (one probe
        # each), and the one index serves that and uniqueness (0018_source_key_by_value_unique)
        UniqueConstraint("source_org", "value", "res_type", "system", name="uq_source_key"),
        Index("ix_source_key_resource", "res_type", "res_id"),
    )
