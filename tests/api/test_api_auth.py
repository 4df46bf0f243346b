"""Secure by default: every route but the CapabilityStatement needs a valid bearer JWT, only
source systems and admins write, and a source updates only its own organisation's records."""
from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import GP_ORG, HV_ORG, MATERNITY_ORG
from tests.fhirdata import next_nhs, patient

CT = {"Content-Type": "application/fhir+json"}


def _claims(settings, **over):
    now = int(time.time())
    base = {"iss": settings.auth_issuer, "aud": settings.auth_audience, "sub": "s1", "org": MATERNITY_ORG,
            "role": "source-system", "service": "maternity", "scope": "system/*.cruds", "iat": now, "exp": now + 600}
    return {**base, **over}


def _signed(settings, claims):
    from app.auth.tokens import LocalKey

    return jwt.encode(claims, LocalKey(settings.auth_local_key_path).private_key, algorithm="RS256")


def test_metadata_is_public_and_truthful(live):
    import httpx

    r = httpx.get(live.fhir + "/metadata")
    assert r.status_code == 200
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    types = {res["type"]: res for res in cs["rest"][0]["resource"]}
    assert {"Patient", "RelatedPerson", "Consent", "EpisodeOfCare", "CareTeam", "Flag", "Condition", "Observation", "Organization", "Practitioner", "PractitionerRole"} <= set(types)
    pat_params = {p["name"] for p in types["Patient"]["searchParam"]}
    assert {"identifier", "name", "family", "given", "birthdate", "gender", "_id", "_lastUpdated"} <= pat_params
    assert {"code": "delete"} not in types["Patient"]["interaction"]  # not supported, so not claimed
    assert r.headers["x-request-id"]


@pytest.mark.parametrize("case", ["none", "garbage", "expired", "wrong-signature", "wrong-audience", "wrong-issuer", "bad-role", "source-without-service"])
def test_bad_tokens_are_401(live, case):
    import httpx

    s = live.settings
    headers = {}
    if case == "garbage":
        headers["Authorization"] = "Bearer not.a.jwt"
    elif case == "expired":
        headers["Authorization"] = "Bearer " + _signed(s, _claims(s, exp=int(time.time()) - 3600))
    elif case == "wrong-signature":
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        headers["Authorization"] = "Bearer " + jwt.encode(_claims(s), other, algorithm="RS256")
    elif case == "wrong-audience":
        headers["Authorization"] = "Bearer " + _signed(s, _claims(s, aud="urn:someone-else"))
    elif case == "wrong-issuer":
        headers["Authorization"] = "Bearer " + _signed(s, _claims(s, iss="https://evil.example"))
    elif case == "bad-role":
        headers["Authorization"] = "Bearer " + _signed(s, _claims(s, role="superuser"))
    elif case == "source-without-service":
        c = _claims(s)
        c.pop("service")
        headers["Authorization"] = "Bearer " + _signed(s, c)
    r = httpx.get(live.fhir + "/Patient", headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["issue"][0]["code"] == "login"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "Bearer" not in r.text or case == "none"


def test_hs256_token_with_public_key_is_refused(live):
    """The classic algorithm-confusion attack: HMAC-signed with the public key."""
    import httpx

    token = jwt.encode(_claims(live.settings), "an-hmac-secret-long-enough-for-sha256!", algorithm="HS256")
    r = httpx.get(live.fhir + "/Patient", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


@pytest.mark.parametrize("role", ["midwife", "health-visitor", "gp", "mash", "ig-officer"])
def test_reading_roles_cannot_write(live, role):
    c = live.client(role, HV_ORG)
    r = c.post("/Patient", json=patient("Reader", "Rita", nhs=next_nhs()), headers=CT)
    assert r.status_code == 403
    assert r.json()["issue"][0]["details"]["coding"][0]["code"] == "ACCESS_DENIED"


def test_scope_is_enforced(live):
    c = live.client("source-system", MATERNITY_ORG, "maternity", scope="system/Patient.rs")
    r = c.post("/Patient", json=patient("Scope", "Sam", nhs=next_nhs()), headers=CT)
    assert r.status_code == 403 and "scope" in r.json()["issue"][0]["diagnostics"]
    assert c.get("/Patient").status_code == 200
    assert c.get("/Flag").status_code == 403


def test_a_source_cannot_overwrite_another_sources_record(live):
    maternity = live.source(MATERNITY_ORG, "maternity")
    gp = live.source(GP_ORG, "general-practice")
    r = maternity.post("/Patient", json=patient("Owner", "Olive", nhs=next_nhs()), headers=CT)
    pid = r.json()["id"]
    body = {**r.json(), "birthDate": "1980-01-01"}
    r2 = gp.put(f"/Patient/{pid}", json=body, headers=CT)
    assert r2.status_code == 403
    # nor read it through the plain REST API
    assert gp.get(f"/Patient/{pid}").status_code == 404  # not found or not yours: one answer
    assert maternity.get(f"/Patient/{pid}").json()["birthDate"] == "1995-02-03"
    # an admin can correct it, and it stays the maternity unit's record
    admin = live.client("admin", "X26")
    r3 = admin.put(f"/Patient/{pid}", json=body, headers=CT)
    assert r3.status_code == 200
    assert maternity.get(f"/Patient/{pid}").json()["birthDate"] == "1980-01-01"


def test_ig_officer_cannot_read_clinical_records(live):
    c = live.client("ig-officer", "X26")
    assert c.get("/Patient").status_code == 403
    assert c.get("/Condition").status_code == 403


def test_admin_manages_records_but_never_reads_clinical_ones(live):
    """The disclosure policy lists admin under `never`: an administrator corrects and links
    people, but reading a GP's substance-misuse Condition or a safeguarding Flag is refused,
    through read, search, POST _search, history and a transaction's GET entry alike."""
    gp = live.source(GP_ORG, "general-practice")
    nhs = next_nhs()
    r = gp.post("/Patient", json=patient("Clinic", "Cara", nhs=nhs), headers=CT)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    cond = {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "66590003"}]}}
    r = gp.post("/Condition", json=cond, headers=CT)
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    admin = live.client("admin", "X26")
    assert admin.get(f"/Patient/{pid}").status_code == 200  # who the person is: yes
    for resp in (admin.get(f"/Condition/{cid}"), admin.get("/Condition"), admin.get("/Flag"),
                 admin.get(f"/Condition/{cid}/_history"),
                 admin.post("/Condition/_search", content="", headers={"Content-Type": "application/x-www-form-urlencoded"}),
                 admin.get("/Observation", params={"subject": f"Patient/{pid}"})):
        assert resp.status_code == 403 and resp.json()["resourceType"] == "OperationOutcome", resp.text
        assert "66590003" not in resp.text
    r = admin.post("", json={"resourceType": "Bundle", "type": "batch",
                             "entry": [{"request": {"method": "GET", "url": f"Condition/{cid}"}}]}, headers=CT)
    assert r.status_code == 200 and r.json()["entry"][0]["response"]["status"].startswith("403"), r.text
    assert "66590003" not in r.text
    assert gp.get(f"/Condition/{cid}").status_code == 200  # the GP still reads its own


def test_token_cli_mints_a_token_the_server_accepts(live, monkeypatch, capsys):
    from app import cli
    from app.settings import get_settings

    monkeypatch.setenv("FAMILYVIEW_AUTH_LOCAL_KEY_PATH", str(live.settings.auth_local_key_path))
    get_settings.cache_clear()
    try:
        assert cli.main(["token", "--role", "health-visitor", "--org", HV_ORG, "--minutes", "5"]) == 0
    finally:
        get_settings.cache_clear()
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["role"] == "health-visitor" and claims["org"] == HV_ORG and claims["exp"] - claims["iat"] == 300
    import httpx

    r = httpx.get(live.fhir + "/Patient", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert cli.main(["token", "--role", "nobody", "--org", HV_ORG]) == 2


def test_jwks_issuer_is_trusted_in_production_mode(live, tmp_path):
    """Production trusts an issuer's JWKS: serve one locally and point the settings at it."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from app.auth.tokens import TokenVerifier
    from app.errors import FhirError
    from tests.conftest import make_settings

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "idp-1", "use": "sig", "alg": "RS256"})

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"keys": [jwk]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        s = make_settings("sqlite://", tmp_path / "unused.pem", auth_jwks_url=f"http://127.0.0.1:{httpd.server_port}/jwks", auth_issuer="https://idp.example.nhs.uk")
        verifier = TokenVerifier(s)
        good = jwt.encode(_claims(s), key, algorithm="RS256", headers={"kid": "idp-1"})
        assert verifier.verify(good).org == MATERNITY_ORG
        local = _signed(live.settings, _claims(s))  # signed by the local key: not trusted here
        with pytest.raises(FhirError) as err:
            verifier.verify(local)
        assert err.value.status == 401
    finally:
        httpd.shutdown()


def test_two_processes_creating_the_local_key_at_once_end_with_one_key(tmp_path, monkeypatch):
    """The second of two servers started together used to overwrite the first one's key, so
    tokens minted by one failed on the other ("signature not valid"). The loser of the race
    now takes the winner's key from the file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from app.auth import tokens

    path = tmp_path / "var" / "local-signing-key.pem"
    real = rsa.generate_private_key

    winner = []

    def generate_while_another_process_wins(**kw):
        mine = real(**kw)
        other = real(**kw)  # the other process, faster, writes its key first and keeps using it
        winner.append(other)
        path.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
        return mine

    monkeypatch.setattr(tokens.rsa, "generate_private_key", generate_while_another_process_wins)
    loser = tokens._load_or_create_key(path)
    monkeypatch.setattr(tokens.rsa, "generate_private_key", real)
    on_disk = tokens._load_or_create_key(path)
    assert loser.private_numbers() == on_disk.private_numbers() == winner[0].private_numbers()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_a_verified_token_is_kept_a_minute_at_most_ended_by_its_expiry_and_a_refused_one_never(tmp_path, monkeypatch):
    """The verifier keeps what a token's signature check found, for the requests that follow,
    for a minute at most (a key withdrawn from the JWKS stops its tokens within it); the clock
    still ends the token when its exp passes, and a refused token is checked again each time."""
    from app.auth import tokens
    from app.errors import FhirError
    from tests.conftest import make_settings

    s = make_settings("sqlite://", tmp_path / "key.pem")
    verifier = tokens.TokenVerifier(s)
    start = time.time()
    good = _signed(s, _claims(s, iat=int(start), exp=int(start) + 3600))
    decodes = []
    real_decode = tokens.jwt.decode
    clock = {"now": start}
    monkeypatch.setattr(tokens.time, "time", lambda: clock["now"])
    monkeypatch.setattr(tokens.jwt, "decode", lambda *a, **k: decodes.append(1) or _decode_at(real_decode, clock["now"], *a, **k))
    first = verifier.verify(good)
    clock["now"] = start + 30
    assert verifier.verify(good) is first and len(decodes) == 1  # kept: no second signature check
    clock["now"] = start + tokens.TokenVerifier.VERIFIED_KEPT_SECONDS + 1
    assert verifier.verify(good).sub == first.sub and len(decodes) == 2  # a minute on: checked again
    # a token that expires within the minute: refused past its exp and the leeway, as jwt.decode refuses it
    short = _signed(s, _claims(s, iat=int(start), exp=int(start) + 20))
    clock["now"] = start
    verifier.verify(short)
    clock["now"] = start + 20 + s.auth_leeway_seconds + 1
    with pytest.raises(FhirError) as err:
        verifier.verify(short)
    assert err.value.status == 401 and "expired" in err.value.diagnostics
    monkeypatch.undo()
    # a refused token (another key's signature) is refused every time it is sent
    other = jwt.encode(_claims(s), rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256")
    for _ in range(2):
        with pytest.raises(FhirError) as err:
            verifier.verify(other)
        assert err.value.status == 401
    assert other not in verifier._verified
    # bounded: a flood of distinct tokens does not grow it past its size
    monkeypatch.setattr(tokens.TokenVerifier, "VERIFIED_KEPT", 8)
    for n in range(20):
        verifier.verify(_signed(s, _claims(s, sub=f"s{n}")))
        assert len(verifier._verified) <= 8


def _decode_at(real_decode, now, *args, **kwargs):
    """jwt.decode as it runs at `now` (PyJWT reads the clock through datetime)."""
    import datetime as dt
    from unittest import mock

    class _Clock(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime.fromtimestamp(now, tz)

    with mock.patch("jwt.api_jwt.datetime", _Clock):
        return real_decode(*args, **kwargs)
