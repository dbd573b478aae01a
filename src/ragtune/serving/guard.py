"""The ASGI guard in front of aegra: API key, browser origins, readiness and draining.

It answers, before any request reaches aegra:

- `/ready` with 503 until the server has started and again once it drains (`/health` and `/live`
  are aegra's own and stay public: probes carry no key);
- 401 to any other request without the API key when auth is on, whatever else it carries
  (Studio's `x-auth-scheme: langsmith` included); CORS preflights pass, since they run nothing;
- 403 to a browser request from an origin that is not allowed, and, when auth is off (loopback
  only), to a request whose `Host` is not a loopback name: a web page cannot make the browser
  start runs on a local server, directly or through DNS rebinding;
- 503 to a new run while the server drains (in-flight runs finish; clients retry elsewhere).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from ragtune.serving.auth import key_is_valid
from ragtune.serving.config import ServeConfig

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROBES = ("/health", "/ready", "/live")
_RUN_CREATION = re.compile(r"^(/threads/[^/]+)?/runs(/stream|/wait|/batch)?/?$")
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


@dataclass
class ServerState:
    """What the guard needs to know about the server's life.

    Attributes:
        ready: aegra has started (its database, graphs and default assistants are in place).
        draining: SIGTERM arrived: no new runs, in-flight ones finish.
    """

    ready: bool = False
    draining: bool = False


def _host_name(host_header: str) -> str:
    """The host part of a `Host` header (`name:port`, `[v6]:port`)."""
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Guard:
    """Wrap `app` with the checks of the module docstring.

    Args:
        app: aegra's ASGI application.
        config: The server's configuration (auth, allowed origins, bind host).
        state: Shared with the server: readiness and draining.
    """

    def __init__(self, app: ASGIApp, config: ServeConfig, state: ServerState) -> None:
        self.app = app
        self.config = config
        self.state = state
        self._origins = frozenset(config.allowed_origins)
        self._hosts = _LOOPBACK_NAMES | {config.host}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await _respond(send, *refusal)

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """Return (status, error, message) for a request to refuse, or None to let it through."""
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if path == "/ready" and (self.state.draining or not self.state.ready):
            return 503, "unavailable", "draining" if self.state.draining else "starting"
        if path in PROBES:
            return None
        origin = headers.get("origin")
        host = headers.get("host", "")
        if origin is not None and origin not in self._origins and \
                origin.split("://", 1)[-1] != host:
            return 403, "forbidden", f"Origin {origin!r} is not allowed (see --allow-origin)"
        if not self.config.auth_required and _host_name(host) not in self._hosts:
            return 403, "forbidden", "This server answers loopback host names only"
        if method == "OPTIONS":
            return None
        if self.config.auth_required and not key_is_valid(headers, self.config.api_key):
            return 401, "unauthorized", "Invalid or missing API key"
        if self.state.draining and method == "POST" and _RUN_CREATION.match(path):
            return 503, "unavailable", "This replica is draining; send the run to another one"
        return None


async def _respond(send: Send, status: int, error: str, message: str) -> None:
    body = json.dumps({"error": error, "message": message, "details": None}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
