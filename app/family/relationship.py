"""Does the requester's organisation have a legitimate relationship with this family?

It does when it is the infant's registered GP practice, manages an active EpisodeOfCare
for the infant (pre-birth: the mother), or takes part in an active CareTeam for them. The
MASH holds none of its own: it reaches a family only on the safeguarding (break-glass) route."""
from __future__ import annotations

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
    return relationship_with(principal, key_person.patient_records, graph.care)


def relationship_with_any(principal: Principal, people: list[KeyPerson]) -> LegitimateRelationship:
    """The first relationship held with any of these people (see graph.route_people)."""
    for person in people:
        found = relationship_with(principal, person.patient_records, person.care)
        if found.holds:
            return found
    return LegitimateRelationship(False, None)


def relationship_with(principal: Principal, patient_records: list[Rec], care: list[Rec]) -> LegitimateRelationship:
    org = principal.org
    for rec in patient_records:
        if org in organisations_of(rec, "generalPractitioner"):
            return LegitimateRelationship(True, "registered-gp")
    for rec in care:
        if rec.res_type == "EpisodeOfCare" and rec.body.get("status") == "active" and org in organisations_of(rec, "managingOrganization"):
            return LegitimateRelationship(True, "episode-of-care")
        if rec.res_type == "CareTeam" and rec.body.get("status") == "active" and org in _care_team_orgs(rec):
            return LegitimateRelationship(True, "care-team")
    return LegitimateRelationship(False, None)
