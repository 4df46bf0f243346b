"""Refused requests of one client audited without letting a flood grow the audit without end.

Each client (a token's issuer and subject) has its refusals written one AuditEvent each, as any
access is, for the first ``individually`` of every window (a minute by default); the rest of
that window are counted into one summary AuditEvent (outcome, purpose and agent as the first
coalesced one, every distinct subject asked for up to MAX_SUBJECTS, and the count), written
through the audit store's one writer when the window has closed: by the client's next refusal,
by the flusher every window, and at shutdown. A coalesced response names the summary event
(X-Audit-Event), whose id is fixed when coalescing starts."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from app.audit import service as audit_store
from app.audit.events import FamilyViewAudit

log = logging.getLogger("familyview")
MAX_SUBJECTS = 100


@dataclass
class _Window:
    index: int
    written: int = 0
    summary: FamilyViewAudit | None = None
    coalesced: int = 0
    first: float = 0.0
    last: float = 0.0
    subjects: dict[str, tuple[str, str, list[str]]] = field(default_factory=dict)


def client_key(principal: Any) -> str:
    return f"{principal.claims.get('iss', '')}|{principal.sub}"


class RefusalCoalescer:
    def __init__(self, individually: int = 10, window_seconds: int = 60):
        self.individually = individually
        self.window = max(1, window_seconds)
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._db: Any = None
        self._stopping = threading.Event()

    def admit(self, session: Any, audit: FamilyViewAudit, now: float | None = None) -> str:
        """Audit one refused request in the caller's transaction (or count it); the event id
        the response names."""
        now = time.time() if now is None else now
        key, index = client_key(audit.principal), int(now // self.window)
        with self._lock:
            w = self._windows.get(key)
            closed = w if w is not None and w.index != index else None
            if w is None or closed is not None:
                w = self._windows[key] = _Window(index)
            if w.written < self.individually:
                w.written += 1
                coalesced = None
            else:
                if w.summary is None:
                    w.summary = FamilyViewAudit(
                        principal=audit.principal, purpose=audit.purpose, purpose_of_use=audit.purpose_of_use,
                        justification=None, query="(refused requests coalesced)", outcome=audit.outcome,
                        outcome_desc="", request_id=audit.request_id, policy_version=audit.policy_version)
                    w.first = now
                w.coalesced += 1
                w.last = now
                for s in audit.subjects:
                    if len(w.subjects) < MAX_SUBJECTS:
                        w.subjects.setdefault(s[0], s)
                coalesced = w.summary
        if closed is not None and closed.summary is not None:
            self._write(session, closed)
        if coalesced is None:
            audit_store.append(session, audit.to_fhir(), audit.columns(), audit.index())
            return audit.event_id
        self._start_flusher()
        return coalesced.event_id

    @staticmethod
    def _write(session: Any, w: _Window) -> None:
        audit = w.summary
        assert audit is not None
        audit.subjects = list(w.subjects.values())
        audit.outcome_desc = (f"{w.coalesced} further refused requests of this client coalesced "
                              f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(w.first))} to "
                              f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(w.last))}); subjects asked for: {len(w.subjects)}")
        audit_store.append(session, audit.to_fhir(), audit.columns(), audit.index())

    def flush(self, db: Any, *, everything: bool = False, now: float | None = None) -> int:
        """Write the summaries of closed windows (all, at shutdown) in one transaction."""
        index = int((time.time() if now is None else now) // self.window)
        with self._lock:
            due = [k for k, w in self._windows.items() if everything or w.index != index]
            windows = [self._windows.pop(k) for k in due]
        pending = [w for w in windows if w.summary is not None]
        if pending:
            with db.session() as session:
                for w in pending:
                    self._write(session, w)
        return len(pending)

    def bind(self, db: Any) -> None:
        self._db = db

    def _start_flusher(self) -> None:
        if self._flusher is not None or self._db is None:
            return
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(target=self._flush_forever, name="audit-refusal-flusher", daemon=True)
            self._flusher.start()

    def _flush_forever(self) -> None:
        while not self._stopping.wait(self.window / 2):
            try:
                self.flush(self._db)
            except Exception:  # noqa: BLE001 - kept for the next pass (or shutdown)
                log.warning("coalesced refusal audit not yet written; retrying", exc_info=False)

    def stop(self) -> None:
        self._stopping.set()
        if self._db is not None:
            self.flush(self._db, everything=True)
