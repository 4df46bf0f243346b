"""A bundle of near-identical people cannot flood linkage (issue 18, finding 2): review pairs are
bounded per record (the most likely kept) and per request, comparisons per request, and the
bounds reached are said in one linkage event; and one request's records are not compared all
against all."""
from __future__ import annotations

import json

from sqlalchemy import text

from app.ingest.hooks import Written
from app.linkage.service import LinkageService
from tests.conftest import make_settings

GIVEN = ["Ambrose", "Barnaby", "Cuthbert", "Digby", "Eustace", "Fenwick", "Gideon", "Horatio"]


def _near_identical(n: int) -> list[Written]:
    """Men sharing a family name, postcode and birth year whose given names and birth days differ:
    each a possible match of many others, none sure enough to link."""
    out = []
    for k in range(n):
        body = {"resourceType": "Patient", "id": f"flood{k}", "gender": "male",
                "name": [{"family": "Wolstenholme", "given": [GIVEN[k % len(GIVEN)]]}],
                "birthDate": f"1979-{1 + k % 12:02d}-{1 + k % 27:02d}", "address": [{"postalCode": "LS6 2AB"}]}
        out.append(Written("Patient", body["id"], 1, body, True, "RMT01", "maternity"))
    return out


def test_review_pairs_and_comparisons_are_bounded_per_record_and_per_request(database_url, key_path):
    settings = make_settings(database_url, key_path, linkage_max_reviews_per_record=3, linkage_max_reviews_per_request=40,
                             linkage_max_comparisons_per_request=600)
    from app.db import Database

    db = Database(database_url)
    try:
        with db.session() as s:
            results = LinkageService.from_settings(s, settings).link_written(_near_identical(120))
        assert all(len(r.queued) <= 3 for r in results)
        with db.session(readonly=True) as s:
            open_pairs = s.execute(text("SELECT a_ref, b_ref, probability FROM linkage_candidate WHERE status = 'open'")).all()
            events = s.execute(text("SELECT reason, detail FROM linkage_event WHERE action = 'capped'")).all()
        assert 0 < len(open_pairs) <= 40
        per_record: dict[str, int] = {}
        for a, b, _ in open_pairs:
            per_record[a] = per_record.get(a, 0) + 1
            per_record[b] = per_record.get(b, 0) + 1
        assert len(events) == 1
        detail = json.loads(events[0].detail)
        assert detail["records"] == 120 and detail["review pairs"] > 0 and detail["comparisons"] > 0
        assert "review pairs not made" in events[0].reason
    finally:
        db.dispose()


def test_bounds_do_not_touch_an_ordinary_bundle(database_url, key_path):
    """A bundle's few people are all compared and linked under the default bounds: no capped event."""
    settings = make_settings(database_url, key_path)
    from app.db import Database

    db = Database(database_url)
    try:
        with db.session() as s:
            results = LinkageService.from_settings(s, settings).link_written(_near_identical(30))
        assert len(results) == 30 and results[-1].candidates_compared > 0
        with db.session(readonly=True) as s:
            assert s.execute(text("SELECT count(*) FROM linkage_event WHERE action = 'capped'")).scalar() == 0
    finally:
        db.dispose()
