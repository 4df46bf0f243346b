"""Extension points of the write pipeline, so labelling and linkage (or, queued, the linkage
queue entry) commit or fail with the write."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session


@dataclass
class Written:
    """A resource as it was just stored."""

    res_type: str
    res_id: str
    version_id: int
    resource: dict[str, Any]
    created: bool
    source_org: str
    source_system: str


class IngestHook(Protocol):
    def prepare(self, resource: dict[str, Any]) -> None:
        """Adjust a resource before it is stored (e.g. stamp security labels)."""

    def stored_with(self, session: Session, written: list[Written]) -> tuple[list, tuple[str, ...]]:
        """Rows to insert with the write's own, in the same round trip ((table, rows) pairs for
        insert_tables, and statements without parameters to run after them): e.g. the linkage
        queue's entries and its NOTIFY. ([], ()) for none."""

    def after_write(self, session: Session, written: list[Written]) -> None:
        """Work that must commit or fail with the write (e.g. record linkage)."""

    def writes_after_write(self) -> bool:
        """Whether after_write runs statements. When no hook does, the write's audit goes in the
        round trip of its inserts (PostgreSQL); when one does, it is appended after the hooks, so
        the audit chain's lock is not held while they work. A hook without this method counts as
        one that does."""
