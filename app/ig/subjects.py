"""Who a person is across sources: every record linkage joined to them, and their NHS numbers,
the values under which the audit indexes their data (``patient``)."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.fhir.indexing import NHS_NUMBER_SYSTEM, parse_reference
from app.fhir.models import SearchToken
from app.linkage.models import Link
from app.linkage.service import LINKED_TYPES


@dataclass(frozen=True)
class PersonRecords:
    references: frozenset[str]  # Patient/x, RelatedPerson/y of every linked record
    nhs_numbers: frozenset[str]

    @property
    def index_values(self) -> set[str]:
        return set(self.references) | set(self.nhs_numbers)


def _nhs_value(value: str) -> str:
    system, sep, code = value.partition("|")
    if sep and system in ("", NHS_NUMBER_SYSTEM):
        return code
    return value


def person_records(session: Session, value: str) -> PersonRecords:
    """Every record of the person a value names: a Patient or RelatedPerson reference, or an
    NHS number (bare or system|value). A value linkage does not know is the person alone."""
    value = value.split("/_history", 1)[0].rstrip("/")
    parsed = parse_reference(value)
    nhs: set[str] = set()
    if parsed is not None and parsed[0] in LINKED_TYPES:
        records = {parsed}
    else:  # an NHS number: the records that carry it (the search index, not linkage, is keyed by it)
        number = _nhs_value(value)
        nhs.add(number)
        records = {(t, i) for t, i in session.execute(select(SearchToken.res_type, SearchToken.res_id).where(
            SearchToken.res_type.in_(LINKED_TYPES), SearchToken.param == "identifier",
            SearchToken.code == number, SearchToken.system == NHS_NUMBER_SYSTEM))}
    own = {f"{t}/{i}" for t, i in records}
    persons = {session.scalar(select(Link.person_id).where(Link.res_type == t, Link.res_id == i)) for t, i in records} - {None}
    if persons:
        for r in session.execute(select(Link.res_type, Link.res_id, Link.nhs_number).where(Link.person_id.in_(persons))):
            own.add(f"{r.res_type}/{r.res_id}")
            if r.nhs_number:
                nhs.add(r.nhs_number)
    return PersonRecords(frozenset(own), frozenset(nhs))
