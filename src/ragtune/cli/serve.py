"""`ragtune serve`: the orchestrator and indexing graphs over the Agent Protocol, one replica.

Loopback by default; any other bind address needs `RAGTUNE_API_KEY`. Several `ragtune serve`
processes on one database (the same `--database-url`, or the same `--home` for the embedded
server) are replicas of one service: they share every thread. See `ragtune.serving`.
"""

from __future__ import annotations

import argparse

from ragtune.serving.config import (
    API_KEY_ENV,
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_HOST,
    DEFAULT_PORT,
    STUDIO_ORIGIN,
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `serve` to the `ragtune` parser."""
    p = commands.add_parser(
        "serve", help="serve the graphs over the Agent Protocol (langgraph-sdk, Studio)",
        description="Serve the orchestrator (graph 'ragtune') and the indexing graph "
                    "('ragtune_indexing') with threads, runs and streaming, checkpointed in the "
                    "same PostgreSQL as the store. Run several on one database for replicas.")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"bind address (default {DEFAULT_HOST}); any non-loopback address "
                        f"requires ${API_KEY_ENV}")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}, Studio's default; 0 picks a free one)")
    p.add_argument("--graphs", metavar="FILE.json", default=None,
                   help="serve the graphs of this langgraph.json-shaped file instead "
                        "('module.path:attr' or './file.py:attr' entries)")
    p.add_argument("--allow-origin", action="append", default=None, metavar="ORIGIN",
                   help=f"browser origin allowed to call the server (default {STUDIO_ORIGIN}; "
                        "repeat for several)")
    p.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S, metavar="S",
                   help="on SIGTERM, seconds in-flight runs get to finish "
                        f"(default {DEFAULT_DRAIN_TIMEOUT_S:.0f})")
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or Ctrl-C drains the replica; 0 after a clean drain."""
    from ragtune.serving.app import serve
    from ragtune.serving.config import ServeConfig, load_graphs_file

    graphs, dependencies = load_graphs_file(args.graphs) if args.graphs else (None, None)
    config = ServeConfig.from_env(
        host=args.host, port=args.port, database_url=args.database_url, home=args.home,
        graphs=graphs, dependencies=dependencies, allowed_origins=args.allow_origin,
        drain_timeout_s=args.drain_timeout, verbose=args.verbose)
    serve(config)
    return 0
