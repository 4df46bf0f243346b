"""FHIR R4 rest-hook receiver: an endpoint an upstream Subscription calls when records change.

    POST /subscriptions/rest-hook/{name}

`name` is a key of the `sync_upstreams` setting ({"base_url", "source_org", "service"}, optionally
"secret", "header" and "bearer_token" for that upstream). The caller must send the header the
Subscription was given (`Subscription.channel.header`, default `X-Familyview-Hook-Secret: <secret>`);
it is compared in constant time.

- Empty body (R4 `channel.payload` absent: a ping that something changed): an incremental sync of
  that upstream from its persisted cursor runs in a BACKGROUND task; the answer is 202 at once.
  Notifications that arrive while a sync runs are coalesced into one more run after it.
- A resource (R4 `payload` = application/fhir+json) or a Bundle of them (history, notification):
  each named record is re-read from the upstream by type and id (the upstream stays the
  authority; the payload is not trusted as content) and written SYNCHRONOUSLY through the
  ingest path; the answer is 200 with an OperationOutcome of what happened.
- PUT /subscriptions/rest-hook/{name}/{type}/{id}: how HAPI FHIR delivers a payload (a FHIR
  update of the changed record at the endpoint); handled as a resource payload naming that
  record. DELETE there (a deletion upstream) is acknowledged (200) and not synced.
An upstream's optional "params" (a query string, e.g. "_tag=system|code") are added to every
search its incremental syncs make, as `familyview sync --param` does.
"""
from __future__ import annotations

import hmac
import json
import logging
import threading
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, BackgroundTasks, Request
from starlette.concurrency import run_in_threadpool

from app.errors import FhirError, Issue, bad_request, error_summary, operation_outcome
from app.fhir.http import FhirResponse
from app.fhir.indexing import WRITABLE_TYPES

log = logging.getLogger("familyview.sync")
router = APIRouter(prefix="/subscriptions", tags=["Sync"])


class _HookState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = False
        self.again = False
        self.last_summary: str | None = None


def _state(app, name: str) -> _HookState:
    states = getattr(app.state, "sync_hooks", None)
    if states is None:
        states = app.state.sync_hooks = {}
    return states.setdefault(name, _HookState())


def _upstream(settings, name: str) -> dict[str, Any]:
    up = settings.sync_upstreams.get(name)
    if not up or not up.get("base_url") or not up.get("source_org") or not up.get("service"):
        raise FhirError(404, "not-found", f"No upstream named {name!r} is configured for rest-hook notifications", spine_code="RESOURCE_NOT_FOUND")
    return up


def _authenticate(request: Request, settings, up: dict[str, Any]) -> None:
    secret = up.get("secret") or settings.sync_rest_hook_secret
    header = up.get("header") or settings.sync_rest_hook_header
    if not secret:
        raise FhirError(403, "forbidden", "Rest-hook notifications are not enabled (no shared secret is configured)", spine_code="ACCESS_DENIED")
    given = request.headers.get(header)
    if given is None or not hmac.compare_digest(given.encode("utf-8"), str(secret).encode("utf-8")):
        raise FhirError(401, "login", f"The {header} header is missing or wrong", spine_code="ACCESS_DENIED")


def _syncer(app, up: dict[str, Any]):
    from app.sync.client import UpstreamClient
    from app.sync.engine import Syncer

    settings = app.state.settings
    client = UpstreamClient(up["base_url"], settings, bearer_token=up.get("bearer_token"))
    params = up.get("params") or ""
    extra = parse_qsl(params) if isinstance(params, str) else list(params.items()) if isinstance(params, dict) else [tuple(p) for p in params]
    return Syncer(app.state.db, settings, client, source_org=up["source_org"], service=up["service"], hooks=app.state.ingest_hooks,
                  extra_params=extra)


def _incremental(app, name: str, up: dict[str, Any]) -> None:
    st = _state(app, name)
    with st.lock:
        if st.running:
            st.again = True  # coalesce: one more run after the current one
            return
        st.running = True
    try:
        while True:
            with st.lock:
                st.again = False
            syncer = _syncer(app, up)
            try:
                summary = syncer.run()
                st.last_summary = summary.render()
                log.info("rest-hook %s: %s", name, st.last_summary.replace("\n", " | "))
            except Exception:  # noqa: BLE001 - a background task has nobody to answer to but the log
                log.error("rest-hook %s: the incremental sync failed: %s", name, error_summary())
            finally:
                syncer.client.close()
            with st.lock:
                if not st.again:
                    st.running = False
                    return
    except BaseException:
        with st.lock:
            st.running = False
        raise


def _named_records(payload: Any) -> list[tuple[str, str]]:
    """(Type, id) of each record a notification payload names."""
    if not isinstance(payload, dict) or not isinstance(payload.get("resourceType"), str):
        raise bad_request("The notification body must be a FHIR resource or a Bundle", code="structure")
    if payload["resourceType"] != "Bundle":
        resources = [payload]
    else:
        resources = []
        for e in payload.get("entry") or []:
            if isinstance(e, dict) and isinstance(e.get("resource"), dict):
                resources.append(e["resource"])
            elif isinstance(e, dict) and isinstance(e.get("fullUrl"), str):  # id-only notifications
                parts = e["fullUrl"].rstrip("/").split("/")
                if len(parts) >= 2:
                    resources.append({"resourceType": parts[-2], "id": parts[-1]})
    out = []
    for r in resources:
        t, i = r.get("resourceType"), r.get("id")
        if t in WRITABLE_TYPES and isinstance(i, str) and i:
            out.append((t, i))
    return out


@router.post("/rest-hook/{name}", summary="FHIR R4 rest-hook receiver: an upstream Subscription's notification triggers a sync")
async def rest_hook(name: str, request: Request, background: BackgroundTasks) -> FhirResponse:
    app = request.app
    settings = app.state.settings
    up = _upstream(settings, name)
    _authenticate(request, settings, up)
    raw = await request.body()
    if not raw.strip():
        background.add_task(_incremental, app, name, up)
        return FhirResponse(operation_outcome([Issue("informational", f"Incremental sync of {name} started", severity="information")]), status_code=202)
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FhirError(400, "structure", "The notification body is not valid JSON", spine_code="INVALID_RESOURCE") from None
    refs = _named_records(payload)
    if not refs:
        background.add_task(_incremental, app, name, up)
        return FhirResponse(operation_outcome([Issue("informational", f"No record named; incremental sync of {name} started", severity="information")]), status_code=202)
    return await _sync_named(app, name, up, refs)


@router.put("/rest-hook/{name}/{res_type}/{res_id}",
            summary="FHIR R4 rest-hook receiver, HAPI FHIR's payload style: the changed record PUT at {endpoint}/{type}/{id}")
async def rest_hook_record(name: str, res_type: str, res_id: str, request: Request) -> FhirResponse:
    app = request.app
    up = _upstream(app.state.settings, name)
    _authenticate(request, app.state.settings, up)
    if res_type not in WRITABLE_TYPES:
        raise FhirError(404, "not-supported", f"{res_type} records are not synced", spine_code="INVALID_RESOURCE")
    return await _sync_named(app, name, up, [(res_type, res_id)])


@router.delete("/rest-hook/{name}/{res_type}/{res_id}",
               summary="FHIR R4 rest-hook receiver, HAPI FHIR's payload style for a deletion: acknowledged, not synced")
async def rest_hook_deleted(name: str, res_type: str, res_id: str, request: Request) -> FhirResponse:
    """Deletions upstream are not synced (a sync never deletes); acknowledged so the upstream does not retry."""
    app = request.app
    up = _upstream(app.state.settings, name)
    _authenticate(request, app.state.settings, up)
    return FhirResponse(operation_outcome([Issue("informational", f"{res_type}/{res_id} was deleted upstream; deletions are not synced",
                                                 severity="information")]), status_code=200)


async def _sync_named(app, name: str, up: dict[str, Any], refs: list[tuple[str, str]]) -> FhirResponse:
    def work():
        syncer = _syncer(app, up)
        try:
            return syncer.sync_references(refs)
        finally:
            syncer.client.close()

    summary = await run_in_threadpool(work)
    issues = [Issue("informational", f"{len(refs)} record(s) synced from {name}: {summary.total('created')} created, "
                    f"{summary.total('updated')} updated, {summary.total('unchanged')} unchanged, {len(summary.errors)} failed", severity="information")]
    issues += [Issue("processing", e.line(), severity="error") for e in summary.errors]
    return FhirResponse(operation_outcome(issues), status_code=200)
