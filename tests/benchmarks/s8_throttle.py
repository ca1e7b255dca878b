"""Scenario 8: throttling at scale: 8 client processes against one rate-limited prefix.

The S3 stub (``_s3stub``) allows each key prefix ``rate`` requests per second (200 here:
what 2 shared cores can serve while 8 clients run beside it; S3 allows about 5,500 GETs
per second per prefix) from a token bucket of ``rate / 10``, and answers ``503 SlowDown``
beyond. Eight processes of one client kind start together and read 16 KiB objects under
the one prefix, 16 requests in flight each, for ``seconds``; each process reads keys
under a folder of its own (``throttled/c<N>/...``) so the stub can count per client.

Measured from the stub's counts over exactly the window (100 ms bins, one clock):

- **goodput**: requests answered 200 per second, all clients together, against the
  allowed rate (the target: at least 90%);
- **throttled share**: 503s among all answers (each is wasted work for both sides);
- **spread**: each client's goodput against its fair share (rate / 8); the target is no
  client below half of it. Also the same over the window's second half (after the
  clients had time to settle), and reads that failed for good (the client gave up).

Clients, each with its defaults for retries: aisio ``AsyncClient`` (16 tasks; pacing per
bucket, throttled reads retried within ``throttle_timeout``), boto3 with
``retries={"mode": "standard"}`` and with ``"adaptive"`` (16 threads, one client each
process: adaptive's rate limiter is per client), s3torchconnector's ``S3Client`` (16
threads). Credentials come from the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ._common import BUCKET, REGION
from ._harness import ROOT, Section
from ._s3stub import control

Params = dict[str, Any]
CLIENTS = 8
IN_FLIGHT = 16
PREFIX = "throttled"


def _key(client: int, n: int) -> str:
    return f"{PREFIX}/c{client}/{n:07d}.bin"


def _fleet(kind: str, p: Params, section: Section) -> dict[str, Any]:
    """Start the 8 clients, let them go at once, gather the stub's counts of the window."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.benchmarks.s8_throttle", kind, str(i), p["endpoint"],
         str(p["seconds"]), str(p["size"])],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(CLIENTS)]
    try:
        for proc in procs:  # each says "ready" once imported, its client made and warmed
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a {kind} client did not start: {proc.stderr.read()[-800:]}")  # type: ignore[union-attr]
        control(p["endpoint"], "/_reset")
        cpu0 = control(p["endpoint"], "/_stats")["cpu"]
        start = time.monotonic() + 0.3
        with section:
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(f"{start}\n")
                proc.stdin.flush()
            reports = []
            for proc in procs:
                out, err = proc.communicate(timeout=p["seconds"] + 120)
                lines = [ln for ln in out.splitlines() if ln.startswith("{")]
                if not lines:
                    raise RuntimeError(f"a {kind} client reported nothing: {err[-800:]}")
                reports.append(json.loads(lines[-1]))
        stats = control(p["endpoint"], "/_stats")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stats["cpu"] -= cpu0
    return summarize(stats, start, p, reports)


def summarize(stats: dict[str, Any], start: float, p: Params, reports: list[dict[str, Any]]
              ) -> dict[str, Any]:
    """Goodput, throttled share and per-client spread over the window (and its second half)."""
    bin_s, seconds, rate = stats["bin_s"], p["seconds"], p["rate"]
    first, last = round(start / bin_s), round((start + seconds) / bin_s)
    half = round((start + seconds / 2) / bin_s)
    ok = {f"c{i}": 0 for i in range(CLIENTS)}
    ok2 = dict(ok)
    throttled = throttled2 = 0
    for prefix, client, outcome, bins in stats["counts"]:
        if prefix != PREFIX:
            continue
        for b, n in bins:
            if not first <= b < last:
                continue
            if outcome == "ok":
                ok[client] = ok.get(client, 0) + n
                if b >= half:
                    ok2[client] = ok2.get(client, 0) + n
            else:
                throttled += n
                if b >= half:
                    throttled2 += n
    fair = rate / CLIENTS
    per_client = [ok[c] / seconds for c in sorted(ok)]
    per_client2 = [ok2[c] / (seconds / 2) for c in sorted(ok2)]
    total = sum(ok.values())
    total2 = sum(ok2.values())
    failed = sum(r["failed"] for r in reports)
    read = sum(r["ok"] for r in reports)
    return {
        "goodput": total / seconds, "allowed": rate,
        "goodput_share": total / seconds / rate,
        "throttled_share": throttled / max(1, throttled + total),
        "throttled_per_s": throttled / seconds,
        "min_share": min(per_client) / fair, "max_share": max(per_client) / fair,
        "goodput_share_2nd_half": total2 / (seconds / 2) / rate,
        "min_share_2nd_half": min(per_client2) / fair,
        "throttled_share_2nd_half": throttled2 / max(1, throttled2 + total2),
        "per_client": per_client,
        "failed_reads": failed,
        "client_reads": read,
        "failed_share": failed / max(1, failed + read),
        "errors": sorted({e for r in reports for e in r["errors"]})[:5],
        "stub_cpu": stats["cpu"],  # the stub's CPU seconds over the run
        "bytes": total * p["size"],
    }


def aisio_fleet(p: Params, section: Section) -> dict[str, Any]:
    return _fleet("aisio", p, section)


def boto3_standard_fleet(p: Params, section: Section) -> dict[str, Any]:
    return _fleet("boto3-standard", p, section)


def boto3_adaptive_fleet(p: Params, section: Section) -> dict[str, Any]:
    return _fleet("boto3-adaptive", p, section)


def s3torch_fleet(p: Params, section: Section) -> dict[str, Any]:
    return _fleet("s3torchconnector", p, section)


PEERS: dict[str, tuple[str, str]] = {
    "aisio AsyncClient": ("aisio_fleet", "aisio"),
    "boto3 (standard retries)": ("boto3_standard_fleet", "peer"),
    "boto3 (adaptive retries)": ("boto3_adaptive_fleet", "peer"),
    "s3torchconnector S3Client": ("s3torch_fleet", "peer"),
}

QUICK = list(PEERS)


# --- one client process ---------------------------------------------------------------------


class _Tally:
    def __init__(self) -> None:
        self.ok = self.failed = 0
        self.errors: set[str] = set()
        self.lock = threading.Lock()

    def failure(self, exc: BaseException) -> None:
        with self.lock:
            self.failed += 1
            self.errors.add(f"{type(exc).__name__}: {str(exc)[:120]}")

    def report(self) -> str:
        return json.dumps({"ok": self.ok, "failed": self.failed, "errors": sorted(self.errors)})


def _wait_for_start() -> tuple[float, float]:
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    time.sleep(max(0.0, start - time.monotonic()))
    return start, time.monotonic()


def _run_aisio(me: int, endpoint: str, seconds: float, size: int) -> str:
    import asyncio

    import aisio

    tally = _Tally()
    config = aisio.ClientConfig(s3=aisio.S3Options(region=REGION, endpoint_url=endpoint,
                                                   force_path_style=True))

    async def main() -> None:
        async with aisio.AsyncClient(config) as client:
            await client.head(f"s3://{BUCKET}/warm/c{me}/x")  # connection, credentials
            start, _ = await asyncio.to_thread(_wait_for_start)
            end = start + seconds
            counter = iter(range(10**9))

            async def worker() -> None:
                while time.monotonic() < end:
                    try:
                        data = await client.get(f"s3://{BUCKET}/{_key(me, next(counter))}")
                    except Exception as exc:
                        tally.failure(exc)
                        continue
                    if time.monotonic() < end and len(data) == size:
                        tally.ok += 1

            tasks = [asyncio.ensure_future(worker()) for _ in range(IN_FLIGHT)]
            await asyncio.wait(tasks, timeout=max(0.0, end - time.monotonic()) + 0.5)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    return tally.report()


def _threads(read: Callable[[str], bytes], me: int, seconds: float, size: int) -> str:
    tally = _Tally()
    counter = iter(range(10**9))
    counter_lock = threading.Lock()
    start, _ = _wait_for_start()
    end = start + seconds

    def worker() -> None:
        while time.monotonic() < end:
            with counter_lock:
                n = next(counter)
            try:
                data = read(_key(me, n))
            except Exception as exc:
                if time.monotonic() < end:
                    tally.failure(exc)
                continue
            if time.monotonic() < end and len(data) == size:
                with tally.lock:
                    tally.ok += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(IN_FLIGHT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, end - time.monotonic()) + 0.5)
    return tally.report()  # threads still retrying are abandoned (daemons)


def _run_boto3(mode: str, me: int, endpoint: str, seconds: float, size: int) -> str:
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}, retries={"mode": mode},
                    max_pool_connections=IN_FLIGHT)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, config=config)
    s3.head_object(Bucket=BUCKET, Key=f"warm/c{me}/x")
    return _threads(lambda key: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(),
                    me, seconds, size)


def _run_s3torch(me: int, endpoint: str, seconds: float, size: int) -> str:
    from s3torchconnector import S3ClientConfig
    from s3torchconnector._s3client import S3Client

    client = S3Client(REGION, endpoint=endpoint,
                      s3client_config=S3ClientConfig(force_path_style=True))
    client.head_object(BUCKET, f"warm/c{me}/x")
    return _threads(lambda key: client.get_object(BUCKET, key).read(), me, seconds, size)


def client_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one throttled client process")
    parser.add_argument("kind")
    parser.add_argument("me", type=int)
    parser.add_argument("endpoint")
    parser.add_argument("seconds", type=float)
    parser.add_argument("size", type=int)
    a = parser.parse_args(argv)
    if a.kind == "aisio":
        out = _run_aisio(a.me, a.endpoint, a.seconds, a.size)
    elif a.kind.startswith("boto3-"):
        out = _run_boto3(a.kind.split("-", 1)[1], a.me, a.endpoint, a.seconds, a.size)
    elif a.kind == "s3torchconnector":
        out = _run_s3torch(a.me, a.endpoint, a.seconds, a.size)
    else:
        raise SystemExit(f"unknown client kind {a.kind}")
    print(out, flush=True)
    os._exit(0)  # threads still waiting out a retry must not hold the exit


if __name__ == "__main__":
    client_main()
