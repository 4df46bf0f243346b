"""Tables of the linked-person index (migration 0002).

* ``linkage_person``    a linked person (exposed as FHIR ``Person``); merged persons stay,
                        inactive, pointing at the person they were merged into.
* ``linkage_link``      one row per Patient/RelatedPerson: which person it belongs to, with
                        what assurance (level1..level4), match probability and how (auto |
                        manual); also the record's normal form for matching (``features``),
                        so one new record is compared without reading FHIR bodies.
* ``linkage_key``       blocking keys: (64-bit hash of the key, record), primary key leads
                        with the hash, so candidate look-up is one indexed range scan.
* ``linkage_candidate`` the review queue: possible pairs with score and explanation,
                        status open | confirmed | rejected | superseded.
* ``linkage_decision``  manual decisions on a pair (match | no-match), who/why/when;
                        automatic re-matching never overrides an active one.
* ``linkage_event``     the event log: every create/join/move/split/merge/unlink/confirm/
                        reject with who and why.
* ``linkage_queue``     records written but not linked yet, when linkage runs after the
                        write's commit (migration 0007; ``app.linkage.queue``).
* ``linkage_queue_key`` the blocking keys of queued records (migration 0014; one row per record
                        with its keys in an array since 0016), so a reader
                        settles only the queued records that could join the people it reads.

On SQLite ``linkage_link`` and ``linkage_key`` are WITHOUT ROWID tables (migration 0006): the
rows live in their primary-key B-tree, so a record is found with one B-tree descent instead
of two (primary-key index, then the rowid table) and a key row is stored once instead of
twice (rowid table and primary-key index). Linking one record reads ~8 key buckets and a
few link rows and writes ~8 key rows: at 10^6 persons those B-trees are far larger than the
page cache, so every descent saved is a page that need not be fetched.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

REF_LEN = 110  # "RelatedPerson/<64-char id>"
KEY_HASHES = JSON().with_variant(postgresql.ARRAY(BigInteger()), "postgresql")  # a bigint[] (PostgreSQL) or a JSON array of key hashes


class LinkedPerson(Base):
    __tablename__ = "linkage_person"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    merged_into: Mapped[str | None] = mapped_column(String(64))


class Link(Base):
    __tablename__ = "linkage_link"

    res_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    res_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    person_id: Mapped[str] = mapped_column(String(64), ForeignKey("linkage_person.id"), nullable=False)
    assurance: Mapped[str] = mapped_column(String(8), nullable=False)
    probability: Mapped[float] = mapped_column(Float, nullable=False)
    how: Mapped[str] = mapped_column(String(8), nullable=False)  # auto | manual
    matched_ref: Mapped[str | None] = mapped_column(String(REF_LEN))  # the member it was matched with
    nhs_number: Mapped[str | None] = mapped_column(String(10))
    source_org: Mapped[str] = mapped_column(String(16), nullable=False)
    features: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (Index("ix_linkage_link_person", "person_id"), {"sqlite_with_rowid": False})

    @property
    def ref(self) -> str:
        return f"{self.res_type}/{self.res_id}"


class BlockingKey(Base):
    __tablename__ = "linkage_key"

    key_hash: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    res_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    res_id: Mapped[str] = mapped_column(String(64), primary_key=True)

    __table_args__ = (Index("ix_linkage_key_record", "res_type", "res_id"), {"sqlite_with_rowid": False})


class ReviewCandidate(Base):
    __tablename__ = "linkage_candidate"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    a_ref: Mapped[str] = mapped_column(String(REF_LEN), nullable=False)  # a_ref < b_ref
    b_ref: Mapped[str] = mapped_column(String(REF_LEN), nullable=False)
    probability: Mapped[float] = mapped_column(Float, nullable=False)
    match_weight: Mapped[float] = mapped_column(Float, nullable=False)
    explanation: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(12), nullable=False)  # open | confirmed | rejected | superseded
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    decided_by: Mapped[str | None] = mapped_column(String(255))
    decided_reason: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("a_ref", "b_ref", name="uq_linkage_candidate_pair"),
        Index("ix_linkage_candidate_b", "b_ref"),
        Index("ix_linkage_candidate_status", "status", "probability"),
    )


class ManualDecision(Base):
    __tablename__ = "linkage_decision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    a_ref: Mapped[str] = mapped_column(String(REF_LEN), nullable=False)  # a_ref < b_ref
    b_ref: Mapped[str] = mapped_column(String(REF_LEN), nullable=False)
    decision: Mapped[str] = mapped_column(String(10), nullable=False)  # match | no-match
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    candidate_id: Mapped[int | None] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    revoked_by: Mapped[str | None] = mapped_column(String(255))
    revoked_reason: Mapped[str | None] = mapped_column(Text)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_linkage_decision_a", "a_ref", "active"),
        Index("ix_linkage_decision_b", "b_ref", "active"),
    )


class LinkageEvent(Base):
    __tablename__ = "linkage_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    record_ref: Mapped[str | None] = mapped_column(String(REF_LEN))
    from_person: Mapped[str | None] = mapped_column(String(64))
    to_person: Mapped[str | None] = mapped_column(String(64))
    candidate_id: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    detail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_linkage_event_record", "record_ref"),
        Index("ix_linkage_event_from", "from_person"),
        Index("ix_linkage_event_to", "to_person"),
    )


class QueuedRecord(Base):
    """A Patient/RelatedPerson written but not linked yet: the durable queue of the queued
    linkage mode (settings ``linkage_mode``), written in the write's transaction and emptied
    by ``app.linkage.queue.drain``. It names the record, not a version: the drain links the
    record as it is stored when it runs, so a record written twice is linked once."""

    __tablename__ = "linkage_queue"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(40), nullable=False)
    res_id: Mapped[str] = mapped_column(String(64), nullable=False)
    enqueued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (Index("ix_linkage_queue_record", "res_type", "res_id"),)


class QueuedRecordKey(Base):
    """The blocking keys of a queued record, written with its queue entry (migration 0014): a
    reader of linkage settles only the queued records that could join the people it reads,
    those sharing a key with them (``app.linkage.queue.settle_records``), so a family view
    does not wait for a bulk load of unrelated records to be linked. Kept while any queue
    entry names the record. A key hash 0 (ANY_KEY) marks a record queued before keys were
    kept: every reader settles it.

    One row per record with its key hashes in one array (migration 0016; a JSON array on
    SQLite): a Bundle's 40 people wrote ~370 rows of one key each, and their index entries
    were the write's costliest statement on PostgreSQL (~2 ms of a Bundle, then a delete as
    large in the worker). A GIN index finds the records sharing a key."""

    __tablename__ = "linkage_queue_key"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(40), nullable=False)
    res_id: Mapped[str] = mapped_column(String(64), nullable=False)
    key_hashes: Mapped[list[int]] = mapped_column(KEY_HASHES, nullable=False)

    __table_args__ = (Index("ix_linkage_queue_key_hashes", "key_hashes", postgresql_using="gin"),
                      Index("ix_linkage_queue_key_record", "res_type", "res_id"))
