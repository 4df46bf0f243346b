"""`familyview demo` posts the ten scenarios through the real HTTP ingest path, idempotently."""
from __future__ import annotations

from app.demo.loader import load_demo
from app.demo.scenarios import MATERNITY, N, SOURCES, build_scenarios


def _total(live, res_type: str) -> int:
    """Records of this type from every demo source (each source reads its own; an
    administrator reads no clinical records)."""
    total = 0
    for src in SOURCES:
        r = live.source(src.org, src.service).get(f"/{res_type}", params={"_count": 0})
        assert r.status_code == 200, r.text
        total += r.json()["total"]
    return total


def test_demo_loads_every_scenario_once(live):
    summary = load_demo(live.base_url, live.settings)
    assert "records created" in summary and " 0 records created" not in summary
    counts = {t: _total(live, t) for t in ("Patient", "RelatedPerson", "Consent", "Condition", "Flag", "EpisodeOfCare", "Observation", "Organization")}
    expected: dict[str, int] = {}
    conditional: set[str] = set()  # each source describes itself once, by conditional create
    for sc in build_scenarios():
        for _, b in sc.bundles:
            for e in b["entry"]:
                t = e["resource"]["resourceType"]
                criteria = e["request"].get("ifNoneExist")
                if criteria:
                    if (t, criteria) in conditional:
                        continue
                    conditional.add((t, criteria))
                expected[t] = expected.get(t, 0) + 1
    assert counts == {t: expected.get(t, 0) for t in counts}
    again = load_demo(live.base_url, live.settings)
    assert " 0 records created" in again
    assert {t: _total(live, t) for t in counts} == counts
    maternity = live.source(MATERNITY.org, MATERNITY.service)
    infant = maternity.get("/Patient", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{N['s1_infant']}"}).json()
    assert infant["total"] == 1
