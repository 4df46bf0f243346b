"""FastAPI dependencies that turn the Authorization header into a Principal."""
from __future__ import annotations

from fastapi import Request

from app.auth.tokens import Principal, bearer_token


def get_principal(request: Request) -> Principal:
    principal = bearer_token(request.headers.get("authorization"))
    verified = request.app.state.verifier.verify(principal)
    request.state.principal = verified  # who asked, for the audit of a refusal (app.main)
    return verified
