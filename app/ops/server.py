"""`familyview serve`: refuse to trust a local key unless told to, configure JSON logging, run
one process or several uvicorn workers (each building the app from the environment), with a
shared metrics directory and the linkage worker beside them."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Callable

from app.ops import logs
from app.ops.metrics import MULTIPROC_ENV
from app.settings import Settings, get_settings

log = logging.getLogger("familyview")

NO_ISSUER = (
    "familyview serve: no token issuer is configured (FAMILYVIEW_AUTH_JWKS_URL and FAMILYVIEW_AUTH_ISSUER).\n"
    "Refusing to start: without one this server would trust a local signing key, and anyone who can read\n"
    "that file can mint a token for any role. Configure the issuer, or pass --dev-auth for development\n"
    "(make run does)."
)


def warn_dev_auth(settings: Settings) -> None:
    """--dev-auth: said loudly, at start, in the log an operator reads."""
    bar = "!" * 78
    log.warning(
        "\n%s\nDEVELOPMENT AUTH (--dev-auth): tokens are checked with the LOCAL signing key %s, not an issuer.\n"
        "Anyone who can read that file can mint a token for any role. Never use this with real patient data.\n%s",
        bar, settings.local_key_path, bar, extra={"event": "dev-auth", "key_path": str(settings.local_key_path)})


def worker_app() -> Any:
    """The app of one uvicorn worker (``--workers N``): settings from the environment serve set."""
    from app.main import create_app
    from app.runtime import collect_garbage_rarely

    settings = get_settings()
    logs.configure(settings.log_level, settings.log_format)
    app = create_app(settings)
    collect_garbage_rarely()
    return app


def serve(host: str, port: int, *, workers: int, dev_auth: bool, migrate: bool, access_log: bool,
          after_start: Callable[[str, Settings], None] | None = None) -> int:
    if workers < 1:
        print("familyview serve: --workers must be 1 or more", file=sys.stderr)
        return 2
    if workers > 1:
        os.environ["FAMILYVIEW_WORKERS"] = str(workers)
    if access_log:
        os.environ["FAMILYVIEW_ACCESS_LOG"] = "true"
    get_settings.cache_clear()
    settings = get_settings()
    logs.configure(settings.log_level, settings.log_format)
    if settings.trusts_local_key and not dev_auth:
        print(NO_ISSUER, file=sys.stderr)
        return 2
    if settings.trusts_local_key:
        warn_dev_auth(settings)
    if migrate:
        from app.migrate import upgrade

        upgrade(settings.database_url)
    import uvicorn

    metrics_dir = None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        metrics_dir = tempfile.mkdtemp(prefix="familyview-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir  # before any worker imports prometheus_client
    worker = None
    if settings.linkage_queued:  # links what each write queued, beside the server (app.linkage.queue)
        from app.linkage.queue import LinkageWorker

        worker = LinkageWorker(settings)
        worker.start()
    base = f"http://{host}:{port}"
    if after_start is not None:
        threading.Thread(target=_when_up, args=(base, settings, after_start), daemon=True).start()
    try:
        if workers > 1:
            uvicorn.run("app.ops.server:worker_app", factory=True, host=host, port=port, workers=workers,
                        log_config=None, access_log=False)
        else:
            from app.main import create_app
            from app.runtime import collect_garbage_rarely

            app = create_app(settings)
            collect_garbage_rarely()
            uvicorn.Server(uvicorn.Config(app, host=host, port=port, workers=1, log_config=None, access_log=False)).run()
    finally:
        if worker is not None:
            worker.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _when_up(base: str, settings: Settings, then: Callable[[str, Settings], None]) -> None:
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    then(base, settings)
