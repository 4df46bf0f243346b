"""The ten scenarios of DESIGN.md as transaction Bundles from the sources that would hold them.

Synthetic people only: NHS numbers start 999 and pass Modulus 11. Dates are relative to the
day of loading so that every infant is under one. Tests use the same builders as the demo, so
what a newcomer sees with `make run` is what the acceptance tests assert."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from app.urls import CANONICAL_BASE

NHS = "https://fhir.nhs.uk/Id/nhs-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
SCT = "http://snomed.info/sct"
LOCAL = f"{CANONICAL_BASE}/CodeSystem/local-safeguarding"
ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
UKCORE_ROLE = "https://fhir.hl7.org.uk/CodeSystem/UKCore-AdditionalRelatedPersonRole"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
DATA_CATEGORY = f"{CANONICAL_BASE}/CodeSystem/data-category"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


@dataclass(frozen=True)
class Source:
    key: str
    org: str
    service: str
    name: str
    local_system: str


MATERNITY = Source("maternity", "RMT01", "maternity", "Riverside Maternity Unit", "https://riverside-maternity.example.nhs.uk/Id/record")
HEALTH_VISITING = Source("health-visiting", "RHV01", "health-visiting", "Riverside Health Visiting Service", "https://riverside-hv.example.nhs.uk/Id/record")
GP_FAMILY = Source("gp-family", "A99001", "general-practice", "Meadow Lane Surgery", "https://meadow-lane.example.nhs.uk/Id/record")
GP_FATHERS = Source("gp-fathers", "A99002", "general-practice", "Hill Street Practice", "https://hill-street.example.nhs.uk/Id/record")
SOCIAL_CARE = Source("social-care", "LAS01", "social-care", "Riverside Children's Social Care", "https://riverside-csc.example.gov.uk/Id/record")
SOURCES = (MATERNITY, HEALTH_VISITING, GP_FAMILY, GP_FATHERS, SOCIAL_CARE)

UNRELATED_ORG = "RZZ99"  # scenario 6: a trust with no relationship to any family
MASH_ORG = "LAM01"  # the multi-agency safeguarding hub
IG_ORG = "X26"

# Synthetic NHS numbers (999 prefix, valid Modulus 11), one block per scenario.
N = {
    "s1_infant": "9990001103", "s1_mother": "9990001200", "s1_father": "9990001308",
    "s2_infant": "9990002118", "s2_mother": "9990002207", "s2_father": "9990002304",
    "s3_infant": "9990003106", "s3_mother": "9990003203", "s3_father": "9990003300",
    "s4_infant": "9990004102", "s4_mother": "9990004218", "s4_father": "9990004307", "s4_partner": "9990004404",
    "s5_infant": "9990005109", "s5_mother": "9990005206", "s5_father": "9990005303",
    "s7_mother": "9990007209", "s7_partner": "9990007403",
    "s8_infant": "9990008108", "s8_mother": "9990008205", "s8_father": "9990008302",
    "s10_infant": "9990010102", "s10_mother": "9990010218", "s10_father": "9990010307",
}


@dataclass
class Scenario:
    number: int
    title: str
    bundles: list[tuple[Source, dict[str, Any]]] = field(default_factory=list)
    notes: str = ""


def _u() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _entry(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    return {"fullUrl": full_url or _u(), "resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}


def _bundle(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _local(src: Source, value: str) -> dict[str, str]:
    return {"system": src.local_system, "value": value}


def _org_ref(ods: str) -> dict[str, Any]:
    return {"type": "Organization", "identifier": {"system": ODS, "value": ods}}


def _nhs_ref(nhs: str) -> dict[str, Any]:
    return {"reference": f"Patient?identifier={NHS}|{nhs}"}


def _patient(src: Source, key: str, family: str, given: str, gender: str, birth: date | str, *, nhs: str | None = None,
             gp: str | None = None, postcode: str = "LS1 4AB", line: str = "1 River Row", phone: str | None = None,
             security: list[str] | None = None) -> dict[str, Any]:
    ids = ([{"system": NHS, "value": nhs}] if nhs else []) + [_local(src, key)]
    p: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": ids,
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender,
        "birthDate": str(birth),
        "address": [{"use": "home", "line": [line], "city": "Riverside", "postalCode": postcode}],
    }
    if phone:
        p["telecom"] = [{"system": "phone", "value": phone, "use": "mobile"}]
    if gp:
        p["generalPractitioner"] = [_org_ref(gp)]
    if security:
        p["meta"] = {"security": [{"system": CONFIDENTIALITY, "code": c} for c in security]}
    return p


def _related(src: Source, key: str, patient_ref: dict[str, Any], code: str, family: str, given: str, gender: str,
             birth: date | str | None = None, *, nhs: str | None = None, postcode: str = "LS1 4AB", line: str = "1 River Row",
             phone: str | None = None, system: str = ROLE) -> dict[str, Any]:
    ids = ([{"system": NHS, "value": nhs}] if nhs else []) + [_local(src, key)]
    rp: dict[str, Any] = {
        "resourceType": "RelatedPerson",
        "identifier": ids,
        "active": True,
        "patient": patient_ref,
        "relationship": [{"coding": [{"system": system, "code": code}]}],
        "name": [{"family": family, "given": [given]}],
        "gender": gender,
        "address": [{"use": "home", "line": [line], "city": "Riverside", "postalCode": postcode}],
    }
    if birth:
        rp["birthDate"] = str(birth)
    if phone:
        rp["telecom"] = [{"system": "phone", "value": phone, "use": "mobile"}]
    return rp


def _episode(src: Source, key: str, patient_ref: dict[str, Any], start: date, kind: str) -> dict[str, Any]:
    return {
        "resourceType": "EpisodeOfCare",
        "identifier": [_local(src, key)],
        "status": "active",
        "type": [{"text": kind}],
        "patient": patient_ref,
        "managingOrganization": _org_ref(src.org),
        "period": {"start": str(start)},
    }


def _condition(src: Source, key: str, subject: dict[str, Any], system: str, code: str, display: str, recorded: date) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "identifier": [_local(src, key)],
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "subject": subject,
        "recordedDate": str(recorded),
    }


def _flag(src: Source, key: str, subject: dict[str, Any], code: str, display: str, start: date) -> dict[str, Any]:
    return {
        "resourceType": "Flag",
        "identifier": [_local(src, key)],
        "status": "active",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "safety"}]}],
        "code": {"coding": [{"system": LOCAL, "code": code, "display": display}], "text": display},
        "subject": subject,
        "period": {"start": str(start)},
    }


def _consent(src: Source, key: str, patient: dict[str, Any], provision: dict[str, Any], recorded: date, policy_rule: str = "OPTIN") -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "identifier": [_local(src, key)],
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": patient,
        "dateTime": str(recorded),
        "organization": [_org_ref(src.org)],
        "policyRule": {"coding": [{"system": ACT_CODE, "code": policy_rule}]},
        "provision": provision,
    }


SDS_USER = "https://fhir.nhs.uk/Id/sds-user-id"


def _health_visitor(key: str, family: str, given: str, sds: str) -> dict[str, Any]:
    """A named health visitor of the health visiting service (Practitioner, SDS user id)."""
    return {
        "resourceType": "Practitioner",
        "identifier": [{"system": SDS_USER, "value": sds}, _local(HEALTH_VISITING, key)],
        "active": True,
        "name": [{"use": "official", "family": family, "given": [given], "prefix": ["Ms"]}],
        "telecom": [{"system": "phone", "value": "0113 496 0000", "use": "work"}],
    }


def _care_team(src: Source, key: str, subject: dict[str, Any], members: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The care team a source keeps for a person: named professionals on behalf of the source."""
    return {
        "resourceType": "CareTeam",
        "identifier": [_local(src, key)],
        "status": "active",
        "name": name,
        "subject": subject,
        "participant": [
            {"role": [{"text": "Named health visitor"}], "member": m, "onBehalfOf": _org_ref(src.org)} for m in members
        ],
        "managingOrganization": [_org_ref(src.org)],
    }


def _family_core(n: int, today: date, infant: tuple[str, str, str], mother: tuple[str, str], infant_age_days: int = 90,
                 mother_security: list[str] | None = None, mother_phone: str | None = None, postcode: str = "LS1 4AB") -> tuple[dict, dict, dict, dict]:
    """Maternity's birth record: infant and mother, the mother's relationship to the infant."""
    inf_nhs, mum_nhs = N[f"s{n}_infant"], N[f"s{n}_mother"]
    infant_e = _entry(_patient(MATERNITY, f"s{n}-infant", infant[0], infant[1], infant[2], today - timedelta(days=infant_age_days), nhs=inf_nhs, gp=GP_FAMILY.org, postcode=postcode))
    mother_e = _entry(_patient(MATERNITY, f"s{n}-mother", mother[0], mother[1], "female", date(1994 + n % 5, 3, 10 + n), nhs=mum_nhs, gp=GP_FAMILY.org,
                               phone=mother_phone, security=mother_security, postcode=postcode))
    mth = _entry(_related(MATERNITY, f"s{n}-rp-mother", {"reference": infant_e["fullUrl"]}, "MTH", mother[0], mother[1], "female",
                          date(1994 + n % 5, 3, 10 + n), nhs=mum_nhs, postcode=postcode))
    hv = _entry(_health_visitor("hv-sam-okafor", "Okafor", "Sam", "555000100001"),)
    hv["request"]["ifNoneExist"] = f"identifier={SDS_USER}|555000100001"
    team = _entry(_care_team(HEALTH_VISITING, f"s{n}-hv-team", _nhs_ref(inf_nhs), [{"reference": hv["fullUrl"]}], "Health visiting team"))
    hv_episode = _bundle(_entry(_episode(HEALTH_VISITING, f"s{n}-hv-episode", _nhs_ref(inf_nhs), today - timedelta(days=infant_age_days - 10), "Health visiting: universal plus")),
                         hv, team)
    return infant_e, mother_e, mth, hv_episode


def build_scenarios(today: date | None = None) -> list[Scenario]:
    today = today or date.today()
    out: list[Scenario] = []

    # 1. Parents together; father's NHS number recorded by the midwife; his GP holds nothing of note.
    inf, mum, mth, hv = _family_core(1, today, ("Taylor", "Lily", "female"), ("Taylor", "Amy"))
    fth = _entry(_related(MATERNITY, "s1-rp-father", {"reference": inf["fullUrl"]}, "FTH", "Taylor", "Ben", "male", "1992-05-14", nhs=N["s1_father"], phone="07700 900101"))
    gp = _bundle(_entry(_patient(GP_FATHERS, "s1-father", "Taylor", "Ben", "male", "1992-05-14", nhs=N["s1_father"], gp=GP_FATHERS.org)))
    # the family's GP practice describes itself, so that the view names it (Meadow Lane Surgery)
    out.append(Scenario(1, "Parents together; nothing withheld", [(MATERNITY, _bundle(inf, mum, mth, fth)), (HEALTH_VISITING, hv), (GP_FATHERS, gp),
                                                                   (GP_FAMILY, _bundle())]))

    # 2. Father known to maternity only by name and DOB (nickname, typo); GP holds substance misuse; no consent.
    inf, mum, mth, hv = _family_core(2, today, ("Harris", "Noah", "male"), ("Harris", "Chloe"), postcode="LS6 2QT")
    fth = _entry(_related(MATERNITY, "s2-rp-father", {"reference": inf["fullUrl"]}, "FTH", "Smyth", "Jon", "male", "1998-04-03", postcode="LS6 2QT", line="14 Oak Street"))
    father = _entry(_patient(GP_FATHERS, "s2-father", "Smith", "Jonathan", "male", "1998-04-03", nhs=N["s2_father"], gp=GP_FATHERS.org, postcode="LS6 2QT", line="14 Oak St"))
    sud = _entry(_condition(GP_FATHERS, "s2-father-sud", {"reference": father["fullUrl"]}, SCT, "66214007", "Substance abuse", today - timedelta(days=400)))
    out.append(Scenario(2, "Father linked by demographics; GP-held substance misuse withheld for direct care, disclosed for safeguarding",
                        [(MATERNITY, _bundle(inf, mum, mth, fth)), (HEALTH_VISITING, hv), (GP_FATHERS, _bundle(father, sud))]))

    # 3. Father's Consent lets the health visiting service see mental-health records for direct care.
    inf, mum, mth, hv = _family_core(3, today, ("Patel", "Aria", "female"), ("Patel", "Priya"))
    fth = _entry(_related(MATERNITY, "s3-rp-father", {"reference": inf["fullUrl"]}, "FTH", "Patel", "Ravi", "male", "1990-09-21", nhs=N["s3_father"]))
    father = _entry(_patient(GP_FATHERS, "s3-father", "Patel", "Ravi", "male", "1990-09-21", nhs=N["s3_father"], gp=GP_FATHERS.org))
    fref = {"reference": father["fullUrl"]}
    dep = _entry(_condition(GP_FATHERS, "s3-father-depression", fref, SCT, "35489007", "Depressive disorder", today - timedelta(days=200)))
    alc = _entry(_condition(GP_FATHERS, "s3-father-alcohol", fref, SCT, "15167005", "Alcohol abuse", today - timedelta(days=300)))
    consent = _entry(_consent(GP_FATHERS, "s3-father-consent", fref, {
        "type": "permit",
        "period": {"start": str(today - timedelta(days=60)), "end": str(today + timedelta(days=305))},
        "actor": [{"role": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]}, "reference": _org_ref(HEALTH_VISITING.org)}],
        "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}],
        "purpose": [{"system": ACT_REASON, "code": "TREAT"}],
        "securityLabel": [{"system": ACT_CODE, "code": "PSY"}],
    }, today - timedelta(days=60)))
    out.append(Scenario(3, "Father consents to mental-health sharing with health visiting; substance misuse still withheld",
                        [(MATERNITY, _bundle(inf, mum, mth, fth)), (HEALTH_VISITING, hv), (GP_FATHERS, _bundle(father, dep, alc, consent))]))

    # 4. Mother's new partner (not the father) lives with them; his GP holds a domestic-abuse perpetrator flag.
    inf, mum, mth, hv = _family_core(4, today, ("Walsh", "Ella", "female"), ("Walsh", "Sophie"), postcode="LS9 8DE")
    fth = _entry(_related(MATERNITY, "s4-rp-father", {"reference": inf["fullUrl"]}, "FTH", "Price", "Liam", "male", "1991-11-02", nhs=N["s4_father"], postcode="LS12 3AA", line="7 Hill Road"))
    partner_rp = _entry(_related(HEALTH_VISITING, "s4-rp-partner", _nhs_ref(N["s4_mother"]), "DOMPART", "Walsh", "Dean", "male", "1989-07-30", nhs=N["s4_partner"], postcode="LS9 8DE"))
    hv["entry"].append(partner_rp)
    partner = _entry(_patient(GP_FATHERS, "s4-partner", "Walsh", "Dean", "male", "1989-07-30", nhs=N["s4_partner"], gp=GP_FATHERS.org, postcode="LS9 8DE"))
    da = _entry(_flag(GP_FATHERS, "s4-partner-da", {"reference": partner["fullUrl"]}, "DA-PERPETRATOR", "Domestic abuse - alleged perpetrator", today - timedelta(days=500)))
    out.append(Scenario(4, "Mother's partner as male carer; his domestic-abuse flag withheld for direct care, disclosed for safeguarding",
                        [(MATERNITY, _bundle(inf, mum, mth, fth)), (HEALTH_VISITING, hv), (GP_FATHERS, _bundle(partner, da))]))

    # 5. Father has refused (Consent deny). Direct care withholds; safeguarding still discloses.
    inf, mum, mth, hv = _family_core(5, today, ("Hughes", "Oscar", "male"), ("Hughes", "Megan"))
    fth = _entry(_related(MATERNITY, "s5-rp-father", {"reference": inf["fullUrl"]}, "FTH", "Hughes", "Craig", "male", "1987-02-17", nhs=N["s5_father"], phone="07700 900505"))
    father = _entry(_patient(GP_FATHERS, "s5-father", "Hughes", "Craig", "male", "1987-02-17", nhs=N["s5_father"], gp=GP_FATHERS.org))
    fref = {"reference": father["fullUrl"]}
    anx = _entry(_condition(GP_FATHERS, "s5-father-anxiety", fref, SCT, "197480006", "Anxiety disorder", today - timedelta(days=150)))
    refusal = _entry(_consent(GP_FATHERS, "s5-father-refusal", fref, {"type": "deny", "period": {"start": str(today - timedelta(days=30))}}, today - timedelta(days=30), policy_rule="OPTOUT"))
    out.append(Scenario(5, "Father refuses sharing; safeguarding overrides, recorded",
                        [(MATERNITY, _bundle(inf, mum, mth, fth)), (HEALTH_VISITING, hv), (GP_FATHERS, _bundle(father, anx, refusal))]))

    # 6. No relationship: served by scenario 1's family and a requester from UNRELATED_ORG.
    out.append(Scenario(6, "A practitioner with no relationship to the family is refused (403), and audited",
                        notes=f"Ask for scenario 1's infant as a health visitor of {UNRELATED_ORG}."))

    # 7. Pre-birth: mother pregnant with an expected delivery date; partner recorded.
    mum = _entry(_patient(MATERNITY, "s7-mother", "Okoye", "Grace", "female", "1996-06-01", nhs=N["s7_mother"], gp=GP_FAMILY.org, postcode="LS7 1BB"))
    mref = {"reference": mum["fullUrl"]}
    ep = _entry(_episode(MATERNITY, "s7-maternity-episode", mref, today - timedelta(days=180), "Antenatal care"))
    preg = _entry(_condition(MATERNITY, "s7-pregnancy", mref, SCT, "77386006", "Pregnancy", today - timedelta(days=180)))
    edd = _entry({
        "resourceType": "Observation", "identifier": [_local(MATERNITY, "s7-edd")], "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "11778-8", "display": "Delivery date Estimated"}]},
        "subject": mref, "effectiveDateTime": str(today - timedelta(days=160)), "valueDateTime": str(today + timedelta(days=60)),
    })
    partner = _entry(_related(MATERNITY, "s7-rp-partner", mref, "NFTHF", "Okoye", "Tom", "male", "1995-01-12", nhs=N["s7_partner"], postcode="LS7 1BB"))
    # the health visitor's antenatal contact with her (an Encounter the health visiting service
    # provided): a legitimate relationship for the pre-birth view
    antenatal = _bundle(_entry({
        "resourceType": "Encounter", "identifier": [_local(HEALTH_VISITING, "s7-antenatal-contact")], "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH", "display": "home health"},
        "type": [{"text": "Health visiting antenatal contact"}],
        "subject": _nhs_ref(N["s7_mother"]), "period": {"start": str(today - timedelta(days=20)), "end": str(today - timedelta(days=20))},
        "serviceProvider": _org_ref(HEALTH_VISITING.org),
    }))
    out.append(Scenario(7, "Pre-birth view from the mother's pregnancy and expected delivery date",
                        [(MATERNITY, _bundle(mum, ep, preg, edd, partner)), (HEALTH_VISITING, antenatal)]))

    # 8. Mother's record is restricted (R): her address and contact are never shown.
    inf, mum, mth, hv = _family_core(8, today, ("Morgan", "Isla", "female"), ("Morgan", "Kate"), mother_security=["R"], mother_phone="07700 900808", postcode="LS8 5CC")
    fth = _entry(_related(MATERNITY, "s8-rp-father", {"reference": inf["fullUrl"]}, "FTH", "Morgan", "Rhys", "male", "1993-08-08", nhs=N["s8_father"]))
    out.append(Scenario(8, "Restricted mother: address and telecom never shown", [(MATERNITY, _bundle(inf, mum, mth, fth)), (HEALTH_VISITING, hv)]))

    # 9. An IG officer asks for a family view: 403; the same officer can search the audit.
    out.append(Scenario(9, "IG officer: no family view, but the audit", notes="Ask for scenario 1's infant as an ig-officer."))

    # 10. A 19-year-old father who is a care leaver; his Consent lets health visiting see both facts.
    inf, mum, mth, hv = _family_core(10, today, ("Bennett", "Mia", "female"), ("Clarke", "Jade"), postcode="LS10 4DD")
    father_birth = date(today.year - 19, 1, 15) if (today.month, today.day) >= (1, 15) else date(today.year - 20, 1, 15)
    fth = _entry(_related(MATERNITY, "s10-rp-father", {"reference": inf["fullUrl"]}, "FTH", "Bennett", "Kyle", "male", father_birth, nhs=N["s10_father"], postcode="LS10 4DD"))
    father = _entry(_patient(GP_FATHERS, "s10-father", "Bennett", "Kyle", "male", father_birth, nhs=N["s10_father"], gp=GP_FATHERS.org, postcode="LS10 4DD"))
    # recorded by the social care service that holds the care-leaver record (a Consent speaks for
    # the records its recorder holds); the young-parent indicator is the gateway's own
    consent = _entry(_consent(SOCIAL_CARE, "s10-father-consent", _nhs_ref(N["s10_father"]), {
        "type": "permit",
        "period": {"start": str(today - timedelta(days=20))},
        "actor": [{"role": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]}, "reference": _org_ref(HEALTH_VISITING.org)}],
        "purpose": [{"system": ACT_REASON, "code": "TREAT"}],
        "class": [{"system": DATA_CATEGORY, "code": "care-leaver"}, {"system": DATA_CATEGORY, "code": "young-parent"}],
    }, today - timedelta(days=20)))
    care_leaver = _entry(_flag(SOCIAL_CARE, "s10-father-care-leaver", _nhs_ref(N["s10_father"]), "CARE-LEAVER", "Care leaver", today - timedelta(days=700)))
    out.append(Scenario(10, "Young father who is a care leaver: both shown as indicators where lawful",
                        [(MATERNITY, _bundle(inf, mum, mth, fth)), (HEALTH_VISITING, hv), (GP_FATHERS, _bundle(father)),
                         (SOCIAL_CARE, _bundle(care_leaver, consent))]))
    for scenario in out:
        _describe_sources(scenario)
    return out


def _organisation(src: Source) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "identifier": [{"system": ODS, "value": src.org}],
        "active": True,
        "name": src.name,
    }


def _describe_sources(scenario: Scenario) -> None:
    """Each source's first bundle in a scenario also describes the source itself (conditional
    create, so once however many scenarios are loaded): a practitioner is told which
    organisation holds a withheld record by its name, not only its ODS code."""
    described: set[str] = set()
    for src, bundle in scenario.bundles:
        if src.key in described:
            continue
        described.add(src.key)
        bundle["entry"].append({
            "fullUrl": _u(), "resource": _organisation(src),
            "request": {"method": "POST", "url": "Organization", "ifNoneExist": f"identifier={ODS}|{src.org}"},
        })
