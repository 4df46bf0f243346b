"""How the parts are put together, for the web app and the commands alike: the database and the
ingest pipeline's hooks. A command (sync, demo, the linkage worker) gets the same pipeline as
the API without building the web app."""

from __future__ import annotations

from app.db import Database
from app.ingest.hooks import IngestHook
from app.ingest.labelling import SecurityLabelHook
from app.settings import Settings


def ingest_hooks(settings: Settings) -> list[IngestHook]:
    """The ingest pipeline's hooks, in order: sensitivity labels first (record linkage and every
    disclosure decision read them), then record linkage (inline, or queued to run after commit)."""
    from app.linkage.hooks import LinkageHook
    from app.ops.metrics import IngestCounter

    return [SecurityLabelHook(), LinkageHook(settings), IngestCounter()]


def database(settings: Settings) -> Database:
    """The web app's database: on PostgreSQL every statement is bounded by statement_timeout_ms."""
    return Database(settings.database_url, statement_timeout_ms=settings.statement_timeout_ms)
