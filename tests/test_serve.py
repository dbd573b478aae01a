"""`ragtune serve`: the real Agent Protocol server, driven with langgraph-sdk.

Three real servers (subprocesses of `python -m ragtune.cli serve` on free loopback ports) share the
session's database, as replicas of one deployment do: two with an API key (auth on) and one without.
They serve `tests/serve_graph.py` (the real orchestrator over a scripted model and fake
embeddings, see there) through `--graphs`. Each server writes its log to a temporary folder; the
log is shown when a server fails to start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, ragtune_cmd

pytest.importorskip("aegra_api")
pytest.importorskip("langgraph_sdk")
API_KEY = "test-key-0123456789abcdef"
GRAPH = "scripted"
DELAY_S = 1.5
START_TIMEOUT_S = 120
PARAGRAPHS = [
    ("ada", "Ada Lovelace", "Ada Lovelace was an English mathematician born in London."),
    ("thames", "River Thames", "The River Thames flows through London."),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str, headers: dict[str, str] | None = None, method: str = "GET",
            body: bytes | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {}, method=method, data=body)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if _status(f"{self.url}/ready") == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        pytest.fail(f"ragtune serve did not become ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start(folder: Path, env: dict[str, str], name: str, *, key: str | None = None,
           delay_s: float = 0.0) -> Server:
    graphs = folder / "graphs.json"
    graphs.write_text(json.dumps({"graphs": {GRAPH: str(REPO_ROOT / "tests" / "serve_graph.py")
                                             + ":graph"}}))
    env = dict(env)
    env.pop("RAGTUNE_API_KEY", None)
    if key:
        env["RAGTUNE_API_KEY"] = key
    env["SERVE_TEST_DELAY_S"] = str(delay_s)
    port = _free_port()
    log = folder / f"{name}.log"
    process = subprocess.Popen(
        ragtune_cmd("serve", "--port", str(port), "--graphs", str(graphs),
                    "--drain-timeout", "30"),
        cwd=folder, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return Server(f"http://127.0.0.1:{port}", process, log)


@pytest.fixture(scope="module")
def collection(database) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A collection with two paragraphs, embedded like the served graph embeds (fakes, 32-d)."""
    import uuid

    from langchain_core.embeddings import DeterministicFakeEmbedding

    from ragtune.tools.store import KnowledgeStore
    from tests.serve_graph import EMBEDDING_SIZE

    store = KnowledgeStore(database, DeterministicFakeEmbedding(size=EMBEDDING_SIZE),
                           f"test_serve_{uuid.uuid4().hex[:8]}")
    store.add_texts([text for _, _, text in PARAGRAPHS],
                    [{"source": key, "title": title} for key, title, _ in PARAGRAPHS])
    yield store.collection
    store.delete_collection()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, ragtune_home: Path,
            database) -> Iterator[dict[str, Server]]:  # type: ignore[no-untyped-def]
    """Replicas `a` and `b` (API key) and `open` (no key, slow model), all on one database."""
    folder = tmp_path_factory.mktemp("serve")
    env = dict(os.environ, RAGTUNE_HOME=str(ragtune_home), PYTHONUNBUFFERED="1")
    started = {"a": _start(folder, env, "a", key=API_KEY),
               "b": _start(folder, env, "b", key=API_KEY),
               "open": _start(folder, env, "open", delay_s=DELAY_S)}
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        for server in started.values():
            server.stop()


def _client(server: Server, key: str | None = API_KEY) -> Any:
    from langgraph_sdk import get_sync_client

    return get_sync_client(url=server.url, api_key=key)


def _question(collection: str, question: str) -> dict[str, Any]:
    return {"input": {"question": question}, "context": {"collection": collection}}


def test_non_loopback_without_key_exits_2_with_one_line(cli_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    environment = {k: v for k, v in cli_env.items() if k != "RAGTUNE_API_KEY"}
    done = subprocess.run(ragtune_cmd("serve", "--host", "0.0.0.0"), cwd=tmp_path,
                          env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == ("error: Refusing to serve on 0.0.0.0 without authentication: set "
                           "RAGTUNE_API_KEY (at least 16 random characters) or bind a loopback "
                           "address (--host 127.0.0.1)\n")


@pytest.mark.parametrize(("env", "args", "needle"), [
    ({"RAGTUNE_API_KEY": "short"}, ["serve"], "RAGTUNE_API_KEY is too short"),
    ({}, ["serve", "--host", "::"], "Refusing to serve on :: without authentication"),
    ({}, ["serve", "--graphs", "missing.json"], "no such file"),
    ({}, ["serve", "--port", "70000"], "--port must be between 0 and 65535"),
    ({}, ["serve", "--drain-timeout", "0"], "--drain-timeout must be positive"),
    ({}, ["serve", "--allow-origin", "evil.example"], "--allow-origin takes an origin"),
    ({}, ["--database-url", "mysql://u:secret@x/db", "serve"], "Not a PostgreSQL URL"),
])
def test_bad_configuration_is_one_error_line_and_exit_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        env: dict[str, str], args: list[str], needle: str) -> None:
    from ragtune.cli import main

    monkeypatch.delenv("RAGTUNE_API_KEY", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err
    assert "secret" not in err and "short" not in err.replace("too short", "")


def test_bad_graphs_file_is_a_config_error(tmp_path: Path) -> None:
    from ragtune.errors import ConfigError
    from ragtune.serving.config import ServeConfig, load_graphs_file
    from ragtune.serving.graphs import check_graphs

    bad = tmp_path / "graphs.json"
    for content, needle in [("{", "not readable JSON"), ('{"graphs": {}}', "non-empty"),
                            ('{"graphs": {"g": "no_colon"}}', "expected 'module.path:attr'"),
                            ('{"graphs": {"g": "./nope.py:graph"}}', "no such file")]:
        bad.write_text(content)
        with pytest.raises(ConfigError, match=needle):
            load_graphs_file(bad)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "other.py").write_text("graph = 42\n")
    for spec, needle in [("./broken.py:graph", "failed to load: RuntimeError: boom"),
                         ("./other.py:missing", "has no attribute 'missing'"),
                         ("./other.py:graph", "is a int, not a LangGraph graph"),
                         ("no.such.module:graph", "ModuleNotFoundError")]:
        bad.write_text(json.dumps({"graphs": {f"g{abs(hash(spec))}": spec}}))
        graphs, deps = load_graphs_file(bad)
        with pytest.raises(ConfigError, match=needle):
            check_graphs(ServeConfig(graphs=graphs, dependencies=deps))


def test_api_key_is_required_and_studio_bypass_does_not_bypass(
        servers: dict[str, Server]) -> None:
    url = servers["a"].url
    search = f"{url}/assistants/search"
    body = b"{}"
    post = {"method": "POST", "body": body}
    json_header = {"content-type": "application/json"}
    assert _status(search, json_header, **post) == 401
    assert _status(search, json_header | {"x-api-key": "wrong-" + API_KEY}, **post) == 401
    # LangGraph Studio's LangSmith scheme, with and without a LangSmith-looking key.
    assert _status(search, json_header | {"x-auth-scheme": "langsmith"}, **post) == 401
    assert _status(search, json_header | {"x-auth-scheme": "langsmith",
                                          "x-api-key": "lsv2_pt_0123456789abcdef"}, **post) == 401
    assert _status(search, json_header | {"authorization": "Bearer nope"}, **post) == 401
    assert _status(search, json_header | {"authorization": f"Bearer {API_KEY}"}, **post) == 200
    assert _status(search, json_header | {"x-api-key": API_KEY}, **post) == 200
    # Probes carry no key.
    assert _status(f"{url}/ready") == 200
    assert _status(f"{url}/health") == 200
    assert [a["graph_id"] for a in _client(servers["a"]).assistants.search()] == [GRAPH]


def test_thread_started_on_one_replica_continues_on_another(
        servers: dict[str, Server], collection: str) -> None:
    a, b = _client(servers["a"]), _client(servers["b"])
    thread = a.threads.create()["thread_id"]
    first = a.runs.wait(thread, GRAPH, **_question(collection, "Where was Ada Lovelace born?"))
    assert first["answer"] == "London"
    assert {c["title"] for c in first["citations"]} & {"Ada Lovelace", "River Thames"}

    assert b.threads.get(thread)["thread_id"] == thread
    assert b.threads.get_state(thread)["values"]["answer"] == "London"
    events = list(b.runs.stream(thread, GRAPH, stream_mode=["updates"],
                                **_question(collection, "Which river flows through London?")))
    nodes = [next(iter(e.data)) for e in events if e.event == "updates"]
    assert nodes == ["route", "retrieve", "check_evidence", "answer"]

    history = a.threads.get_state(thread)["values"]["history"]
    assert [turn["question"] for turn in history] == ["Where was Ada Lovelace born?",
                                                      "Which river flows through London?"]
    runs = a.runs.list(thread)
    assert len(runs) == 2 and {r["status"] for r in runs} == {"success"}


def test_run_context_cannot_choose_the_database(servers: dict[str, Server],
                                                collection: str) -> None:
    client = _client(servers["a"])
    thread = client.threads.create()["thread_id"]
    request = _question(collection, "Where was Ada Lovelace born?")
    request["context"]["database_url"] = "postgresql://attacker@203.0.113.1/x"
    # Not a Context field: dropped, and the run reads the server's own database.
    result = client.runs.wait(thread, GRAPH, **request)
    assert result["answer"] == "London" and result["citations"]


def test_open_server_refuses_foreign_origins_and_host_names(servers: dict[str, Server],
                                                           collection: str) -> None:
    url = servers["open"].url
    search = f"{url}/assistants/search"
    json_header = {"content-type": "application/json"}
    assert _status(search, json_header, method="POST", body=b"{}") == 200  # no key needed
    assert _status(search, json_header | {"origin": "https://evil.example"},
                   method="POST", body=b"{}") == 403
    # DNS rebinding: a foreign name that resolves to this machine.
    assert _status(search, json_header | {"host": "evil.example:80"},
                   method="POST", body=b"{}") == 403
    assert _status(search, json_header | {"origin": "https://smith.langchain.com"},
                   method="POST", body=b"{}") == 200


def _refused(call: Any) -> bool:
    """Whether `call` is turned away: a 503, or no connection at all (the socket is closed)."""
    import httpx

    try:
        status = call()
    except httpx.HTTPStatusError as exc:
        return exc.response.status_code == 503
    except (OSError, httpx.TransportError):
        return True
    return status == 503


def test_sigterm_drains_in_flight_runs_then_exits(servers: dict[str, Server], collection: str,
                                                  database) -> None:  # type: ignore[no-untyped-def]
    server = servers["open"]
    client = _client(server, key=None)
    thread = client.threads.create()["thread_id"]
    run = client.runs.create(thread, GRAPH, **_question(collection, "Where was Ada born?"))
    deadline = time.monotonic() + 10
    while client.runs.get(thread, run["run_id"])["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert _refused(lambda: _status(f"{server.url}/ready"))
    assert _refused(lambda: client.runs.create(thread, GRAPH,
                                               **_question(collection, "Another one?")))
    assert server.process.wait(30) == 0
    # The in-flight run finished before the replica left (the model takes DELAY_S).
    with database.pool.connection() as conn:
        rows = conn.execute("SELECT status, output->>'answer' FROM runs WHERE thread_id = %s",
                            (thread,)).fetchall()
    assert rows == [("success", "London")]
    assert "draining: waiting for 1 run(s)" in server.log.read_text()


def _through_guard(config: Any, state: Any, method: str, path: str,
                   headers: dict[str, str] | None = None) -> int:
    """Send one request through the `Guard` in front of an app that answers 200."""
    import asyncio

    import httpx

    from ragtune.serving.guard import Guard

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call() -> int:
        transport = httpx.ASGITransport(app=Guard(inner, config, state))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return (await client.request(method, path, headers=headers)).status_code

    return asyncio.run(call())


def test_guard_readiness_draining_and_preflight() -> None:
    from ragtune.serving.config import ServeConfig
    from ragtune.serving.guard import ServerState

    config = ServeConfig(api_key=API_KEY)
    state = ServerState()
    key = {"x-api-key": API_KEY}
    assert _through_guard(config, state, "GET", "/ready") == 503  # not started yet
    state.ready = True
    assert _through_guard(config, state, "GET", "/ready") == 200
    assert _through_guard(config, state, "OPTIONS", "/threads",
                          {"origin": "https://smith.langchain.com"}) == 200  # CORS preflight
    assert _through_guard(config, state, "POST", "/threads/t1/runs") == 401
    state.draining = True
    assert _through_guard(config, state, "GET", "/ready") == 503
    for path in ("/threads/t1/runs", "/threads/t1/runs/stream", "/threads/t1/runs/wait",
                 "/runs", "/runs/wait", "/runs/batch"):
        assert _through_guard(config, state, "POST", path, key) == 503, path
    # Reading goes on while draining: clients fetch results of runs that finish.
    assert _through_guard(config, state, "GET", "/threads/t1/runs/r1", key) == 200
    assert _through_guard(config, state, "POST", "/threads/search", key) == 200


def test_port_in_use_is_a_config_error_before_anything_starts(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from ragtune.cli import main

    monkeypatch.delenv("RAGTUNE_API_KEY", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"error: Cannot listen on 127.0.0.1:{port}: "
                                       "Address already in use\n")
