"""Errors as FHIR OperationOutcomes, with the NHS England Spine error codes next to the FHIR issue code."""
from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

SPINE_ERROR_SYSTEM = "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode"

# FHIR issue code -> the usual Spine detail code
_DEFAULT_SPINE = {
    "invalid": "INVALID_VALUE",
    "structure": "INVALID_RESOURCE",
    "required": "MISSING_VALUE",
    "value": "INVALID_VALUE",
    "business-rule": "INVALID_VALUE",
    "code-invalid": "INVALID_CODE_VALUE",
    "security": "ACCESS_DENIED",
    "forbidden": "ACCESS_DENIED",
    "login": "ACCESS_DENIED",
    "not-found": "RESOURCE_NOT_FOUND",
    "conflict": "CONFLICT",
    "duplicate": "DUPLICATE_REJECTED",
    "too-costly": "REQUEST_TOO_LARGE",
    "not-supported": "NOT_SUPPORTED",
    "exception": "SERVER_ERROR",
    "transient": "SERVICE_UNAVAILABLE",
    "processing": "INVALID_VALUE",
    "informational": "INFORMATIONAL",
    "suppressed": "ACCESS_DENIED",
}


@dataclass
class Issue:
    code: str
    diagnostics: str
    severity: str = "error"
    expression: list[str] = field(default_factory=list)
    spine_code: str | None = None
    coding: list[dict[str, str]] = field(default_factory=list)  # further details.coding (after the Spine code)

    def to_fhir(self) -> dict[str, Any]:
        spine = self.spine_code or _DEFAULT_SPINE.get(self.code, "INVALID_VALUE")
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "details": {"coding": [{"system": SPINE_ERROR_SYSTEM, "code": spine, "display": spine.replace("_", " ").title().replace("Nhs", "NHS")}, *self.coding]},
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


class FhirError(Exception):
    """Raised anywhere in the service; rendered as an OperationOutcome with this status."""

    def __init__(
        self,
        status: int,
        code: str,
        diagnostics: str,
        *,
        expression: list[str] | str | None = None,
        spine_code: str | None = None,
        issues: list[Issue] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(diagnostics)
        self.status = status
        if isinstance(expression, str):
            expression = [expression]
        self.issues = issues or [Issue(code, diagnostics, expression=expression or [], spine_code=spine_code)]
        self.headers = headers or {}

    @property
    def diagnostics(self) -> str:
        return self.issues[0].diagnostics

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)

    def prefixed(self, prefix: str, entry_note: str | None = None) -> "FhirError":
        """The same error with expressions moved under a Bundle entry (for transactions)."""
        for issue in self.issues:
            issue.expression = [prefix + e.split(".", 1)[1] if "." in e else prefix.rstrip(".") for e in issue.expression] or [prefix.rstrip(".")]
            if entry_note:
                issue.diagnostics = f"{entry_note}: {issue.diagnostics}"
        return self


def bad_request(msg: str, expression: str | None = None, code: str = "invalid") -> FhirError:
    return FhirError(400, code, msg, expression=expression)


def unprocessable(msg: str, expression: str | None = None, code: str = "business-rule", spine_code: str | None = None) -> FhirError:
    return FhirError(422, code, msg, expression=expression, spine_code=spine_code)


def not_found(msg: str) -> FhirError:
    return FhirError(404, "not-found", msg)


def forbidden(msg: str) -> FhirError:
    return FhirError(403, "forbidden", msg)


def unauthorized(msg: str) -> FhirError:
    return FhirError(401, "login", msg, headers={"WWW-Authenticate": 'Bearer realm="familyview"'})


def error_summary() -> str:
    """The exception being handled as its types and where it was raised, e.g.
    "OperationalError <- OperationalError at app/fhir/store.py:212 in search": never its message
    (a database error's message carries the SQL and may carry values a client sent) nor the
    traceback (thousands of lines for one bad search, and its locals' reprs)."""
    exc = sys.exc_info()[1]
    if exc is None:
        return "-"
    types, seen, e = [], set(), exc
    while e is not None and id(e) not in seen and len(types) < 5:
        seen.add(id(e))
        types.append(type(e).__name__)
        e = e.__cause__ or e.__context__
    where = "?"
    for frame in traceback.extract_tb(exc.__traceback__):  # the innermost frame of our own code
        parts = frame.filename.replace(os.sep, "/").split("/")
        for top in ("app", "consent"):
            if top in parts:
                where = f"{'/'.join(parts[len(parts) - parts[::-1].index(top) - 1:])}:{frame.lineno} in {frame.name}"
    return f"{' <- '.join(types)} at {where}"
