"""Where the family is assembled and disclosed: the infant-family view ($family-view)."""

FAMILY_VIEW_OPERATION = {"code": "family-view", "url": "https://familyview.example.nhs.uk/fhir/OperationDefinition/family-view"}


def install(app, *, operations: list, extra_resources: list) -> None:
    from app.family.views import router

    app.include_router(router)
    operations.append(FAMILY_VIEW_OPERATION)
