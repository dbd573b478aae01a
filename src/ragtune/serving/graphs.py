"""The served graphs: loaded once per process, checked before the server starts, handed to aegra.

aegra imports each graph from a `.py` file it executes itself. ragtune gives it a two-line shim
per graph instead, which asks `load_graph` for the object: a module graph
(`ragtune.graphs.orchestrator`) is then the very module the rest of ragtune imports, and a file
graph is executed once, for the startup check and for aegra alike. The shims and aegra's
configuration file are written to a private runtime folder (never the repository or the working
directory) that is removed on exit.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError
from ragtune.serving.config import GraphSpec, ServeConfig

AUTH_HOOK = "ragtune.serving.auth:auth"


def _module_name(spec: GraphSpec) -> str:
    return f"ragtune_served_{spec.graph_id}"


def load_graph(target: str, attr: str, graph_id: str) -> Any:
    """Return the graph `attr` of module or file `target` (a file runs once per process)."""
    spec = GraphSpec(graph_id, target, attr)
    if spec.is_file:
        name = _module_name(spec)
        module = sys.modules.get(name)
        if module is None:
            file_spec = importlib.util.spec_from_file_location(name, target)
            if file_spec is None or file_spec.loader is None:
                raise ConfigError(f"Graph {graph_id!r}: cannot import {target}")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[name] = module
            try:
                file_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
    else:
        module = importlib.import_module(target)
    if not hasattr(module, attr):
        raise ConfigError(f"Graph {graph_id!r}: {target} has no attribute {attr!r}")
    return getattr(module, attr)


def check_graphs(config: ServeConfig) -> None:
    """Load every graph of `config` now, so a broken one stops the start with a clear error."""
    from langgraph.graph import StateGraph
    from langgraph.pregel import Pregel

    for path in config.dependencies:
        if path not in sys.path:
            sys.path.insert(0, path)
    for spec in config.graphs:
        try:
            graph = load_graph(spec.target, spec.attr, spec.graph_id)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"Graph {spec.graph_id!r} ({spec.spec}) failed to load: "
                              f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(graph, Pregel | StateGraph) and not callable(graph):
            raise ConfigError(f"Graph {spec.graph_id!r} ({spec.spec}) is a "
                              f"{type(graph).__name__}, not a LangGraph graph")


def write_runtime_config(config: ServeConfig, folder: Path) -> Path:
    """Write aegra's configuration (graph shims, auth hook, CORS) into `folder`; return its path."""
    shims = folder / "graphs"
    shims.mkdir(parents=True, exist_ok=True)
    graphs: dict[str, str] = {}
    for spec in config.graphs:
        shim = shims / f"{spec.graph_id.replace('/', '_')}.py"
        shim.write_text(
            "from ragtune.serving.graphs import load_graph\n\n"
            f"graph = load_graph({spec.target!r}, {spec.attr!r}, {spec.graph_id!r})\n",
            encoding="utf-8")
        graphs[spec.graph_id] = f"{shim}:graph"
    aegra: dict[str, Any] = {
        "dependencies": list(config.dependencies),
        "graphs": graphs,
        "http": {"cors": {"allow_origins": list(config.allowed_origins),
                          "allow_credentials": False}},
    }
    if config.auth_required:
        aegra["auth"] = {"path": AUTH_HOOK}
    path = folder / "aegra.json"
    path.write_text(json.dumps(aegra, indent=2), encoding="utf-8")
    return path
