"""Where audit is written and read: every family-view request as an AuditEvent in an
append-only, hash-chained store; IG officers search it."""

AUDIT_RESOURCE = {
    "type": "AuditEvent",
    "interaction": [{"code": "read"}, {"code": "search-type"}],
    "searchParam": [{"name": n, "type": t} for n, t in (
        ("patient", "reference"), ("agent", "reference"), ("date", "date"), ("entity", "reference"),
        ("type", "token"), ("subtype", "token"), ("outcome", "token"), ("purpose", "token"), ("_id", "token"),
    )],
    "documentation": "IG officers only. Append-only and hash-chained; `familyview audit verify` proves the chain.",
}


def install(app, *, operations: list, extra_resources: list) -> None:
    from app.audit.views import router

    app.include_router(router)
    extra_resources.append(AUDIT_RESOURCE)
