"""The family as data: records, members, their relationships and the graph, as assembled from
the store by :mod:`app.family.graph` and decided on by :mod:`app.family.plan`. Plain
dataclasses with no database, so that a family can be built by hand (tests, what-if questions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any

from app.fhir.indexing import NHS_NUMBER_SYSTEM, ODS_SYSTEM, identifiers_of
from app.fhir.validation import is_valid_nhs_number
from app.linkage.matching import level_rank


@dataclass
class Rec:
    """A stored record as the family view sees it."""

    res_type: str
    res_id: str
    body: dict[str, Any]
    source_org: str
    assurance: str = "level4"  # how surely it belongs to the person it was found for

    @property
    def ref(self) -> str:
        return f"{self.res_type}/{self.res_id}"

    @cached_property
    def identifiers(self) -> list[tuple[str, str]]:
        return identifiers_of(self.body)

    @cached_property
    def nhs_number(self) -> str | None:
        for system, value in self.identifiers:
            if system == NHS_NUMBER_SYSTEM and is_valid_nhs_number(value):
                return value
        return None

    @property
    def gender(self) -> str | None:
        return self.body.get("gender")

    @property
    def birth_date(self) -> date | None:
        value = self.body.get("birthDate")
        try:
            return date.fromisoformat(value) if isinstance(value, str) and len(value) == 10 else None
        except ValueError:
            return None


@dataclass
class Relationship:
    """How a member is related to the infant, as some source recorded it."""

    code: str
    recorded_on: str  # "infant" | "mother"
    record: Rec  # the RelatedPerson that records it


@dataclass
class FamilyMember:
    role: str
    records: list[Rec] = field(default_factory=list)  # Patient / RelatedPerson records of this person
    relationships: list[Relationship] = field(default_factory=list)
    unborn: bool = False
    expected_delivery: str | None = None
    clinical: list[Rec] = field(default_factory=list)  # Flag / Condition / Observation
    consents: list[Rec] = field(default_factory=list)

    @property
    def patient_records(self) -> list[Rec]:
        return [r for r in self.records if r.res_type == "Patient"]

    @property
    def key(self) -> str:
        return self.primary.ref if self.records else "unborn"

    @property
    def primary(self) -> Rec:
        """The record the view is built on: a Patient if the person has one (the surest)."""
        patients = sorted(self.patient_records, key=lambda r: (-level_rank(r.assurance), r.source_org, r.res_id))
        if patients:
            return patients[0]
        return sorted(self.records, key=lambda r: (-level_rank(r.assurance), r.source_org, r.res_id))[0]

    @property
    def weakest_assurance(self) -> str:
        return min((r.assurance for r in self.records), key=level_rank, default="level4")

    @property
    def nhs_number(self) -> str | None:
        return next((r.nhs_number for r in self.records if r.nhs_number), None)

    @property
    def gender(self) -> str | None:
        return next((r.gender for r in self.records if r.gender), None)

    @property
    def birth_date(self) -> date | None:
        return next(
            (r.birth_date for r in sorted(self.records, key=lambda r: -level_rank(r.assurance)) if r.birth_date), None
        )


@dataclass
class FamilyGraph:
    subject: Rec  # the record the request named
    mode: str  # "infant" | "pre-birth"
    members: list[FamilyMember]
    care: list[Rec]  # EpisodeOfCare / CareTeam of the infant (pre-birth: the mother)
    birth_or_due: date | None
    # pre-birth: the mother's antenatal contacts (Encounter) and pregnancy referrals (ServiceRequest)
    contacts: list[Rec] = field(default_factory=list)
    # Practitioner / PractitionerRole records the care records name (the named professionals)
    professionals: list[Rec] = field(default_factory=list)
    # the start of the current pregnancy (pre-birth): contacts before it are another pregnancy's
    pregnancy_since: date | None = None

    @property
    def infant(self) -> FamilyMember:
        return self.members[0]


@dataclass
class KeyPerson:
    """Someone a legitimate relationship is judged on: their Patient records (every linked
    source) and the EpisodeOfCare/CareTeam about them (only active ones count)."""

    patient_records: list[Rec]
    care: list[Rec]
    contacts: list[Rec] = field(default_factory=list)  # pre-birth: antenatal contacts, pregnancy referrals
    pregnancy_since: date | None = None


def organisations_of(rec: Rec, field_name: str) -> set[str]:
    """ODS codes named by a reference field (logical by identifier)."""
    out = set()
    value = rec.body.get(field_name)
    for ref in value if isinstance(value, list) else [value] if value else []:
        ident = (ref or {}).get("identifier") or {}
        if ident.get("system") == ODS_SYSTEM and ident.get("value"):
            out.add(ident["value"])
    return out
