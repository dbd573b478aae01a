"""Shared fixtures: one real embedded Postgres + pgvector for the session, isolated user state.

The session starts its own embedded server in a temporary ragtune home (through the project's own
`Database.open`), so tests never touch a user's data. Set `RAGTUNE_TEST_DATABASE_URL` to run them
against an external PostgreSQL with pgvector instead. Each test that writes gets a uuid-named
collection that is dropped afterwards.

Data: `toy_data` is the small invented HotpotQA/MuSiQue-shaped folder that ships with the tests
(`tests/data`, laid out like the shared one), so most tests run on a fresh clone. Tests that check
the real shared files ask for `shared_data`, which skips them with one line when it is absent.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ragtune.agents.routing.decision import RouteDecision

REPO_ROOT = Path(__file__).resolve().parents[1]
TOY_DATA = REPO_ROOT / "tests" / "data"
"""Invented toy records in the shared data folder's layout (hotpotqa/, musique/, train/)."""
SHARED_DATA_REASON = "needs ../shared/data (HotpotQA/MuSiQue); absent here"


def shared_data_dir() -> Path:
    """Return the shared data folder (`RAGTUNE_DATA_DIR`, else `../shared/data`)."""
    env = os.environ.get("RAGTUNE_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def has_shared_data() -> bool:
    """Whether the shared data folder is there (its HotpotQA tune split, at least)."""
    return (shared_data_dir() / "hotpotqa" / "dev_tune.json").is_file()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real shared data folder; skips the test (one line) when it is absent."""
    if not has_shared_data():
        pytest.skip(SHARED_DATA_REASON)
    return shared_data_dir()


@pytest.fixture(scope="session")
def toy_data() -> Path:
    """The toy data folder that ships with the tests."""
    return TOY_DATA


@pytest.fixture(scope="session")
def ragtune_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private ragtune home for the whole session."""
    return tmp_path_factory.mktemp("ragtune-home")


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(ragtune_home: Path) -> Iterator[None]:
    """Point ragtune at the session home; never at the user's database or data."""
    saved = {k: os.environ.get(k) for k in ("RAGTUNE_HOME", "RAGTUNE_DATABASE_URL")}
    os.environ["RAGTUNE_HOME"] = str(ragtune_home)
    test_url = os.environ.get("RAGTUNE_TEST_DATABASE_URL")
    if test_url:
        os.environ["RAGTUNE_DATABASE_URL"] = test_url
    else:
        os.environ.pop("RAGTUNE_DATABASE_URL", None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def database(_isolated_environment: None):  # type: ignore[no-untyped-def]
    """The session's real database (embedded unless RAGTUNE_TEST_DATABASE_URL is set)."""
    from ragtune.tools.database import Database

    db = Database.open()
    yield db
    db.close()


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    """The real default embedding model (all-MiniLM-L6-v2, bundled)."""
    from ragtune.tools.embeddings import load_embeddings

    return load_embeddings()


@pytest.fixture
def collection_name() -> str:
    """A fresh collection name for one test."""
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fake_store(database, collection_name):  # type: ignore[no-untyped-def]
    """A store on the real database with langchain-core's deterministic fake embeddings."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from ragtune.tools.store import KnowledgeStore

    store = KnowledgeStore(database, DeterministicFakeEmbedding(size=32), collection_name)
    yield store
    store.delete_collection()


@pytest.fixture
def real_store(database, embedder, collection_name):  # type: ignore[no-untyped-def]
    """A store on the real database with the real embedding model."""
    from ragtune.tools.store import KnowledgeStore

    store = KnowledgeStore(database, embedder, collection_name)
    yield store
    store.delete_collection()


@pytest.fixture
def cli_env(ragtune_home: Path) -> dict[str, str]:
    """Environment for running the `ragtune` CLI in a subprocess against the session database."""
    env = dict(os.environ)
    env["RAGTUNE_HOME"] = str(ragtune_home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ragtune_cmd(*args: str) -> list[str]:
    """Return the argv that runs the CLI with this interpreter."""
    return [sys.executable, "-m", "ragtune.cli", *args]


def scripted_decision(action: str) -> RouteDecision:
    """The decision a scripted test router returns: `action`, by policy "scripted"."""
    from ragtune.agents.routing.decision import RouteDecision

    return RouteDecision(action, policy="scripted", reason="test script")
