"""Identity guard: a write that reaches a stored Patient or RelatedPerson through one of its
identifiers (a POST carrying an NHS number or local id this source already sent, or a
conditional update by identifier) must describe the same person. One whose sex, birth date or
family name disagrees beyond a typing slip is another person under a reused or mistyped
identifier, and replacing the stored person with them would silently merge two people; it is
refused with 409. A source corrects its own record deliberately by updating it by id
(PUT Type/id): that path names the record, so it is not guarded here."""
from __future__ import annotations

from typing import Any, Mapping

from app.errors import FhirError
from app.linkage.matching import PersonRecord, compare_birth_date, compare_family, compare_sex, name_tokens

GUARDED_TYPES = frozenset({"Patient", "RelatedPerson"})

# comparison codes of app.linkage.matching that are the same person or a typing slip
_FAMILY_SLIP = 2   # exact | part of a compound name | one edit or Jaro-Winkler >= 0.92
_BIRTH_SLIP = 2    # exact | day and month swapped | one digit wrong or two transposed


def _all_family_names(resource: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Every family name the resource carries (current, old and maiden alike), normalised."""
    out = []
    for name in resource.get("name") or []:
        if isinstance(name, dict) and isinstance(name.get("family"), str):
            tokens = name_tokens(name["family"])
            if tokens:
                out.append(tokens)
    return out


def conflicting_demographics(stored: Mapping[str, Any], incoming: Mapping[str, Any]) -> list[str]:
    """The demographic elements on which `incoming` describes someone other than `stored`
    (names of elements only, never their values): empty when they can be the same person."""
    old, new = PersonRecord.from_fhir(stored), PersonRecord.from_fhir(incoming)
    found = []
    if compare_sex(old.sex, new.sex) == 1:
        found.append("gender")
    dob = compare_birth_date(old.dob_digits, new.dob_digits)
    if dob is not None and dob > _BIRTH_SLIP:
        found.append("birthDate")
    fam = compare_family(old.family_names, new.family_names)
    if fam is not None and fam > _FAMILY_SLIP:
        # a change of name (marriage, deed poll) that keeps the old one among the names is not a conflict
        olds = _all_family_names(stored)
        news = _all_family_names(incoming)
        if not any((compare_family(a, b) or 0) <= _FAMILY_SLIP for a in olds for b in news):
            found.append("name.family")
    return found


def check_same_person(res_type: str, res_id: str, stored: Mapping[str, Any], incoming: Mapping[str, Any],
                      how: str, expr_prefix: str) -> None:
    """Refuse (409) a write that reached Type/id by identifier but describes another person.
    The OperationOutcome names the elements that disagree, not the stored values (no PHI of
    the stored person reaches the sender), and the correction path."""
    if res_type not in GUARDED_TYPES:
        return
    elements = conflicting_demographics(stored, incoming)
    if not elements:
        return
    prefix = expr_prefix or f"{res_type}."
    raise FhirError(
        409, "conflict",
        f"This {res_type} resolves by {how} to {res_type}/{res_id}, already sent by this source, but its "
        f"{', '.join(elements)} describe a different person; nothing was written. If the identifier is wrong, "
        f"correct it; if the stored record is wrong, update it by id (PUT {res_type}/{res_id})",
        expression=[f"{prefix}{e}" for e in elements] + [f"{prefix}identifier"], spine_code="DUPLICATE_REJECTED",
    )
