"""Notifications delivered to the holders of records a safeguarding override disclosed (as the
CP-IS tells a child's social worker of every access), through a durable outbox.

The family view writes the Communication and its outbox row in the disclosure's own
transaction (``enqueue``), so a notification exists exactly when the disclosure does. After
commit a deliverer (``deliver_due``, run by ``Deliverer`` in each server process) claims due
rows, posts each to the holder's configured endpoint (a FHIR ``Communication`` POSTed to
``{url}/Communication``, or a webhook), and records the outcome: sent, or retried with
exponential backoff until ``notification_max_attempts``, then failed. A claim is a lease in
the database, so a restart (or a crash mid-post) loses nothing: the row falls due again
(delivery is at least once; the Communication's identifier lets a receiver drop a repeat).
A holder with no endpoint configured fetches its own (status awaiting-pickup)."""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.audit import balp
from app.auth.tokens import Principal
from app.db import Database
from app.ig.models import Notification
from app.settings import Settings
from app.urls import CANONICAL_BASE

log = logging.getLogger("familyview")
STATUSES = ("pending", "sent", "failed", "awaiting-pickup")
NOTIFICATION_ID_SYSTEM = f"{CANONICAL_BASE}/Id/notification"
CLAIM = 20  # rows claimed per round


def _now() -> datetime:
    return datetime.now(timezone.utc)


def enqueue(session: Session, settings: Settings, target_org: str, communication: dict[str, Any],
            audit_event_id: str | None) -> Notification:
    """The outbox row for a stored notification, in the caller's (the disclosure's) transaction."""
    endpoint = settings.notification_endpoints.get(target_org)
    row = Notification(
        created_at=_now(), target_org=target_org, communication_id=str(communication["id"]), audit_event_id=audit_event_id,
        payload=json.dumps(communication, separators=(",", ":")), attempts=0,
        status="pending" if endpoint else "awaiting-pickup", next_attempt_at=_now() if endpoint else None,
        endpoint=_endpoint_url(endpoint) if endpoint else None,
    )
    session.add(row)
    session.flush()
    return row


def _endpoint_url(endpoint: dict[str, str]) -> str:
    url = endpoint["url"].rstrip("/")
    return f"{url}/Communication" if endpoint.get("kind", "fhir") == "fhir" else url


def _message(row: Notification, endpoint: dict[str, str]) -> dict[str, Any]:
    communication = json.loads(row.payload)
    communication["status"] = "completed"
    communication["identifier"] = [{"system": NOTIFICATION_ID_SYSTEM, "value": row.communication_id}]
    communication.pop("id", None)  # the holder's server assigns its own
    communication.pop("meta", None)
    if endpoint.get("kind", "fhir") == "fhir":
        return communication
    return {"event": "safeguarding-disclosure", "notification": row.communication_id, "communication": communication}


def backoff(settings: Settings, attempts: int) -> timedelta:
    seconds = settings.notification_backoff_seconds * 2 ** max(attempts - 1, 0)
    return timedelta(seconds=min(seconds, settings.notification_max_backoff_seconds))


def _claim(db: Database, settings: Settings, now: datetime) -> list[tuple[int, str, dict[str, str] | None]]:
    lease = timedelta(seconds=settings.notification_timeout_seconds * 2 + 5)
    with db.session() as session:
        rows = session.execute(
            select(Notification.id, Notification.target_org).where(Notification.status == "pending", Notification.next_attempt_at <= now)
            .order_by(Notification.next_attempt_at, Notification.id).limit(CLAIM).with_for_update(skip_locked=True)).all()
        if rows:  # leased: another deliverer skips them until the lease runs out
            session.execute(update(Notification).where(Notification.id.in_([r.id for r in rows])).values(next_attempt_at=now + lease))
    return [(r.id, r.target_org, settings.notification_endpoints.get(r.target_org)) for r in rows]


def deliver_due(db: Database, settings: Settings, *, client: httpx.Client | None = None, now: datetime | None = None) -> int:
    """Deliver every due notification once; returns how many were attempted."""
    now = now or _now()
    claimed = _claim(db, settings, now)
    if not claimed:
        return 0
    own = client is None
    client = client or httpx.Client(timeout=settings.notification_timeout_seconds)
    try:
        for nid, _target, endpoint in claimed:
            with db.session(readonly=True) as session:
                row = session.get(Notification, nid)
            error = None
            if endpoint is None:  # the endpoint was removed from the settings since: the holder fetches it
                outcome = "awaiting-pickup"
            else:
                headers = {"Content-Type": "application/fhir+json" if endpoint.get("kind", "fhir") == "fhir" else "application/json"}
                if endpoint.get("bearer_token"):
                    headers["Authorization"] = f"Bearer {endpoint['bearer_token']}"
                try:
                    r = client.post(_endpoint_url(endpoint), content=json.dumps(_message(row, endpoint)), headers=headers)
                    error = None if r.is_success else f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                outcome = "sent" if error is None else "retry"
            _record(db, settings, nid, outcome, error, endpoint)
    finally:
        if own:
            client.close()
    return len(claimed)


def _record(db: Database, settings: Settings, nid: int, outcome: str, error: str | None, endpoint: dict[str, str] | None) -> None:
    now = _now()
    with db.session() as session:
        row = session.get(Notification, nid)
        if row is None or row.status != "pending":
            return
        row.endpoint = _endpoint_url(endpoint) if endpoint else row.endpoint
        if outcome == "awaiting-pickup":
            row.status, row.next_attempt_at = "awaiting-pickup", None
            return
        row.attempts += 1
        if outcome == "sent":
            row.status, row.sent_at, row.next_attempt_at, row.last_error = "sent", now, None, None
            return
        row.last_error = (error or "error")[:255]
        if row.attempts >= settings.notification_max_attempts:
            row.status, row.next_attempt_at = "failed", None
            log.warning("notification %s to %s failed after %d attempts: %s", row.communication_id, row.target_org, row.attempts, row.last_error)
        else:
            row.next_attempt_at = now + backoff(settings, row.attempts)


@dataclass
class NotificationView:
    id: str
    target_org: str
    created: datetime
    status: str
    attempts: int
    last_error: str | None
    sent: datetime | None
    next_attempt: datetime | None
    endpoint: str | None
    audit_event: str | None
    communication: dict[str, Any]

    def to_json(self, *, with_communication: bool = True) -> dict[str, Any]:
        def ts(d: datetime | None) -> str | None:
            if d is None:
                return None
            d = d if d.tzinfo else d.replace(tzinfo=timezone.utc)
            return d.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

        out: dict[str, Any] = {"id": self.id, "communication": f"Communication/{self.id}", "recipient": self.target_org,
                               "created": ts(self.created), "status": self.status, "attempts": self.attempts,
                               "lastError": self.last_error, "sent": ts(self.sent), "nextAttempt": ts(self.next_attempt),
                               "endpoint": self.endpoint, "auditEvent": f"AuditEvent/{self.audit_event}" if self.audit_event else None}
        if with_communication:
            out["resource"] = self.communication
        return out


def notifications(session: Session, *, target_org: str | None = None, status: str | None = None,
                  offset: int = 0, count: int = 50) -> tuple[int, list[NotificationView]]:
    """Notifications newest first, with their delivery status (the IG officer: all; a holder: its own)."""
    where = []
    if target_org is not None:
        where.append(Notification.target_org == target_org)
    if status is not None:
        where.append(Notification.status == status)
    total = session.scalar(select(func.count()).select_from(Notification).where(*where)) or 0
    rows = session.scalars(select(Notification).where(*where).order_by(Notification.id.desc()).offset(offset).limit(count)).all()
    return total, [NotificationView(r.communication_id, r.target_org, r.created_at, r.status, r.attempts, r.last_error, r.sent_at,
                                    r.next_attempt_at, r.endpoint, r.audit_event_id, json.loads(r.payload)) for r in rows]


def read_notifications(session: Session, principal: Principal, *, target_org: str | None = None, status: str | None = None,
                       offset: int = 0, count: int = 50, query: str = "", request_id: str = "") -> tuple[int, list[NotificationView]]:
    """Notifications as the IG officer or a holder reads them (the API and the pages): the read audited, naming each one shown."""
    total, found = notifications(session, target_org=target_org, status=status, offset=offset, count=count)
    event = balp.AccessEvent(principal, "notifications-read", action="R", request_id=request_id, query=query,
                             outcome_desc=f"{total} notification(s)")
    for n in found:
        event.entity(f"Communication/{n.id}", status=n.status)
    balp.record(session, event)
    return total, found


class Deliverer:
    """Delivers due notifications on a background thread of the server process, every
    ``notification_poll_seconds``; started and stopped with the app (app.main)."""

    def __init__(self, db: Database, settings: Settings):
        self.db, self.settings = db, settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="notification-deliverer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=self.settings.notification_timeout_seconds) as client:
            while not self._stop.is_set():
                try:
                    while deliver_due(self.db, self.settings, client=client) and not self._stop.is_set():
                        pass
                except Exception:  # noqa: BLE001 - a database hiccup: the rows stay due, try again next round
                    log.exception("notification delivery round failed")
                self._stop.wait(self.settings.notification_poll_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
