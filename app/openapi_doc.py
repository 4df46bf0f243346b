"""The OpenAPI document, generated from the app so that openapi/openapi.json cannot drift."""
from __future__ import annotations

import json

from app.settings import Settings


def openapi_json() -> str:
    from app.main import create_app

    settings = Settings(database_url="sqlite:///:memory:")
    app = create_app(settings)
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
