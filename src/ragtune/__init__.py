"""ragtune: hybrid RAG + fine-tuned specialist agents on LangGraph.

Importing `ragtune` is cheap: heavy dependencies (torch, transformers, the database driver) load
only inside the functions that need them.
"""

from ragtune.errors import RagtuneError

__all__ = ["RagtuneError", "__version__"]
__version__ = "0.1.0"
