"""The deployment configuration of `ragtune serve`: where it listens, which database, which graphs.

Everything here is decided before the server starts and checked up front, so a bad setting is one
clear `ConfigError` (exit 2), never a half-started server. The database is part of this deployment
configuration, never of a run: the served graphs have no `database_url` field in their `Context`.

The API key comes only from the environment (`RAGTUNE_API_KEY`), never from the command line (where
`ps` would show it), and is never printed: `ServeConfig`'s repr leaves it out.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError

API_KEY_ENV = "RAGTUNE_API_KEY"
MIN_API_KEY_CHARS = 16
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2024
"""The port `langgraph dev` uses, so Studio's default connection URL finds the server."""
DEFAULT_DRAIN_TIMEOUT_S = 60.0
DEFAULT_GRAPHS: dict[str, str] = {
    "ragtune": "ragtune.graphs.orchestrator:graph",
    "ragtune_indexing": "ragtune.graphs.indexing:graph",
}
STUDIO_ORIGIN = "https://smith.langchain.com"


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) reaches this machine only.

    A name counts as loopback only when every address it resolves to is a loopback address;
    `0.0.0.0` and `::` (every interface) are not loopback.
    """
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {str(info[4][0]) for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback
                                   for a in addresses)


@dataclass(frozen=True)
class GraphSpec:
    """One served graph: its id and where its compiled graph (or graph factory) lives.

    Attributes:
        graph_id: The id clients pass as `assistant_id` (e.g. "ragtune").
        target: A dotted module path, or an absolute path to a `.py` file.
        attr: The module attribute holding the graph.
    """

    graph_id: str
    target: str
    attr: str

    @property
    def is_file(self) -> bool:
        """Whether `target` is a file path rather than a module path."""
        return self.target.endswith(".py") or os.sep in self.target

    @property
    def spec(self) -> str:
        """The `target:attr` form of langgraph.json."""
        return f"{self.target}:{self.attr}"


def parse_graph_spec(graph_id: str, spec: Any, base_dir: Path | None = None) -> GraphSpec:
    """Parse a langgraph.json-style entry (`module.path:attr` or `./file.py:attr`).

    Relative file paths are resolved against `base_dir` (the folder of the file naming them).
    """
    if not isinstance(graph_id, str) or not graph_id.strip():
        raise ConfigError(f"A graph id must be a non-empty string, not {graph_id!r}")
    if not isinstance(spec, str) or spec.count(":") != 1 or spec.startswith(":") \
            or spec.endswith(":"):
        raise ConfigError(f"Graph {graph_id!r}: expected 'module.path:attr' or "
                          f"'./file.py:attr', not {spec!r}")
    target, attr = spec.split(":")
    if target.endswith(".py") or "/" in target:
        path = Path(target).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        path = path.resolve()
        if not path.is_file():
            raise ConfigError(f"Graph {graph_id!r}: no such file {path}")
        target = str(path)
    return GraphSpec(graph_id, target, attr)


def load_graphs_file(path: str | os.PathLike[str]) -> tuple[list[GraphSpec], list[str]]:
    """Read the `graphs` (and `dependencies`) of a langgraph.json / aegra.json-shaped file.

    Returns:
        The graph specs and the dependency folders (absolute), both resolved against the file's
        folder.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"Graphs file {file}: no such file")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"Graphs file {file} is not readable JSON: {exc}") from exc
    graphs = data.get("graphs") if isinstance(data, dict) else None
    if not isinstance(graphs, dict) or not graphs:
        raise ConfigError(f"Graphs file {file}: expected an object with a non-empty "
                          '"graphs" mapping, like langgraph.json')
    base = file.resolve().parent
    specs = [parse_graph_spec(gid, spec, base) for gid, spec in graphs.items()]
    deps = data.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise ConfigError(f'Graphs file {file}: "dependencies" must be a list of folders')
    return specs, [str((base / d).resolve()) for d in deps]


def default_graphs() -> list[GraphSpec]:
    """The graphs served when no graphs file is given: the orchestrator and the indexing graph."""
    return [parse_graph_spec(gid, spec) for gid, spec in DEFAULT_GRAPHS.items()]


@dataclass
class ServeConfig:
    """How one `ragtune serve` process runs.

    Attributes:
        host: Bind address; loopback by default. Any other address requires an API key.
        port: TCP port (0 picks a free one).
        database_url: A `postgresql://` URL, or None for the embedded server under `home`.
        home: The ragtune home of the embedded server (default: `RAGTUNE_HOME`).
        api_key: The key clients must send (`x-api-key`, or `Authorization: Bearer`); from
            `RAGTUNE_API_KEY`. With a key set, auth is on on loopback too.
        graphs: The graphs to serve.
        dependencies: Extra folders put on `sys.path` for the graphs' imports.
        allowed_origins: Browser origins allowed to call the server (CORS); Studio's by default.
        drain_timeout_s: On SIGTERM, how long in-flight runs may take to finish.
        verbose: Log requests and engine details.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    database_url: str | None = None
    home: str | None = None
    api_key: str | None = field(default=None, repr=False)
    graphs: list[GraphSpec] = field(default_factory=default_graphs)
    dependencies: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=lambda: [STUDIO_ORIGIN])
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    verbose: bool = False

    @classmethod
    def from_env(cls, **values: Any) -> ServeConfig:
        """Build a config from `values`; the database URL and the API key fall back to the env."""
        from ragtune.tools.database import ENV_DATABASE_URL

        values = {k: v for k, v in values.items() if v is not None}
        values.setdefault("database_url", os.environ.get(ENV_DATABASE_URL) or None)
        key = os.environ.get(API_KEY_ENV)
        values.setdefault("api_key", key if key else None)
        config = cls(**values)
        config.validate()
        return config

    @property
    def auth_required(self) -> bool:
        """Whether clients must present the key: always off loopback, and whenever one is set."""
        return self.api_key is not None or not is_loopback(self.host)

    def validate(self) -> None:
        """Raise `ConfigError` for a configuration the server must not start with."""
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, not {self.port!r}")
        if not self.host or any(c.isspace() for c in self.host):
            raise ConfigError(f"--host must be an address or a host name, not {self.host!r}")
        if self.api_key is not None and len(self.api_key) < MIN_API_KEY_CHARS:
            raise ConfigError(f"{API_KEY_ENV} is too short: use at least {MIN_API_KEY_CHARS} "
                              "random characters (e.g. `openssl rand -hex 32`)")
        if self.api_key is None and not is_loopback(self.host):
            raise ConfigError(
                f"Refusing to serve on {self.host} without authentication: set {API_KEY_ENV} "
                f"(at least {MIN_API_KEY_CHARS} random characters) or bind a loopback address "
                f"(--host {DEFAULT_HOST})")
        if self.database_url is not None and \
                not self.database_url.startswith(("postgresql://", "postgres://")):
            from ragtune.tools.database import redact_url

            raise ConfigError(f"Not a PostgreSQL URL: {redact_url(self.database_url)!r} "
                              "(expected postgresql://...)")
        if not self.drain_timeout_s > 0:
            raise ConfigError(f"--drain-timeout must be positive, not {self.drain_timeout_s!r}")
        for origin in self.allowed_origins:
            if not origin.startswith(("http://", "https://")) or origin.endswith("/"):
                raise ConfigError(f"--allow-origin takes an origin like https://example.com, "
                                  f"not {origin!r}")
        ids = [g.graph_id for g in self.graphs]
        if not ids:
            raise ConfigError("No graphs to serve")
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ConfigError(f"Graph ids served twice: {', '.join(duplicates)}")
