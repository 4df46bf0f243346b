"""The sync's read-ahead (pages fetched on other threads while a page is written): bounded, the
next type's search under way before the current type is written, and a sync killed mid-pass
has advanced no cursor past what it wrote, whatever it had read ahead."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
import respx
from sqlalchemy import select

from app.main import create_app
from app.sync import engine
from app.sync.client import UpstreamClient
from app.sync.command import build_syncer
from app.sync.models import SyncCursor
from tests.conftest import make_settings
from tests.sync.test_sync_faults import UP, _patient, page

TYPES = ("Patient", "RelatedPerson")


def _related(rid: str, pid: str) -> dict:
    return {"resourceType": "RelatedPerson", "id": rid, "meta": {"versionId": "1", "lastUpdated": "2026-01-02T10:00:00.000+00:00"},
            "patient": {"reference": f"Patient/{pid}"}, "name": [{"family": "Upstream", "given": [rid]}]}


class _Paged:
    """A search of `n` pages of one record each, linked by next; records which pages were asked for."""

    def __init__(self, make_record, n: int, res_type: str):
        self.make_record, self.n, self.res_type = make_record, n, res_type
        self.asked: list[int] = []
        self.first_asked = threading.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        n = int(request.url.params.get("page", "1"))
        self.asked.append(n)
        self.first_asked.set()
        nxt = f"{UP}/{self.res_type}?page={n + 1}" if n < self.n else None
        return httpx.Response(200, json=page([self.make_record(n)], nxt))


@pytest.fixture
def fx(database_url, key_path):
    settings = make_settings(database_url, key_path)
    app = create_app(settings)

    def make(**kw):
        client = UpstreamClient(UP, settings, sleep=lambda s: None, bearer_token="upstream-token")
        return build_syncer(settings, UP, "RMT01", "maternity", app=app, client=client, **kw)  # prefetch on: the default

    yield app, make
    app.state.db.dispose()


def _upstream(mock, patients: int, related: int) -> tuple[_Paged, _Paged]:
    p = _Paged(lambda n: _patient(f"p{n}", f"2026-01-01T10:00:{n:02d}.000+00:00"), patients, "Patient")
    r = _Paged(lambda n: _related(f"r{n}", f"p{n}"), related, "RelatedPerson")
    mock.get(path="/fhir/Patient").mock(side_effect=p)
    mock.get(path="/fhir/RelatedPerson").mock(side_effect=r)
    return p, r


def test_read_ahead_is_bounded_and_the_next_type_is_searched_while_one_is_written(fx):
    app, make = fx
    seen: dict[str, object] = {}

    def after_page(res_type: str, pages: int) -> None:
        if res_type == "Patient" and pages == 1:
            seen["related_searched"] = related.first_asked.wait(5)  # under way while Patients are still being written
            time.sleep(0.3)  # time for the fetching threads to run as far ahead as they may
            seen["patient_pages_asked"] = len(patients.asked)

    with respx.mock(assert_all_called=False) as mock:
        patients, related = _upstream(mock, 12, 3)
        summary = make(after_page=after_page).run(types=TYPES)
    assert summary.ok, summary.render()
    assert seen["related_searched"] is True
    # one page written, PREFETCH_PAGES queued, one more fetched and waiting for room: no further
    assert seen["patient_pages_asked"] <= 1 + engine.PREFETCH_PAGES + 1
    assert patients.asked == list(range(1, 13)) and related.asked == [1, 2, 3]  # each page asked for once, in order
    assert summary.of("Patient").created == 12 and summary.of("RelatedPerson").created == 3
    assert summary.upstream_wait >= 0


def test_a_sync_killed_mid_pass_has_moved_no_cursor_past_what_it_wrote(fx):
    app, make = fx

    class Killed(Exception):
        pass

    def die(res_type: str, pages: int) -> None:
        if res_type == "Patient" and pages == 2:
            assert related.first_asked.wait(5)  # the next type was read ahead, not written
            raise Killed()

    with respx.mock(assert_all_called=False) as mock:
        patients, related = _upstream(mock, 4, 3)
        with pytest.raises(Killed):
            make(after_page=die).run(types=TYPES)
        with app.state.db.session(readonly=True) as s:
            pat = s.get(SyncCursor, (1, "Patient"))
            assert pat.pages == 2 and pat.next_url == f"{UP}/Patient?page=3"  # the pages written, no more
            assert s.get(SyncCursor, (1, "RelatedPerson")) is None  # fetched ahead, never written: no cursor
        patients.asked.clear()
        resumed = make().run(types=TYPES)
    assert resumed.ok, resumed.render()
    assert resumed.resumed == ["Patient"] and patients.asked == [3, 4]  # from the cursor, nothing fetched twice
    assert resumed.of("Patient").created == 2 and resumed.of("RelatedPerson").created == 3
    with app.state.db.session(readonly=True) as s:
        assert all(c.next_url is None for c in s.scalars(select(SyncCursor)))
