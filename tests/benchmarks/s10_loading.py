"""Scenario 10: training-scale loading: resuming mid-epoch, shuffle buffers, 16-worker start-up.

    python -m tests.benchmarks.s10_loading --quick              # parts a, b and c
    python -m tests.benchmarks.s10_loading --quick --parts c --objects 20000 --workers 8

Three parts, each in fresh interpreters (``_harness.run_peer``), medians over rounds:

- **a. Resume** (``_folderstub`` behind ``_slowlink``): a ``StatefulDataLoader(num_workers=2,
  batch_size=32)`` over ``ShardReader`` of a prefix (``shuffle=True``). The *fresh* run
  times making the loader to its first batch, takes ``state_dict()`` half way through the
  epoch, then reads the rest (what a resumed run must yield). The *resumed* run, a new
  process, times ``load_state_dict`` to its first batch and reads the rest of the epoch;
  the stub counts what it fetched, per shard: shards whose every sample had been
  delivered must not be fetched again. The two run in that order (fixed) in each round;
  the pair runs without and with a shuffle buffer (``shuffle_buffer=1000``).
- **b. Shuffle buffer** (nginx on loopback, the fast server, so the buffer's own cost is not
  hidden behind a link): items/s of an epoch, time to the first batch and peak memory of
  the process tree, ``shuffle_buffer=10000`` against none: ``ShardReader`` (a buffer of
  samples in each worker) over small-sample shards, and ``IterableDataset`` (a buffer of
  positions in the epoch's order) over small objects of the stub.
- **c. Start-up of 16 workers over 100,000 small objects** (``_folderstub``'s synthetic
  objects, behind ``_slowlink``): from making ``IterableDataset`` to the first batch of
  ``DataLoader(num_workers=16, batch_size=32)``, ``from_manifest`` (written by ``aisio
  manifest``) against ``from_prefix`` (listed by the first worker, 1,000 keys a page).
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

from . import _standalone as sa
from ._common import BUCKET, MiB, aisio_config, write_shards
from ._folderstub import FolderStub, stats
from ._harness import Section
from ._nginx import serve
from ._slowlink import SlowLink

Params = dict[str, Any]
BATCH = 32
SIZES = {
    "quick": {"resume_shards": 16, "resume_shard_size": 4 * MiB, "resume_sample": 10_000,
              "buffer_shards": 32, "buffer_shard_size": 4 * MiB, "buffer_sample": 1000,
              "buffer_objects": 20_000, "objects": 100_000, "object_size": 1024,
              "workers": 16, "rounds": 2},
    "full": {"resume_shards": 64, "resume_shard_size": 16 * MiB, "resume_sample": 10_000,
             "buffer_shards": 64, "buffer_shard_size": 16 * MiB, "buffer_sample": 1000,
             "buffer_objects": 100_000, "objects": 100_000, "object_size": 1024,
             "workers": 16, "rounds": 3},
}


def _keys_and_bytes(batch: list[Any]) -> tuple[list[str], int]:
    """Collate: the batch's sample keys and payload bytes."""
    keys, total = [], 0
    for key, files in batch:
        keys.append(key)
        total += sum(len(v) for v in files.values() if isinstance(v, (bytes, bytearray)))
    return keys, total


def _count(batch: list[Any]) -> tuple[int, int]:
    total = 0
    for item in batch:
        data = item[1] if isinstance(item, tuple) else item
        files = data if isinstance(data, dict) else {"": data}
        total += sum(len(v) for v in files.values() if isinstance(v, (bytes, bytearray)))
    return len(batch), total


# --- a. resume -------------------------------------------------------------------------------------


def _resume_reader(p: Params, buffer: int) -> Any:
    from aisio.torch import ShardReader

    return ShardReader(f"s3://{BUCKET}/{p['resume_prefix']}", config=aisio_config(p["link"]),
                       shuffle=True, seed=0, shuffle_buffer=buffer)


def _loader(ds: Any, workers: int, collate: Any) -> Any:
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(ds, batch_size=BATCH, num_workers=workers, collate_fn=collate)


def _fresh(p: Params, section: Section, buffer: int) -> dict[str, Any]:
    stub = p["stub"]
    _reset(stub)
    with section:
        loader = _loader(_resume_reader(p, buffer), 2, _keys_and_bytes)
        it = iter(loader)
        first = next(it)
    before = list(first[0])
    half = p["resume_batches"] // 2
    for _ in range(half - 1):
        before += next(it)[0]
    state = loader.state_dict()
    after = [k for keys, _ in it for k in keys]
    served = stats(stub)
    files = _state_files(p, buffer)
    files[0].write_bytes(pickle.dumps(state))
    files[1].write_bytes(pickle.dumps({"before": before, "after": after}))
    if sorted(before + after) != p["resume_keys"]:
        raise RuntimeError(f"the fresh epoch delivered {len(before) + len(after)} samples, "
                           f"expected {len(p['resume_keys'])} (or not each once)")
    return {"first_batch_s": section.wall, "delivered_before_state": len(before),
            "samples": len(before) + len(after), "epoch_gets": served["gets"],
            "epoch_bytes": served["bytes"], "state_bytes": len(pickle.dumps(state))}


def _resumed(p: Params, section: Section, buffer: int) -> dict[str, Any]:
    stub = p["stub"]
    files = _state_files(p, buffer)
    state = pickle.loads(files[0].read_bytes())
    expected = pickle.loads(files[1].read_bytes())
    _reset(stub)
    with section:
        loader = _loader(_resume_reader(p, buffer), 2, _keys_and_bytes)
        loader.load_state_dict(state)
        it = iter(loader)
        first = next(it)
    got = list(first[0]) + [k for keys, _ in it for k in keys]
    served = stats(stub, keys=True)
    per_key = served["per_key"]
    delivered: dict[int, int] = {}
    for key in expected["before"]:
        shard = int(key[1:7])
        delivered[shard] = delivered.get(shard, 0) + 1
    done = refetched_done = 0
    partial_bytes = 0
    for shard, count in delivered.items():
        name = f"{p['resume_prefix']}shard-{shard:06d}.tar"
        fetched = per_key.get(name, {"gets": 0, "bytes": 0})
        if count == p["resume_per_shard"][shard]:
            done += 1
            refetched_done += fetched["gets"] > 0
        else:
            partial_bytes += fetched["bytes"]
    return {"first_batch_s": section.wall, "same_samples_same_order": got == expected["after"],
            "samples": len(got), "gets": served["gets"], "heads": served["heads"],
            "lists": served["lists"], "bytes": served["bytes"], "shards_done_at_state": done,
            "shards_done_refetched": refetched_done, "partial_shards_bytes": partial_bytes}


def _state_files(p: Params, buffer: int) -> tuple[Path, Path]:
    base = Path(p["state_dir"])
    return base / f"state-{buffer}.pickle", base / f"keys-{buffer}.pickle"


def _reset(url: str) -> None:
    from ._s3stub import control

    control(url, "/_reset")


def fresh(p: Params, section: Section) -> dict[str, Any]:
    return _fresh(p, section, 0)


def resumed(p: Params, section: Section) -> dict[str, Any]:
    return _resumed(p, section, 0)


def fresh_buffer(p: Params, section: Section) -> dict[str, Any]:
    return _fresh(p, section, 1000)


def resumed_buffer(p: Params, section: Section) -> dict[str, Any]:
    return _resumed(p, section, 1000)


RESUME = {
    "fresh start": "fresh",
    "resumed (load_state_dict)": "resumed",
    "fresh start, shuffle_buffer=1000": "fresh_buffer",
    "resumed, shuffle_buffer=1000": "resumed_buffer",
}


# --- b. shuffle buffer -------------------------------------------------------------------------


def _epoch(ds: Any, section: Section, workers: int, items: int, payload: int) -> dict[str, Any]:
    import torch.utils.data

    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=workers,
                                         collate_fn=_count)
    got = total = 0
    first = None
    with section:
        t0 = time.perf_counter()
        for n, size in loader:
            if first is None:
                first = time.perf_counter() - t0
            got += n
            total += size
    if got != items or total != payload:
        raise RuntimeError(f"{got} items / {total} bytes, expected {items} / {payload}")
    return {"items": got, "bytes": total, "first_batch_s": first}


def _buffer_shards(p: Params, section: Section, buffer: int) -> dict[str, Any]:
    from aisio.torch import ShardReader

    urls = [f"s3://{BUCKET}/{p['buffer_prefix']}shard-{i:06d}.tar"
            for i in range(p["buffer_shards"])]
    ds = ShardReader(urls, config=aisio_config(p["fast"]), shuffle=True, seed=0,
                     shuffle_buffer=buffer)
    return _epoch(ds, section, 2, p["buffer_samples"], p["buffer_payload"])


def _buffer_objects(p: Params, section: Section, buffer: int) -> dict[str, Any]:
    from aisio.torch import IterableDataset

    ds = IterableDataset.from_prefix(f"s3://{BUCKET}/{p['objects_prefix']}",
                                     config=aisio_config(p["stub"]), shuffle=True, seed=0,
                                     shuffle_buffer=buffer)
    n = p["buffer_objects"]
    return _epoch(ds, section, 2, n, n * p["object_size"])


def shards_no_buffer(p: Params, section: Section) -> dict[str, Any]:
    return _buffer_shards(p, section, 0)


def shards_buffer(p: Params, section: Section) -> dict[str, Any]:
    return _buffer_shards(p, section, 10_000)


def objects_no_buffer(p: Params, section: Section) -> dict[str, Any]:
    return _buffer_objects(p, section, 0)


def objects_buffer(p: Params, section: Section) -> dict[str, Any]:
    return _buffer_objects(p, section, 10_000)


BUFFER = {
    "ShardReader shuffle=True": "shards_no_buffer",
    "ShardReader shuffle=True, shuffle_buffer=10000": "shards_buffer",
    "IterableDataset shuffle=True": "objects_no_buffer",
    "IterableDataset shuffle=True, shuffle_buffer=10000": "objects_buffer",
}


# --- c. start-up over many objects ---------------------------------------------------------------


def _startup(p: Params, section: Section, manifest: bool) -> dict[str, Any]:
    import torch.utils.data

    from aisio.torch import IterableDataset

    _reset(p["stub"])
    config = aisio_config(p["link"])
    with section:
        t0 = time.perf_counter()
        if manifest:
            ds = IterableDataset.from_manifest(p["many_manifest"], config=config)
        else:
            ds = IterableDataset.from_prefix(f"s3://{BUCKET}/{p['many_prefix']}", config=config)
        loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=p["workers"],
                                             collate_fn=_count)
        it = iter(loader)
        n, _ = next(it)
        first = time.perf_counter() - t0
        pss = _pss_mib()
        served = stats(p["stub"])  # what was fetched by the first batch
        del it  # the workers stop inside the section, so their CPU counts
    if n != BATCH:
        raise RuntimeError(f"a first batch of {n} items")
    return {"first_batch_s": first, "lists": served["lists"], "gets": served["gets"],
            "heads": served["heads"], "pss_mib": pss}


def _pss_mib() -> float:
    """Proportional set size of this process and its descendants (shared pages split)."""
    from ._harness import _descendants

    total = 0
    for pid in _descendants(os.getpid()):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def startup_manifest(p: Params, section: Section) -> dict[str, Any]:
    return _startup(p, section, True)


def startup_prefix(p: Params, section: Section) -> dict[str, Any]:
    return _startup(p, section, False)


STARTUP = {
    "IterableDataset.from_manifest": "startup_manifest",
    "IterableDataset.from_prefix": "startup_prefix",
}


# --- data and reports --------------------------------------------------------------------------


def _shard_facts(folder: Path) -> tuple[list[str], list[int], int]:
    """Sample keys (sorted), samples per shard and payload bytes of the shards in ``folder``."""
    import tarfile

    keys: list[str] = []
    per_shard: list[int] = []
    payload = 0
    for path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            members = [m for m in tar if m.isfile()]
        names = sorted({m.name.split(".")[0] for m in members})
        keys += names
        per_shard.append(len(names))
        payload += sum(m.size for m in members)
    return sorted(keys), per_shard, payload


def prepare(data: Path, s: dict[str, Any], parts: set[str]) -> dict[str, Any]:
    facts: dict[str, Any] = {"workers": s["workers"], "object_size": s["object_size"],
                             "buffer_objects": s["buffer_objects"], "objects": s["objects"]}
    bench = data / BUCKET
    if "a" in parts:
        prefix = f"s10/resume-{s['resume_shards']}x{s['resume_shard_size'] >> 20}m/"
        write_shards(bench / prefix, s["resume_shards"], s["resume_shard_size"],
                     s["resume_sample"])
        keys, per_shard, payload = _shard_facts(bench / prefix)
        facts.update(resume_prefix=prefix, resume_keys=keys, resume_per_shard=per_shard,
                     resume_batches=-(-len(keys) // BATCH), resume_payload=payload,
                     resume_bytes=sum(f.stat().st_size for f in (bench / prefix).glob("*.tar")))
    if "b" in parts:
        prefix = f"s10/buffer-{s['buffer_shards']}x{s['buffer_shard_size'] >> 20}m/"
        write_shards(bench / prefix, s["buffer_shards"], s["buffer_shard_size"],
                     s["buffer_sample"])
        keys, _, payload = _shard_facts(bench / prefix)
        facts.update(buffer_prefix=prefix, buffer_shards=s["buffer_shards"],
                     buffer_samples=len(keys), buffer_payload=payload,
                     objects_prefix=f"s10/objects-{s['buffer_objects']}x1k/")
    facts["many_prefix"] = f"s10/many-{s['objects']}x1k/"
    return facts


def _brief_resume(r: dict[str, Any]) -> str:
    if "same_samples_same_order" in r:
        return (f"first batch {r['first_batch_s']:.2f} s; rest of epoch: {r['gets']} GETs, "
                f"{r['bytes'] / MiB:.1f} MiB; done shards fetched again "
                f"{r['shards_done_refetched']}/{r['shards_done_at_state']}; same samples "
                f"{r['same_samples_same_order']}")
    return (f"first batch {r['first_batch_s']:.2f} s; epoch {r['epoch_gets']} GETs, "
            f"{r['epoch_bytes'] / MiB:.1f} MiB; state {r['state_bytes']} bytes after "
            f"{r['delivered_before_state']} samples")


def _brief_buffer(r: dict[str, Any]) -> str:
    return (f"{r['items'] / r['wall']:8.0f} items/s, first batch {r['first_batch_s']:.2f} s, "
            f"tree RSS {r['tree_rss_mib']:.0f} MiB, CPU {r['cpu']:.1f} s")


def _brief_startup(r: dict[str, Any]) -> str:
    return (f"first batch {r['first_batch_s']:.2f} s ({r['lists']} LISTs, {r['gets']} GETs), "
            f"PSS at first batch {r['pss_mib']:.0f} MiB, CPU {r['cpu']:.1f} s")


def _report_resume(runs: sa.Runs, facts: dict[str, Any]) -> str:
    rows = []
    for label, rs in runs.items():
        if not rs:
            rows.append([label, "failed", *["-"] * 5])
            continue
        if "resumed" in label:
            rows.append([label, sa.cell(sa.median(rs, "first_batch_s"), "{:.2f}"),
                         f"{sa.med(rs, 'gets'):.0f}",
                         f"{sa.med(rs, 'bytes') / MiB:.1f}",
                         f"{sa.med(rs, 'shards_done_refetched'):.0f} of "
                         f"{sa.med(rs, 'shards_done_at_state'):.0f}",
                         f"{sa.med(rs, 'partial_shards_bytes') / MiB:.1f}",
                         "yes" if all(r["same_samples_same_order"] for r in rs) else "NO"])
        else:
            rows.append([label, sa.cell(sa.median(rs, "first_batch_s"), "{:.2f}"),
                         f"{sa.med(rs, 'epoch_gets'):.0f} (whole epoch)",
                         f"{sa.med(rs, 'epoch_bytes') / MiB:.1f} (whole epoch)", "-", "-",
                         "-"])
    md = sa.table(["run", "to first batch s", "GETs", "MiB served",
                   "shards done before the state, fetched again",
                   "MiB of shards in progress at the state", "rest of epoch as uninterrupted"],
                  rows)
    lines = []
    for fresh_label, res_label in (("fresh start", "resumed (load_state_dict)"),
                                   ("fresh start, shuffle_buffer=1000",
                                    "resumed, shuffle_buffer=1000")):
        value = sa.ratio(runs.get(res_label, []), "first_batch_s", runs.get(fresh_label, []),
                         "first_batch_s")
        if value is not None:
            lines.append(f"- {res_label} / {fresh_label}, time to first batch: x{value:.2f}")
    return md + ("\n\n" + "\n".join(lines) if lines else "")


def _report_buffer(runs: sa.Runs) -> str:
    rows = []
    for label, rs in runs.items():
        if not rs:
            rows.append([label, "failed", "-", "-", "-"])
            continue
        for r in rs:
            r["items_s"] = r["items"] / r["wall"]
        rows.append([label, sa.cell(sa.median(rs, "items_s"), "{:,.0f}"),
                     sa.cell(sa.median(rs, "first_batch_s"), "{:.2f}"),
                     sa.cell(sa.median(rs, "tree_rss_mib"), "{:.0f}"),
                     sa.cell(sa.median(rs, "cpu"), "{:.1f}")])
    md = sa.table(["dataset", "items/s", "to first batch s", "tree RSS MiB", "CPU s"], rows)
    lines = []
    for base in ("ShardReader shuffle=True", "IterableDataset shuffle=True"):
        value = sa.ratio(runs.get(base + ", shuffle_buffer=10000", []), "items_s",
                         runs.get(base, []), "items_s")
        if value is not None:
            lines.append(f"- {base}: with shuffle_buffer=10000 / without, items/s: x{value:.2f}")
    return md + ("\n\n" + "\n".join(lines) if lines else "")


def _report_startup(runs: sa.Runs) -> str:
    rows = []
    for label, rs in runs.items():
        if not rs:
            rows.append([label, "failed", "-", "-", "-", "-"])
            continue
        rows.append([label, sa.cell(sa.median(rs, "first_batch_s"), "{:.2f}"),
                     f"{sa.med(rs, 'lists'):.0f}", f"{sa.med(rs, 'gets'):.0f}",
                     sa.cell(sa.median(rs, "pss_mib"), "{:.0f}"),
                     sa.cell(sa.median(rs, "cpu"), "{:.1f}")])
    md = sa.table(["dataset", "to first batch s", "LISTs", "GETs (by the first batch)",
                   "PSS at first batch MiB", "CPU s"],
                  rows)
    value = sa.ratio(runs.get("IterableDataset.from_prefix", []), "first_batch_s",
                     runs.get("IterableDataset.from_manifest", []), "first_batch_s")
    return md + (f"\n\n- from_prefix / from_manifest, time to first batch: x{value:.2f}"
                 if value is not None else "")


def main(argv: list[str] | None = None) -> int:
    parser = sa.arguments(__doc__)
    parser.add_argument("--parts", default="a,b,c", help="comma-separated, of a, b, c")
    parser.add_argument("--objects", type=int, default=0, help="part c: objects (100,000)")
    parser.add_argument("--workers", type=int, default=0, help="part c: DataLoader workers (16)")
    args = parser.parse_args(argv)
    mode = args.mode or "quick"
    s = dict(SIZES[mode])
    if args.objects:
        s["objects"] = args.objects
    if args.workers:
        s["workers"] = args.workers
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    data = sa.data_folder(args)
    load_start = os.getloadavg()
    clock = sa.Clock()
    started_at = sa.commit()
    facts = prepare(data, s, parts)
    rounds = args.rounds or s["rounds"]
    state_dir = data.parent / f"{data.name}-state"
    state_dir.mkdir(exist_ok=True)
    synthetic = [(facts["many_prefix"], s["objects"], s["object_size"])]
    if "b" in parts:
        synthetic.append((facts["objects_prefix"], s["buffer_objects"], s["object_size"]))
    results: dict[str, Any] = {"scenario": "10", "mode": mode, "date": sa.now(), "sizes": s,
                               "slow_link": {"ttfb_s": args.ttfb, "rate_bytes_per_s": args.rate},
                               "parts": {}}
    stub = FolderStub(data, BUCKET, synthetic=synthetic)
    link = SlowLink([stub.url], args.ttfb, args.rate)
    md = []
    try:
        with serve(data) as fast:
            params = {**facts, "link": link.urls[0], "stub": stub.url, "fast": fast,
                      "state_dir": str(state_dir)}
            if "c" in parts:  # the manifest first: its writing is a one-off cost, reported
                path = data / "manifests" / f"s10-many-{s['objects']}.jsonl.gz"
                params["many_manifest"] = str(path)
                results["manifest_write_s"] = sa.write_manifest(
                    link.urls[0], f"s3://{BUCKET}/{facts['many_prefix']}", path)
                results["manifest_bytes"] = path.stat().st_size
            for part, peers, brief, fixed, title in (
                    ("a", RESUME, _brief_resume, True, "a. resume mid-epoch"),
                    ("b", BUFFER, _brief_buffer, False, "b. shuffle buffer"),
                    ("c", STARTUP, _brief_startup, False,
                     f"c. start-up: {s['workers']} workers, {s['objects']:,} objects")):
                if part not in parts:
                    continue
                chosen = {k: v for k, v in peers.items() if not args.only or args.only in k}
                print(f"\n== scenario 10{title} (load {os.getloadavg()[0]:.2f})", flush=True)
                load = os.getloadavg()[0]
                runs, errors = sa.run_rounds("s10_loading", chosen, params, rounds, brief,
                                             fixed=fixed)
                if part == "a":
                    text = _report_resume(runs, facts)
                elif part == "b":
                    text = _report_buffer(runs)
                else:
                    text = _report_startup(runs)
                results["parts"][part] = {"title": title, "runs": runs, "errors": errors,
                                          "load_average": [load, os.getloadavg()[0]],
                                          "markdown": text}
                md.append(f"### {title}\n\n{text}")
    finally:
        results["slow_link"]["proxy_stats"] = link.stop()
        results["stub_stats"] = stub.stop()
    results["machine"] = sa.machine(load_start, started_at)
    results["seconds"] = clock()
    results["facts"] = {k: v for k, v in facts.items() if k != "resume_keys"}
    name = f"s10_loading-{mode}" + ("" if parts == {"a", "b", "c"} else "-" + "".join(sorted(parts)))
    path = sa.write(sa.out_folder(args), name, results)
    print("\n" + "\n\n".join(md))
    print(f"\naisio {results['machine']['commit_end']}; load average "
          f"{results['machine']['load_average_start'][0]:.2f} -> "
          f"{results['machine']['load_average_end'][0]:.2f}; {clock():.0f} s; wrote {path}")
    failed = any(part["errors"] for part in results["parts"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
