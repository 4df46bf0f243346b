"""The identifiers of the NHS in England, checked one way everywhere (ingest validation,
linkage, auth, the family view): NHS number and ODS organisation code.

Depends on nothing of app/: the lowest layer, so any module may use it."""
from __future__ import annotations

import re

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"

# ASCII digits only: \d (and str.isdigit) would admit other scripts' digits and "²"
_NHS_RE = re.compile(r"^[0-9]{10}$")
ODS_CODE_RE = re.compile(r"^[A-Z0-9]{3,10}$")


def is_valid_nhs_number(value: object) -> bool:
    """Ten ASCII digits whose last is the Modulus 11 check digit of the first nine, not all one
    digit. No spaces, no hyphens: "999 000 2118" is how a person writes it, not how a record
    carries it. "0000000000" and "1111111111" pass Modulus 11 but are placeholders systems
    send for an unknown number: accepted, they would join every such record as one person."""
    if not isinstance(value, str) or not _NHS_RE.fullmatch(value) or value == value[0] * 10:
        return False
    total = sum(int(d) * w for d, w in zip(value[:9], range(10, 1, -1)))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(value[9])


def is_valid_ods_code(value: object) -> bool:
    """An ODS organisation code's shape: 3 to 10 upper-case ASCII letters and digits."""
    return isinstance(value, str) and bool(ODS_CODE_RE.fullmatch(value))
