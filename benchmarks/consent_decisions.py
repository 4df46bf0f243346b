"""How many disclosure decisions per second the consent engine makes on one core.

A family of four (infant, mother, father, mother's partner), each with three Consents
(a scoped permit, a nested permit/deny tree, an expired refusal), and a mix of items
(identity, contact, records, sensitive GP records with labels) asked for by a health
visitor, midwife, MASH and IG officer, for direct care and safeguarding.
Consents are parsed once (as the gateway does when it loads a family), then 100,000
decisions are timed: the headline, best of three rounds.

So that a reader can tell a busy machine from a regression, the same run also times, over
the same requests:

* the reference path, ``decide_uncached`` (the same engine with nothing remembered between
  calls, as when every request brings Consents the engine has not seen);
* Consents new to the engine: every request brings a freshly parsed copy of the person's
  Consents, so nothing remembered about Consents helps (the worst case; the family view
  parses a person's Consents once per page and decides all their items with that copy);
* a machine-speed yardstick: a loop doing one dict look-up per request and nothing else.

The ratios to the yardstick move much less with machine load than the raw figures do.

    .venv/bin/python benchmarks/consent_decisions.py [N]
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from consent import (
    ConsentRecord,
    DataItem,
    DataSubject,
    DisclosureRequest,
    LegitimateRelationship,
    Outcome,
    Purpose,
    Requester,
    decide,
    load_policy,
)
from consent.engine import decide_uncached  # noqa: E402

NOW = dt.datetime(2025, 6, 1, 10, tzinfo=dt.timezone.utc)
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}


def actor(ods: str) -> dict:
    return {"role": IRCP, "reference": {"identifier": {"system": ODS, "value": ods}}}


def consents_for(person: str) -> tuple[ConsentRecord, ...]:
    base = {"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "policyRule": {"coding": [{"system": ACT, "code": "OPTIN"}]}}
    scoped_permit = {**base, "id": f"{person}-1", "dateTime": "2024-01-01T00:00:00Z", "provision": {
        "type": "permit", "period": {"start": "2024-01-01"}, "actor": [actor("RHV01")],
        "purpose": [{"system": REASON, "code": "TREAT"}], "securityLabel": [{"system": ACT, "code": "PSY"}]}}
    nested = {**base, "id": f"{person}-2", "dateTime": "2024-06-01T00:00:00Z", "provision": {
        "type": "deny", "provision": [{
            "type": "permit", "actor": [actor("RHV01"), actor("RMT01")],
            "purpose": [{"system": REASON, "code": "TREAT"}], "securityLabel": [{"system": ACT, "code": "ETH"}],
            "provision": [{"type": "deny", "dataPeriod": {"end": "2020-12-31"}}]}]}}
    expired_refusal = {**base, "id": f"{person}-3", "dateTime": "2022-01-01T00:00:00Z",
                       "provision": {"type": "deny", "period": {"start": "2022-01-01", "end": "2023-01-01"}}}
    return tuple(ConsentRecord.from_fhir(c) for c in (scoped_permit, nested, expired_refusal))


FAMILY = [
    DataSubject("Patient/infant", "infant", (("https://fhir.nhs.uk/Id/nhs-number", "9990000018"),)),
    DataSubject("Patient/mother", "mother", (("https://fhir.nhs.uk/Id/nhs-number", "9990000026"),)),
    DataSubject("Patient/father", "father", (("https://fhir.nhs.uk/Id/nhs-number", "9990000034"),)),
    DataSubject("Patient/partner", "male-carer", (("https://fhir.nhs.uk/Id/nhs-number", "9990000042"),)),
]
CONSENTS = {s.reference: consents_for(s.family_role) for s in FAMILY}
ITEMS = [
    DataItem("identity", "Patient", frozenset(), "RMT01", None, "Patient/x"),
    DataItem("identity", "Patient", frozenset({"R"}), "RMT01", None, "Patient/x"),
    DataItem("contact", "Patient", frozenset(), "RMT01", None, "Patient/x"),
    DataItem("relationship", "RelatedPerson", frozenset(), "RMT01", None, "RelatedPerson/x"),
    DataItem("record", "Condition", frozenset(), "Y90003", dt.date(2025, 1, 1), "Condition/r"),
    DataItem("care-team", "CareTeam", frozenset(), "RHV01", None, "CareTeam/c"),
    DataItem("mental-health", "Condition", frozenset({"PSY"}), "Y90001", dt.date(2024, 3, 1), "Condition/m"),
    DataItem("substance-misuse", "Condition", frozenset({"ETH", "SUD"}), "Y90001", dt.date(2019, 3, 1), "Condition/s"),
    DataItem("substance-misuse", "Condition", frozenset({"ETH", "SUD"}), "Y90001", dt.date(2024, 3, 1), "Condition/s2"),
    DataItem("domestic-abuse", "Flag", frozenset({"SDV"}), "Y90002", dt.date(2023, 9, 1), "Flag/d"),
    DataItem("care-leaver", "Observation", frozenset(), "Y90001", None, "Observation/c"),
]
REQUESTERS = [
    (Requester("health-visitor", "RHV01", "hv1"), LegitimateRelationship(True, "episode-of-care")),
    (Requester("midwife", "RMT01", "mw1"), LegitimateRelationship(True, "care-team")),
    (Requester("mash", "LAMASH1", "m1"), LegitimateRelationship(False)),
    (Requester("ig-officer", "RHV01", "ig1"), LegitimateRelationship(True)),
]


def build_requests() -> list[DisclosureRequest]:
    out = []
    for (who, rel), purpose, person, what in itertools.product(REQUESTERS, Purpose, FAMILY, ITEMS):
        out.append(DisclosureRequest(
            requester=who, purpose=purpose, subject=person, item=what, relationship=rel,
            justification="Strategy meeting: concern for infant" if purpose is Purpose.SAFEGUARDING else None,
            consents=CONSENTS[person.reference], as_of=NOW,
        ))
    return out


def _rate(fn, stream, rounds: int) -> float:
    """Best of ``rounds`` timings of ``fn`` over the stream, in items per second."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn(stream)
        best = min(best, time.perf_counter() - start)
    return len(stream) / best


def main(n: int = 100_000) -> float:
    policy = load_policy()
    requests = build_requests()
    for r in requests:  # warm up, and check the fast path against the reference while at it
        if decide(r, policy) != decide_uncached(r, policy):
            raise SystemExit(f"decide and decide_uncached disagree on {r}")
    stream = list(itertools.islice(itertools.cycle(requests), n))
    outcomes = {o: 0 for o in Outcome}

    def headline(batch):
        for r in batch:
            outcomes[decide(r, policy).outcome] += 1

    def reference(batch):
        for r in batch:
            decide_uncached(r, policy)

    fresh = [dataclasses.replace(r, consents=tuple(list(r.consents))) for r in stream[: max(1, n // 5)]]

    def cold(batch):
        for r in batch:
            decide(r, policy)

    table = {id(r): r.purpose for r in requests}

    def yardstick(batch):
        get = table.get
        for r in batch:
            get(id(r))

    rate = _rate(headline, stream, 3)
    reference_n = max(1, n // 5)
    reference_rate = _rate(reference, stream[:reference_n], 3)
    cold_rate = _rate(cold, fresh, 1)  # one round: a second would find the copies remembered
    yardstick_rate = _rate(yardstick, stream, 3)
    print(f"{n:,} decisions on one core: {rate:,.0f} decisions/s, best of 3 "
          f"(target >= 50,000/s; {len(requests)} distinct requests, family of 4, 3 Consents each)")
    print(f"reference path (decide_uncached, nothing remembered), {reference_n:,} of the same requests, best of 3: "
          f"{reference_rate:,.0f} decisions/s; the headline is {rate / reference_rate:.1f}x that")
    print(f"Consents new to the engine on every request (worst case), {len(fresh):,} requests: "
          f"{cold_rate:,.0f} decisions/s")
    print(f"machine yardstick (one dict look-up per request), {n:,} requests: {yardstick_rate:,.0f} look-ups/s; "
          f"headline = 1/{yardstick_rate / rate:.0f} and reference = 1/{yardstick_rate / reference_rate:.0f} of it")
    print("outcomes per 100,000 (3 rounds): " + ", ".join(f"{o.value}={c * 100_000 // (3 * n):,}" for o, c in outcomes.items()))
    return rate


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
