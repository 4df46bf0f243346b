"""Where the family is assembled: from the infant (or, pre-birth, the pregnant mother) to her
mother, father(s) and the men in a caring role, across every source, through recorded
relationships and record linkage. Reads the store directly: this is the one place that
looks across organisations, and what it finds is disclosed only item by item."""
from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any, Iterable

from sqlalchemy import and_, bindparam, func, null, select, union_all
from sqlalchemy.orm import Session

from app.db import in_list, ref_lists
from app.errors import FhirError, not_found
from app.family import roles
from app.auth.tokens import Principal
from app.family.members import FamilyGraph, FamilyMember, KeyPerson, Rec, Relationship
from app.family.plan import PERSON_CONFIDENTIALITY, contact_points, drop_shared_contact, record_labels
from app.fhir import store
from app.fhir.models import ResourceVersion
from app.fhir.indexing import NHS_NUMBER_SYSTEM, ODS_SYSTEM, parse_reference
from app.fhir.models import SearchReference, SearchToken, StoredResource
from app.fhir.validation import is_valid_nhs_number
from app.linkage.service import linked_records_many

PERSON_TYPES = ("Patient", "RelatedPerson")
CONTACT_TYPES = ("Encounter", "ServiceRequest")  # pre-birth: antenatal contacts and pregnancy referrals
PROFESSIONAL_TYPES = ("Practitioner", "PractitionerRole")
RECORD_TYPES = ("Flag", "Condition", "Observation", "MedicationStatement", "MedicationRequest")
PREGNANCY_SCT = "77386006"
EDD_LOINC = "11778-8"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"


# ---------------------------------------------------------------- store access
# Core column selects, not ORM entities: the view reads a few dozen rows and must stay cheap.

_COLUMNS = (StoredResource.res_type, StoredResource.res_id, StoredResource.body, StoredResource.source_org)
_JOIN = and_(SearchReference.res_type == StoredResource.res_type, SearchReference.res_id == StoredResource.res_id)


# Statements built once: a view runs a dozen of them, and building SQL costs more than running it.
_LOAD = select(*_COLUMNS).where(
    in_list(StoredResource.res_type, "types"), in_list(StoredResource.res_id, "ids"), StoredResource.deleted.is_(False)
)
_BY_IDENTIFIER = (
    select(*_COLUMNS)
    .join(SearchToken, and_(SearchToken.res_type == StoredResource.res_type, SearchToken.res_id == StoredResource.res_id))
    .where(SearchToken.res_type == "Patient", SearchToken.param == "identifier", SearchToken.code == bindparam("value"),
           StoredResource.deleted.is_(False))
    .order_by(StoredResource.last_updated, StoredResource.res_id)
)
_REFERENCING = union_all(
    select(*_COLUMNS, null().label("ident_system"), null().label("ident_value")).join(SearchReference, _JOIN).where(
        in_list(SearchReference.param, "params"), SearchReference.target_type == bindparam("target_type"),
        in_list(SearchReference.target_id, "ids"), in_list(SearchReference.res_type, "types"), StoredResource.deleted.is_(False),
    ),
    select(*_COLUMNS, SearchReference.ident_system, SearchReference.ident_value).join(SearchReference, _JOIN).where(
        in_list(SearchReference.param, "params"), in_list(SearchReference.ident_value, "values"),
        in_list(SearchReference.res_type, "types"),
        # unresolved references only; as an expression, not `target_id IS NULL`, so that no
        # planner takes the target index for it and walks every logical reference in the table
        func.coalesce(SearchReference.target_id, "") == "", StoredResource.deleted.is_(False),
    ),
)

def _rows_to_recs(rows: Iterable[Any]) -> list[Rec]:
    return [Rec(r.res_type, r.res_id, json.loads(r.body), r.source_org) for r in rows]


def load_records(session: Session, refs: Iterable[tuple[str, str]]) -> list[Rec]:
    refs = set(refs)
    if not refs:
        return []
    # plain IN lists on the primary key's columns: both databases use the index for these
    rows = session.connection().execute(_LOAD, ref_lists(refs)).all()
    return _rows_to_recs(r for r in rows if (r.res_type, r.res_id) in refs)


def find_subject(session: Session, *, res_id: str | None = None, identifier: str | None = None) -> Rec:
    if res_id is not None:
        found = load_records(session, [("Patient", res_id)])
        if not found:
            raise not_found(f"Patient/{res_id} is not known")
        return found[0]
    # FHIR token semantics: `system|value` that system, `|value` no system, `value` any system
    has_system = "|" in (identifier or "")
    system, _, value = (identifier or "").rpartition("|")
    if not value:
        raise FhirError(400, "required", "identifier must be system|value, e.g. https://fhir.nhs.uk/Id/nhs-number|9990001103", expression="identifier", spine_code="MISSING_VALUE")
    if system == NHS_NUMBER_SYSTEM and not is_valid_nhs_number(value):
        # the wire contract's 422; the number itself is never echoed (nor logged)
        raise FhirError(422, "business-rule", "identifier: not a valid NHS number (10 digits with a Modulus 11 check digit)",
                        expression="identifier", spine_code="INVALID_NHS_NUMBER")
    if system:
        stmt = _BY_IDENTIFIER.where(SearchToken.system == system)
    elif has_system:
        stmt = _BY_IDENTIFIER.where(func.coalesce(SearchToken.system, "") == "")
    else:
        stmt = _BY_IDENTIFIER
    rows = session.connection().execute(stmt.limit(1), {"value": value}).all()
    if not rows:
        raise not_found("No patient with that identifier is known")
    return _rows_to_recs(rows)[0]


def referencing(session: Session, types: tuple[str, ...], params: tuple[str, ...], targets: list[Rec]) -> list[Rec]:
    """Records of these types whose reference parameter points at any target, literally or
    logically (Reference.identifier naming any identifier the target carries). Each lookup is
    an equality/IN probe of an index, so its cost follows the family, not the table."""
    if not targets:
        return []
    found: dict[tuple[str, str], Any] = {}
    by_type: dict[str, set[str]] = {}
    for t in targets:
        by_type.setdefault(t.res_type, set()).add(t.res_id)
    idents = {ident for t in targets for ident in t.identifiers}
    conn = session.connection()
    for n, (target_type, ids) in enumerate(sorted(by_type.items())):
        # literal and logical references in one round trip (the logical half once)
        values = sorted({v for _, v in idents}) if n == 0 else []
        for r in conn.execute(_REFERENCING, {"params": list(params), "target_type": target_type, "ids": sorted(ids), "types": list(types), "values": values}):
            if r.ident_value is None or (r.ident_system, r.ident_value) in idents:
                found[(r.res_type, r.res_id)] = r
    return sorted(_rows_to_recs(found.values()), key=lambda r: (r.res_type, r.res_id))


def _recorded_links(rec: Rec) -> list[str]:
    out = []
    for link in rec.body.get("link") or [] if rec.res_type == "Patient" else []:
        parsed = parse_reference((link.get("other") or {}).get("reference") or "")
        if parsed and parsed[0] in PERSON_TYPES and link.get("type") in ("seealso", "refer", "replaced-by", "replaces"):
            out.append(f"{parsed[0]}/{parsed[1]}")
    return out


def same_person_many(session: Session, recs: list[Rec]) -> dict[str, list[Rec]]:
    """For each record, every Patient/RelatedPerson record of the same person with how surely
    it is: linkage at level2 (demographic) and up, and the links a source itself recorded."""
    if not recs:
        return {}
    # record linkage is the one judge of "same person": a shared valid NHS number links at
    # level3/level4 there, unless linkage saw evidence against it (then it is only a possible
    # match, left to a reviewer, and not joined here either)
    linked = linked_records_many(session, [(r.res_type, r.res_id) for r in recs], min_assurance="level2")
    wanted: dict[str, dict[str, str]] = {}
    for rec in recs:
        found = {rec.ref: "level4"}
        for link in linked.get((rec.res_type, rec.res_id), []):
            found.setdefault(link.reference, link.assurance)
        for ref in _recorded_links(rec):  # Patient.link: the source itself says these are this person
            found.setdefault(ref, "level3")
        wanted[rec.ref] = found
    known = {r.ref: r for r in recs}
    missing = {ref for found in wanted.values() for ref in found if ref not in known}
    for other in load_records(session, [tuple(ref.split("/", 1)) for ref in missing]):
        known[other.ref] = other
    # a record found by NHS number or linkage may itself record Patient.link to another
    for found in wanted.values():
        for ref in list(found):
            if ref in known:
                for linked_ref in _recorded_links(known[ref]):
                    found.setdefault(linked_ref, "level3")
    missing = {ref for found in wanted.values() for ref in found if ref not in known}
    for other in load_records(session, [tuple(ref.split("/", 1)) for ref in missing]):
        known[other.ref] = other
    out = {}
    for rec in recs:
        out[rec.ref] = [
            Rec(k.res_type, k.res_id, k.body, k.source_org, level)
            for ref, level in wanted[rec.ref].items() if (k := known.get(ref)) is not None
        ]
    return out


# ---------------------------------------------------------------- assembly

def _age_on(born: date | None, on: date) -> int | None:
    if born is None:
        return None
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def _is_infant(rec: Rec, today: date) -> bool:
    born = rec.birth_date
    return born is not None and born <= today and (today - born).days <= 366 and _age_on(born, today) == 0


is_infant = _is_infant


def current_pregnancy(session: Session, mother_records: list[Rec], today: date) -> tuple[bool, str | None]:
    """(is there a current pregnancy, its expected delivery date): from an EDD Observation
    still in the future, or an active pregnancy Condition."""
    pregnant, edd, _ = _pregnancy(session, mother_records, today)
    return pregnant, edd


GESTATION_DAYS = 280


def _pregnancy(session: Session, mother_records: list[Rec], today: date) -> tuple[bool, str | None, date | None]:
    """(pregnant, expected delivery date, when this pregnancy began): the start is the EDD less
    280 days, else the pregnancy Condition's onset or recorded date, else 280 days ago; a
    contact before it belongs to another pregnancy."""
    recs = referencing(session, ("Observation", "Condition"), ("subject", "patient"), [r for r in mother_records if r.res_type == "Patient"])
    edd = None
    pregnant = False
    started: list[str] = []
    for r in recs:
        codes = {(c.get("system"), c.get("code")) for c in (r.body.get("code") or {}).get("coding") or []}
        if r.res_type == "Observation" and (LOINC, EDD_LOINC) in codes and r.body.get("status") not in ("cancelled", "entered-in-error"):
            value = r.body.get("valueDateTime") or ""
            if value[:10] >= today.isoformat():
                edd = max(edd or "", value[:10])
        if r.res_type == "Condition" and (SCT, PREGNANCY_SCT) in codes:
            status = {c.get("code") for c in (r.body.get("clinicalStatus") or {}).get("coding") or []}
            if status & {"active", "recurrence", "relapse"}:
                pregnant = True
                when = str(r.body.get("onsetDateTime") or r.body.get("recordedDate") or "")[:10]
                if len(when) == 10:
                    started.append(when)
    since: date | None = None
    try:
        if edd:
            since = date.fromisoformat(edd) - timedelta(days=GESTATION_DAYS)
        elif started:
            since = date.fromisoformat(max(started))
    except ValueError:
        since = None
    if since is None:
        since = today - timedelta(days=GESTATION_DAYS)
    return (pregnant or edd is not None), edd, since


class _Members:
    """Collects people, merging records that turn out to be the same person."""

    def __init__(self, session: Session):
        self.session = session
        self.members: list[FamilyMember] = []
        self.by_ref: dict[str, FamilyMember] = {}

    def add(self, found: list[tuple[Rec, str, Relationship | None]]) -> None:
        """Add people found with the role their relationship gives them, in one batch."""
        records_of = same_person_many(self.session, [rec for rec, _, _ in found])
        for rec, role, relationship in found:
            records = records_of[rec.ref]
            existing = next((self.by_ref[r.ref] for r in records if r.ref in self.by_ref), None)
            if existing is None:
                existing = FamilyMember(role=role)
                self.members.append(existing)
            else:
                existing.role = roles.stronger_role(existing.role, role)
            known = {r.ref for r in existing.records}
            for r in records:
                if r.ref not in known:
                    existing.records.append(r)
                    self.by_ref[r.ref] = existing
            if relationship:
                existing.relationships.append(relationship)


def _related(rps: list[Rec], towards) -> list[tuple[Rec, str, Relationship]]:
    out = []
    for rp in rps:
        found = towards(roles.relationship_codes(rp.body), rp.gender)
        if found:
            out.append((rp, found[0], Relationship(found[1], "infant" if towards is roles.role_towards_infant else "mother", rp)))
    return out


def assemble(session: Session, subject: Rec, today: date) -> FamilyGraph:
    if subject.res_type != "Patient":
        raise not_found("The family view starts from a Patient")
    people = _Members(session)
    contacts: list[Rec] = []
    since: date | None = None
    if _is_infant(subject, today):
        people.add([(subject, "infant", None)])
        infant = people.members[0]
        mode, key_date = "infant", subject.birth_date
        around = referencing(session, ("RelatedPerson", "EpisodeOfCare", "CareTeam"), ("patient", "subject"), infant.patient_records)
        care = [r for r in around if r.res_type in ("EpisodeOfCare", "CareTeam")]
        on_infant = [r for r in around if r.res_type == "RelatedPerson"]
        team_members = load_records(session, [ref for team in care if team.res_type == "CareTeam" for ref in _participant_refs(team.body)])
        people.add(_related(on_infant + [r for r in team_members if r.ref not in {x.ref for x in on_infant}], roles.role_towards_infant))
        mothers = [m for m in people.members if m.role == "mother"]
    else:
        pregnant, edd, since = _pregnancy(session, [subject], today)
        if subject.gender != "female" or not pregnant:
            raise FhirError(
                422, "business-rule",
                "The family view is for an infant under one year, or a mother with a current pregnancy (pre-birth); this patient is neither",
                expression="Patient", spine_code="INVALID_VALUE",
            )
        people.members.append(FamilyMember(role="infant", unborn=True, expected_delivery=edd))
        people.add([(subject, "mother", None)])
        mothers = [people.members[1]]
        mode, key_date = "pre-birth", date.fromisoformat(edd) if edd else None
        care = referencing(session, ("EpisodeOfCare", "CareTeam"), ("patient", "subject"), mothers[0].patient_records)
        contacts = referencing(session, CONTACT_TYPES, ("patient", "subject"), mothers[0].patient_records)
    # the mother's partner and household: men in a caring role (pre-birth: the baby's father too)
    on_mothers = referencing(session, ("RelatedPerson",), ("patient",), [r for m in mothers for r in m.patient_records])
    people.add(_related([rp for rp in on_mothers if rp.ref not in people.by_ref], roles.role_towards_mother))
    members = sorted(people.members, key=lambda m: roles.ROLE_ORDER[m.role])
    everyone = [r for m in members for r in m.patient_records]
    records = referencing(session, RECORD_TYPES + ("Consent",), ("patient", "subject"), everyone)
    owner = {r.ref: m for m in members for r in m.patient_records}
    by_ident = {ident: m for m in members for r in m.patient_records for ident in r.identifiers}
    for rec in records:
        member = _owner_of(rec, owner, by_ident)
        if member is None:
            continue
        (member.consents if rec.res_type == "Consent" else member.clinical).append(rec)
    professionals = load_records(session, {ref for rec in care for ref in professional_refs(rec)})
    professionals += find_by_identifiers(session, PROFESSIONAL_TYPES,
                                         {i for rec in care for i in professional_identifiers(rec)}, {p.ref for p in professionals})
    # a PractitionerRole names the person in the role: the practitioner too
    roles_of = [p for p in professionals if p.res_type == "PractitionerRole"]
    known = {p.ref for p in professionals}
    professionals += [p for p in load_records(session, {ref for r in roles_of for ref in professional_refs(r)}) if p.ref not in known]
    known = {p.ref for p in professionals}
    professionals += find_by_identifiers(session, ("Practitioner",), {i for r in roles_of for i in professional_identifiers(r)}, known)
    return FamilyGraph(subject=subject, mode=mode, members=members, care=care, birth_or_due=key_date, contacts=contacts,
                       professionals=professionals, pregnancy_since=since)


def _referenced_patients(session: Session, rps: list[Rec]) -> list[Rec]:
    """The Patients these RelatedPersons are recorded on (literal or logical reference)."""
    literal, found = set(), []
    for rp in rps:
        ref = rp.body.get("patient") or {}
        parsed = parse_reference(ref.get("reference") or "")
        if parsed and parsed[0] == "Patient":
            literal.add(parsed)
            continue
        ident = ref.get("identifier") or {}
        if ident.get("value"):
            try:
                # a logical reference without a system names the value in any system
                system = ident.get("system")
                found.append(find_subject(session, identifier=f"{system}|{ident['value']}" if system else ident["value"]))
            except FhirError:
                continue
    return found + load_records(session, literal)


def route_people(session: Session, subject: Rec, today: date) -> list[KeyPerson]:
    """For a subject who is not an infant: the people a requester's legitimate relationship is
    judged on before anything is said about the subject (not even whether she is pregnant):
    the subject (as the key person of a pre-birth view is), and each infant under one that a
    source records the subject as mother, father or carer of (the family view of that infant)."""
    own = same_person_many(session, [subject])[subject.ref]
    people = [KeyPerson([r for r in own if r.res_type == "Patient"], [])]
    rps = [r for r in own if r.res_type == "RelatedPerson" and roles.role_towards_infant(roles.relationship_codes(r.body), r.gender)]
    infants = [p for p in _referenced_patients(session, rps) if _is_infant(p, today)]
    if infants:
        linked = same_person_many(session, infants)
        for infant in infants:
            people.append(KeyPerson([r for r in linked[infant.ref] if r.res_type == "Patient"], []))
    for person in people:
        person.care = referencing(session, ("EpisodeOfCare", "CareTeam"), ("patient", "subject"), person.patient_records)
    # the subject as a pregnant mother: her antenatal contacts and pregnancy referrals in this pregnancy
    people[0].contacts = referencing(session, CONTACT_TYPES, ("patient", "subject"), people[0].patient_records)
    if people[0].contacts:
        people[0].pregnancy_since = _pregnancy(session, people[0].patient_records, today)[2]
    return people


def infants_of_mother(session: Session, subject: Rec, today: date) -> list[Rec]:
    """The infants under one that a source records the subject as mother of (her RelatedPerson
    MTH/NMTH/GESTM, or PRN/NPRN as a woman, on the baby, joined to her by linkage), one record
    per baby (records of one baby joined by linkage count once), in a stable order."""
    own = same_person_many(session, [subject])[subject.ref]
    rps = [r for r in own if r.res_type == "RelatedPerson"
           and (roles.role_towards_infant(roles.relationship_codes(r.body), r.gender or subject.gender) or ("",))[0] == "mother"]
    infants = [p for p in _referenced_patients(session, rps) if _is_infant(p, today)]
    if not infants:
        return []
    linked = same_person_many(session, infants)
    babies: list[Rec] = []
    seen: set[str] = set()
    for infant in sorted(infants, key=lambda r: r.res_id):
        if infant.ref in seen:
            continue
        seen |= {r.ref for r in linked[infant.ref]}
        babies.append(infant)
    return babies


def _participant_refs(care_team: dict) -> list[tuple[str, str]]:
    out = []
    for p in care_team.get("participant") or []:
        parsed = parse_reference((p.get("member") or {}).get("reference") or "")
        if parsed and parsed[0] == "RelatedPerson":
            out.append(parsed)
    return out


def _owner_of(rec: Rec, owner: dict[str, FamilyMember], by_ident: dict) -> FamilyMember | None:
    ref = rec.body.get("patient") if rec.res_type == "Consent" else rec.body.get("subject")
    if not isinstance(ref, dict):
        return None
    parsed = parse_reference(ref.get("reference") or "")
    if parsed and f"{parsed[0]}/{parsed[1]}" in owner:
        return owner[f"{parsed[0]}/{parsed[1]}"]
    ident = ref.get("identifier") or {}
    return by_ident.get((ident.get("system"), ident.get("value")))


def professional_refs(rec: Rec) -> set[tuple[str, str]]:
    """The Practitioner / PractitionerRole records a CareTeam or EpisodeOfCare names by literal
    reference (participant.member, careManager)."""
    out = set()
    for ref in _professional_references(rec):
        parsed = parse_reference(ref.get("reference") or "")
        if parsed and parsed[0] in PROFESSIONAL_TYPES:
            out.add(parsed)
    return out


def professional_identifiers(rec: Rec) -> set[tuple[str, str]]:
    """(system, value) of the professionals a care record names logically (Reference.identifier)."""
    out = set()
    for ref in _professional_references(rec):
        ident = ref.get("identifier") or {}
        if ref.get("type") in PROFESSIONAL_TYPES and ident.get("system") and ident.get("value"):
            out.add((ident["system"], ident["value"]))
    return out


def _professional_references(rec: Rec) -> list[dict]:
    body = rec.body
    refs = [p.get("member") for p in body.get("participant") or [] if isinstance(p, dict)] if rec.res_type == "CareTeam" else []
    if rec.res_type == "EpisodeOfCare":
        refs.append(body.get("careManager"))
    if rec.res_type == "PractitionerRole":
        refs.append(body.get("practitioner"))
    return [r for r in refs if isinstance(r, dict)]


_BY_IDENTIFIERS = (
    select(*_COLUMNS)
    .join(SearchToken, and_(SearchToken.res_type == StoredResource.res_type, SearchToken.res_id == StoredResource.res_id))
    .where(in_list(SearchToken.res_type, "types"), SearchToken.param == "identifier", in_list(SearchToken.code, "values"),
           StoredResource.deleted.is_(False))
    .order_by(StoredResource.res_type, StoredResource.res_id)
)


def find_by_identifiers(session: Session, types: tuple[str, ...], identifiers: set[tuple[str, str]], known: set[str]) -> list[Rec]:
    """Records of these types carrying any of the identifiers (one indexed probe), less those known."""
    if not identifiers:
        return []
    rows = session.connection().execute(
        _BY_IDENTIFIERS.add_columns(SearchToken.system, SearchToken.code),
        {"types": list(types), "values": sorted({v for _, v in identifiers})},
    ).all()
    found = {}
    for r in rows:
        if (r.system, r.code) in identifiers and f"{r.res_type}/{r.res_id}" not in known:
            found[(r.res_type, r.res_id)] = r
    return _rows_to_recs(found.values())


_ORGANISATIONS = (
    select(SearchToken.code, StoredResource.body)
    .join(StoredResource, and_(SearchToken.res_type == StoredResource.res_type, SearchToken.res_id == StoredResource.res_id))
    .where(SearchToken.res_type == "Organization", SearchToken.param == "identifier", SearchToken.system == ODS_SYSTEM,
           in_list(SearchToken.code, "codes"), StoredResource.deleted.is_(False))
    .order_by(StoredResource.last_updated, StoredResource.res_id)
)


def organisation_names(session: Session, ods_codes: Iterable[str]) -> dict[str, str]:
    """The name each organisation gave itself in its Organization resource, by ODS code (the
    latest description), so that a practitioner is told who holds a
    record, not only its code. An organisation no source has described is left out."""
    codes = sorted({c for c in ods_codes if c})
    if not codes:
        return {}
    names: dict[str, str] = {}
    for code, body in session.connection().execute(_ORGANISATIONS, {"codes": codes}):
        name = (json.loads(body) if isinstance(body, str) else body).get("name")
        if isinstance(name, str) and name.strip():
            names[code] = name.strip()
    return names


def _ods_in(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        if node.get("system") == ODS_SYSTEM and isinstance(node.get("value"), str):
            out.add(node["value"])
        for v in node.values():
            if isinstance(v, (dict, list)):
                _ods_in(v, out)
    elif isinstance(node, list):
        for v in node:
            _ods_in(v, out)


def ods_codes_of(graph: FamilyGraph) -> set[str]:
    """Every organisation the view may name: the sources of the family's records, and every ODS
    code the people and care records name (GP practices, care teams' organisations)."""
    codes: set[str] = set()
    for m in graph.members:
        for r in (*m.records, *m.clinical, *(rel.record for rel in m.relationships)):
            codes.add(r.source_org)
        for r in m.records:
            _ods_in(r.body.get("generalPractitioner"), codes)
    for r in (*graph.care, *graph.professionals):
        codes.add(r.source_org)
        _ods_in(r.body, codes)
    return {c for c in codes if c}


PERSON_TYPES = ("Patient", "RelatedPerson")


def as_shown(session: Session, principal: Principal, rows: list[StoredResource | ResourceVersion]) -> list[dict[str, Any]]:
    """The rows of a REST read or search as this reader may see them (store.shown): a record of a
    person sent by another organisation loses what their restricted (R) or very restricted (V)
    label withholds, the label found on any linked record of theirs from any source (a label is
    the person's, as in the family view: plan.person_labels), so the GP's unlabelled copy of a
    restricted mother shows an administrator no more than maternity's labelled one; and, as the
    family view does, the phone numbers and homes it shares with a restricted person it is
    related to (her baby's address is hers; so is the home of the partner she lives with)."""
    others = {(r.res_type, r.res_id): r for r in rows if r.source_org != principal.org and r.res_type in PERSON_TYPES}
    labels: dict[str, set[str]] = {}
    shared: dict[str, tuple[set[tuple[str, str]], set[str]]] = {}
    if others:
        recs = [Rec(r.res_type, r.res_id, json.loads(r.body), r.source_org) for r in others.values()]
        for ref, same in same_person_many(session, recs).items():
            labels[ref] = _confidentiality_of(same)
        shared = _restricted_relatives_contact(session, recs, labels)
    out = []
    for r in rows:
        ref = f"{r.res_type}/{r.res_id}"
        resource = store.shown(principal, r, labels.get(ref, set()))
        if ref in shared and drop_shared_contact(resource, *shared[ref]):
            store.mark_redacted(resource)
        out.append(resource)
    return out


def _confidentiality_of(records: Iterable[Rec]) -> set[str]:
    return {code for rec in records for code in record_labels(rec)[1] if code in PERSON_CONFIDENTIALITY}


def _restricted_relatives_contact(session: Session, recs: list[Rec], labels: dict[str, set[str]]
                                  ) -> dict[str, tuple[set[tuple[str, str]], set[str]]]:
    """For each record of an unrestricted person: the phone numbers (as compared) and home
    postcodes of the restricted (R/V) people it is related to: the person a RelatedPerson is
    recorded on, and the RelatedPersons recorded on a Patient (the baby's mother, the mother's
    partner), with every linked record of theirs."""
    plain = [r for r in recs if not labels.get(r.ref)]
    if not plain:
        return {}
    related: dict[str, list[Rec]] = {r.ref: [] for r in plain}
    targets = {}
    for rec in plain:
        parsed = parse_reference(((rec.body.get("patient") or {}).get("reference") or "")) if rec.res_type == "RelatedPerson" else None
        if parsed and parsed[0] == "Patient":
            targets.setdefault(parsed, []).append(rec.ref)
    for target in load_records(session, targets):
        for ref in targets[(target.res_type, target.res_id)]:
            related[ref].append(target)
    patients = [r for r in plain if r.res_type == "Patient"]
    for rp in referencing(session, ("RelatedPerson",), ("patient",), patients):
        on = rp.body.get("patient") or {}
        parsed = parse_reference(on.get("reference") or "")
        ident = on.get("identifier") or {}
        for rec in patients:  # literally, or logically by an identifier the Patient carries
            if parsed == (rec.res_type, rec.res_id) or (parsed is None and (ident.get("system"), ident.get("value")) in rec.identifiers):
                related[rec.ref].append(rp)
    relatives = {r.ref: r for rs in related.values() for r in rs}
    persons = same_person_many(session, list(relatives.values()))
    out = {}
    for ref, rels in related.items():
        restricted = [persons.get(rel.ref, [rel]) for rel in rels]
        phones, homes = contact_points(r for same in restricted
                                       if _confidentiality_of(same) and ref not in {s.ref for s in same} for r in same)
        if phones or homes:
            out[ref] = (phones, homes)
    return out
