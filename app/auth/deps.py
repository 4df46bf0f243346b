"""FastAPI dependencies that turn the Authorization header into a Principal."""
from __future__ import annotations

from fastapi import Request

from app.auth.tokens import Principal, bearer_token


def get_principal(request: Request) -> Principal:
    token = bearer_token(request.headers.get("authorization"))
    state = request.scope.get("state") or {}
    if state.get("bearer") == token and state.get("principal") is not None:  # verified once already (the rate limit)
        verified: Principal = state["principal"]
    else:
        verified = request.app.state.verifier.verify(token)
    request.state.principal = verified  # who asked, for the audit of a refusal (app.main)
    return verified
