"""One identifier module (app/identifiers.py) for ingest, linkage and auth: the NHS number
(Modulus 11, ASCII digits only) and the ODS code shape, with every user agreeing."""
from __future__ import annotations

import pytest

from app import identifiers
from app.fhir import validation
from app.linkage import matching

VALID = "9990002118"


@pytest.mark.parametrize("value, ok", [
    (VALID, True),
    ("9990000018", True),
    ("999 000 2118", False),          # as a person writes it, not as a record carries it
    ("999-000-2118", False),
    ("999000211\u0668", False),       # Arabic-Indic eight
    ("99900021\u00b2\u0038", False),  # superscript two
    ("9990002118\n", False),
    ("9990002119", False),            # wrong check digit
    ("1234567890", False),            # check digit 10: never valid
    ("999000211", False),
    (None, False),
    (9990002118, False),
])
def test_one_nhs_number_rule_for_ingest_and_linkage(value, ok):
    assert identifiers.is_valid_nhs_number(value) is ok
    assert validation.is_valid_nhs_number(value) is ok
    assert matching.nhs_number_is_valid(value) is ok
    if isinstance(value, str):  # linkage keeps a valid number and drops anything else
        assert (matching.PersonRecord("Patient/x", nhs_number=value).nhs_number is not None) is ok


@pytest.mark.parametrize("value, ok", [
    ("RHV01", True), ("A99001", True), ("X26", True), ("ABCDEFGHIJ", True),
    ("rhv01", False), ("AB", False), ("ABCDEFGHIJK", False), ("RHV01\n", False), ("RHV\u0661", False), (None, False),
])
def test_one_ods_code_rule_for_ingest_and_auth(value, ok):
    assert identifiers.is_valid_ods_code(value) is ok
    assert validation.is_valid_ods_code(value) is ok


def test_the_identifier_module_depends_on_nothing_of_app():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(identifiers))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.split(".")[0] == "app"]
