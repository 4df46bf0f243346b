"""Which recorded relationship makes a person the infant's mother, father or a male carer.

Relationships are as recorded (v3 RoleCode on RelatedPerson.relationship, and the UK Core
additional role `Carer`); a code on a RelatedPerson of the *mother* is read relative to her."""
from __future__ import annotations

ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
UKCORE_ROLE_SYSTEMS = (
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-AdditionalPersonRelationshipRole",
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-AdditionalRelatedPersonRole",
)

MOTHER_CODES = frozenset({"MTH", "NMTH", "GESTM"})
FATHER_CODES = frozenset({"FTH", "NFTH", "NFTHF", "STPFTH", "FTHFOST", "ADOPTF"})
PARENT_CODES = frozenset({"PRN", "NPRN"})  # father when male, mother when female
CARER_CODES = frozenset({"SIGOTHR", "DOMPART", "HUSB", "SPS", "FMRSPS", "FAMMEMB", "ROOM", "Carer"})

ROLE_ORDER = {"infant": 0, "mother": 1, "father": 2, "male-carer": 3, "other-carer": 4}


def relationship_codes(related_person: dict) -> list[str]:
    codes = []
    for concept in related_person.get("relationship") or []:
        for coding in concept.get("coding") or []:
            system, code = coding.get("system"), coding.get("code")
            if code and (system == ROLE_CODE or system in UKCORE_ROLE_SYSTEMS or system is None):
                codes.append(code)
    return codes


def role_towards_infant(codes: list[str], gender: str | None) -> tuple[str, str] | None:
    """(family role, the code that says so) for a RelatedPerson recorded on the infant."""
    for code in codes:
        if code in MOTHER_CODES:
            return "mother", code
    for code in codes:
        if code in FATHER_CODES:
            return "father", code
        if code in PARENT_CODES:
            if gender == "male":
                return "father", code
            if gender == "female":
                return "mother", code
    for code in codes:
        if code in CARER_CODES:
            return ("male-carer" if gender == "male" else "other-carer"), code
    return None


def role_towards_mother(codes: list[str], gender: str | None) -> tuple[str, str] | None:
    """For a RelatedPerson on the mother: her partner or household member is a carer of the
    baby; the recorded father of her unborn child is the father. Her own parents are not."""
    for code in codes:
        if code == "NFTHF":
            return "father", code
    for code in codes:
        if code in CARER_CODES:
            return ("male-carer" if gender == "male" else "other-carer"), code
    return None


def stronger_role(a: str, b: str) -> str:
    return a if ROLE_ORDER[a] <= ROLE_ORDER[b] else b
