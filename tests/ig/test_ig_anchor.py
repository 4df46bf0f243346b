"""Issue 17 item 6: `familyview audit anchor` signs a checkpoint of the chain (JWS over the
count and head hash, key from settings); `audit verify --anchor FILE` holds the chain to it:
intact (and grown since) passes; cut back below the checkpoint, or rewritten with every later
hash recomputed (which the chain alone cannot see), fails; a forged checkpoint fails."""
from __future__ import annotations

import json

import jwt
import pytest
from sqlalchemy import create_engine, text

from app import cli
from app.audit.service import _recorded_text, chain_hash, sealed_facts_of_body
from app.settings import get_settings
from tests.conftest import FHIR_JSON, MATERNITY_ORG
from tests.fhirdata import nhs_numbers, patient
from tests.family.test_family_audit import _as_attacker

NHS_NUMBERS = nhs_numbers(712_000)


@pytest.fixture
def anchored(live, tmp_path, monkeypatch):
    monkeypatch.setenv("FAMILYVIEW_AUDIT_ANCHOR_KEY_PATH", str(tmp_path / "anchor-key.pem"))
    get_settings.cache_clear()
    _write(live, 4)
    path = tmp_path / "anchor.jws"
    assert cli.main(["audit", "anchor", "--database-url", live.settings.database_url, "--output", str(path)]) == 0
    yield path
    get_settings.cache_clear()


def _write(live, n: int) -> None:
    src = live.source(MATERNITY_ORG, "maternity")
    for _ in range(n):
        assert src.post("/Patient", content=json.dumps(patient("Hartley", "Cora", nhs=next(NHS_NUMBERS))), headers=FHIR_JSON).status_code == 201


def _verify(live, capsys, *extra: str) -> tuple[int, str]:
    rc = cli.main(["audit", "verify", "--database-url", live.settings.database_url, *extra])
    return rc, capsys.readouterr().out


def test_an_intact_chain_holds_its_anchor_and_may_grow(live, anchored, capsys):
    claims = jwt.decode(anchored.read_text().strip(), options={"verify_signature": False})
    assert claims["count"] == 5 and len(claims["head_hash"]) == 64  # the policy in force at start-up and 4 writes
    assert jwt.get_unverified_header(anchored.read_text().strip())["alg"] == "RS256"
    rc, out = _verify(live, capsys, "--anchor", str(anchored))
    assert rc == 0 and "anchor held" in out
    _write(live, 2)
    rc, out = _verify(live, capsys, "--anchor", str(anchored))
    assert rc == 0 and "and 3 since" in out  # the anchor itself (an audited IG action) and 2 writes


def test_a_chain_cut_back_below_its_anchor_fails(live, anchored, capsys):
    url = live.settings.database_url
    # the newest two events deleted from the events, their search rows and the head table alike:
    # the chain alone still verifies (it just looks shorter)
    _as_attacker(url, ("DELETE FROM audit_index WHERE event_seq > 2", {}), ("DELETE FROM audit_event WHERE seq > 2", {}),
                 ("DELETE FROM audit_head WHERE seq > 2", {}))
    assert _verify(live, capsys)[0] == 0
    rc, out = _verify(live, capsys, "--anchor", str(anchored))
    assert rc == 1 and "anchor BROKEN" in out and "fewer than the 5" in out


def test_a_chain_rewritten_since_its_anchor_fails(live, anchored, capsys):
    url = live.settings.database_url
    eng = create_engine(url)
    with eng.connect() as c:
        rows = c.execute(text("SELECT seq, event_id, recorded, body FROM audit_event ORDER BY seq")).all()
    eng.dispose()
    # the second event's description changed, and every hash after it recomputed (over what
    # each seals: its columns and search rows, which the description is not), head table too
    statements, prev = [], "0" * 64
    for seq, event_id, recorded, body in rows:
        event = json.loads(body)
        if seq == rows[1][0]:
            event["outcomeDesc"] = "nothing happened"
            body = json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        recorded = recorded if not isinstance(recorded, str) else __import__("datetime").datetime.fromisoformat(recorded)
        digest = chain_hash(prev, event_id, _recorded_text(recorded), body, sealed_facts_of_body(event))
        statements += [("UPDATE audit_event SET body = :b, prev_hash = :p, hash = :h WHERE seq = :s", {"b": body, "p": prev, "h": digest, "s": seq}),
                       ("UPDATE audit_head SET hash = :h WHERE seq = :s", {"h": digest, "s": seq})]
        prev = digest
    _as_attacker(url, *statements)
    rc, out = _verify(live, capsys)
    assert rc == 0, out  # internally consistent: only the anchor can tell
    rc, out = _verify(live, capsys, "--anchor", str(anchored))
    assert rc == 1 and "anchor BROKEN" in out and "anchored head hash" in out


def test_a_forged_anchor_fails(live, anchored, capsys, tmp_path):
    token = anchored.read_text().strip()
    header, payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["count"] = 1
    import base64

    forged = tmp_path / "forged.jws"
    forged.write_text(".".join([header, base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("="), signature]))
    rc, out = _verify(live, capsys, "--anchor", str(forged))
    assert rc == 1 and "signature does not verify" in out
    assert _verify(live, capsys, "--anchor", str(tmp_path / "missing.jws"))[0] == 2
