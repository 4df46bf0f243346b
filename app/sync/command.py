"""`familyview sync`: build the same ingest pipeline the API uses (database, hooks) and run a sync,
in a process tuned as the server is (app.runtime)."""
from __future__ import annotations

import sys
from typing import Iterable

from app.auth.tokens import SERVICES
from app.identifiers import is_valid_ods_code
from app.linkage.queue import linking_alongside
from app.runtime import collect_garbage_rarely
from app.settings import Settings
from app.sync.client import UpstreamClient
from app.sync.engine import DEFAULT_TYPES, SyncSummary, Syncer
from app.sync.progress import Progress
from app.wiring import database as open_database
from app.wiring import ingest_hooks


def build_syncer(settings: Settings, base_url: str, source_org: str, service: str, *, progress=None, page_size: int | None = None,
                 extra_params: Iterable[tuple[str, str]] = (), client: UpstreamClient | None = None, app=None, **kw) -> Syncer:
    """A Syncer over the same database and ingest hooks (labelling, linkage) the API runs: a
    running app's (``app``, as the rest-hook receiver and the tests pass), or its own."""
    if not is_valid_ods_code(source_org):
        raise ValueError("--source-org must be an ODS code (upper-case letters and digits)")
    if service not in SERVICES:
        raise ValueError(f"--service must be one of {', '.join(SERVICES)}")
    client = client or UpstreamClient(base_url, settings)
    db, hooks = (app.state.db, app.state.ingest_hooks) if app is not None else (open_database(settings), ingest_hooks(settings))
    return Syncer(db, settings, client, source_org=source_org, service=service, hooks=hooks,
                  progress=progress, page_size=page_size, extra_params=extra_params, **kw)


def run_command(args, settings: Settings) -> int:
    types = tuple(t.strip() for t in args.types.split(",")) if args.types else DEFAULT_TYPES
    params = []
    for p in args.param or []:
        name, sep, value = p.partition("=")
        if not sep:
            print(f"familyview sync: --param takes name=value (got {p!r})", file=sys.stderr)
            return 2
        params.append((name, value))
    try:
        syncer = build_syncer(settings, args.base_url, args.source_org, args.service, progress=Progress(sys.stderr),
                              page_size=args.page_size, extra_params=params)
    except ValueError as exc:
        print(f"familyview sync: {exc}", file=sys.stderr)
        return 2
    collect_garbage_rarely()  # a long-running writer, as the server: a page's parsed records leave few cycles
    try:
        with linking_alongside(settings, syncer.db):
            summary: SyncSummary = syncer.run(since=args.since, identifiers=args.identifier or [], types=types)
    finally:
        syncer.client.close()
        syncer.db.dispose()
    print(summary.render(), flush=True)
    return 0 if summary.ok else 1
