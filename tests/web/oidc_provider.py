"""A small, real OpenID Connect provider for the tests, shaped like NHS CIS2: discovery, an
authorisation endpoint where a test user is chosen (as CIS2 asks the user to pick a role), a
token endpoint checking the client secret and the PKCE verifier, and RS256 ID and access tokens
carrying CIS2's claims (nhsid_useruid, nhsid_nrbac_roles, selected_roleid, name)."""
from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

CLIENT_ID, CLIENT_SECRET = "familyview-test-client", "s3cret-for-tests"


@dataclass(frozen=True)
class TestUser:
    key: str
    uid: str
    name: str
    role_code: str  # CIS2 "S…:G…:R…"
    org: str


USERS = {
    "hv": TestUser("hv", "555000000101", "Helen Vaughan", "S8000:G8000:R8001", "RHV01"),
    "gp": TestUser("gp", "555000000102", "Dr Grace Pike", "S8000:G8000:R0260", "A99001"),
    "unknown": TestUser("unknown", "555000000103", "Una Known", "S8000:G8001:R8008", "RHV01"),
}
ROLE_MAP = {"R8001": "health-visitor", "R0260": "gp"}  # what the test deployment configures


def claims_for(user: TestUser) -> dict[str, Any]:
    role_id = f"{user.uid}-1"
    return {
        "sub": user.uid, "nhsid_useruid": user.uid, "name": user.name, "selected_roleid": role_id,
        "nhsid_nrbac_roles": [
            {"person_orgid": f"{user.uid}-org", "person_roleid": role_id, "org_code": user.org,
             "role_name": '"Clinical":"Clinical Provision":"Test role"', "role_code": user.role_code},
            {"person_orgid": f"{user.uid}-org2", "person_roleid": f"{user.uid}-2", "org_code": "RZZ99",
             "role_name": '"Admin":"Other"', "role_code": "S8000:G8000:R8000"},
        ],
    }


def build(issuer_holder: dict[str, str]) -> FastAPI:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = "test-provider-1"
    codes: dict[str, dict[str, Any]] = {}
    app = FastAPI()

    def issuer() -> str:
        return issuer_holder["issuer"]

    def sign(claims: dict[str, Any]) -> str:
        now = int(time.time())
        return jwt.encode({"iss": issuer(), "aud": CLIENT_ID, "iat": now, "exp": now + 600, **claims}, key,
                          algorithm="RS256", headers={"kid": kid})

    app.state.sign = sign

    @app.get("/.well-known/openid-configuration")
    def discovery() -> dict[str, Any]:
        return {"issuer": issuer(), "authorization_endpoint": f"{issuer()}/authorize", "token_endpoint": f"{issuer()}/token",
                "jwks_uri": f"{issuer()}/jwks", "end_session_endpoint": f"{issuer()}/logout",
                "id_token_signing_alg_values_supported": ["RS256"], "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"]}

    @app.get("/jwks")
    def jwks() -> dict[str, Any]:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": kid, "use": "sig", "alg": "RS256"}]}

    @app.get("/authorize")
    def authorize(request: Request) -> HTMLResponse:
        q = dict(request.query_params)
        if q.get("client_id") != CLIENT_ID or q.get("code_challenge_method") != "S256":
            return HTMLResponse("bad request", status_code=400)
        buttons = "".join(
            f'<li><a href="/approve?{escape(urlencode({**q, "user": u.key}))}">{escape(u.name)} ({u.role_code} at {u.org})</a></li>'
            for u in USERS.values())
        return HTMLResponse(f"<!DOCTYPE html><html lang=en><title>Test CIS2</title><h1>Choose a test user</h1><ul>{buttons}</ul></html>")

    @app.get("/approve")
    def approve(request: Request) -> RedirectResponse:
        q = dict(request.query_params)
        code = secrets.token_urlsafe(16)
        codes[code] = {"user": USERS[q["user"]], "nonce": q.get("nonce"), "challenge": q["code_challenge"],
                       "redirect_uri": q["redirect_uri"]}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}", status_code=302)

    @app.post("/token")
    def token(grant_type: str = Form(...), code: str = Form(...), redirect_uri: str = Form(...), client_id: str = Form(...),
              client_secret: str = Form(""), code_verifier: str = Form("")) -> JSONResponse:
        grant = codes.pop(code, None)
        if grant is None or client_id != CLIENT_ID or client_secret != CLIENT_SECRET or redirect_uri != grant["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        expected = base64.urlsafe_b64encode(hashlib.sha256(code_verifier.encode()).digest()).rstrip(b"=").decode()
        if expected != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, status_code=400)
        claims = claims_for(grant["user"])
        return JSONResponse({"token_type": "Bearer", "expires_in": 600, "id_token": sign({**claims, "nonce": grant["nonce"]}),
                             "access_token": sign({**claims, "jti": secrets.token_hex(8)})})

    return app
