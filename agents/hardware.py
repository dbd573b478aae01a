"""What this machine's CPU offers the local models: native bfloat16 and the cores to use.

Both the embedder (`ragtune.tools.embeddings`) and the local chat model
(`ragtune.agents.causal_lm`, `ragtune.agents.llama_cpp_model`) choose their number format and
thread count from here, so the two never disagree about the hardware.
"""

from __future__ import annotations

import os


def cpu_has_native_bfloat16() -> bool:
    """Return whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16, Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
