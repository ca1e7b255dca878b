"""What scenarios 9 and 10 share to run on their own (``python -m tests.benchmarks.s9_cache``).

They keep run.py's rules (a fresh interpreter per run through ``_harness.run_peer``, peers
alternating, medians over rounds, ratios per round) without its servers or report: each
starts what it needs, prints a Markdown table and writes ``<out>/<name>.json`` with every
run's figures and the machine's load average at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._common import CREDENTIALS_ENV
from ._harness import ROOT, PeerError, run_peer

Runs = dict[str, list[dict[str, Any]]]


def arguments(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    parser.add_argument("--rounds", type=int, default=0, help="runs per peer (default: by mode)")
    parser.add_argument("--only", default="", help="run peers whose label contains this")
    parser.add_argument("--ttfb", type=float, default=0.02, help="slow link: seconds per request")
    parser.add_argument("--rate", type=float, default=100e6,
                        help="slow link: bytes/s per connection")
    parser.add_argument("--data", default="", help="data folder (kept between runs)")
    parser.add_argument("--out", default="", help="where the JSON goes (default: "
                                                  "docs/benchmarks/loading/)")
    return parser


def data_folder(args: argparse.Namespace) -> Path:
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    path = Path(args.data or tmp / "aisio-bench-loading").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def out_folder(args: argparse.Namespace) -> Path:
    return Path(args.out or ROOT / "docs" / "benchmarks" / "loading")


def order(names: list[str], rnd: int) -> list[str]:
    """Rotated by the round, reversed every other round (as run.py orders its peers)."""
    if not names:
        return names
    k = rnd % len(names)
    rotated = names[k:] + names[:k]
    return rotated[::-1] if rnd % 2 else rotated


def run_rounds(module: str, peers: dict[str, str], params: dict[str, Any], rounds: int,
               brief: Callable[[dict[str, Any]], str], *, fixed: bool = False,
               timeout: float = 900) -> tuple[Runs, dict[str, str]]:
    """Every peer once per round in a fresh interpreter; ``fixed``: in the given order."""
    runs: Runs = {label: [] for label in peers}
    errors: dict[str, str] = {}
    for rnd in range(rounds):
        for label in list(peers) if fixed else order(list(peers), rnd):
            if label in errors:
                continue
            try:
                r = run_peer(f"tests.benchmarks.{module}:{peers[label]}", params,
                             env=CREDENTIALS_ENV, timeout=timeout)
            except PeerError as exc:
                errors[label] = str(exc)
                print(f"   {label}: FAILED\n{exc}", flush=True)
                continue
            r["round"] = rnd
            runs[label].append(r)
            print(f"   round {rnd + 1}/{rounds}  {label:<46} {brief(r)}", flush=True)
    return runs, errors


def median(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def med(runs: Sequence[dict[str, Any]], key: str) -> float:
    """The median of a figure every run has."""
    return float(statistics.median(r[key] for r in runs))


def ratio(runs_a: Sequence[dict[str, Any]], key_a: str, runs_b: Sequence[dict[str, Any]],
          key_b: str) -> float | None:
    """Median over rounds of a[key_a] / b[key_b], pairing the runs of one round."""
    by_round = {r["round"]: r for r in runs_b}
    values = [a[key_a] / by_round[a["round"]][key_b] for a in runs_a
              if a["round"] in by_round and a.get(key_a) and by_round[a["round"]].get(key_b)]
    return statistics.median(values) if values else None


def cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def commit() -> str:
    """The checkout's commit (with ``+dirty`` when aisio/ has changes not committed)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", "aisio").strip() else "")


def machine(load_start: tuple[float, float, float], commit_start: str = "") -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("aisio", "torch", "torchdata", "webdataset", "litdata", "uvloop"):
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions,
            "load_average_start": list(load_start), "load_average_end": list(os.getloadavg()),
            "commit_start": commit_start, "commit_end": commit()}


def write(out: Path, name: str, results: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class Clock:
    """Seconds since it was made, for the run's own length."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0


def write_manifest(endpoint: str, prefix: str, out: Path) -> float:
    """``aisio manifest PREFIX OUT`` against ``endpoint`` (the CLI, as a user runs it);
    returns its seconds."""
    import subprocess
    import sys

    env = {**os.environ, **CREDENTIALS_ENV, "AWS_S3_FORCE_PATH_STYLE": "true",
           "PYTHONPATH": str(ROOT)}
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "aisio", "--endpoint-url", endpoint, "manifest",
                    prefix, str(out)], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0
