"""The familyview command: serve, migrate, token, demo, openapi, policy (and more as domains add them)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from app.settings import PROJECT_ROOT, get_settings


def _cmd_serve(args: argparse.Namespace) -> int:
    from app.ops.server import serve

    return serve(args.host, args.port, workers=args.workers, dev_auth=args.dev_auth, migrate=args.migrate,
                 access_log=args.access_log, after_start=_load_demo if args.with_demo else None)


def _load_demo(base: str, settings) -> None:
    """make run: the demo families, posted through the HTTP ingest path once the server answers."""
    import httpx

    from app.demo.loader import load_demo

    try:
        summary = load_demo(base, settings)
    except (httpx.HTTPError, RuntimeError) as exc:
        print(f"familyview: loading the demo families failed: {exc}", file=sys.stderr)
        return
    print(summary, flush=True)
    print(_next_steps(base), flush=True)


def _next_steps(base: str) -> str:
    return f"""
familyview is serving on {base}  (OpenAPI docs: {base}/docs)

Open {base}/ in a browser: the pages, with the demo sign-in (choose the demo health visitor, then
find scenario 2's baby by NHS number 9990002118, or its mother by 9990002207).

Try next, in another terminal:
  TOKEN=$(.venv/bin/familyview token --role health-visitor --org RHV01)
  curl -s {base}/fhir/metadata | head -c 300; echo
  curl -s -H "Authorization: Bearer $TOKEN" \\
    "{base}/fhir/Patient/\\$family-view?identifier=https://fhir.nhs.uk/Id/nhs-number|9990001103&purpose=direct-care"
  (a source system's token: .venv/bin/familyview token --role source-system --org RMT01 --service maternity)
"""


def _cmd_linkage_worker(args: argparse.Namespace) -> int:
    from app.linkage.queue import worker_main

    settings = get_settings()
    from app.ops import logs

    logs.configure(settings.log_level, settings.log_format)
    worker_main(settings, args.exit_with)
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from app.migrate import downgrade, upgrade

    url = args.database_url or get_settings().database_url
    if args.downgrade:
        downgrade(url, args.downgrade)
    else:
        upgrade(url, args.revision)
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from app.auth.tokens import mint_token

    try:
        print(mint_token(get_settings(), role=args.role, org=args.org, service=args.service, sub=args.sub, minutes=args.minutes, scope=args.scope))
    except ValueError as exc:
        print(f"familyview token: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from app.demo.loader import load_demo

    print(load_demo(args.base_url, get_settings()))
    return 0


def _cmd_openapi(args: argparse.Namespace) -> int:
    from app.openapi_doc import openapi_json

    text = openapi_json()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    return 0


def _cmd_policy(args: argparse.Namespace) -> int:
    from consent.cli import policy_check, policy_explain

    if args.action == "explain":
        print(policy_explain(args.file))
        return 0
    errors = policy_check(args.file)
    for e in errors:
        print(f"error: {e}")
    if not errors:
        print(f"{args.file}: valid")
    return 1 if errors else 0


def _cmd_classify(args: argparse.Namespace) -> int:
    import json

    from consent.classification import explain_classification, format_classification

    try:
        result = explain_classification(" ".join(args.query))
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    print(json.dumps(result, indent=2) if args.json else format_classification(result))
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from app.sync.command import run_command

    return run_command(args, get_settings())


def _cmd_audit(args: argparse.Namespace) -> int:
    from app.audit import anchor
    from app.audit.service import collector_paused, verify
    from app.db import Database

    settings = get_settings()
    db = Database(args.database_url or settings.database_url)
    try:
        with collector_paused(), db.session(readonly=True) as session:
            if args.action == "anchor":
                result, token = anchor.make_anchor(session, settings, workers=args.workers)
            elif args.anchor:
                try:
                    token = Path(args.anchor).read_text()
                except OSError as exc:
                    print(f"familyview audit verify: cannot read the anchor {args.anchor}: {exc.strerror}", file=sys.stderr)
                    return 2
                result, check = anchor.verify_against(session, settings, token, workers=args.workers)
            else:
                result = verify(session, expect_head=args.expect_head, expect_count=args.expect_count, workers=args.workers)
    finally:
        db.dispose()
    if args.action == "anchor":
        print(result)
        if token is None:
            print("not anchored: the chain does not verify", file=sys.stderr)
            return 1
        written = _write_anchor(token, args.output, args.url, settings)
        if written == 0:
            db = Database(args.database_url or settings.database_url)
            try:
                with db.session() as session:
                    anchor.record_anchor(session, result, token, args.url or args.output or "standard output")
            finally:
                db.dispose()
        return written
    if args.anchor:
        if result is not None and result.ok:
            print(result)
        print(("anchor held: " if check.ok else "anchor BROKEN: ") + check.message)
        return 0 if check.ok else 1
    print(result)
    return 0 if result.ok else 1


def _write_anchor(token: str, output: str | None, url: str | None, settings) -> int:
    if url:
        import httpx

        try:
            r = httpx.post(url, content=token, headers={"Content-Type": "application/jose"}, timeout=30)
        except httpx.HTTPError as exc:
            print(f"familyview audit anchor: {url} could not be reached ({type(exc).__name__})", file=sys.stderr)
            return 1
        if not r.is_success:
            print(f"familyview audit anchor: {url} answered {r.status_code}", file=sys.stderr)
            return 1
        print(f"anchor sent to {url}")
    if output:
        Path(output).write_text(token + "\n")
        print(f"anchor written to {output}")
    if not url and not output:
        print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="familyview", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the API (production entry point; configured by environment)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--migrate", action="store_true", help="run database migrations first")
    p.add_argument("--with-demo", action="store_true", help="load the demo families once the server is up (make run)")
    p.add_argument("--access-log", action="store_true", help="log each request: method, path (no query string), status, time")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (each builds the app; metrics are shared)")
    p.add_argument("--dev-auth", action="store_true",
                   help="development only: trust the local signing key when no issuer (FAMILYVIEW_AUTH_JWKS_URL) is configured")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("linkage-worker", help="link the records writes have queued (serve starts one on PostgreSQL)")
    p.add_argument("--exit-with", type=int, metavar="PID", help="exit when this process (the server that started it) is gone")
    p.set_defaults(func=_cmd_linkage_worker)

    p = sub.add_parser("migrate", help="upgrade the database schema (alembic upgrade head)")
    p.add_argument("--database-url")
    p.add_argument("--revision", default="head")
    p.add_argument("--downgrade", metavar="REVISION")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("token", help="mint a token with the local key that the embedded default trusts")
    p.add_argument("--role", required=True)
    p.add_argument("--org", required=True, help="ODS code of the requester's organisation")
    p.add_argument("--service", help="maternity | health-visiting | general-practice | social-care (source systems)")
    p.add_argument("--sub")
    p.add_argument("--minutes", type=int, default=60, help="lifetime, at most FAMILYVIEW_AUTH_MAX_TOKEN_MINUTES (720)")
    p.add_argument("--scope")
    p.set_defaults(func=_cmd_token)

    p = sub.add_parser("demo", help="post the ten demo scenarios through the HTTP ingest path")
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("sync", help="pull records from an upstream FHIR server through the ingest path, as a named source")
    p.add_argument("--from", dest="base_url", required=True, metavar="BASE_URL", help="the upstream's FHIR base URL")
    p.add_argument("--source-org", required=True, help="ODS code of the organisation the records come from")
    p.add_argument("--service", required=True, help="maternity | health-visiting | general-practice | social-care")
    p.add_argument("--since", metavar="DATETIME", help="only records updated since (default: the persisted cursor)")
    p.add_argument("--identifier", action="append", metavar="SYSTEM|VALUE", help="only these patients and their records (repeatable)")
    p.add_argument("--types", help="comma-separated resource types (default: Patient first, then what refers to patients)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="extra search parameter for every search, e.g. _tag=system|code")
    p.add_argument("--page-size", type=int)
    p.set_defaults(func=_cmd_sync)

    p = sub.add_parser("openapi", help="write the OpenAPI document generated from the app")
    p.add_argument("--output", default=str(PROJECT_ROOT / "openapi" / "openapi.json"))
    p.set_defaults(func=_cmd_openapi)

    p = sub.add_parser("audit", help="audit store tools: verify proves the hash chain untouched; anchor signs a checkpoint of it")
    p.add_argument("action", choices=["verify", "anchor"])
    p.add_argument("--database-url")
    p.add_argument("--anchor", metavar="FILE", help="verify: a signed checkpoint from `audit anchor`; fail if the chain was cut back or rewritten since")
    p.add_argument("--output", metavar="FILE", help="anchor: write the signed checkpoint (JWS) to this file")
    p.add_argument("--url", metavar="URL", help="anchor: POST the signed checkpoint (application/jose) to this URL")
    p.add_argument("--expect-head", metavar="HASH", help="an anchor kept from an earlier verify: fail unless an event has this chain hash")
    p.add_argument("--expect-count", metavar="N", type=int, help="an anchor kept from an earlier verify: fail if the chain holds fewer than N events")
    p.add_argument("--workers", metavar="N", type=int, default=min(os.cpu_count() or 1, 4),
                   help="processes that walk spans of a long chain side by side (default: the machine's cores, at most 4)")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("policy", help="explain the disclosure policy, or check an edited policy file")
    p.add_argument("action", choices=["explain", "check"])
    p.add_argument("file", nargs="?")
    p.set_defaults(func=_cmd_policy)

    p = sub.add_parser("classify", help="say how a code (system|code, or a SNOMED CT / dm+d id) or a text is classified, and why")
    p.add_argument("query", nargs="+", help="system|code, a bare code, or free text (several words are one text)")
    p.add_argument("--json", action="store_true", help="the explanation as JSON")
    p.set_defaults(func=_cmd_classify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
