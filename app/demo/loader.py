"""Post the demo families through the real HTTP ingest path, one token per source system."""
from __future__ import annotations

import httpx

from app.auth.tokens import mint_token
from app.demo.scenarios import SOURCES, build_scenarios
from app.settings import Settings


def load_demo(base_url: str, settings: Settings, *, client: httpx.Client | None = None) -> str:
    """Idempotent: re-sending the same records updates nothing and duplicates nothing."""
    tokens = {s.key: mint_token(settings, role="source-system", org=s.org, service=s.service, sub=f"demo-{s.key}") for s in SOURCES}
    own = client is None
    client = client or httpx.Client(timeout=60)
    created = unchanged = 0
    try:
        for scenario in build_scenarios():
            for source, bundle in scenario.bundles:
                r = client.post(
                    base_url.rstrip("/") + "/fhir",
                    json=bundle,
                    headers={"Authorization": f"Bearer {tokens[source.key]}", "Content-Type": "application/fhir+json"},
                )
                if r.status_code != 200:
                    raise RuntimeError(f"scenario {scenario.number} ({source.name}) was refused: {r.status_code} {r.text[:500]}")
                for e in r.json().get("entry", []):
                    if e["response"]["status"].startswith("201"):
                        created += 1
                    else:
                        unchanged += 1
    finally:
        if own:
            client.close()
    return f"Demo families loaded: {created} records created, {unchanged} already present (10 scenarios of DESIGN.md)."
