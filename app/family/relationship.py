"""Does the requester's organisation have a legitimate relationship with this family?

It does when it is the infant's registered GP practice, manages an active EpisodeOfCare
for the infant (pre-birth: the mother), or takes part in an active CareTeam for them. The
MASH holds none of its own: it reaches a family only on the safeguarding (break-glass) route."""
from __future__ import annotations

from consent import LegitimateRelationship

from app.auth.tokens import Principal
from app.family.graph import FamilyGraph, Rec, organisations_of
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
    org = principal.org
    key_person = graph.members[1] if graph.mode == "pre-birth" else graph.infant
    for rec in key_person.patient_records:
        if org in organisations_of(rec, "generalPractitioner"):
            return LegitimateRelationship(True, "registered-gp")
    for rec in graph.care:
        if rec.res_type == "EpisodeOfCare" and rec.body.get("status") == "active" and org in organisations_of(rec, "managingOrganization"):
            return LegitimateRelationship(True, "episode-of-care")
        if rec.res_type == "CareTeam" and rec.body.get("status") == "active" and org in _care_team_orgs(rec):
            return LegitimateRelationship(True, "care-team")
    return LegitimateRelationship(False, None)
