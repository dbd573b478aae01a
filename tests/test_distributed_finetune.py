"""`ragtune finetune` unchanged under `accelerate launch`: two data-parallel processes on the CPU.

Uses: the real `accelerate launch` (two processes, gloo backend), the real peft + Trainer path on
the tiny random model of `tests.tiny_lm`, the toy HotpotQA training file and the real MiniLM
embedder (the domain centroid). On a machine without GPUs `--multi_gpu` takes the same torchrun
launcher it uses with GPUs, and the processes train on the CPU; with GPUs, one process per GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ragtune.agents.adapters import AdapterRegistry
from tests.conftest import TOY_DATA
from tests.tiny_lm import build_tiny_lm


def test_two_processes_train_one_adapter_and_report_once(tmp_path: Path) -> None:
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("accelerate's launcher is not installed in this environment")
    base = build_tiny_lm(tmp_path / "tiny-lm")
    home = tmp_path / "home"
    env = {**os.environ, "RAGTUNE_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "ACCELERATE_DISABLE_RICH": "1"}
    command = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "0", "-m", "ragtune.cli", "finetune", "--task", "reader",
               "--data", str(TOY_DATA / "train" / "hotpotqa_train.json"), "--name", "ddp-reader",
               "--base", str(base), "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1",
               "--max-examples", "16", "--max-length", "1024", "--no-progress", "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # One summary on stdout (the main process's), for one registered version.
    summary = json.loads(done.stdout)
    assert summary["adapter"] == "ddp-reader@1"
    assert summary["metrics"]["processes"] == 2 and summary["metrics"]["steps"] == 2
    registry = AdapterRegistry(home / "adapters", shipped_root=None)
    versions = registry.versions("ddp-reader")
    assert [v.version for v in versions] == [1]
    registry.verify(versions[0], base_sha256=versions[0].manifest["base"]["sha256"])
    assert not (home / "runs" / "ddp-reader").exists()
