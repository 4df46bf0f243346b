"""Where the family is assembled and disclosed: the infant-family view ($family-view)."""

from app.urls import CANONICAL_BASE

FAMILY_VIEW_OPERATION = {"code": "family-view", "url": f"{CANONICAL_BASE}/OperationDefinition/family-view"}


def install(app, *, operations: list, extra_resources: list) -> None:
    from app.family.views import router

    app.include_router(router)
    operations.append(FAMILY_VIEW_OPERATION)
