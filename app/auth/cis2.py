"""CIS2-shaped claims to a familyview Principal: the one claim mapping that the pages' OpenID
Connect sign-in and the API's bearer tokens from the same provider both use.

NHS CIS2 names the user's roles in ``nhsid_nrbac_roles`` (each with ``person_roleid``,
``org_code`` and ``role_code`` "S…:G…:R…") and the role chosen at sign-in in
``selected_roleid``. The job-role code (the R… part, or the whole role_code) is mapped to a
familyview role by configuration (``Settings.oidc_role_map``); anything unmapped is refused."""
from __future__ import annotations

from typing import Any

from app.auth.tokens import DEFAULT_SCOPES, ROLES, Principal, Scope
from app.errors import unauthorized
from app.identifiers import is_valid_ods_code
from app.settings import Settings


class UnknownRole(Exception):
    """The selected role is not one familyview knows: no access (the page says so)."""

    def __init__(self, message: str, role_code: str | None = None):
        super().__init__(message)
        self.role_code = role_code


def selected_role(claims: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The user's selected role entry (the only role when just one is listed)."""
    roles = claims.get(settings.oidc_claim_roles) or []
    if not isinstance(roles, list) or not all(isinstance(r, dict) for r in roles):
        raise UnknownRole("The identity provider sent no list of roles")
    chosen = claims.get(settings.oidc_claim_selected_role)
    if chosen is None and len(roles) == 1:
        return roles[0]
    for entry in roles:
        if str(entry.get("person_roleid")) == str(chosen):
            return entry
    raise UnknownRole("The selected role is not among the user's roles")


def map_claims(claims: dict[str, Any], settings: Settings) -> Principal:
    """The Principal for these claims, or UnknownRole when the selected role maps to none."""
    entry = selected_role(claims, settings)
    role_code = str(entry.get("role_code") or "")
    job_role = role_code.rsplit(":", 1)[-1]
    role = settings.oidc_role_map.get(role_code) or settings.oidc_role_map.get(job_role)
    if role not in ROLES or role in ("source-system",):
        raise UnknownRole(f"The selected role ({job_role or 'none'}) has no access to familyview", job_role or None)
    org = str(entry.get("org_code") or "")
    if not is_valid_ods_code(org):
        raise UnknownRole("The selected role's organisation is not an ODS code", job_role)
    sub = str(claims.get("nhsid_useruid") or claims.get("sub") or "")
    name = claims.get(settings.oidc_claim_name)
    return Principal(
        sub=sub, role=role, org=org, service=settings.oidc_role_services.get(role),
        scopes=tuple(s for s in (Scope.parse(t) for t in DEFAULT_SCOPES[role].split()) if s),
        token_id=claims.get("jti"),
        claims={"name": name if isinstance(name, str) else None, "role_code": role_code, "idp": claims.get("iss")},
    )


def principal_from_cis2(claims: dict[str, Any], settings: Settings) -> Principal:
    """As map_claims, for a bearer token: an unmapped role is a 401 OperationOutcome."""
    try:
        return map_claims(claims, settings)
    except UnknownRole as exc:
        raise unauthorized(str(exc)) from None
