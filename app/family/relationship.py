"""Does the requester's organisation have a legitimate relationship with this family?

It does when it is the infant's registered GP practice, manages an active EpisodeOfCare
for the infant (pre-birth: the mother), or takes part in an active CareTeam for them; pre-birth
also when it has had an antenatal contact with the mother in this pregnancy (an Encounter it
provided) or holds a referral about her pregnancy (a ServiceRequest it is to perform), as a
health visitor has before the birth. The MASH holds none of its own: it reaches a family only
on the safeguarding (break-glass) route."""
from __future__ import annotations

from datetime import date

from consent import LegitimateRelationship

from app.auth.tokens import Principal
from app.family.members import FamilyGraph, KeyPerson, Rec, organisations_of
from app.fhir.indexing import ODS_SYSTEM


def _care_team_orgs(team: Rec) -> set[str]:
    orgs = organisations_of(team, "managingOrganization")
    for p in team.body.get("participant") or []:
        for key in ("member", "onBehalfOf"):
            ident = (p.get(key) or {}).get("identifier") or {}
            if ident.get("system") == ODS_SYSTEM and ident.get("value"):
                orgs.add(ident["value"])
    return orgs


def legitimate_relationship(principal: Principal, graph: FamilyGraph) -> LegitimateRelationship:
    key_person = graph.members[1] if graph.mode == "pre-birth" else graph.infant
    contacts = graph.contacts if graph.mode == "pre-birth" else []
    return relationship_with(principal, key_person.patient_records, graph.care, contacts, graph.pregnancy_since)


def relationship_with_any(principal: Principal, people: list[KeyPerson]) -> LegitimateRelationship:
    """The first relationship held with any of these people (see graph.route_people)."""
    for person in people:
        found = relationship_with(principal, person.patient_records, person.care, person.contacts, person.pregnancy_since)
        if found.holds:
            return found
    return LegitimateRelationship(False, None)


_CONTACT_OFF = {"cancelled", "entered-in-error", "revoked", "draft"}  # a contact or referral that did not happen


def _ods_refs(value: object) -> set[str]:
    """ODS codes a reference (or a list of them) names by identifier."""
    out = set()
    for ref in value if isinstance(value, list) else [value] if value else []:
        ident = (ref or {}).get("identifier") or {} if isinstance(ref, dict) else {}
        if ident.get("system") == ODS_SYSTEM and ident.get("value"):
            out.add(ident["value"])
    return out


def _contact_date(rec: Rec) -> str:
    body = rec.body
    if rec.res_type == "Encounter":
        period = body.get("period") or {}
        return str(period.get("start") or period.get("end") or "")
    return str(body.get("authoredOn") or body.get("occurrenceDateTime") or (body.get("occurrencePeriod") or {}).get("start") or "")


def pregnancy_contact(org: str, contacts: list[Rec], since: date | None) -> str | None:
    """The basis a pre-birth contact gives the organisation, if any: an antenatal contact (an
    Encounter about the mother it provided) or a pregnancy referral (an active or completed
    ServiceRequest it is to perform), dated in this pregnancy (undated ones count)."""
    for rec in contacts:
        if rec.body.get("status") in _CONTACT_OFF:
            continue
        when = _contact_date(rec)[:10]
        if since is not None and when and when < since.isoformat():
            continue
        if rec.res_type == "Encounter" and org in _ods_refs(rec.body.get("serviceProvider")):
            return "antenatal-contact"
        if rec.res_type == "ServiceRequest" and rec.body.get("status") in ("active", "completed", "on-hold") \
                and org in _ods_refs(rec.body.get("performer")):
            return "pregnancy-referral"
    return None


def relationship_with(principal: Principal, patient_records: list[Rec], care: list[Rec], contacts: list[Rec] | None = None,
                      pregnancy_since: date | None = None) -> LegitimateRelationship:
    org = principal.org
    for rec in patient_records:
        if org in organisations_of(rec, "generalPractitioner"):
            return LegitimateRelationship(True, "registered-gp")
    for rec in care:
        if rec.res_type == "EpisodeOfCare" and rec.body.get("status") == "active" and org in organisations_of(rec, "managingOrganization"):
            return LegitimateRelationship(True, "episode-of-care")
        if rec.res_type == "CareTeam" and rec.body.get("status") == "active" and org in _care_team_orgs(rec):
            return LegitimateRelationship(True, "care-team")
    basis = pregnancy_contact(org, contacts or [], pregnancy_since)
    if basis:
        return LegitimateRelationship(True, basis)
    return LegitimateRelationship(False, None)
