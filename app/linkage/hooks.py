"""Record linkage in the ingest pipeline: the hook that links each written Patient and
RelatedPerson, in the write's transaction (inline) or right after it (queued).

It sits above both ways of linking: the service (``app.linkage.service``, which links) and
the queue (``app.linkage.queue``, which names records for the worker and links them with
the service), so neither of those imports the other's caller: the queue imports the
service, and the service imports neither.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.ingest.hooks import Written
from app.linkage.queue import queue_entries, wake_after_commit
from app.linkage.service import LINKED_TYPES, LinkageService


class LinkageHook:
    """Ingest hook: links every written Patient/RelatedPerson in the write's transaction, or
    (queued mode) names it in the linkage queue there (``app.linkage.queue``)."""

    def __init__(self, settings):
        self.settings = settings

    def prepare(self, resource: dict[str, Any]) -> None:  # nothing to stamp
        return None

    def stored_with(self, session: Session, written: list[Written]) -> tuple[list, tuple[str, ...]]:
        """Queued: the records' queue entries, inserted with the write's own rows (one round trip)."""
        mine = [w for w in written if w.res_type in LINKED_TYPES]
        if not mine or not self.settings.linkage_queued:
            return [], ()
        conn = session.connection()
        if conn.dialect.name == "sqlite":  # PostgreSQL's worker is woken by the NOTIFY at commit
            wake_after_commit(session)
        return queue_entries(conn, mine)

    def writes_after_write(self) -> bool:  # inline linkage writes links and its audit in the write's transaction
        return not self.settings.linkage_queued

    def after_write(self, session: Session, written: list[Written]) -> None:
        mine = [w for w in written if w.res_type in LINKED_TYPES]
        if mine and not self.settings.linkage_queued:  # queued: named in the queue with the write's rows (stored_with)
            LinkageService.from_settings(session, self.settings).link_written(mine)
