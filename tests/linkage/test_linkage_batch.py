"""The batched linkage path (one ``link_written`` call links every record of a transaction with a
few batched reads and one executemany per table) gives exactly what linking the same records one
after another gives, including records of one transaction that match each other; and the fast
``record_from_features`` gives the record the normalising constructor gives."""
from __future__ import annotations

import random
import re

from sqlalchemy import text

from app.ingest.hooks import Written
from app.linkage.matching import PersonRecord
from app.linkage.service import (
    LinkageService, _record_from_features_normalising, features_json, linked_person_id, record_from_features,
)
from tests.fhirdata import next_nhs

NHS = "https://fhir.nhs.uk/Id/nhs-number"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
GIVEN = ["Jon", "John", "Jonathan", "Dan", "Daniel", "Emma", "Em", "Tom", "Thomas"]
FAMILY = ["Smith", "Smyth", "Smith-Jones", "Carter", "Cartar"]
DOB = ["1998-04-03", "1998-03-04", "1998-04-08", "1980-01-01"]
POSTCODE = ["LS6 2AB", "LS6 2AD", "M1 1AA", None]


def _stream(seed: int, n: int) -> list[Written]:
    rng = random.Random(seed)
    numbers = [next_nhs() for _ in range(4)]
    refs: list[tuple[str, str]] = []
    out = []
    for k in range(n):
        if refs and rng.random() < 0.25:  # a correction of a record written before
            res_type, res_id = rng.choice(refs)
        else:
            res_type, res_id = rng.choice(("Patient", "RelatedPerson")), f"b{seed}x{k}"
            refs.append((res_type, res_id))
        body = {"resourceType": res_type, "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)]}],
                "gender": rng.choice(("male", "female", None)), "birthDate": rng.choice(DOB)}
        if rng.random() < 0.5:
            body["identifier"] = [{"system": NHS, "value": rng.choice(numbers)}]
        if pc := rng.choice(POSTCODE):
            body["address"] = [{"use": "home", "postalCode": pc}]
        out.append(Written(res_type, res_id, 1, body, True, "RMT01", "maternity"))
    return out


def _state(database, refs: list[str]) -> tuple:
    with database.session(readonly=True) as s:
        persons = {r: linked_person_id(s, *r.split("/")) for r in refs}
        groups = {}
        for r, pid in persons.items():
            groups.setdefault(pid, set()).add(r)
        links = s.execute(text("SELECT res_type, res_id, assurance, probability, how, matched_ref, features FROM linkage_link")).all()
        keys = s.execute(text("SELECT key_hash, res_type, res_id FROM linkage_key")).all()
        cands = s.execute(text("SELECT a_ref, b_ref, status, probability FROM linkage_candidate")).all()
        events = s.execute(text("SELECT action, record_ref, reason FROM linkage_event ORDER BY id")).all()
        active = s.scalar(text("SELECT count(*) FROM linkage_person WHERE active = :t"), {"t": True})
    return (sorted(map(sorted, groups.values())), sorted(map(tuple, links)), sorted(map(tuple, keys)),
            sorted(map(tuple, cands)), [(e.action, e.record_ref, _UUID.sub("<person>", e.reason)) for e in events], active)


def _clear(database) -> None:
    with database.session() as s:
        for table in ("linkage_event", "linkage_candidate", "linkage_key", "linkage_link", "linkage_person"):
            s.execute(text(f"DELETE FROM {table}"))


def test_one_batch_links_exactly_as_one_record_at_a_time(database, settings):
    for seed in (1, 2, 3):
        written = _stream(seed, 24)
        refs = sorted({f"{w.res_type}/{w.res_id}" for w in written})
        with database.session() as s:  # one transaction, one call: the ingest hook's path
            batch = LinkageService.from_settings(s, settings).link_written(written)
        batched = _state(database, refs)
        _clear(database)
        single = []
        for w in written:  # the same records, one transaction each
            with database.session() as s:
                single += LinkageService.from_settings(s, settings).link_written([w])
        one_by_one = _state(database, refs)
        _clear(database)
        assert [(r.ref, r.action, r.assurance, r.candidates_compared, r.queued) for r in batch] == \
               [(r.ref, r.action, r.assurance, r.candidates_compared, r.queued) for r in single]
        assert batched == one_by_one
        assert {r.action for r in batch} >= {"create", "join"}


def test_records_of_one_transaction_that_match_each_other_end_as_one_person(database, settings):
    nhs = next_nhs()
    bodies = [
        ("RelatedPerson", "rp", {"name": [{"family": "Smyth", "given": ["Jon"]}], "gender": "male", "birthDate": "1998-04-03",
                                 "address": [{"postalCode": "LS6 2AB"}]}),
        ("Patient", "gp", {"name": [{"family": "Smith", "given": ["Jonathan"]}], "gender": "male", "birthDate": "1998-04-03",
                           "identifier": [{"system": NHS, "value": nhs}], "address": [{"postalCode": "LS6 2AB"}]}),
        ("Patient", "gp2", {"name": [{"family": "Smith", "given": ["Jonathan"]}], "gender": "male", "birthDate": "1998-04-03",
                            "identifier": [{"system": NHS, "value": nhs}]}),
    ]
    written = [Written(t, i, 1, dict(b, resourceType=t), True, "RMT01", "maternity") for t, i, b in bodies]
    with database.session() as s:
        out = LinkageService.from_settings(s, settings).link_written(written)
    assert [r.action for r in out] == ["create", "join", "join"]
    with database.session(readonly=True) as s:
        assert len({linked_person_id(s, t, i) for t, i, _ in bodies}) == 1
        founder = s.execute(text("SELECT assurance, matched_ref FROM linkage_link WHERE res_id = 'rp'")).one()
        assert founder.matched_ref == "Patient/gp" and founder.assurance == "level2"
        assert s.scalar(text("SELECT version_id FROM linkage_person WHERE id = :p"), {"p": out[0].person_id}) == 3


def test_fast_record_from_features_is_the_normalising_one():
    recs = [
        PersonRecord("Patient/a", ("Jon Paul", "Baby"), ("O'Brien-Smyth",), "1998-04-03", "M", "ls62ab", nhs_number=next_nhs(),
                     nhs_verified=True, address_lines=("1 The Street", "", "Flat 2", ""), locality="Leeds", region="W Yorks",
                     other_ids=(("https://x/id", " ab 12 "),)),
        PersonRecord("Patient/b", (), (), "1956-13-09", None, "12345", nhs_number="1234567890"),
        PersonRecord("Patient/c", ("Émilie",), ("Zoë",), None, "female", None),
        PersonRecord("Patient/d", ("x",), ("Lee",), "0999-01-02", "other", "SW1A 1AA"),
    ]
    for rec in recs:
        features = features_json(rec)
        fast, slow = record_from_features(rec.record_ref, features), _record_from_features_normalising(rec.record_ref, features)
        assert fast == slow == rec
        assert fast.birth_date_text == slow.birth_date_text
        assert (fast.first_given, fast.family_full, fast.dob_digits) == (slow.first_given, slow.family_full, slow.dob_digits)
