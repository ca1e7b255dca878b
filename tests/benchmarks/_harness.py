"""Running peers: one fresh subprocess per run, measured from inside and from outside.

A peer is a function ``fn(params, section) -> dict`` in a scenario module. It sets up
(imports, clients, buffers) outside the timed section and does the work inside
``with section:``. Its process is started anew for each run so imports and allocations
never leak between peers, and peak RSS is the peer's own.

Measured per run:
- ``wall``: seconds of the timed section (the worker's clock);
- ``cpu``: user + system seconds of the section, the worker's threads and the children
  it waited for (curl, DataLoader workers);
- ``peak_rss_mib``: the process's peak resident set (``wait4``), over its whole life;
- ``tree_rss_mib``: the peak of the summed RSS of the process and its descendants
  (sampled every 20 ms from the parent: DataLoader workers included);
- ``section_base_mib`` / ``section_peak_mib``: RSS when the section began and the peak
  during it (the kernel's high-water mark is reset at the start of the section);
- whatever the peer returns (bytes, items, latencies...).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_MARK = "@@bench-result@@ "


class Section:
    """The timed part of a run: wall clock, CPU and memory high-water mark."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.base_mib = self.peak_mib = 0.0
        self._t0 = self._c0 = 0.0
        self.entered = False

    def __enter__(self) -> Section:
        self.entered = True
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.base_mib = _status_mib("VmRSS")
        self._c0 = _cpu()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = _cpu() - self._c0
        self.peak_mib = _status_mib("VmHWM")


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _status_mib(field: str) -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker_main(target: str, params_file: str) -> None:
    """In the subprocess: run ``module:function`` and print its result as one JSON line."""
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    params = json.loads(Path(params_file).read_text())
    section = Section()
    out = fn(params, section) or {}
    if not section.entered:
        raise RuntimeError(f"{target} never entered its timed section")
    out.update(wall=section.wall, cpu=section.cpu, section_base_mib=section.base_mib,
               section_peak_mib=section.peak_mib)
    sys.stdout.flush()
    print(_MARK + json.dumps(out), flush=True)


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
    return out


def _tree_rss_mib(pid: int) -> float:
    total = 0
    for p in _descendants(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1])
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeerError(RuntimeError):
    """A peer's run failed; the message holds the end of its stderr."""


def run_peer(target: str, params: dict[str, Any], *, timeout: float = 600,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one peer in a fresh interpreter and return its measurements."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="bench-", delete=False) as f:
        json.dump(params, f)  # a file: long URL lists exceed what one argv string may hold
    try:
        return _run(target, f.name, timeout, env)
    finally:
        os.unlink(f.name)


def _run(target: str, params_file: str, timeout: float, env: dict[str, str] | None
         ) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tests.benchmarks._worker", target, params_file]
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    peak_tree = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not stop.wait(0.02):
            peak_tree = max(peak_tree, _tree_rss_mib(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out_chunks: list[str] = []
    err_chunks: list[str] = []
    readers = [threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
               threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)]  # type: ignore[union-attr]
    for r in readers:
        r.start()
    deadline = time.monotonic() + timeout
    usage = None
    status = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    sampler.join()
    for r in readers:
        r.join(timeout=10)
    out, err = "".join(out_chunks), "".join(err_chunks)
    result = None
    for line in out.splitlines():
        if line.startswith(_MARK):
            result = json.loads(line[len(_MARK):])
    if result is not None and proc.returncode != 0:
        # it finished and reported, then died on the way out (seen: a Rust runtime's abort
        # at interpreter exit): keep the figures, say so in the report
        result["exit_code"] = proc.returncode
    elif proc.returncode != 0 or result is None:
        tail = "\n".join(err.strip().splitlines()[-12:])
        why = "timed out" if time.monotonic() > deadline else f"exit {proc.returncode}"
        raise PeerError(f"{target} failed ({why}):\n{tail}")
    assert usage is not None
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    result["tree_rss_mib"] = peak_tree
    return result
