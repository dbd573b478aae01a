"""API-key authentication of the served graphs: one `langgraph_sdk.Auth` hook and its key check.

A client sends the key as `x-api-key: KEY` (what `langgraph_sdk.get_client(api_key=...)` sends) or
`Authorization: Bearer KEY`. Nothing else authenticates: LangGraph Studio's LangSmith scheme
(`x-auth-scheme: langsmith`), which `langgraph-api` lets through on its own, is just another request
without the key here. The key is read from `RAGTUNE_API_KEY` in the server's environment at each
check (so it never sits in a config file) and compared in constant time.

`auth` is the hook aegra loads (`"auth": {"path": "ragtune.serving.auth:auth"}`); it gives every
authenticated caller the identity `api-key`, so all holders of the key share threads. The ASGI guard
in `ragtune.serving.app` applies the same check in front of the whole application: aegra falls back
to anonymous access when it cannot load a hook, and the guard makes that fail closed instead.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from typing import Any

from langgraph_sdk import Auth

from ragtune.serving.config import API_KEY_ENV

IDENTITY = "api-key"

auth = Auth()


def _header(headers: Mapping[Any, Any], name: str) -> str | None:
    """Return header `name` from a str- or bytes-keyed mapping (case-insensitive), or None."""
    for key, value in headers.items():
        text = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if text.lower() == name:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


def presented_key(headers: Mapping[Any, Any]) -> str | None:
    """Return the key a request presents (`x-api-key`, else a Bearer token), or None."""
    key = _header(headers, "x-api-key")
    if key:
        return key.strip()
    authorization = _header(headers, "authorization") or ""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def key_is_valid(headers: Mapping[Any, Any], expected: str | None = None) -> bool:
    """Whether `headers` carry the server's API key (`expected`, else `RAGTUNE_API_KEY`).

    With no key configured, nothing is valid: the check fails closed.
    """
    expected = expected if expected is not None else os.environ.get(API_KEY_ENV)
    given = presented_key(headers)
    if not expected or not given:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


@auth.authenticate
async def authenticate(headers: dict[Any, Any]) -> Auth.types.MinimalUserDict:
    """Accept a request that carries the API key; refuse every other one with 401."""
    if not key_is_valid(headers):
        raise Auth.exceptions.HTTPException(status_code=401, detail="Invalid or missing API key")
    return {"identity": IDENTITY, "is_authenticated": True}
