"""Subject access (UK GDPR Art 15(1)(c)): every disclosure of one person's data, across every
record linkage joined to them: who received it (organisation by name, user, role), when,
for what purpose, on which lawful basis, which categories were disclosed or withheld, and
whether it overrode their consent and how the IG review went.

``disclosure_report`` returns plain data (the IG pages print it); ``to_bundle`` and
``to_csv_rows`` are its FHIR and CSV views. What the report shows is only this person's:
the items of other family members and the practitioner's free-text justification, which
may name others, are left out."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import balp
from app.audit.models import AuditIndex, AuditRecord
from app.auth.tokens import Principal
from app.family.graph import organisation_names
from app.ig.reviews import ReviewStatus, latest_reviews
from app.ig.subjects import PersonRecords, person_records

DISCLOSING = ("family-view", "read", "vread", "history-instance", "search-type")
NOT_DISCLOSURES = ("AuditEvent/",)  # an IG officer reading the audit discloses no record
OVERRIDE_PURPOSES = ("THREAT", "BTG")
CSV_COLUMNS = ("date", "recipient_organisation", "recipient_ods_code", "user", "role", "purpose", "purpose_of_use",
               "lawful_basis", "categories_disclosed", "categories_withheld", "consent_overridden", "override",
               "review_status", "review_note", "audit_event")


@dataclass
class Disclosure:
    event_id: str
    recorded: datetime
    interaction: str
    recipient_org: str
    recipient_name: str | None
    user: str
    role: str
    purpose: str | None
    purpose_of_use: str | None
    lawful_bases: list[str] = field(default_factory=list)
    disclosed: list[str] = field(default_factory=list)  # categories (or resource types for a REST read)
    withheld: list[str] = field(default_factory=list)
    records: list[str] = field(default_factory=list)  # this person's records disclosed
    consent_overridden: bool = False
    override: bool = False
    review: ReviewStatus | None = None

    @property
    def review_status(self) -> str:
        if self.review is not None:
            return self.review.outcome
        return "awaiting review" if self.override else "not required"


@dataclass
class DisclosureReport:
    asked_for: str
    person: PersonRecords
    disclosures: list[Disclosure]


def _details(entity: dict[str, Any]) -> dict[str, str]:
    return {d.get("type"): d.get("valueString") for d in entity.get("detail") or [] if isinstance(d, dict)}


def _from_event(body: dict[str, Any], subtype: str, refs: frozenset[str]) -> Disclosure | None:
    agents = body.get("agent") or []
    user = next((a for a in agents if a.get("requestor")), {})
    org = next((a for a in agents if not a.get("requestor")), {})
    purposes = [c.get("code") for p in body.get("purposeOfEvent") or [] for c in p.get("coding") or []]
    purpose_text = next((p.get("text") for p in body.get("purposeOfEvent") or [] if p.get("text")), None)
    d = Disclosure(
        event_id=body["id"], recorded=datetime.fromisoformat(body["recorded"].replace("Z", "+00:00")), interaction=subtype,
        recipient_org=((org.get("who") or {}).get("identifier") or {}).get("value") or "", recipient_name=None,
        user=((user.get("who") or {}).get("identifier") or {}).get("value") or "",
        role=next((c.get("code") for r in user.get("role") or [] for c in r.get("coding") or []), "") or "",
        purpose=purpose_text, purpose_of_use=purposes[0] if purposes else None,
    )
    disclosed, withheld, bases = set(), set(), set()
    for e in body.get("entity") or []:
        if (e.get("role") or {}).get("code") != "4":
            continue
        ref = ((e.get("what") or {}).get("reference") or "")
        if ref.startswith(NOT_DISCLOSURES):
            continue
        det = _details(e)
        if subtype == "family-view":
            if det.get("subject") not in refs and ref.split("#", 1)[0] not in refs:
                continue
            category = det.get("category") or "record"
            if det.get("disclosed") == "true":
                disclosed.add(category)
                d.records.append(ref)
                if det.get("lawful-basis"):
                    bases.add(det["lawful-basis"])
                if det.get("consent-overridden"):
                    d.consent_overridden = True
            else:
                withheld.add(category)
        else:
            disclosed.add(ref.split("/", 1)[0])
            d.records.append(ref)
    if not disclosed and not withheld:
        return None
    d.disclosed, d.withheld, d.lawful_bases = sorted(disclosed), sorted(withheld - disclosed), sorted(bases)
    d.override = d.consent_overridden or (d.purpose_of_use in OVERRIDE_PURPOSES and bool(disclosed))
    return d


def disclosure_report(session: Session, asked_for: str) -> DisclosureReport:
    """Every disclosure of the person that ``asked_for`` names (a Patient or RelatedPerson
    reference, or an NHS number), through every record of theirs, oldest first."""
    person = person_records(session, asked_for)
    values = sorted(person.index_values | {asked_for})
    refs = frozenset(person.references | {asked_for})
    seqs = select(AuditIndex.event_seq).where(AuditIndex.param == "patient", AuditIndex.value.in_(values))
    rows = session.execute(
        select(AuditRecord.seq, AuditRecord.subtype_code, AuditRecord.body)
        .where(AuditRecord.seq.in_(seqs), AuditRecord.subtype_code.in_(DISCLOSING), AuditRecord.outcome == balp.OUTCOME_SUCCESS)
        .order_by(AuditRecord.seq)).all()
    found: list[tuple[int, Disclosure]] = []
    for r in rows:
        d = _from_event(json.loads(r.body), r.subtype_code, refs)
        if d is not None:
            found.append((r.seq, d))
    reviews = latest_reviews(session, [s for s, _ in found])
    names = organisation_names(session, {d.recipient_org for _, d in found})
    for seq, d in found:
        d.review = reviews.get(seq)
        d.recipient_name = names.get(d.recipient_org)
    return DisclosureReport(asked_for, person, [d for _, d in found])


def read_report(session: Session, principal: Principal, asked_for: str, *, request_id: str = "") -> DisclosureReport:
    """The report as an IG officer reads it (the API and the pages): a subject access report is
    itself an access to the person's audit, recorded in the caller's transaction."""
    report = disclosure_report(session, asked_for)
    event = balp.AccessEvent(principal, "disclosure-report", action="R", request_id=request_id,
                             outcome_desc=f"{len(report.disclosures)} disclosure(s) reported")
    event.about(sorted(report.person.index_values | {asked_for}))
    balp.record(session, event)
    return report


def _instant(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def to_bundle(report: DisclosureReport, base: str) -> dict[str, Any]:
    """A FHIR collection Bundle: one AuditEvent per disclosure, cut down to this person's items."""
    entries = []
    for d in report.disclosures:
        ext = [{"url": "review-status", "valueCode": d.review_status.replace(" ", "-")},
               {"url": "override", "valueBoolean": d.override},
               {"url": "consent-overridden", "valueBoolean": d.consent_overridden}]
        if d.review is not None:
            ext += [{"url": "review-note", "valueString": d.review.note}, {"url": "reviewed", "valueDateTime": _instant(d.review.reviewed_at)}]
        entity = [{"what": {"reference": ref}, "role": {"system": balp.ENTITY_ROLE, "code": "4", "display": "Domain Resource"}}
                  for ref in d.records]
        details = ([{"type": "category-disclosed", "valueString": c} for c in d.disclosed]
                   + [{"type": "category-withheld", "valueString": c} for c in d.withheld]
                   + [{"type": "lawful-basis", "valueString": b} for b in d.lawful_bases])
        entity.insert(0, {"what": {"reference": report.asked_for} if "/" in report.asked_for else {"display": report.asked_for},
                          "role": {"system": balp.ENTITY_ROLE, "code": "1", "display": "Patient"}, "detail": details})
        event: dict[str, Any] = {
            "resourceType": "AuditEvent", "id": d.event_id,
            "extension": [{"url": f"{balp.FV}/StructureDefinition/disclosure-summary", "extension": ext}],
            "type": {"system": balp.EVENT_TYPE_SYSTEM, "code": "rest"},
            "subtype": [{"system": balp.SUBTYPE_SYSTEM, "code": d.interaction}],
            "recorded": _instant(d.recorded), "outcome": "0",
            "agent": [
                {"who": {"identifier": {"system": f"{balp.FV}/Id/user", "value": d.user}},
                 "role": [{"coding": [{"system": balp.ROLE_SYSTEM, "code": d.role}]}], "requestor": True},
                {"who": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": d.recipient_org},
                         **({"display": d.recipient_name} if d.recipient_name else {})}, "requestor": False},
            ],
            "source": {"observer": {"display": "familyview FHIR gateway"}},
            "entity": entity,
        }
        if d.purpose_of_use:
            event["purposeOfEvent"] = [{"coding": [{"system": balp.PURPOSE_SYSTEM, "code": d.purpose_of_use}], "text": d.purpose or d.purpose_of_use}]
        entries.append({"fullUrl": f"{base}/AuditEvent/{d.event_id}", "resource": event})
    return {"resourceType": "Bundle", "type": "collection", "timestamp": _instant(datetime.now(timezone.utc)),
            "total": len(entries), "entry": entries}


def to_csv_rows(report: DisclosureReport) -> Iterator[dict[str, str]]:
    for d in report.disclosures:
        yield {
            "date": _instant(d.recorded), "recipient_organisation": d.recipient_name or "", "recipient_ods_code": d.recipient_org,
            "user": d.user, "role": d.role, "purpose": d.purpose or "", "purpose_of_use": d.purpose_of_use or "",
            "lawful_basis": "; ".join(d.lawful_bases), "categories_disclosed": "; ".join(d.disclosed),
            "categories_withheld": "; ".join(d.withheld), "consent_overridden": "yes" if d.consent_overridden else "no",
            "override": "yes" if d.override else "no", "review_status": d.review_status,
            "review_note": d.review.note if d.review else "", "audit_event": f"AuditEvent/{d.event_id}",
        }


def to_csv(report: DisclosureReport) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in to_csv_rows(report):
        writer.writerow({k: safe_cell(v) for k, v in row.items()})
    return out.getvalue()


def safe_cell(value: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
