"""The verify walk's shortcuts (issue 17's benchmark: a million events) must judge exactly as
the full parse does: the body's instant against the stored one, and a SQLite instant as the
chain hashes it."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from app.audit.service import _body_problem, _recorded_text, _sqlite_recorded, columns_from_body


def _row(body: dict, recorded: str) -> tuple:
    c = columns_from_body(body)
    return (1, body["id"], recorded, c.type_code, c.subtype_code, c.action, c.outcome, c.purpose_of_use, c.agent_sub, c.agent_org,
            c.agent_role, c.review_required, c.policy_version, b"", "0" * 64, "0" * 64)


STORED = "2026-12-07T02:46:53.123000Z"


@pytest.mark.parametrize("said, problem", [
    ("2026-12-07T02:46:53.123Z", None),          # as balp writes it
    ("2026-12-07T02:46:53.123000Z", None),       # the same instant, other precision
    ("2026-12-07T03:46:53.123+01:00", None),     # the same instant, another offset
    ("2026-12-07T02:46:53.123+01", "recorded"),  # 24 characters, but an hour earlier
    ("2026-12-07T02:46:53.124Z", "recorded"),
    ("not a date at all, 24 ch", "recorded"),
])
def test_the_bodys_instant_is_compared_as_an_instant(said, problem):
    body = {"id": "e1", "recorded": said, "action": "R", "outcome": "0", "type": {"code": "rest"}}
    assert _body_problem(_row(body, STORED), body, STORED) == problem


def test_a_column_that_disagrees_is_named():
    body = {"id": "e1", "recorded": "2026-12-07T02:46:53.123Z", "action": "R", "outcome": "0", "type": {"code": "rest"}}
    row = list(_row(body, STORED))
    row[5] = "C"  # action
    assert _body_problem(tuple(row), body, STORED) == "action"
    assert _body_problem(_row(body, STORED), {**body, "id": "e2"}, STORED) == "event_id"


@pytest.mark.parametrize("stored", ["2026-12-07 02:46:53.123456", "2026-12-07 02:46:53", "2026-12-07T02:46:53.123456+00:00",
                                    datetime(2026, 12, 7, 2, 46, 53, 123456)])
def test_a_sqlite_instant_reads_as_the_chain_hashes_it(stored):
    expected = "2026-12-07T02:46:53.123456Z" if "." in str(stored) else "2026-12-07T02:46:53.000000Z"
    assert _sqlite_recorded(stored) == expected == _recorded_text(datetime.fromisoformat(str(stored)).replace(tzinfo=timezone.utc))


def test_what_is_not_an_instant_is_none():
    assert _sqlite_recorded("2026-13-07 02:46:53.1234567") is None and _sqlite_recorded("yesterday") is None
    assert _sqlite_recorded("٢٠٢٦-12-07 02:46:53.123456") is None  # digits, but not ASCII ones: not taken by the fast path
