"""The linkage service against the database fixtures (SQLite and PostgreSQL): the Python API
for the family view, incremental candidate look-up, concurrent ingest and the migration."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, func, inspect, select, text

from app.auth.tokens import Principal, Scope
from app.ingest.service import EntryRequest, IngestService
from app.linkage.matching import PersonRecord, blocking_keys
from app.linkage.models import BlockingKey, LinkedPerson, ReviewCandidate
from app.linkage.queue import drain, settle
from app.linkage.hooks import LinkageHook
from app.linkage.service import LinkageService, key_hash, linked_person_id, linked_records
from tests.conftest import GP_ORG, MATERNITY_ORG, make_settings
from tests.fhirdata import next_nhs
from tests.linkage.linkage_testkit import person


def _with_patient(resource):
    if resource["resourceType"] == "RelatedPerson" and "patient" not in resource:
        # a logical reference to the mother, kept until she arrives
        resource = dict(resource, patient={"type": "Patient", "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": next_nhs()}})
    return resource


def _source(org, service):
    return Principal(f"{service}@{org}", "source-system", org, service, (Scope.parse("system/*.cruds"),))


def _write(database, settings, org, service, resource):
    resource = _with_patient(resource)
    with database.session() as s:
        svc = IngestService(s, _source(org, service), settings, [LinkageHook(settings)], base="http://test/fhir")
        res = svc.write_one(EntryRequest(0, "POST", resource["resourceType"], resource, in_bundle=False))
        return f"{res.res_type}/{res.res_id}"


def test_python_api_for_the_family_view(database, settings):
    nhs = next_nhs()
    rp = _write(database, settings, MATERNITY_ORG, "maternity", person("RelatedPerson", "Jon", "Smyth", "1998-04-03"))
    gp = _write(database, settings, GP_ORG, "general-practice", person("Patient", "Jonathan", "Smith", "1998-04-03", nhs=nhs, postcode="LS6 2AB"))
    gp2 = _write(database, settings, "A99002", "general-practice", person("Patient", "Jonathan", "Smith", "1998-04-03", nhs=nhs))
    settle(database, settings)  # a reader's first step: links what is queued (linkage_mode queued, PostgreSQL's default)
    with database.session(readonly=True) as s:
        pid = linked_person_id(s, *rp.split("/"))
        assert pid and pid == linked_person_id(s, *gp.split("/")) == linked_person_id(s, *gp2.split("/"))
        recs = linked_records(s, *rp.split("/"))
        assert {r.reference: r.assurance for r in recs} == {rp: "level4", gp: "level2", gp2: "level2"}
        assert recs[0].how == "self" and all(r.how == "auto" for r in recs[1:])
        # pairwise assurance: the two GP records share a valid NHS number (level3)
        assert {r.reference: r.assurance for r in linked_records(s, *gp2.split("/"))}[gp] == "level3"
        assert [r.reference for r in linked_records(s, *rp.split("/"), min_assurance="level3")] == [rp]
        assert linked_records(s, "Patient", "unknown") == [] and linked_person_id(s, "Flag", "x") is None
        with pytest.raises(ValueError):
            linked_records(s, *rp.split("/"), min_assurance="high")


GIVEN = ("Adam", "Bilal", "Callum", "Dylan", "Ethan", "Farhan", "George", "Harvey", "Isaac", "Jacob",
         "Kieran", "Lewis", "Mason", "Nathan", "Owen", "Reuben", "Samuel", "Tariq", "Umar", "Victor")
FAMILY = ("Ahmed", "Baker", "Clarke", "Davies", "Evans", "Fletcher", "Green", "Hughes", "Iqbal", "Jenkins",
          "Kowalski", "Lloyd", "Morgan", "Nguyen", "Okoro")


def test_one_record_is_compared_only_with_its_blocking_candidates(database, settings):
    # 300 different people already linked; a new record reads only its own buckets
    with database.session() as s:
        svc = LinkageService.from_settings(s, settings)
        for i in range(300):
            g, f = GIVEN[i % 20], FAMILY[i // 20]
            rec = PersonRecord(f"Patient/p{i}", (g,), (f,), f"{1950 + i % 50}-{1 + i % 12:02d}-{1 + i % 28:02d}", "male", f"LS{i % 20} {i % 9}AB")
            svc.link_record("Patient", f"p{i}", rec, source_org=GP_ORG)
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(LinkedPerson)) == 300
        svc = LinkageService.from_settings(s, settings)
        new = PersonRecord("Patient/new", ("Jakob",), ("Ahmed",), "1959-10-10", "male", "LS9 0AB")  # p9 with a typo
        out = svc.link_record("Patient", "new", new, source_org=GP_ORG)
        assert out.action == "join" and out.candidates_compared <= 10, out
        assert linked_person_id(s, "Patient", "new") == linked_person_id(s, "Patient", "p9")
        assert s.scalar(select(func.count()).select_from(BlockingKey).where(BlockingKey.res_id == "new")) > 0


PEOPLE = [(("Jon", "Jonathan"), ("Smyth", "Smith")), (("Dan", "Daniel"), ("Carter", "Carter")),
          (("Mike", "Michael"), ("Hughs", "Hughes")), (("Tom", "Thomas"), ("Evens", "Evans")),
          (("Chris", "Christopher"), ("Okafor", "Okafor")), (("Rob", "Robert"), ("Nowak", "Nowak"))]


@pytest.mark.parametrize("mode", ["inline", "queued"])
@pytest.mark.parametrize("rounds", [6])
def test_concurrent_ingest_of_one_person_from_two_sources_ends_as_one_person(database, database_url, key_path, backend, rounds, mode):
    """Two transactions at once (two threads, two connections) write the same man from two
    sources; both must end in one linked person. Inline, the two writes link at once;
    queued, two drainers (two servers' workers) link one record each at once. On
    PostgreSQL this needs the advisory locks."""
    settings = make_settings(database_url, key_path, linkage_mode=mode)
    for i in range(rounds):
        nhs = next_nhs()
        (nick, formal), (fam_mat, fam_gp) = PEOPLE[i % len(PEOPLE)]
        dob = f"{1980 + i}-0{1 + i % 9}-1{i % 9}"
        bodies = [
            (MATERNITY_ORG, "maternity", person("RelatedPerson", nick, fam_mat, dob, postcode="LS6 2AB")),
            (GP_ORG, "general-practice", person("Patient", formal, fam_gp, dob, nhs=nhs, postcode="LS6 2AB")),
        ]
        barrier = threading.Barrier(2)
        refs, errors = [None, None], []

        def run(k):
            org, service, body = bodies[k]
            body = _with_patient(body)
            try:
                with database.session() as s:
                    svc = IngestService(s, _source(org, service), settings, [LinkageHook(settings)], base="http://test/fhir")
                    barrier.wait(timeout=10)
                    res = svc.write_one(EntryRequest(0, "POST", body["resourceType"], body, in_bundle=False))
                    refs[k] = f"{res.res_type}/{res.res_id}"
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        if mode == "queued":
            drainers = [threading.Thread(target=drain, args=(database, settings), kwargs={"wait": False, "batch": 1}) for _ in range(2)]
            for t in drainers:
                t.start()
            for t in drainers:
                t.join(30)
            settle(database, settings)
        with database.session(readonly=True) as s:
            a, b = (linked_person_id(s, *r.split("/")) for r in refs)
            assert a is not None and a == b, f"round {i}: {refs} ended in two persons"


def test_migration_0001_to_0002_on_this_backend(database_url, backend):
    """Downgrade to 0001 and upgrade again (the 0001 -> 0002 path), on SQLite and PostgreSQL."""
    from app.migrate import downgrade, upgrade

    engine = create_engine(database_url)
    try:
        downgrade(database_url, "0001")
        assert "linkage_link" not in inspect(engine).get_table_names()
        upgrade(database_url, "0002")
        insp = inspect(engine)
        assert {"linkage_person", "linkage_link", "linkage_key", "linkage_candidate", "linkage_decision", "linkage_event"} <= set(insp.get_table_names())
        assert {c["name"] for c in insp.get_pk_constraint("linkage_key").items() if False} == set()
        assert insp.get_pk_constraint("linkage_key")["constrained_columns"] == ["key_hash", "res_type", "res_id"]
        assert "ix_linkage_link_person" in {i["name"] for i in insp.get_indexes("linkage_link")}
        with engine.connect() as c:
            assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        upgrade(database_url, "head")
    finally:
        engine.dispose()


def _open_candidate(database, a: str, b: str) -> bool:
    with database.session(readonly=True) as s:
        return s.scalar(
            select(func.count()).select_from(ReviewCandidate).where(
                ReviewCandidate.status == "open",
                ReviewCandidate.a_ref == min(a, b), ReviewCandidate.b_ref == max(a, b),
            )
        ) == 1


def _father_without_birth_date(postcode: str, line: str | None = None) -> dict:
    body = person("RelatedPerson", "Jonathan", "Smith", "", postcode=postcode)
    del body["birthDate"]
    if line:
        body["address"][0]["line"] = [line]
    return body


def _gp_father(line: str | None = None) -> dict:
    body = person("Patient", "Jonathan", "Smith", "1998-04-03", nhs=next_nhs(), postcode="LS6 2AB")
    if line:
        body["address"][0]["line"] = [line]
    return body


def test_a_father_without_a_birth_date_and_a_transposed_postcode_is_still_found(database, settings):
    """The midwife has the father's name but no date of birth, and typed SL6 2AB for LS6 2AB:
    no key on the date or the postcode is shared, and only the sorted-postcode key finds his
    GP record. With the same house too, that is a link; with the name alone, a person decides."""
    gp = _write(database, settings, GP_ORG, "general-practice", _gp_father("12 Oak Road"))
    rp = _write(database, settings, MATERNITY_ORG, "maternity", _father_without_birth_date("SL6 2AB", "12 Oak Road"))
    gp2 = _write(database, settings, "A99002", "general-practice", _gp_father())
    rp2 = _write(database, settings, "R1A02", "maternity", _father_without_birth_date("SL6 2AB"))
    settle(database, settings)
    with database.session(readonly=True) as s:
        assert linked_person_id(s, *rp.split("/")) == linked_person_id(s, *gp.split("/"))
        assert linked_person_id(s, *rp2.split("/")) not in (linked_person_id(s, *gp2.split("/")), linked_person_id(s, *gp.split("/")))
    assert _open_candidate(database, rp2, gp2)


def test_migration_0009_gives_records_linked_before_the_transposition_key(database, database_url, settings):
    """Records linked before the sorted-postcode key existed get it from their stored features,
    so a later record with a transposed postcode still finds them; downgrade takes it away."""
    from app.migrate import downgrade, upgrade

    body = _gp_father()
    gp = _write(database, settings, GP_ORG, "general-practice", body)
    settle(database, settings)
    gp_type, gp_id = gp.split("/")
    transposition = sorted(key_hash(k) for k in blocking_keys(PersonRecord.from_fhir(body)) if k.startswith("ns:"))
    assert transposition

    def keyed() -> list[int]:
        with database.session(readonly=True) as s:
            return sorted(s.scalars(select(BlockingKey.key_hash).where(
                BlockingKey.res_type == gp_type, BlockingKey.res_id == gp_id, BlockingKey.key_hash.in_(transposition))))

    assert keyed() == transposition
    downgrade(database_url, "0008")
    assert keyed() == []  # as a record linked before the key existed
    upgrade(database_url)
    assert keyed() == transposition
    rp = _write(database, settings, MATERNITY_ORG, "maternity", _father_without_birth_date("SL6 2AB"))
    settle(database, settings)
    assert _open_candidate(database, rp, gp)


def test_the_father_is_not_joined_to_his_baby_and_so_finds_his_gp_record(database, settings):
    """Maternity records "Baby Smith" (with an NHS number) and the father "Jon Smyth" at one
    home; his GP knows Jonathan Smith there. Counting the shared home twice once put the
    father in the baby's person, which then held the baby's NHS number against his GP
    record, and scenario 2's father was lost. Now the father joins his GP record alone."""
    home = {"address": [{"use": "home", "line": ["3 Mill Lane"], "postalCode": "LS6 2AB"}]}
    baby = _write(database, settings, MATERNITY_ORG, "maternity",
                  person("Patient", "Baby", "Smith", "2026-09-01", nhs=next_nhs(), **home))
    father = _write(database, settings, MATERNITY_ORG, "maternity", person("RelatedPerson", "Jon", "Smyth", "1990-03-14", **home))
    gp = _write(database, settings, GP_ORG, "general-practice",
                person("Patient", "Jonathan", "Smith", "1990-03-14", nhs=next_nhs(), **home))
    settle(database, settings)
    with database.session(readonly=True) as s:
        assert linked_person_id(s, *father.split("/")) == linked_person_id(s, *gp.split("/"))
        assert linked_person_id(s, *baby.split("/")) != linked_person_id(s, *father.split("/"))


class _SeesTheChain:
    """A hook that notes, in after_write, the newest audit event's subtype."""

    def __init__(self, declares: bool | None):
        self.seen: list[str | None] = []
        if declares is not None:
            self.writes_after_write = lambda: declares

    def prepare(self, resource):
        return None

    def stored_with(self, session, written):
        return [], ()

    def after_write(self, session, written):
        self.seen.append(session.execute(text("SELECT subtype_code FROM audit_event ORDER BY seq DESC LIMIT 1")).scalar())


@pytest.mark.parametrize("declares", [False, True, None])
def test_a_writes_audit_goes_with_its_inserts_only_when_no_hook_writes_after_them(database, settings, declares):
    """On PostgreSQL a write's audit goes in the round trip of its inserts when every hook says
    its after_write runs no statement; else (and on SQLite) it is appended after the hooks, so
    the audit chain's lock is not held while they work: inline linkage's event comes first."""
    hook = _SeesTheChain(declares)
    with database.session() as s:
        svc = IngestService(s, _source(MATERNITY_ORG, "maternity"), settings, [hook], base="http://test/fhir")
        svc.write_one(EntryRequest(0, "POST", "Flag", {"resourceType": "Flag", "status": "active", "code": {"text": "x"},
                                                       "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": next_nhs()}}},
                                   in_bundle=False))
    with_inserts = declares is False and database.dialect == "postgresql"
    assert (hook.seen == ["create"]) is with_inserts
    with database.session(readonly=True) as s:
        assert s.execute(text("SELECT subtype_code FROM audit_event ORDER BY seq DESC LIMIT 1")).scalar() == "create"

    inline = settings.model_copy(update={"linkage_mode": "inline"})
    assert LinkageHook(inline).writes_after_write() and not LinkageHook(settings.model_copy(update={"linkage_mode": "queued"})).writes_after_write()
    nhs = next_nhs()
    _write(database, inline, GP_ORG, "general-practice", person("Patient", "Ada", "Order", "1990-02-03", nhs=nhs))
    before = _max_seq(database)  # the same woman from another source: linked to her, and the link audited
    _write(database, inline, MATERNITY_ORG, "maternity", person("Patient", "Ada", "Order", "1990-02-03", nhs=nhs))
    with database.session(readonly=True) as s:
        subtypes = list(s.execute(text("SELECT subtype_code FROM audit_event WHERE seq > :b ORDER BY seq"), {"b": before}).scalars())
    assert subtypes == ["linkage-auto", "create"]


def _max_seq(database) -> int:
    with database.session(readonly=True) as s:
        return s.execute(text("SELECT coalesce(max(seq), 0) FROM audit_event")).scalar()
