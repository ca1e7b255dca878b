"""``python -m tests.benchmarks._worker module:function params.json``: one measured run."""

from __future__ import annotations

import sys

from tests.benchmarks._harness import worker_main

if __name__ == "__main__":
    worker_main(sys.argv[1], sys.argv[2])
