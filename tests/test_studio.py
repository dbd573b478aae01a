"""LangGraph Studio: `langgraph dev` serves `langgraph.json` offline, and a thread runs through it.

Starts the real dev server (`langgraph-cli[inmem]`) on a free loopback port, in a temporary working
directory so nothing it writes lands in the repository, attached to the session's embedded
Postgres. Runs a thread with langgraph-sdk, streaming node updates, on the real local model
(gemma-3-270m through its converted cache) and the real embedder.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytest.importorskip("langgraph_sdk")
SAMPLE = REPO_ROOT / "src" / "ragtune" / "data" / "sample.jsonl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dev_server(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[str]:
    # The CLI sits next to this interpreter in a virtual environment, activated or not.
    exe = shutil.which("langgraph", path=str(Path(sys.executable).parent)) \
        or shutil.which("langgraph")
    if exe is None:
        pytest.fail("langgraph-cli is not installed (pip install -e '.[dev]')")
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [exe, "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port),
         "--config", str(REPO_ROOT / "langgraph.json")],
        cwd=tmp_path, env=cli_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ok", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("langgraph dev did not start:\n" +
                            (tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_thread_runs_through_the_dev_server(dev_server: str, database, embedder,  # type: ignore[no-untyped-def]
                                            collection_name: str, tmp_path: Path) -> None:
    from langgraph_sdk import get_sync_client

    from ragtune.tools.ingest import ingest_paths
    from ragtune.tools.store import KnowledgeStore

    store = KnowledgeStore(database, embedder, collection_name)
    try:
        ingest_paths(store, [SAMPLE])
        client = get_sync_client(url=dev_server)
        assistants = client.assistants.search()
        assert {a["graph_id"] for a in assistants} >= {"ragtune", "ragtune_indexing"}
        thread = client.threads.create()
        updates: list[str] = []
        for chunk in client.runs.stream(
            thread["thread_id"], "ragtune",
            input={"question": "In which city was Ada Lovelace born?"},
            context={"collection": collection_name, "routing_policy": "rules",
                     "evidence_threshold": 0.0, "max_answer_tokens": 12},
            stream_mode="updates",
        ):
            if chunk.event == "error":
                pytest.fail(f"run failed on the server: {json.dumps(chunk.data)[:2000]}")
            if chunk.event == "updates":
                updates.extend(chunk.data.keys())
        assert updates == ["route", "retrieve", "check_evidence", "answer"]
        state = client.threads.get_state(thread["thread_id"])["values"]
        assert state["citations"], state
        assert "Ada Lovelace" in {c["title"] for c in state["citations"]}
        assert "london" in state["answer"].lower(), state["answer"]
    finally:
        store.delete_collection()
