"""Serving ragtune's graphs over the Agent Protocol, so `langgraph-sdk` clients and Studio work.

The engine is `aegra-api` (FastAPI + PostgreSQL, Apache-2.0): threads, runs, streaming and the
LangGraph checkpointer live in the same PostgreSQL as the knowledge store, so several replicas over
one database share every thread. ragtune adds what a deployment needs around it:

- `config`: the deployment configuration (bind address, database, API key, graphs) and its checks;
- `auth`: the API-key hook (`langgraph_sdk.Auth`), on whenever the server binds beyond loopback;
- `migrations`: aegra's schema, applied once per database under an advisory lock;
- `app`: the ASGI application (key check, draining, readiness) and the uvicorn server that drains
  on SIGTERM.

`ragtune serve` (`ragtune.cli.serve`) is the command line face.
"""
