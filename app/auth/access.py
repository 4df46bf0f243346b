"""Who may do what: one declarative table of operation x role (x resource type, x purpose),
the authorisation matrix every router applies and the tests iterate.

Each route names its operation with an ``Access`` dependency (or one of the ``Annotated``
aliases below); a route without one fails tests/api/test_api_access_matrix.py. A role the
row does not allow gets a 403 OperationOutcome (ACCESS_DENIED) before anything else is read.
SMART scopes (``Principal.may``) still apply on top, in the routes and the store.

The roles that never see clinical data are read from the disclosure policy
(consent/policy/baseline.yaml, ``never:``), not repeated here.

Checked later than the route, where the answer needs the request read first:
- the resource type (an administrator reads people and organisations, not clinical records;
  only a source system records a Consent): ``check_type`` from the store and the ingest;
- the family view's refusal of the policy's ``never`` roles, which the family-view service
  makes after reading the request so that it is audited (``refused("family-view", role)``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, Any, Mapping

from fastapi import Depends, Request

from app.auth.deps import get_principal
from app.auth.tokens import DEFAULT_SCOPES, ROLES, Principal
from app.errors import FhirError
from app.negotiation import negotiate

ANY_TYPE = None  # a role allowed on every resource type of the operation


class AllBut(frozenset):
    """A role allowed on every resource type but these."""


@lru_cache(maxsize=1)
def never_roles() -> frozenset[str]:
    """The roles the disclosure policy says never see clinical data."""
    from consent import load_policy

    return frozenset(load_policy().never)


@lru_cache(maxsize=1)
def policy_purposes() -> tuple[str, ...]:
    from consent import load_policy

    return tuple(load_policy().purposes)


@dataclass(frozen=True)
class Rule:
    """One row: which roles may (on which resource types: None any, a set only those, AllBut
    all but those), for which purposes, and which of them see every organisation's records
    (the others see what their own organisation sent)."""

    operation: str
    what: str
    roles: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    purposes: tuple[str, ...] = ()
    all_orgs: frozenset[str] = frozenset()
    public: bool = False  # no bearer token (capability, documentation; the rest-hook has its own secret)
    audited_refusal: bool = False  # refused by the service after the request is read, so the refusal is audited
    own_formats: bool = False  # answers in formats of its own (pages, assets): not held to FHIR JSON by app.negotiation
    # SMART v2 scopes the operation needs on top of the role: op (one of c r u d s) on every
    # one of these resource types, granted in one of these contexts (whatever the role)
    scope_types: tuple[str, ...] = ()
    scope_op: str = "r"  # every one of these ops (e.g. "rs": read and search)
    scope_contexts: tuple[str, ...] = ("user", "system")
    refusal: str = "The {role} role may not {what}"
    type_refusal: str = "The {role} role may not {what} on {res_type} resources"

    def allows(self, role: str) -> bool:
        return self.public or role in self.roles

    def allows_type(self, role: str, res_type: str) -> bool:
        if self.public:
            return True
        if role not in self.roles:
            return False
        types = self.roles[role]
        if types is None:
            return True
        return res_type not in types if isinstance(types, AllBut) else res_type in types


def _all(roles, types=ANY_TYPE) -> dict[str, frozenset[str] | None]:
    return {r: types for r in roles}


# What an administrator may read through the plain REST API: who people and organisations are
# (to manage sources and review linkage), never clinical records (admin is under `never` in the
# disclosure policy).
ADMIN_READABLE = frozenset({"Patient", "RelatedPerson", "Organization", "Practitioner"})

# What the family view can disclose: the members (Patient, RelatedPerson) and their records
# (app.family.graph.RECORD_TYPES). A token needs read on every one of them: a view cut down to
# the types a token happens to name would look complete to the practitioner and not be.
FAMILY_VIEW_TYPES = ("Patient", "RelatedPerson", "Flag", "Condition", "Observation", "MedicationStatement", "MedicationRequest")


def _table() -> dict[str, Rule]:
    never = never_roles()
    rules = [
        Rule("capability", "read the CapabilityStatement", public=True),
        Rule("docs", "read the API documentation", public=True),
        Rule("smart-configuration", "read the SMART configuration (how to get a token, which scopes)", public=True),
        Rule("sync.rest-hook", "notify a sync", public=True),  # the upstream's shared secret, not a token
        Rule("ops.health", "probe liveness and readiness", public=True),  # a load balancer holds no token
        Rule("ops.metrics", "scrape the Prometheus metrics (counts, no PHI)", public=True),  # FAMILYVIEW_METRICS_TOKEN when set
        Rule("web.assets", "read the pages' stylesheets, scripts and icons", public=True, own_formats=True),
        # the pages: the page session (app.web.session, signed in by OpenID Connect or the demo
        # sign-in), not a bearer token; what a family page shows is the family-view service's
        Rule("web.pages", "use the pages (signed in with the page session)", public=True, own_formats=True),
        # a Bundle's entries are checked one by one, as fhir.write and fhir.read
        Rule("fhir.bundle", "post a transaction or batch", roles=_all(ROLES)),
        Rule("fhir.write", "write records",
             roles={"source-system": ANY_TYPE, "admin": AllBut({"Consent"})}, all_orgs=frozenset({"admin"}),
             refusal="The {role} role may not write records",
             type_refusal="The {role} role may not record a person's {res_type}; the organisation that holds "
                          "the records records it"),
        Rule("fhir.read", "read records (read, vread, history, search)",
             roles={**_all(r for r in ROLES if r not in ("ig-officer", "admin")), "admin": ADMIN_READABLE},
             all_orgs=frozenset({"admin"}),
             type_refusal="Administrators do not read {res_type} resources: they manage the service and do not "
                          "see clinical data"),
        Rule("family-view", "receive the infant-family view",
             roles=_all(r for r in ROLES if r not in never), purposes=policy_purposes(), audited_refusal=True,
             scope_types=FAMILY_VIEW_TYPES, scope_op="r",
             refusal="The {role} role does not receive clinical data; IG officers use the audit search"),
        Rule("audit.read", "read the audit (AuditEvent read and search)", roles=_all(["ig-officer"]),
             all_orgs=frozenset({"ig-officer"}), refusal="Only IG officers may read the audit",
             scope_types=("AuditEvent",), scope_op="rs"),
        Rule("ig.review", "work the IG review queue (list overrides and break-glass views, record a review)",
             roles=_all(["ig-officer"]), all_orgs=frozenset({"ig-officer"}), refusal="Only IG officers may review overrides"),
        Rule("ig.disclosure-report", "produce a subject access (disclosure) report",
             roles=_all(["ig-officer"]), all_orgs=frozenset({"ig-officer"}), refusal="Only IG officers may produce disclosure reports"),
        Rule("ig.audit-export", "export the audit (NDJSON or CSV)",
             roles=_all(["ig-officer"]), all_orgs=frozenset({"ig-officer"}), refusal="Only IG officers may export the audit"),
        Rule("ig.notifications", "read every notification to record holders and its delivery status",
             roles=_all(["ig-officer"]), all_orgs=frozenset({"ig-officer"}), refusal="Only IG officers may read every notification"),
        Rule("notifications.own", "read the notifications sent to one's own organisation",
             roles=_all(r for r in ROLES if r not in ("ig-officer", "admin")),
             refusal="The {role} role holds no records and receives no notifications"),
        Rule("person.read", "read linked persons (Person read and search)",
             roles=_all(["admin", "ig-officer", "source-system"]), all_orgs=frozenset({"admin", "ig-officer"}),
             refusal="The {role} role may not read linked persons"),
        Rule("linkage.admin", "administer record linkage (review queue, confirm, reject, unlink, merge, events)",
             roles=_all(["admin"]), all_orgs=frozenset({"admin"}), refusal="Linkage administration is for the admin role only"),
    ]
    return {r.operation: r for r in rules}


@lru_cache(maxsize=1)
def table() -> dict[str, Rule]:
    return _table()


def denied(message: str) -> FhirError:
    return FhirError(403, "forbidden", message, spine_code="ACCESS_DENIED")


def rule(operation: str) -> Rule:
    return table()[operation]


def allowed(operation: str, role: str, res_type: str | None = None, purpose: str | None = None) -> bool:
    r = rule(operation)
    if not r.allows(role):
        return False
    if res_type is not None and not r.allows_type(role, res_type):
        return False
    return purpose is None or not r.purposes or purpose in r.purposes


def refused(operation: str, role: str) -> bool:
    """For a service that refuses after reading the request (the family view)."""
    return not rule(operation).allows(role)


def refusal(operation: str, role: str) -> FhirError:
    r = rule(operation)
    return denied(r.refusal.format(role=role, what=r.what))


def sees_all_orgs(principal: Principal, operation: str) -> bool:
    """Whether this role sees every organisation's records in this operation (else its own)."""
    return principal.role in rule(operation).all_orgs


def check(principal: Principal, operation: str) -> None:
    """403 unless the table lets this role do the operation."""
    if not rule(operation).allows(principal.role):
        raise refusal(operation, principal.role)


def check_type(principal: Principal, operation: str, res_type: str) -> None:
    """403 unless the table lets this role do the operation on this resource type."""
    check(principal, operation)
    r = rule(operation)
    if not r.allows_type(principal.role, res_type):
        raise denied(r.type_refusal.format(role=principal.role, what=r.what, res_type=res_type))


def scope_refusal(operation: str, principal: Principal) -> FhirError | None:
    """The 403 for a token whose SMART scopes do not cover the operation (``scope_types``), or
    None. Checked after the role, so a "never" role is refused whatever its scopes say."""
    r = rule(operation)
    missing = [t for t in r.scope_types if not all(principal.may(t, op, contexts=r.scope_contexts) for op in r.scope_op)]
    if not missing:
        return None
    wanted = " ".join(f"user/{t}.{r.scope_op}" for t in missing)
    return denied(f"The token's scopes do not cover {r.what}: it needs {wanted}" + (" (or user/*.rs)" if len(missing) > 1 else ""))


def scope_guide() -> list[str]:
    """One line per operation that needs more than its role: for the CapabilityStatement and
    the SMART configuration."""
    lines = [
        "REST read, vread, history: <context>/<Type>.r; search: <context>/<Type>.s; create: .c; update: .u "
        "(contexts user/ and system/; v1 .read/.write/.* accepted). Scopes never widen a role: "
        "the roles the disclosure policy names as never seeing clinical data "
        f"({', '.join(sorted(never_roles()))}) are refused clinical records whatever a token's scope says.",
    ]
    for r in table().values():
        if r.scope_types:
            lines.append(f"{r.operation} ({r.what}) needs " + " ".join(f"user/{t}.{r.scope_op}" for t in r.scope_types)
                         + " (or user/*.rs; system/ alike; patient/ scopes do not cover it).")
    return lines


def scopes_supported() -> list[str]:
    """Every scope this server understands, as SMART configuration lists them."""
    out = ["openid", "fhirUser", "user/*.rs", "user/*.cruds", "system/*.rs", "system/*.cruds"]
    for scopes in DEFAULT_SCOPES.values():
        out += [s for s in scopes.split() if s not in out]
    out += [f"user/{t}.rs" for t in FAMILY_VIEW_TYPES if f"user/{t}.rs" not in out]
    return out


def check_scope(principal: Principal, resource_type: str, op: str) -> None:
    """SMART v2 scopes on top of the table: op is one of c r u d s."""
    if not principal.may(resource_type, op):
        raise denied(f"No granted scope allows '{op}' on {resource_type}")


def require(principal: Principal, resource_type: str, op: str) -> None:
    """A REST interaction (op one of c r u d s): the table's role, then the granted scopes.
    The resource type's column is checked where the type is known to exist (the store, ingest)."""
    check(principal, "fhir.write" if op in ("c", "u", "d") else "fhir.read")
    check_scope(principal, resource_type, op)


class AccessDependency:
    operation: str

    def __repr__(self) -> str:
        return f"Access({self.operation!r})"


class _PublicAccess(AccessDependency):
    def __init__(self, operation: str):
        self.operation = operation

    def __call__(self, request: Request) -> None:
        if not rule(self.operation).own_formats:
            negotiate(request)  # 406 for a format the route does not produce
        return None


class _TokenAccess(AccessDependency):
    def __init__(self, operation: str):
        self.operation = operation

    def __call__(self, request: Request, principal: Principal = Depends(get_principal)) -> Principal:
        if not rule(self.operation).audited_refusal:  # an audited row's service checks role and scopes itself
            check(principal, self.operation)
            problem = scope_refusal(self.operation, principal)
            if problem is not None:
                raise problem
        negotiate(request)  # after the role check: a refused requester learns nothing of the route's formats
        return principal


def Access(operation: str) -> AccessDependency:  # noqa: N802 - reads as the dependency it makes
    """The dependency a route declares: ``Depends(Access("audit.read"))``. Checks the role
    against the table (unless the row is public, or refused later by an audited service)."""
    if operation not in table():
        raise KeyError(f"no row for {operation!r} in the access table")
    return _PublicAccess(operation) if rule(operation).public else _TokenAccess(operation)


def operation_of(dependant: Any) -> str | None:
    """The operation a route declares (its Access dependency), walking its dependencies."""
    for dep in getattr(dependant, "dependencies", ()):
        if isinstance(dep.call, AccessDependency):
            return dep.call.operation
        found = operation_of(dep)
        if found:
            return found
    return None


# Annotated dependencies for the routers, e.g. `principal: AuditReader`
Public = Annotated[None, Depends(Access("capability"))]
SmartConfiguration = Annotated[None, Depends(Access("smart-configuration"))]
Writer = Annotated[Principal, Depends(Access("fhir.write"))]
Reader = Annotated[Principal, Depends(Access("fhir.read"))]
BundlePoster = Annotated[Principal, Depends(Access("fhir.bundle"))]
AuditReader = Annotated[Principal, Depends(Access("audit.read"))]
IgReviewer = Annotated[Principal, Depends(Access("ig.review"))]
DisclosureReporter = Annotated[Principal, Depends(Access("ig.disclosure-report"))]
AuditExporter = Annotated[Principal, Depends(Access("ig.audit-export"))]
NotificationReader = Annotated[Principal, Depends(Access("ig.notifications"))]
OwnNotificationReader = Annotated[Principal, Depends(Access("notifications.own"))]
PersonReader = Annotated[Principal, Depends(Access("person.read"))]
LinkageAdministrator = Annotated[Principal, Depends(Access("linkage.admin"))]
FamilyViewer = Annotated[Principal, Depends(Access("family-view"))]
RestHook = Annotated[None, Depends(Access("sync.rest-hook"))]
Health = Annotated[None, Depends(Access("ops.health"))]
MetricsReader = Annotated[None, Depends(Access("ops.metrics"))]
