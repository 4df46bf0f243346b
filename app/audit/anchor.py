"""Tamper evidence beyond the database: a signed checkpoint of the chain (a JWS over the
event count and the head hash), kept where a database administrator cannot rewrite it (a
file on other storage, or POSTed to a URL: a transparency log, the IG team's mailbox).

``familyview audit anchor`` verifies the chain, then signs {count, head_seq, head_hash} with
the anchor key from settings (RS256; the key file is created on first use, mode 0600);
``familyview audit verify --anchor FILE`` checks the signature and that the chain still holds
at least that many events and, at that position, that very hash: a chain cut back below the
checkpoint, or rewritten (every later hash recomputed) since, fails."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import balp
from app.audit.models import AuditRecord
from app.audit.service import VerifyResult, verify
from app.auth.tokens import LocalKey, Principal
from app.db import Database
from app.settings import Settings

ALGORITHM = "RS256"
TYPE = "familyview-audit-anchor+jwt"


def _key(settings: Settings) -> LocalKey:
    key = LocalKey(settings.audit_anchor_key_path)
    key.kid = "familyview-audit-anchor"
    return key


def sign(settings: Settings, result: VerifyResult) -> str:
    """The JWS of a verified chain's checkpoint."""
    claims = {"count": result.checked, "head_seq": result.head_seq or 0, "head_hash": result.head_hash,
              "iat": int(time.time()), "iss": settings.deployment_name}
    key = _key(settings)
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": TYPE})


def make_anchor(session: Session, settings: Settings, *, workers: int = 1) -> tuple[VerifyResult, str | None]:
    """Verify the chain and sign its checkpoint; a broken chain is not anchored."""
    result = verify(session, workers=workers)
    return result, sign(settings, result) if result.ok else None


@dataclass
class AnchorCheck:
    ok: bool
    message: str
    claims: dict[str, Any] | None = None


def read_anchor(settings: Settings, token: str) -> AnchorCheck:
    try:
        claims = jwt.decode(token.strip(), _key(settings).public_key, algorithms=[ALGORITHM], options={"require": ["iat"]})
    except jwt.PyJWTError as exc:
        return AnchorCheck(False, f"the anchor's signature does not verify with this deployment's anchor key ({type(exc).__name__})")
    if not isinstance(claims.get("count"), int) or not isinstance(claims.get("head_hash"), str):
        return AnchorCheck(False, "the anchor does not hold a count and a head hash")
    return AnchorCheck(True, "", claims)


def verify_against(session: Session, settings: Settings, token: str, *, workers: int = 1) -> tuple[VerifyResult | None, AnchorCheck]:
    """The chain verified, and held against a signed checkpoint."""
    check = read_anchor(settings, token)
    if not check.ok or check.claims is None:
        return None, check
    count, head = check.claims["count"], check.claims["head_hash"]
    result = verify(session, expect_head=head if count else None, expect_count=count, workers=workers)
    if not result.ok:
        return result, AnchorCheck(False, str(result), check.claims)
    if count:
        # the anchored hash must still be the count-th event's: not merely somewhere in the chain
        at = session.execute(select(AuditRecord.hash).order_by(AuditRecord.seq).offset(count - 1).limit(1)).scalar()
        if at != head:
            return result, AnchorCheck(False, f"the chain's event #{count} no longer has the anchored hash {head} (rewritten since the anchor)", check.claims)
    return result, AnchorCheck(True, f"the chain holds the anchor: {count} events up to hash {head}, and {result.checked - count} since", check.claims)


ANCHOR_SUBTYPE = "audit-anchor"


def record_anchor(session: Session, result: VerifyResult, token: str, destination: str) -> str:
    """An anchor made is an IG action on the chain (after the checkpoint it signs): when, how
    many events, which head hash, and where the signed checkpoint went."""
    claims = jwt.decode(token, options={"verify_signature": False})
    event = balp.AccessEvent(balp.GATEWAY, ANCHOR_SUBTYPE, action="E",
                             outcome_desc=f"anchored {result.checked} events, head hash {result.head_hash}, to {destination}")
    event.entity(f"{balp.FV}/audit-anchor/{claims['iat']}", count=str(result.checked), head_hash=result.head_hash,
                 head_seq=str(result.head_seq or 0), destination=destination, issued=str(claims["iat"]))
    return balp.record(session, event)


@dataclass
class LastAnchor:
    event_id: str
    recorded: datetime
    count: int
    head_hash: str
    destination: str
    held: bool  # the chain still has that hash at that position


def last_anchor(session: Session) -> LastAnchor | None:
    """The newest anchor the audit recorded, and whether the chain still holds it."""
    row = session.execute(select(AuditRecord.event_id, AuditRecord.recorded, AuditRecord.body)
                          .where(AuditRecord.subtype_code == ANCHOR_SUBTYPE).order_by(AuditRecord.seq.desc()).limit(1)).one_or_none()
    if row is None:
        return None
    details: dict[str, str] = {}
    for e in json.loads(row.body).get("entity") or []:
        details.update({d.get("type"): d.get("valueString") for d in e.get("detail") or [] if isinstance(d, dict)})
    count, head = int(details.get("count") or 0), details.get("head_hash") or ""
    at = session.execute(select(AuditRecord.hash).order_by(AuditRecord.seq).offset(count - 1).limit(1)).scalar() if count else None
    recorded = row.recorded if row.recorded.tzinfo else row.recorded.replace(tzinfo=timezone.utc)
    return LastAnchor(row.event_id, recorded, count, head, details.get("destination") or "", held=not count or at == head)


@dataclass
class ChainStatus:
    result: VerifyResult
    anchor: LastAnchor | None


def chain_status(db: Database, principal: Principal, *, request_id: str = "") -> ChainStatus:
    """Verify the chain and read the last anchor, for an IG officer (one snapshot for the
    walk); the check is itself audited, after the walk."""
    with db.session(readonly=True) as session:
        result, anchor = verify(session), last_anchor(session)
    with db.session() as session:
        balp.record(session, balp.AccessEvent(principal, "audit-verify", action="E", request_id=request_id,
                                              outcome_desc=str(result).splitlines()[0]))
    return ChainStatus(result, anchor)
