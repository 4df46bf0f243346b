"""Imports every module that declares tables, so Alembic and tests see the whole schema."""


def import_all_models() -> None:
    import app.audit.models  # noqa: F401
    import app.fhir.models  # noqa: F401
    import app.ig.models  # noqa: F401
    import app.linkage.models  # noqa: F401
    import app.sync.models  # noqa: F401
    import app.web.models  # noqa: F401
