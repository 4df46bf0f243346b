"""The write path's bulk insert (app.db.insert_tables): several tables' rows in one go (on
PostgreSQL one round trip), every value stored as given, and a key another writer holds
refused as an IntegrityError (what run_write retries on), with nothing of the call kept."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.db import insert_tables
from app.fhir.models import SourceKey, StoredResource
from app.linkage.models import BlockingKey, Link, LinkedPerson

WHEN = datetime(2026, 11, 26, 12, 50, 1, 123000, tzinfo=timezone.utc)


def _resource(res_id: str, body: str = '{"resourceType":"Patient"}') -> dict:
    return {"res_type": "Patient", "res_id": res_id, "version_id": 1, "last_updated": WHEN, "deleted": False,
            "body": body, "source_org": "RMT01", "source_system": "maternity"}


def test_rows_of_several_tables_are_stored_as_given(database):
    body = '{"resourceType":"Patient","name":[{"family":"Ní Bhriain","given":["Zoë \\"Zo\\""]}],"text":"' + "x" * 70_000 + '"}'
    with database.session() as s:
        insert_tables(s.connection(), [
            (StoredResource.__table__, [_resource("bulk-1", body), _resource("bulk-2")]),
            (LinkedPerson.__table__, [{"id": "person-1", "version_id": 3, "created_at": WHEN, "updated_at": WHEN, "active": True}]),
            (Link.__table__, [{"res_type": "Patient", "res_id": "bulk-1", "person_id": "person-1", "assurance": "level2",
                               "probability": 0.987654321012345, "how": "auto", "matched_ref": None, "nhs_number": "9990000018",
                               "source_org": "RMT01", "features": '{"f":"Ní"}', "updated_at": WHEN}]),
            (BlockingKey.__table__, [{"key_hash": -(2 ** 63), "res_type": "Patient", "res_id": "bulk-1"},
                                     {"key_hash": 2 ** 63 - 1, "res_type": "Patient", "res_id": "bulk-1"}]),
            (SourceKey.__table__, []),  # nothing to insert: no statement
        ])
    with database.session(readonly=True) as s:
        row = s.execute(select(StoredResource).where(StoredResource.res_id == "bulk-1")).scalar_one()
        assert (row.body, row.version_id, row.deleted, row.source_org) == (body, 1, False, "RMT01")
        assert row.last_updated.replace(tzinfo=row.last_updated.tzinfo or timezone.utc) == WHEN
        link = s.execute(select(Link)).scalar_one()
        assert (link.probability, link.matched_ref, link.features) == (0.987654321012345, None, '{"f":"Ní"}')
        assert s.execute(select(LinkedPerson.version_id, LinkedPerson.active)).one() == (3, True)
        assert sorted(s.scalars(select(BlockingKey.key_hash))) == [-(2 ** 63), 2 ** 63 - 1]


def test_a_key_already_taken_fails_the_whole_call(database):
    key = {"source_org": "RMT01", "res_type": "Patient", "system": "https://example.nhs.uk/Id/x", "value": "1", "res_id": "bulk-1"}
    with database.session() as s:
        insert_tables(s.connection(), [(SourceKey.__table__, [key])])
    with pytest.raises(IntegrityError):
        with database.session() as s:
            insert_tables(s.connection(), [
                (StoredResource.__table__, [_resource("bulk-3")]),
                (SourceKey.__table__, [dict(key, value="2", res_id="bulk-3"), dict(key, res_id="bulk-3")]),
            ])
    with database.session(readonly=True) as s:  # the transaction rolled back: neither the record nor the new key
        assert s.scalar(select(func.count()).select_from(StoredResource)) == 0
        assert s.scalar(select(func.count()).select_from(SourceKey)) == 1


def test_rows_sharing_a_timestamp_and_rows_with_their_own_keep_each_its_own(database):
    """The SQLite insert converts a value shared by many rows once: each row still gets its own."""
    others = [datetime(2026, 11, 26, 12, 50, 1, n * 1000, tzinfo=timezone.utc) for n in range(1, 6)]
    rows = [_resource(f"ts-{n}") for n in range(6)]  # all share the WHEN object
    rows += [{**_resource(f"own-{n}"), "last_updated": when} for n, when in enumerate(others)]
    with database.session() as s:
        insert_tables(s.connection(), [(StoredResource.__table__, rows)])
    with database.session(readonly=True) as s:
        stored = {r.res_id: r.last_updated.replace(tzinfo=r.last_updated.tzinfo or timezone.utc)
                  for r in s.execute(select(StoredResource).where(StoredResource.res_id.like("ts-%") | StoredResource.res_id.like("own-%"))).scalars()}
    assert stored == {r["res_id"]: r["last_updated"] for r in rows}
