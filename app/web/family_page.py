"""The family page's content, read from the `$family-view` answer (the Bundle the API returns,
from the same service): nothing here decides what may be shown, it only arranges what the
consent plan let through, in the vocabulary of app.family.contract."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from app.family import contract as c
from app.web.genogram import ROLE_WORDS, GenoPerson

RECORD_TYPES = ("Flag", "Condition", "Observation", "MedicationStatement", "MedicationRequest")
_ENTRY = re.compile(r"Bundle\.entry\[(\d+)\]")
# v3 RoleCode and UK Core role codes in words, where the source sent no display
RELATIONSHIP_WORDS = {
    "MTH": "mother", "NMTH": "natural mother", "GESTM": "gestational mother", "FTH": "father", "NFTH": "natural father",
    "NFTHF": "father of the unborn baby", "STPFTH": "stepfather", "FTHFOST": "foster father", "ADOPTF": "adoptive father",
    "PRN": "parent", "NPRN": "natural parent", "SIGOTHR": "significant other", "DOMPART": "domestic partner",
    "HUSB": "husband", "SPS": "spouse", "FMRSPS": "former spouse", "FAMMEMB": "family member", "ROOM": "household member",
    "Carer": "carer",
}
ASSURANCE_WORDS = {"level1": "low (level 1)", "level2": "medium (level 2)", "level3": "high (level 3)", "level4": "very high (level 4)"}


def _ext(resource: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [e for e in resource.get("extension") or [] if e.get("url") == url]


def _sub(ext: dict[str, Any], name: str) -> Any:
    for e in ext.get("extension") or []:
        if e.get("url") == name:
            return next((v for k, v in e.items() if k.startswith("value")), None)
    return None


def _human(name: dict[str, Any]) -> str:
    return name.get("text") or " ".join([*(name.get("prefix") or []), *(name.get("given") or []), name.get("family") or ""]).strip()


def _org(ref: dict[str, Any] | None) -> str:
    if not isinstance(ref, dict):
        return ""
    ods = (ref.get("identifier") or {}).get("value")
    display = ref.get("display")
    if display and ods:
        return f"{display} (ODS {ods})"
    return display or (f"ODS {ods}" if ods else ref.get("reference") or "")


def _text(concept: dict[str, Any] | None) -> str:
    if not isinstance(concept, dict):
        return ""
    return concept.get("text") or next((cd.get("display") or cd.get("code") for cd in concept.get("coding") or []), "") or ""


@dataclass
class NameView:
    text: str
    source: str
    linked: bool


@dataclass
class RelationshipView:
    code: str
    recorded_on: str
    source: str
    recorded: str


@dataclass
class RecordView:
    kind: str
    text: str
    date: str
    status: str


@dataclass
class WithheldView:
    text: str
    reason: str


@dataclass
class PersonView:
    anchor: str
    role: str
    gender: str | None
    names: list[NameView]
    birth_date: str | None
    nhs_number: str | None
    gp: list[str]
    relationships: list[RelationshipView]
    inferred: bool
    assurance: str | None
    inferred_basis: str | None
    unborn: bool
    edd: str | None
    reference: str
    records: list[RecordView] = field(default_factory=list)
    withheld: list[WithheldView] = field(default_factory=list)

    @property
    def role_words(self) -> str:
        return "Unborn baby" if self.unborn else ROLE_WORDS.get(self.role, self.role)

    @property
    def name(self) -> str:
        return self.names[0].text if self.names else "(name withheld or not recorded)"

    @property
    def other_names(self) -> list[NameView]:
        return [n for n in self.names[1:] if n.text != self.name]

    @property
    def assurance_words(self) -> str:
        return ASSURANCE_WORDS.get(self.assurance or "", self.assurance or "")

    def geno(self) -> GenoPerson:
        relation = ""
        if self.relationships:
            r = self.relationships[0]
            relation = f"recorded as {r.code} by {r.source}" if r.source else f"recorded as {r.code}"
        return GenoPerson(self.anchor, self.role, self.gender, self.name, unborn=self.unborn, inferred=self.inferred,
                          assurance=self.assurance, relation=relation)


@dataclass
class CareView:
    kind: str
    text: str


@dataclass
class FamilyPage:
    audit_event: str
    mode: str
    people: list[PersonView]
    care: list[CareView]
    withheld_other: list[WithheldView]
    override: list[str]  # the safeguarding override statement (details.text), one line per issue
    override_codes: set[str]
    no_father: tuple[str, str] | None  # (text, prompt)
    nothing_withheld: bool

    @property
    def infant(self) -> PersonView | None:
        return next((p for p in self.people if p.role == "infant"), None)

    def carer_lines(self) -> dict[str, str]:
        """A carer's line to the mother: household when recorded as a household member."""
        out = {}
        for p in self.people:
            if p.role in ("male-carer", "other-carer"):
                words = {r.code for r in p.relationships}
                household = {RELATIONSHIP_WORDS[k] for k in ("ROOM", "FAMMEMB", "Carer")}
                partner = {RELATIONSHIP_WORDS[k] for k in ("DOMPART", "SIGOTHR", "HUSB", "SPS")}
                out[p.anchor] = "household" if words & household and not words & partner else "partner"
        return out

    def genogram_people(self) -> list[GenoPerson]:
        return [p.geno() for p in self.people]


def _person(n: int, res: dict[str, Any], role: str) -> PersonView:
    names = []
    for name in res.get("name") or []:
        src = next(iter(_ext(name, c.EXT_NAME_SOURCE)), None)
        names.append(NameView(_human(name), _org(_sub(src, c.NAME_SOURCE_ORGANIZATION)) if src else "",
                              bool(_sub(src, c.NAME_SOURCE_LINKED)) if src else False))
    rels = []
    for prov in _ext(res, c.EXT_RELATIONSHIP_PROVENANCE):
        coding = _sub(prov, c.PROV_RELATIONSHIP) or {}
        code = coding.get("code") or ""
        rels.append(RelationshipView(coding.get("display") or RELATIONSHIP_WORDS.get(code, code), _sub(prov, c.PROV_RECORDED_ON) or "",
                                     _org(_sub(prov, c.PROV_SOURCE)), str(_sub(prov, c.PROV_RECORDED) or "")[:10]))
    if not rels and res.get("resourceType") == "RelatedPerson":  # as the source recorded it, without provenance
        for rel in res.get("relationship") or []:
            code = next((cd.get("code") for cd in rel.get("coding") or []), "") or ""
            rels.append(RelationshipView(rel.get("text") or RELATIONSHIP_WORDS.get(code) or _text(rel), "", "", ""))
    inferred = next(iter(_ext(res, c.EXT_INFERRED)), None)
    assurance = next((e.get("valueCode") for e in _ext(res, c.EXT_ASSURANCE)), None)
    nhs = next((i.get("value") for i in res.get("identifier") or [] if i.get("system") == c.NHS_NUMBER_SYSTEM), None)
    edd = next((e.get("valueDate") for e in _ext(res, c.EXT_EDD)), None)
    return PersonView(
        anchor=f"member-{n}", role=role, gender=res.get("gender"), names=names, birth_date=res.get("birthDate"),
        nhs_number=nhs, gp=[_org(g) for g in res.get("generalPractitioner") or []], relationships=rels,
        inferred=inferred is not None, assurance=assurance, inferred_basis=_sub(inferred, "basis") if inferred else None,
        unborn=bool(edd) or str(res.get("id", "")).startswith("unborn-"), edd=edd,
        reference=f"{res.get('resourceType')}/{res.get('id')}",
    )


def _record(res: dict[str, Any]) -> RecordView:
    kind = res["resourceType"]
    concept = res.get("code") or res.get("medicationCodeableConcept")
    when = res.get("recordedDate") or res.get("effectiveDateTime") or res.get("authoredOn") or res.get("onsetDateTime") \
        or (res.get("period") or {}).get("start") or res.get("issued") or ""
    status = _text(res.get("clinicalStatus")) or res.get("status") or ""
    value = res.get("valueString") or _text(res.get("valueCodeableConcept"))
    text = _text(concept) + (f": {value}" if value else "")
    return RecordView({"MedicationStatement": "Medicine", "MedicationRequest": "Prescription"}.get(kind, kind), text or "(no text)", str(when)[:10], status)


def _care(res: dict[str, Any], names: dict[str, str]) -> CareView:
    """names: a Practitioner's name by its reference and by each of its identifiers' values."""
    kind = res["resourceType"]
    if kind == "Practitioner":
        return CareView("Named professional", ", ".join(_human(n) for n in res.get("name") or []) or "(no name recorded)")
    if kind == "PractitionerRole":
        return CareView("Professional role", ", ".join(filter(None, [_text(cd) for cd in res.get("code") or []] + [_org(res.get("organization"))])))
    if kind == "EpisodeOfCare":
        return CareView("Episode of care", ", ".join(filter(None, [_text(t) for t in res.get("type") or []] + [_org(res.get("managingOrganization")), res.get("status")])))
    parts = [res.get("name") or "Care team"]
    for p in res.get("participant") or []:
        member = p.get("member") or {}
        ident = (member.get("identifier") or {}).get("value")
        who = member.get("display") or names.get(str(member.get("reference"))) or (names.get(ident) if ident else None) or _org(member)
        role = ", ".join(_text(r) for r in p.get("role") or [])
        if who or role:
            parts.append(f"{who} ({role})" if role and who else who or role)
    parts += [_org(o) for o in res.get("managingOrganization") or []]
    return CareView("Care team", " · ".join(filter(None, parts)))


def read(bundle: dict[str, Any], audit_event: str | None) -> FamilyPage:
    entries = bundle.get("entry") or []
    people: list[PersonView] = []
    by_index: dict[int, PersonView] = {}
    by_ref: dict[str, PersonView] = {}
    care_resources: list[dict[str, Any]] = []
    outcome: dict[str, Any] = {}
    records: list[tuple[dict[str, Any], int]] = []
    for i, entry in enumerate(entries):
        res = entry.get("resource") or {}
        kind = res.get("resourceType")
        role = next((e.get("valueCode") for e in _ext(res, c.EXT_FAMILY_ROLE)), None)
        if kind in ("Patient", "RelatedPerson") and role:
            person = _person(len(people) + 1, res, role)
            people.append(person)
            by_index[i] = person
            by_ref[person.reference] = person
            for link in res.get("link") or []:
                ref = (link.get("other") or {}).get("reference")
                if ref:
                    by_ref.setdefault(ref, person)
        elif kind in c.CARE_TYPES:
            care_resources.append(res)
        elif kind == "OperationOutcome":
            outcome = res
        elif kind in RECORD_TYPES:
            records.append((res, i))
    names: dict[str, str] = {}
    for res in care_resources:
        if res["resourceType"] == "Practitioner":
            name = ", ".join(_human(n) for n in res.get("name") or [])
            if name:
                names[f"Practitioner/{res.get('id')}"] = name
                names.update({str(i["value"]): name for i in res.get("identifier") or [] if i.get("value")})
    care = [_care(res, names) for res in care_resources]
    other: list[WithheldView] = []
    for res, _ in records:
        ref = ((res.get("subject") or res.get("patient") or {}).get("reference")) or ""
        owner = by_ref.get(ref) or (people[0] if len(people) == 1 else None)
        (owner.records if owner else []).append(_record(res))
    override, codes, no_father, nothing = [], set(), None, False
    for issue in outcome.get("issue") or []:
        coding = {(cd.get("system"), cd.get("code")) for cd in (issue.get("details") or {}).get("coding") or []}
        notice = {code for system, code in coding if system == c.NOTICE_SYSTEM}
        text = (issue.get("details") or {}).get("text") or ""
        if c.NOTICE_SAFEGUARDING_OVERRIDE in notice:
            override.append(text or issue.get("diagnostics") or "")
            codes |= notice
        elif c.NOTICE_NO_FATHER_KNOWN in notice:
            no_father = (text, issue.get("diagnostics") or "")
        elif issue.get("code") == "suppressed":
            w = WithheldView(text, issue.get("diagnostics") or "")
            m = _ENTRY.search(" ".join(issue.get("expression") or []))
            owner = by_index.get(int(m.group(1))) if m else None
            if owner is None:
                role = next((code for system, code in coding if system and system.endswith("/CodeSystem/family-role")), None)
                owner = next((p for p in people if p.role == role), None)
            (owner.withheld if owner else other).append(w)
        elif issue.get("code") == "informational" and not notice:
            nothing = True
    tags = (bundle.get("meta") or {}).get("tag") or []
    mode = next((t.get("code") for t in tags if str(t.get("system", "")).endswith("family-view-mode")), "") or ""
    return FamilyPage(audit_event or bundle.get("id") or "", mode, people, care, other, override, codes, no_father, nothing)


def choose_infant(outcome: dict[str, Any]) -> list[str]:
    """From a 422 for a mother with several babies: the Patient ids to offer (no personal detail)."""
    out = []
    for issue in outcome.get("issue") or []:
        coding = (issue.get("details") or {}).get("coding") or []
        if any(cd.get("system") == c.NOTICE_SYSTEM and cd.get("code") == c.NOTICE_CHOOSE_INFANT for cd in coding):
            m = re.match(r"Patient/([A-Za-z0-9\-.]{1,64})/\$family-view", issue.get("diagnostics") or "")
            if m:
                out.append(m.group(1))
    return out
