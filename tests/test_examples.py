"""The examples run as scripts, with no arguments, and say what they did."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "map_dataset.py": ["MapDataset: 64 objects", "DynamicBatchSampler:", "S3MapDataset"],
    "iterable_dataset.py": ["epoch 0: 200 objects, each once (True)",
                            "epoch 1: 200 objects, each once (True)", "AISIterDataset"],
    "shards.py": ["ShardReader: 400 samples", "keys ['cls', 'jpg', 'txt']", "MultiShardStream"],
    "quickstart.py": ["trained on 2048 samples from 8 shards with 2 workers",
                      "weights identical: True", "done: objects are under"],
    "dcp_checkpoint.py": ["dcp.load: model restored (True)", "Checkpoint: torch.save/torch.load through",
                          "loaded by torch's FileSystemReader (True)"],
}


def test_every_example_is_run() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path: Path) -> None:
    script = EXAMPLES / name
    args = [str(tmp_path)] if name == "quickstart.py" else []
    env = {**os.environ, "PYTHONWARNINGS": "error::ResourceWarning"}
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    for line in EXPECTED[name]:
        assert line in done.stdout, done.stdout
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr
