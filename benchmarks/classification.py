"""How long sensitivity labelling (consent.label_resource, run on every resource ingested)
takes per record, now that it reads the UK code lists and the term backstop.

Record sets, each timed record by record (p50 and p95, microseconds), best of the rounds:

* every code of every shipped code list: a Condition per SNOMED CT condition code and a
  MedicationStatement per dm+d medicine code, each coding with its display (as GP Connect
  sends them), so the term backstop reads the display too;
* free text only: Conditions with no code, a text and a note, every one different;
* the unclassified baseline, printed next to them: Conditions and Observations with
  everyday codes and displays (hypertension, asthma, body weight...) that nothing places,
  the records most of an ingest is made of.

Each set is timed twice: with the term cache cold (emptied before every record, so every
text is matched afresh: the worst case) and warm (a display seen before is a dict look-up,
as in a running service, where displays repeat; notes and free text are mostly unique, so
for them the cold figures are the ones to read). Every record is also checked: coded and
free-text records must be placed in their category, baseline records in none.

    .venv/bin/python benchmarks/classification.py [ROUNDS]
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from consent import categories_for_resource, label_resource  # noqa: E402
from consent.labels import _TEXT_CACHE, CODE_LISTS, CODELIST_DIR, CODELISTS_VERSION, DMD_SYSTEM, TERMS_VERSION  # noqa: E402

SUBJECT = {"reference": "Patient/p1"}
CLINICAL = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
SCT = "http://snomed.info/sct"

FREE_TEXT = [
    ("Known to community drug and alcohol team", "substance-misuse"),
    ("On methadone script, collected daily", "substance-misuse"),
    ("Heroin user, injecting", "substance-misuse"),
    ("Alcohol dependence; detox planned", "substance-misuse"),
    ("Low mood since the birth", "mental-health"),
    ("Sectioned under the Mental Health Act", "mental-health"),
    ("Self harm: superficial cuts to forearm", "mental-health"),
    ("MARAC referral made", "domestic-abuse"),
    ("IDVA involved", "domestic-abuse"),
    ("Assaulted in town centre", "violence"),
    ("Child protection plan for older sibling", "child-safeguarding"),
    ("Section 47 enquiry", "child-safeguarding"),
    ("HIV positive, on treatment", "sexual-health"),
    ("Chlamydia treated", "sexual-health"),
    ("Care leaver, personal adviser in place", "care-leaver"),
    ("Teenage parent", "young-parent"),
]
EVERYDAY = [
    ("38341003", "Hypertensive disorder"), ("195967001", "Asthma"), ("44054006", "Type 2 diabetes mellitus"),
    ("77386006", "Pregnancy"), ("169826009", "Single live birth"),
    ("27113001", "Body weight"), ("271649006", "Systolic blood pressure"), ("386661006", "Fever"),
    ("25064002", "Headache"), ("161891005", "Backache"), ("68566005", "Urinary tract infection"),
    ("43878008", "Streptococcal sore throat"), ("271807003", "Eruption of skin"),
    ("414916001", "Obesity"), ("49436004", "Atrial fibrillation"), ("230690007", "Cerebrovascular accident"),
]
NOTES = ["Reviewed in clinic.", "Advice given; review in two weeks.", "Seen with partner.", "Bloods taken.", "No change."]


def coded_records() -> tuple[list[dict], list[dict], list[str], list[str]]:
    conditions, medicines, cond_cats, med_cats = [], [], [], []
    for cl in CODE_LISTS.values():
        with open(CODELIST_DIR / cl.file, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        medicine = DMD_SYSTEM in cl.systems
        for n, row in enumerate(rows):
            coding = {"system": cl.systems[n % len(cl.systems)], "code": row["code"], "display": row["term"]}
            if medicine:
                medicines.append({"resourceType": "MedicationStatement", "id": f"m{len(medicines)}", "status": "active",
                                  "subject": SUBJECT, "effectivePeriod": {"start": "2024-05-01"},
                                  "medicationCodeableConcept": {"coding": [coding]}, "dosage": [{"text": "As directed"}]})
                med_cats.append(cl.category)
            else:
                conditions.append({"resourceType": "Condition", "id": f"c{len(conditions)}", "clinicalStatus": CLINICAL,
                                   "subject": SUBJECT, "recordedDate": "2024-05-01", "code": {"coding": [coding]}})
                cond_cats.append(cl.category)
    return conditions, medicines, cond_cats, med_cats


def free_text_records(n: int) -> tuple[list[dict], list[str]]:
    records, cats = [], []
    for i in range(n):
        text, category = FREE_TEXT[i % len(FREE_TEXT)]
        records.append({"resourceType": "Condition", "id": f"t{i}", "subject": SUBJECT, "recordedDate": "2024-05-01",
                        "code": {"text": f"{text} (entry {i})"},
                        "note": [{"text": f"{NOTES[i % len(NOTES)]} Recorded by clinician {i % 97}, visit {i}."}]})
        cats.append(category)
    return records, cats


def everyday_records(n: int) -> list[dict]:
    records = []
    for i in range(n):
        code, display = EVERYDAY[i % len(EVERYDAY)]
        if i % 2:
            records.append({"resourceType": "Observation", "id": f"o{i}", "status": "final", "subject": SUBJECT,
                            "effectiveDateTime": "2024-05-01", "code": {"coding": [{"system": SCT, "code": code, "display": display}]},
                            "valueQuantity": {"value": 70 + i % 30, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}})
        else:
            records.append({"resourceType": "Condition", "id": f"e{i}", "clinicalStatus": CLINICAL, "subject": SUBJECT,
                            "recordedDate": "2024-05-01", "code": {"coding": [{"system": SCT, "code": code, "display": display}]},
                            "note": [{"text": f"{NOTES[i % len(NOTES)]} Visit {i}."}]})
    return records


def per_record_us(records: list[dict], cold: bool, rounds: int) -> list[float]:
    """Microseconds per record, the best of ``rounds`` for each record."""
    best = [float("inf")] * len(records)
    clock = time.perf_counter_ns
    _TEXT_CACHE.clear()
    if not cold:
        for r in records:  # a pass untimed: every text seen once, as in a service that has run a while
            label_resource(r)
    for _ in range(rounds):
        for i, r in enumerate(records):
            if cold:
                _TEXT_CACHE.clear()
            t0 = clock()
            label_resource(r)
            t = clock() - t0
            if t < best[i]:
                best[i] = t
    return [t / 1000 for t in best]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main(rounds: int = 3) -> int:
    conditions, medicines, cond_cats, med_cats = coded_records()
    texts, text_cats = free_text_records(4000)
    everyday = everyday_records(4000)
    wrong = [r["id"] for r, c in zip(conditions + medicines + texts, cond_cats + med_cats + text_cats)
             if c not in categories_for_resource(r)]
    wrong += [r["id"] for r in everyday if categories_for_resource(r) != {"record"}]
    sets = [
        ("code lists: SNOMED CT conditions", conditions),
        ("code lists: dm+d medicines", medicines),
        ("free text only (text + note)", texts),
        ("unclassified baseline (everyday codes)", everyday),
    ]
    print(f"sensitivity labelling per record (consent.label_resource), best of {rounds} rounds per record; "
          f"code lists {CODELISTS_VERSION}, terms {TERMS_VERSION}")
    print(f"{'records':<42} {'n':>6}   {'cold p50':>8} {'cold p95':>8}   {'warm p50':>8} {'warm p95':>8}  (microseconds)")
    figures = {}
    for name, records in sets:
        cold = per_record_us(records, cold=True, rounds=rounds)
        warm = per_record_us(records, cold=False, rounds=rounds)
        figures[name] = (pct(cold, 50), pct(cold, 95), pct(warm, 50), pct(warm, 95))
        print(f"{name:<42} {len(records):>6}   {figures[name][0]:>8.1f} {figures[name][1]:>8.1f}   "
              f"{figures[name][2]:>8.1f} {figures[name][3]:>8.1f}")
    print("  (warm: every text seen before; displays repeat in practice, free text mostly does not: read its cold figures)")
    base = figures["unclassified baseline (everyday codes)"]
    for name, _records in sets[:-1]:
        f = figures[name]
        print(f"  {name}: warm p50 {f[2] - base[2]:+.1f} us against the baseline; cold p50 {f[0] - base[0]:+.1f} us")
    if wrong:
        print(f"MISCLASSIFIED: {len(wrong)} records, e.g. {wrong[:5]}")
        return 1
    print(f"all {len(conditions) + len(medicines) + len(texts)} coded and free-text records placed in their category; "
          f"none of the {len(everyday)} baseline records placed")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
