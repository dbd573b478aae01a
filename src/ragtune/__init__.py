"""ragtune: hybrid RAG + fine-tuned specialist agents on LangGraph.

Importing `ragtune` is cheap: heavy dependencies (torch, transformers, the database driver) load
only inside the functions that need them.
"""

from typing import Any

from ragtune.errors import RagtuneError

__all__ = ["Agent", "Answer", "RagtuneError", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `Agent` pulls in LangGraph; load it on first use so `import ragtune` stays fast.
    if name in ("Agent", "Answer"):
        from ragtune import agent

        return getattr(agent, name)
    raise AttributeError(f"module 'ragtune' has no attribute {name!r}")
