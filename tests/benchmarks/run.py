"""aisio against the tools users would pick instead: one run, one machine, peers alternating.

    python -m tests.benchmarks.run --quick          # a few minutes: small sizes, main peers
    python -m tests.benchmarks.run --full           # the sizes of the issue (long)
    python -m tests.benchmarks.run --quick --scenarios 1,5 --rounds 5 --only aisio
    python -m tests.benchmarks.run --quick --scenarios 1f,2f,6,7,8 --merge   # add to results

Servers are started and stopped here, on loopback: nginx serving a data folder (the fast
server), the slow link in front of it (``_slowlink``: time to first byte per request and
a bandwidth cap per connection), for the aistore SDK ``local_ais()`` behind slow links
of its own, and the S3 stub (``_s3stub``) that takes uploads (scenario 7) or throttles
each prefix to a request rate (scenario 8). Each peer runs in a fresh subprocess per
run; each round runs every peer once, in an order rotated (and reversed every other
round) from the last, and the figures are medians over rounds. Ratios are medians of
the per-round ratios, which cancels some of the drift of a shared machine.

Writes ``results.json``, ``results.md`` and ``chart.png`` into ``--out`` (default
docs/benchmarks for --full, docs/benchmarks/quick for --quick). Timings are printed
and written, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import _report
from ._common import (
    BUCKET,
    CREDENTIALS_ENV,
    MiB,
    write_file,
    write_shards,
    write_small_objects,
)
from ._harness import ROOT, PeerError, run_peer
from ._nginx import find_nginx, serve
from ._s3stub import S3Stub
from ._slowlink import SlowLink

GiB = 2**30


@dataclass(frozen=True)
class Sizes:
    rounds: int
    object_size: int  # scenario 1
    checkpoint_size: int  # scenario 2
    small_count: int  # scenario 3
    small_size: int
    shard_count: int  # scenario 4
    shard_size: int
    sample_size: int
    service_object: int  # scenario 5: the object the ranges come from
    service_count: int
    service_range: int
    save_size: int  # scenario 7: the state dict saved
    throttle_seconds: float  # scenario 8: the window the 8 clients read for
    throttle_rate: float = 200.0  # scenario 8: requests per second the prefix allows
    throttle_object: int = 16 * 1024


MODES = {
    "quick": Sizes(rounds=2, object_size=256 * MiB, checkpoint_size=256 * MiB, small_count=200,
                   small_size=100_000, shard_count=8, shard_size=16 * MiB, sample_size=100_000,
                   service_object=256 * MiB, service_count=1000, service_range=MiB,
                   save_size=256 * MiB, throttle_seconds=15.0),
    "full": Sizes(rounds=3, object_size=GiB, checkpoint_size=GiB, small_count=10_000,
                  small_size=100_000, shard_count=64, shard_size=16 * MiB, sample_size=100_000,
                  service_object=GiB, service_count=1000, service_range=MiB,
                  save_size=GiB, throttle_seconds=60.0),
}


@dataclass
class Context:
    """What a scenario needs: sizes, the data folder and the servers' URLs."""

    mode: str
    sizes: Sizes
    data: Path
    fast: str = ""
    slow: str = ""
    ais: str = ""  # local_ais gateway behind the slow link
    sink: str = ""  # the S3 stub taking uploads (scenario 7)
    throttled: str = ""  # the S3 stub limiting each prefix's request rate (scenario 8)
    notes: list[str] = field(default_factory=list)


@dataclass
class Scenario:
    key: str
    title: str
    module: str
    unit: str  # "GB/s", "items/s", "req/s" (goodput) or "s" (seconds: lower is better)
    params: Callable[[Context], dict[str, Any]]
    describe: Callable[[Context], str]
    pending: Callable[[], str | None] = lambda: None  # why aisio's side cannot run yet
    rounds: Callable[[Sizes], int] = lambda s: s.rounds
    # extra table columns: (result key, header, format, scale)
    columns: tuple[tuple[str, str, str, float], ...] = ()


# --- data ------------------------------------------------------------------------------------------


def _object_key(size: int) -> str:
    return f"object-{size >> 20}m.bin"


def prepare_data(ctx: Context, which: set[str]) -> None:
    s, bench = ctx.sizes, ctx.data / BUCKET
    t0 = time.monotonic()
    if which & {"1", "1f", "5"}:
        for size in {s.object_size, s.service_object} if "5" in which else {s.object_size}:
            write_file(bench / _object_key(size), size)
    if which & {"3", "6"}:
        write_small_objects(bench / "small", s.small_count, s.small_size)
    if which & {"4"}:
        write_shards(bench / _shard_folder(s), s.shard_count, s.shard_size, s.sample_size)
    if which & {"2", "2f"}:
        folder = bench / f"ckpt-{s.checkpoint_size >> 20}m"
        folder.mkdir(parents=True, exist_ok=True)
        info = run_peer("tests.benchmarks.s2_dcp:prepare",
                        {"folder": str(folder), "size": s.checkpoint_size}, timeout=1800)
        (folder / ".bench-info.json").write_text(json.dumps(info))
    warm_page_cache(bench)
    print(f"data ready in {ctx.data} and in the page cache ({time.monotonic() - t0:.0f} s)",
          flush=True)


def warm_page_cache(root: Path) -> None:
    """Read every data file once, so the servers answer from memory in the first round too.

    Left cold, the first peer to touch 10,000 small files waits for the disk (about 150
    reads per second here) and its round measures the disk, not the client.
    """
    buf = bytearray(8 << 20)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


def _shard_folder(s: Sizes) -> str:
    """One folder per shard set: the AIS peer lists it, so it must hold exactly these."""
    return f"shards-{s.shard_count}x{s.shard_size >> 20}m"


def _shard_facts(ctx: Context) -> dict[str, int]:
    """Samples and payload bytes in the shards (what every peer must deliver)."""
    import tarfile

    s = ctx.sizes
    folder = ctx.data / BUCKET / _shard_folder(s)
    samples = payload = shard_bytes = 0
    for i in range(s.shard_count):
        path = folder / f"shard-{i:06d}.tar"
        shard_bytes = max(shard_bytes, path.stat().st_size)
        with tarfile.open(path) as tar:
            members = [m for m in tar if m.isfile()]
        samples += len({m.name.split(".")[0] for m in members})
        payload += sum(m.size for m in members)
    return {"samples": samples, "payload": payload, "shard_bytes": shard_bytes}


# --- scenarios -------------------------------------------------------------------------------------


def _dcp_pending() -> str | None:
    if importlib.util.find_spec("aisio.torch.dcp") is None:
        return "aisio.torch.dcp (StorageReader) is not written yet"
    return None


def _checkpoint_params(c: Context) -> dict[str, Any]:
    name = f"ckpt-{c.sizes.checkpoint_size >> 20}m"
    return {"endpoint": c.fast, "prefix": name, "local_path": str(c.data / BUCKET / name),
            **json.loads((c.data / BUCKET / name / ".bench-info.json").read_text())}


SCENARIOS = {
    "1": Scenario(
        "1", "One large object into a preallocated buffer (fast server)", "s1_object", "GB/s",
        lambda c: {"endpoint": c.fast, "key": _object_key(c.sizes.object_size),
                   "size": c.sizes.object_size},
        lambda c: f"{c.sizes.object_size >> 20} MiB object from nginx on loopback into a "
                  "preallocated, pre-faulted buffer."),
    "2": Scenario(
        "2", "DCP restore of a checkpoint (fast server)", "s2_dcp", "GB/s", _checkpoint_params,
        lambda c: f"dcp.load of a {c.sizes.checkpoint_size >> 20} MiB checkpoint (128 float32 "
                  "tensors in 8 files) from nginx; FileSystemReader reads the same files from "
                  "local disk (page cache).",
        pending=_dcp_pending),
    "3": Scenario(
        "3", "Small objects through a DataLoader (slow link)", "s3_small", "items/s",
        lambda c: {"endpoint": c.slow, "prefix": "small/", "count": c.sizes.small_count,
                   "size": c.sizes.small_size},
        lambda c: f"{c.sizes.small_count:,} objects of {c.sizes.small_size // 1000} KB, "
                  "DataLoader(num_workers=2, batch_size=32), over the slow link."),
    "4": Scenario(
        "4", "Webdataset shards through a DataLoader (slow link)", "s4_shards", "items/s",
        lambda c: {"endpoint": c.slow, "ais_endpoint": c.ais,
                   "prefix": _shard_folder(c.sizes) + "/", "count": c.sizes.shard_count,
                   **_shard_facts(c)},
        lambda c: f"{c.sizes.shard_count} tar shards of {c.sizes.shard_size >> 20} MiB "
                  f"({c.sizes.sample_size // 1000} KB samples), DataLoader(num_workers=2, "
                  "batch_size=32), over the slow link (S3 peers: nginx; AIS peers: local_ais)."),
    "5": Scenario(
        "5", "Async service: concurrent range GETs (slow link)", "s5_service", "GB/s",
        lambda c: {"endpoint": c.slow, "key": _object_key(c.sizes.service_object),
                   "size": c.sizes.service_object, "count": c.sizes.service_count,
                   "range_size": c.sizes.service_range},
        lambda c: f"{c.sizes.service_count:,} concurrent range GETs of "
                  f"{c.sizes.service_range >> 20} MiB, all started at once, over the slow link."),
    "1f": Scenario(
        "1f", "One large object into a new tensor, fresh client (fast server)", "s1f_fresh",
        "GB/s",
        lambda c: {"endpoint": c.fast, "key": _object_key(c.sizes.object_size),
                   "size": c.sizes.object_size,
                   "local_path": str(c.data / BUCKET / _object_key(c.sizes.object_size))},
        lambda c: f"{c.sizes.object_size >> 20} MiB object from nginx; the timed section makes "
                  "the client (credentials from the environment, none in the config), "
                  "allocates torch.empty (pages untouched) and reads into it. Reference: the "
                  "same file from local disk (page cache)."),
    "2f": Scenario(
        "2f", "DCP restore into new tensors, fresh reader (fast server)", "s2f_fresh", "GB/s",
        _checkpoint_params,
        lambda c: f"dcp.load of scenario 2's {c.sizes.checkpoint_size >> 20} MiB checkpoint; "
                  "the timed section makes the reader (credentials from the environment), "
                  "allocates the state dict with torch.empty and loads it. FileSystemReader "
                  "reads the same files from local disk.",
        pending=_dcp_pending),
    "6": Scenario(
        "6", "Cold start: process start to first byte, DataLoader to first batch (fast server)",
        "s6_cold", "s",
        lambda c: {"endpoint": c.fast, "key": "small/000000.bin", "prefix": "small/",
                   "count": c.sizes.small_count, "size": c.sizes.small_size},
        lambda c: "first byte: a fresh `python -c` that imports the client, makes it "
                  "(credentials from the environment) and reads a 64 KiB range, timed from "
                  "spawn to the bytes; first batch: DataLoader(num_workers=4, batch_size=32) "
                  f"over {c.sizes.small_count} objects of {c.sizes.small_size // 1000} KB, "
                  "from making the dataset to the first batch (torch already imported).",
        columns=(("import_s", "import s", "{:.2f}", 1.0), ("client_s", "client s", "{:.3f}", 1.0),
                 ("get_s", "first GET s", "{:.3f}", 1.0),
                 ("first_batch_s", "DataLoader first batch s", "{:.2f}", 1.0))),
    "7": Scenario(
        "7", "Checkpoint save (S3 stub on loopback; local disk)", "s7_save", "GB/s",
        lambda c: {"endpoint": c.sink, "size": c.sizes.save_size,
                   "local_dir": str(c.data.parent / f"{c.data.name}-save")},
        lambda c: f"dcp.save of a {c.sizes.save_size >> 20} MiB state dict (128 float32 "
                  "tensors, thread_count=8): S3 writers to the S3 stub (bodies discarded), "
                  "torch's FileSystemWriter to local disk (page cache, sync_files=False; fsync "
                  "in full mode). async_save rows: stall is how long the caller waited.",
        pending=_dcp_pending,
        columns=(("stall_s", "stall s", "{:.2f}", 1.0), ("sink_cpu", "stub CPU s", "{:.2f}", 1.0))),
    "8": Scenario(
        "8", "Throttling at scale: 8 clients, one prefix limited to a request rate", "s8_throttle",
        "req/s",
        lambda c: {"endpoint": c.throttled, "seconds": c.sizes.throttle_seconds,
                   "rate": c.sizes.throttle_rate, "size": c.sizes.throttle_object},
        lambda c: f"8 processes x 16 requests in flight read {c.sizes.throttle_object >> 10} KiB "
                  f"objects under one prefix the stub allows {c.sizes.throttle_rate:.0f} "
                  f"requests/s (503 SlowDown beyond), for {c.sizes.throttle_seconds:.0f} s; "
                  "goodput and shares from the stub's counts over the window.",
        columns=(("goodput_share", "of allowed", "{:.0%}", 1.0),
                 ("throttled_share", "503 share", "{:.0%}", 1.0),
                 ("min_share", "min client / fair", "{:.2f}", 1.0),
                 ("max_share", "max client / fair", "{:.2f}", 1.0),
                 ("goodput_share_2nd_half", "2nd half: of allowed", "{:.0%}", 1.0),
                 ("min_share_2nd_half", "2nd half: min / fair", "{:.2f}", 1.0),
                 ("failed_share", "reads failed", "{:.1%}", 1.0),
                 ("stub_cpu", "stub CPU s", "{:.1f}", 1.0))),
}


# --- servers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def servers(ctx: Context, which: set[str], ttfb: float, rate: float) -> Iterator[dict[str, Any]]:
    """nginx, the slow link in front of it, local_ais behind slow links (scenario 4), and the
    S3 stub as an upload sink (scenario 7) and as a throttled store (scenario 8)."""
    stats: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        ctx.fast = stack.enter_context(serve(ctx.data, connections=4096))
        if "7" in which:
            sink = S3Stub()
            stack.callback(lambda: stats.__setitem__("sink", sink.stop()))
            ctx.sink = sink.url
        if "8" in which:
            s = ctx.sizes
            throttled = S3Stub(rate=s.throttle_rate, burst=s.throttle_rate / 10,
                               size=s.throttle_object)
            stack.callback(lambda: stats.__setitem__("throttled", throttled.stop()))
            ctx.throttled = throttled.url
        links: list[SlowLink] = []
        if which & {"3", "4", "5"}:
            link = SlowLink([ctx.fast], ttfb, rate)
            links.append(link)
            ctx.slow = link.urls[0]
        if "4" in which:
            ctx.ais = stack.enter_context(_slow_local_ais(ctx, ttfb, rate, links))

        def stop_links() -> None:
            for i, link in enumerate(links):
                stats[f"link{i}"] = link.stop()

        stack.callback(stop_links)
        yield stats


@contextlib.contextmanager
def _slow_local_ais(ctx: Context, ttfb: float, rate: float, links: list[SlowLink]
                    ) -> Iterator[str]:
    """local_ais() over the data folder, its gateway and targets each behind a slow link."""
    from aisio.testing import local_ais

    root = ctx.data.parent / f"{ctx.data.name}-ais"
    (root / "ais").mkdir(parents=True, exist_ok=True)
    bucket = root / "ais" / BUCKET
    if not bucket.exists():
        bucket.symlink_to(ctx.data / BUCKET, target_is_directory=True)
    with local_ais(targets=2, root=str(root)) as ais:
        cluster = ais._cluster
        nodes = [cluster.proxy, *cluster.targets]
        link = SlowLink([n.url for n in nodes], ttfb, rate)
        links.append(link)
        for node, url in zip(nodes[1:], link.urls[1:], strict=True):
            node.url = url  # the gateway redirects clients to the targets' slow links
        yield link.urls[0]


# --- running -----------------------------------------------------------------------------------------


def order(names: list[str], rnd: int) -> list[str]:
    """Rotate by the round number, reversed every other round: no peer always goes first."""
    k = rnd % len(names)
    rotated = names[k:] + names[:k]
    return rotated[::-1] if rnd % 2 else rotated


def run_scenario(sc: Scenario, ctx: Context, only: str, rounds: int, all_peers: bool
                 ) -> dict[str, Any]:
    module = importlib.import_module(f"tests.benchmarks.{sc.module}")
    peers: dict[str, tuple[str, str]] = module.PEERS
    if ctx.mode == "quick" and not all_peers:
        peers = {k: v for k, v in peers.items() if k in module.QUICK}
    pending = sc.pending()
    skipped = {}
    names = []
    for label, (_, kind) in peers.items():
        if only and only not in label and kind != "reference":
            continue
        if pending and kind == "aisio":
            skipped[label] = pending
            continue
        names.append(label)
    params = sc.params(ctx)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    errors: dict[str, str] = {}
    print(f"\n== scenario {sc.key}: {sc.title}\n   {sc.describe(ctx)}", flush=True)
    load_start = os.getloadavg()
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    for rnd in range(rounds):
        for label in order(names, rnd):
            if label in errors:
                continue
            fn = peers[label][0]
            try:
                r = run_peer(f"tests.benchmarks.{sc.module}:{fn}", params, env=CREDENTIALS_ENV,
                             timeout=1800)
            except PeerError as exc:
                errors[label] = str(exc)
                print(f"   {label}: FAILED\n{exc}", flush=True)
                continue
            r["round"] = rnd
            runs[label].append(r)
            print(f"   round {rnd + 1}/{rounds}  {label:<38} {_report.brief(sc.unit, r)}", flush=True)
    return {"key": sc.key, "title": sc.title, "description": sc.describe(ctx), "unit": sc.unit,
            "kinds": {n: peers[n][1] for n in peers}, "runs": runs, "errors": errors,
            "pending": skipped, "params": {k: v for k, v in params.items() if k != "sums"},
            "columns": [list(c) for c in sc.columns], "date": date, "mode": ctx.mode,
            "load_average": [load_start[0], os.getloadavg()[0]]}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_start": os.getloadavg(),
            "versions": _versions()}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("aisio", "torch", "boto3", "aiobotocore", "s3fs", "obstore", "s3torchconnector",
                 "aistore", "webdataset", "uvloop"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, of " + ",".join(SCENARIOS))
    parser.add_argument("--rounds", type=int, default=0, help="runs per peer (default: by mode)")
    parser.add_argument("--only", default="", help="run peers whose label contains this "
                                                   "(references always run)")
    parser.add_argument("--all-peers", action="store_true",
                        help="--quick runs a subset of the peers; this runs them all")
    parser.add_argument("--ttfb", type=float, default=0.02, help="slow link: seconds per request")
    parser.add_argument("--rate", type=float, default=100e6,
                        help="slow link: bytes/s per connection")
    parser.add_argument("--data", default="", help="data folder (kept between runs)")
    parser.add_argument("--out", default="", help="where results.json/.md and chart.png go")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other scenarios already in --out's results.json (each "
                             "keeps the date and load of its own run)")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render results.md and chart.png from --out's results.json")
    args = parser.parse_args(argv)
    mode_name = args.mode or "quick"
    sizes = MODES[mode_name]
    which = {w.strip() for w in args.scenarios.split(",") if w.strip()}
    unknown = which - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    if find_nginx() is None:
        print("nginx is not installed: apt-get install -y nginx", file=sys.stderr)
        return 2
    if not shutil.which("curl"):
        print("curl is not installed: scenario 1's curl reference is skipped", file=sys.stderr)
    data = Path(args.data or Path(os.environ.get("TMPDIR", "/tmp")) / "aisio-bench-data")
    out = Path(args.out or ROOT / "docs" / "benchmarks" / ("" if mode_name == "full" else "quick"))
    if args.report_only:
        return write_report(json.loads((out / "results.json").read_text()), out)
    ctx = Context(mode_name, sizes, data.resolve())
    ctx.data.mkdir(parents=True, exist_ok=True)
    prepare_data(ctx, which)
    started = time.monotonic()
    results: dict[str, Any] = {
        "mode": mode_name, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "sizes": asdict(sizes),
        "slow_link": {"ttfb_s": args.ttfb, "rate_bytes_per_s": args.rate}, "scenarios": {},
    }
    with servers(ctx, which, args.ttfb, args.rate) as link_stats:
        for key in sorted(which):
            sc = SCENARIOS[key]
            rounds = args.rounds or sc.rounds(sizes)
            results["scenarios"][key] = run_scenario(sc, ctx, args.only, rounds, args.all_peers)
    results["slow_link"]["proxy_stats"] = {k: v for k, v in link_stats.items()
                                           if k.startswith("link")}
    results["stub_stats"] = {k: v for k, v in link_stats.items() if not k.startswith("link")}
    results["machine"]["load_average_end"] = os.getloadavg()
    results["seconds"] = time.monotonic() - started
    if args.merge and (out / "results.json").exists():
        results = _merged(json.loads((out / "results.json").read_text()), results)
    return write_report(results, out)


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with the scenarios of ``old`` it did not run (each keeps its date and load)."""
    for key, sc in old["scenarios"].items():
        if key not in new["scenarios"]:
            sc.setdefault("date", old["date"])
            sc.setdefault("load_average", [old["machine"]["load_average_start"][0],
                                           old["machine"].get("load_average_end", [0.0])[0]])
            new["scenarios"][key] = sc
    new["merged_from"] = sorted({*old.get("merged_from", []), old["date"]})
    if "proxy_stats" not in new["slow_link"] or not new["slow_link"]["proxy_stats"]:
        new["slow_link"]["proxy_stats"] = old["slow_link"].get("proxy_stats", {})
    return new


def write_report(results: dict[str, Any], out: Path) -> int:
    """Medians, verdicts, then results.json, results.md and chart.png in ``out``."""
    _report.summarize(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    md = _report.markdown(results)
    (out / "results.md").write_text(md)
    chart = _report.chart(results, out / "chart.png")
    print("\n" + md)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}"
          + (f", {chart}" if chart else " (no chart: matplotlib is not installed)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
