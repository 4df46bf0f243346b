"""How many disclosure decisions per second the consent engine makes on one core.

A family of four (infant, mother, father, mother's partner), each with three Consents
(a scoped permit, a nested permit/deny tree, an expired refusal), and a mix of items
(identity, contact, records, sensitive GP records with labels) asked for by a health
visitor, midwife, MASH and IG officer, for direct care and safeguarding.
Consents are parsed once (as the gateway does when it loads a family), then 100,000
decisions are timed.

    .venv/bin/python benchmarks/consent_decisions.py [N]
"""

from __future__ import annotations

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


def main(n: int = 100_000) -> float:
    policy = load_policy()
    requests = build_requests()
    for r in requests:  # warm up
        decide(r, policy)
    stream = list(itertools.islice(itertools.cycle(requests), n))
    outcomes = {o: 0 for o in Outcome}
    start = time.perf_counter()
    for r in stream:
        outcomes[decide(r, policy).outcome] += 1
    elapsed = time.perf_counter() - start
    rate = n / elapsed
    print(f"{n:,} decisions in {elapsed:.2f} s on one core: {rate:,.0f} decisions/s "
          f"(target >= 50,000/s; {len(requests)} distinct requests, family of 4, 3 Consents each)")
    print("outcomes: " + ", ".join(f"{o.value}={c:,}" for o, c in outcomes.items()))
    return rate


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
