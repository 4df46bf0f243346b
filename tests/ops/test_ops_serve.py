"""Finding 7 of issue 18: no silent trust of a local key. `familyview serve` refuses to start
without a configured issuer unless --dev-auth says so (and then says it loudly), the local key
lives beside the database, and no token lives longer than the configured maximum."""
from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import jwt
import pytest

from app.auth.tokens import LocalKey, TokenVerifier, mint_token
from app.errors import FhirError
from app.migrate import upgrade
from app.settings import PROJECT_ROOT, Settings
from tests.conftest import HV_ORG
from tests.serve import ServeProcess

TEN_YEARS_MINUTES = 5_256_000


def _serve(tmp_path: Path, *args: str, **env: str) -> tuple[ServeProcess, Path]:
    """serve on a new SQLite database, with none of this process's FAMILYVIEW_ settings."""
    db = tmp_path / "fv.db"
    if not db.exists():
        upgrade(f"sqlite:///{db}")
    env = {"FAMILYVIEW_DATABASE_URL": f"sqlite:///{db}", "FAMILYVIEW_LOG_FORMAT": "json", **env}
    return ServeProcess(env, *args, log=tmp_path / "serve.log", clean=True), db


def test_serve_refuses_to_start_without_an_issuer(tmp_path):
    server, db = _serve(tmp_path)
    rc = server.proc.wait(timeout=60)
    err = server.output()
    assert rc == 2 and "Refusing to start" in err and "--dev-auth" in err, err
    assert not (tmp_path / "fv-signing-key.pem").exists()  # and no key was made


def test_serve_with_dev_auth_logs_it_loudly_and_keeps_the_key_beside_the_database(tmp_path):
    server, db = _serve(tmp_path, "--dev-auth")
    base = server.wait_up().base
    try:
        key = tmp_path / "fv-signing-key.pem"
        settings = Settings(database_url=f"sqlite:///{db}")
        assert settings.local_key_path == key
        token = mint_token(settings, role="health-visitor", org=HV_ORG)  # `familyview token` with the same database
        r = httpx.get(base + "/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        assert key.exists() and oct(key.stat().st_mode & 0o777) == "0o600"
        # a key of another database (another instance started from this checkout) is not trusted here
        other = Settings(database_url=f"sqlite:///{tmp_path / 'other.db'}")
        assert other.local_key_path != key
        foreign = mint_token(other, role="health-visitor", org=HV_ORG)
        assert httpx.get(base + "/fhir/Patient", headers={"Authorization": f"Bearer {foreign}"}).status_code == 401
    finally:
        err = server.stop()
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    warning = [x for x in lines if x.get("event") == "dev-auth"]
    assert warning and warning[0]["level"] == "WARNING" and "DEVELOPMENT AUTH" in warning[0]["message"], err[-2000:]
    assert str(key) in warning[0]["message"]


def test_serve_with_an_issuer_needs_no_dev_auth_and_trusts_no_local_key(tmp_path):
    server, db = _serve(tmp_path, FAMILYVIEW_AUTH_JWKS_URL="http://127.0.0.1:9/jwks", FAMILYVIEW_AUTH_ISSUER="https://idp.example.nhs.uk")
    base = server.wait_up().base
    try:
        local = mint_token(Settings(database_url=f"sqlite:///{db}"), role="health-visitor", org=HV_ORG)
        assert httpx.get(base + "/fhir/Patient", headers={"Authorization": f"Bearer {local}"}).status_code == 401
    finally:
        err = server.stop()
    assert "DEVELOPMENT AUTH" not in err


def test_the_local_key_lives_beside_the_database(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert Settings(database_url=f"sqlite:///{tmp_path}/a/fv.db").local_key_path == tmp_path / "a" / "fv-signing-key.pem"
    pg_a = Settings(database_url="postgresql+psycopg://u:secret@db1:5432/familyview").local_key_path
    pg_b = Settings(database_url="postgresql+psycopg://u:secret@db2:5432/familyview").local_key_path
    assert pg_a != pg_b and pg_a.parent == tmp_path / "data" / "familyview" / "keys" and "secret" not in str(pg_a)
    assert Settings(database_url="sqlite://", auth_local_key_path=tmp_path / "k.pem").local_key_path == tmp_path / "k.pem"
    default = Settings(database_url=f"sqlite:///{tmp_path}/b.db")
    assert PROJECT_ROOT / "var" / "local-signing-key.pem" != default.local_key_path


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(database_url="sqlite://", auth_local_key_path=tmp_path / "key.pem", **kw)


def _hand_signed(settings: Settings, lifetime_s: int, with_iat: bool = True) -> str:
    now = int(time.time())
    claims = {"iss": settings.auth_issuer, "aud": settings.auth_audience, "sub": "hv1", "org": HV_ORG,
              "role": "health-visitor", "scope": "user/*.rs", "exp": now + lifetime_s, **({"iat": now} if with_iat else {})}
    return jwt.encode(claims, LocalKey(settings.local_key_path).private_key, algorithm="RS256")


def test_a_ten_year_token_is_neither_minted_nor_accepted(tmp_path, capsys, monkeypatch):
    s = _settings(tmp_path)
    assert s.auth_max_token_minutes == 12 * 60
    with pytest.raises(ValueError, match="720"):
        mint_token(s, role="admin", org="X26", minutes=TEN_YEARS_MINUTES)
    from app import cli
    from app.settings import get_settings

    monkeypatch.setenv("FAMILYVIEW_AUTH_LOCAL_KEY_PATH", str(s.local_key_path))
    get_settings.cache_clear()
    try:
        assert cli.main(["token", "--role", "admin", "--org", "X26", "--minutes", str(TEN_YEARS_MINUTES)]) == 2
        assert "720" in capsys.readouterr().err
        assert cli.main(["token", "--role", "admin", "--org", "X26", "--minutes", "720"]) == 0
    finally:
        get_settings.cache_clear()
    verifier = TokenVerifier(s)
    for token in (_hand_signed(s, TEN_YEARS_MINUTES * 60), _hand_signed(s, TEN_YEARS_MINUTES * 60, with_iat=False),
                  _hand_signed(s, 13 * 3600)):
        with pytest.raises(FhirError) as err:
            verifier.verify(token)
        assert err.value.status == 401 and "lives longer" in err.value.diagnostics
    assert verifier.verify(_hand_signed(s, 12 * 3600)).role == "health-visitor"
    assert verifier.verify(mint_token(s, role="health-visitor", org=HV_ORG, minutes=720)).org == HV_ORG


def test_the_maximum_lifetime_is_a_setting(tmp_path):
    s = _settings(tmp_path, auth_max_token_minutes=5)
    with pytest.raises(ValueError):
        mint_token(s, role="gp", org="A99001", minutes=60)
    with pytest.raises(FhirError):
        TokenVerifier(s).verify(_hand_signed(s, 3600))
    assert TokenVerifier(s).verify(mint_token(s, role="gp", org="A99001", minutes=5)).role == "gp"


def test_a_long_lived_token_is_refused_over_http(live):
    r = httpx.get(live.fhir + "/Patient", headers={"Authorization": f"Bearer {_hand_signed(live.settings, TEN_YEARS_MINUTES * 60)}"})
    assert r.status_code == 401 and r.json()["issue"][0]["code"] == "login"
