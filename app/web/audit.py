"""Sign-in and sign-out as AuditEvents (BALP "login"/"logout", DICOM 110114 User
Authentication), written through the audit store's one writer (app.audit.service.append)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from app.audit import service as audit_store
from app.audit.events import FV, ROLE_SYSTEM
from app.db import Database

DCM = "http://dicom.nema.org/resources/ontology/DCM"
OUTCOME = {"success": "0", "refused": "4"}


def session_event(db: Database, *, action: str, outcome: str, sub: str, role: str | None, org: str | None,
                  how: str, detail: str, request_id: str = "") -> str:
    """action: login | logout; outcome: success | refused. Returns the event id."""
    event_id = str(uuid.uuid4())
    code = {"login": ("110122", "Login"), "logout": ("110123", "Logout")}[action]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent", "id": event_id,
        "type": {"system": DCM, "code": "110114", "display": "User Authentication"},
        "subtype": [{"system": DCM, "code": code[0], "display": code[1]},
                    {"system": f"{FV}/CodeSystem/audit-subtype", "code": action, "display": code[1]}],
        "action": "E",
        "recorded": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": OUTCOME[outcome],
        "outcomeDesc": detail,
        "agent": [{"role": [{"coding": [{"system": ROLE_SYSTEM, "code": role or "unknown"}]}],
                   "who": {"identifier": {"system": f"{FV}/Id/user", "value": sub or "unknown"}}, "requestor": True}]
        # a refused sign-in may have no organisation: "unknown", as the column says (agent_org is never empty
        # of what the body says: verify and the export's recomputed hashes read the one from the other)
        + [{"who": {"type": "Organization", "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": org or "unknown"}},
            "requestor": False}],
        "source": {"site": "familyview", "observer": {"display": f"familyview pages ({how} sign-in)"}},
        "entity": [{"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                    "detail": [{"type": "request-id", "valueString": request_id or "-"}, {"type": "method", "valueString": how}]}],
    }
    columns = audit_store.AuditColumns(
        type_code="110114", subtype_code=action, action="E", outcome=OUTCOME[outcome], purpose_of_use=None,
        agent_sub=sub or "unknown", agent_org=org or "unknown", agent_role=role or "unknown", review_required=False, policy_version=None)
    with db.session() as session:
        audit_store.append(session, event, columns)  # (its search rows: those its body implies)
    return event_id
