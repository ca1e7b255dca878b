"""Scenario 9: two epochs over a prefix on a slow link, with and without a local cache.

    python -m tests.benchmarks.s9_cache --quick        # 32 shards of 8 MiB, 2,000 x 100 KB
    python -m tests.benchmarks.s9_cache --full         # 64 x 16 MiB, 10,000 x 100 KB
    python -m tests.benchmarks.s9_cache --quick --rate 25e6 --only cache

Each run makes one ``DataLoader(num_workers=2, batch_size=32)`` (workers not persistent,
so each epoch forks its workers again, as by default) and iterates it twice: epoch 1
with an empty cache folder, epoch 2 over the same objects. The figure is each epoch's
items/s (from ``iter(loader)`` to the last batch) and their ratio within the run.

The store is ``_folderstub`` (a local S3 serving the data folder, with listings, so the
aisio peers read a prefix) behind ``_slowlink`` (time to first byte and a bandwidth cap
per connection). The stub counts what each epoch fetched (GETs, HEADs, LISTs, bytes):
a cache that works makes no GET in epoch 2.

Peers:
- aisio ``ShardReader`` over the shards' prefix, without a cache and with
  ``ClientConfig(cache=CacheOptions(dir=..., max_bytes=...))``;
- webdataset's ``WebDataset`` over the shards' URLs (it reads ``http://`` with curl),
  without a cache and with ``cache_dir=`` (whole shards downloaded to the folder, then
  read from it);
- litdata's ``StreamingDataset`` (when litdata is installed) over the same samples
  converted once by ``litdata.optimize`` into its own 8 MB chunks; it always downloads
  chunks into its ``cache_dir`` and reads them from there;
- aisio ``IterableDataset`` over a prefix of small objects, without and with the cache;
- a reference: aisio ``ShardReader`` over the same shards from nginx on loopback (no
  link, no cache), what the reader itself delivers on this machine.

The aisio cache rows come three ways: the defaults (a prefix's reads do not know the
ETag, so each asks a HEAD), ``validate_after=math.inf`` (a HEAD's answer trusted for
good), and ``from_manifest`` (reads pinned to the manifest's ETags: no HEAD at all).
Mosaic streaming is not a peer: see docs/benchmarks/loading.md.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import _standalone as sa
from ._common import BUCKET, MiB, aisio_config, write_shards, write_small_objects
from ._folderstub import FolderStub, stats
from ._harness import Section
from ._nginx import serve
from ._slowlink import SlowLink

Params = dict[str, Any]
BATCH = 32
WORKERS = 2
SIZES = {  # shards, shard size, sample size, small objects, their size, rounds
    "quick": {"shards": 32, "shard_size": 8 * MiB, "sample_size": 100_000,
              "small": 2000, "small_size": 100_000, "rounds": 2},
    "full": {"shards": 64, "shard_size": 16 * MiB, "sample_size": 100_000,
             "small": 10_000, "small_size": 100_000, "rounds": 3},
}


# --- the two epochs ----------------------------------------------------------------------------


def _count_samples(batch: list[Any]) -> tuple[int, int]:
    from .s4_shards import count_samples

    return count_samples(batch)


def _count_bytes(batch: list[Any]) -> tuple[int, int]:
    from .s3_small import count_bytes

    return count_bytes(batch)


def _epochs(dataset: Any, p: Params, section: Section, collate: Any, items: int,
            payload: int) -> dict[str, Any]:
    import torch.utils.data

    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS,
                                         collate_fn=collate)
    out: dict[str, Any] = {}
    with section:
        for epoch in (1, 2):
            before = stats(p["stub"])
            t0 = time.perf_counter()
            got = total = 0
            for n, size in loader:
                got += n
                total += size
            seconds = time.perf_counter() - t0
            after = stats(p["stub"])
            if got != items or total != payload:
                raise RuntimeError(f"epoch {epoch}: {got} items / {total} bytes, expected "
                                   f"{items} / {payload}")
            out[f"e{epoch}_s"] = seconds
            out[f"e{epoch}_items_s"] = got / seconds
            for key in ("gets", "heads", "lists", "bytes"):
                out[f"e{epoch}_{key}"] = after[key] - before[key]
    out["items"], out["payload"] = items, payload
    out["e2_over_e1"] = out["e2_items_s"] / out["e1_items_s"]
    return out


def _cache_dir(p: Params) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="cache-", dir=p["cache_root"]))
    return folder


def _du(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _shards(p: Params) -> tuple[int, int]:
    return p["shard_samples"], p["shard_payload"]


def _cache_options(folder: Path | None, p: Params, forever: bool) -> dict[str, Any]:
    import math

    import aisio

    if folder is None:
        return {}
    return {"cache": aisio.CacheOptions(dir=str(folder), max_bytes=p["cache_max_bytes"],
                                        validate_after=math.inf if forever else 0.0)}


def _aisio_shards(p: Params, section: Section, cache: bool, forever: bool = False,
                  manifest: bool = False) -> dict[str, Any]:
    from aisio.torch import ShardReader

    folder = _cache_dir(p) if cache else None
    config = aisio_config(p["link"], **_cache_options(folder, p, forever))
    if manifest:
        ds = ShardReader.from_manifest(p["shard_manifest"], config=config)
    else:
        ds = ShardReader(f"s3://{BUCKET}/{p['shard_prefix']}", config=config)
    try:
        out = _epochs(ds, p, section, _count_samples, *_shards(p))
        if folder:
            out["cache_bytes_on_disk"] = _du(folder)
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def aisio_shards_loopback(p: Params, section: Section) -> dict[str, Any]:
    """The reader's own ceiling here: the same shards from nginx on loopback, no link."""
    from aisio.torch import ShardReader

    urls = [f"s3://{BUCKET}/{p['shard_prefix']}shard-{i:06d}.tar" for i in range(p["shards"])]
    return _epochs(ShardReader(urls, config=aisio_config(p["fast"])), p, section,
                   _count_samples, *_shards(p))


def aisio_shards(p: Params, section: Section) -> dict[str, Any]:
    return _aisio_shards(p, section, cache=False)


def aisio_shards_cache(p: Params, section: Section) -> dict[str, Any]:
    return _aisio_shards(p, section, cache=True)


def aisio_shards_cache_forever(p: Params, section: Section) -> dict[str, Any]:
    return _aisio_shards(p, section, cache=True, forever=True)


def aisio_shards_manifest_cache(p: Params, section: Section) -> dict[str, Any]:
    return _aisio_shards(p, section, cache=True, manifest=True)


def _webdataset(p: Params, section: Section, cache: bool) -> dict[str, Any]:
    import webdataset as wds

    folder = _cache_dir(p) if cache else None
    urls = [f"{p['link']}/{BUCKET}/{p['shard_prefix']}shard-{i:06d}.tar"
            for i in range(p["shards"])]
    ds = wds.WebDataset(urls, shardshuffle=False, cache_dir=str(folder) if folder else None,
                        empty_check=False)
    try:
        out = _epochs(ds, p, section, _count_samples, *_shards(p))
        if folder:
            out["cache_bytes_on_disk"] = _du(folder)
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def webdataset_stream(p: Params, section: Section) -> dict[str, Any]:
    return _webdataset(p, section, cache=False)


def webdataset_cache(p: Params, section: Section) -> dict[str, Any]:
    return _webdataset(p, section, cache=True)


def litdata_cache(p: Params, section: Section) -> dict[str, Any]:
    import litdata.streaming.downloader as downloader
    from litdata import StreamingDataset

    from ._common import KEY_ID, REGION, SECRET

    # litdata fetches chunks with obstore, which refuses plain http unless told: the only
    # change made to it (the loopback store has no TLS)
    downloader._OBSTORE_CLIENT_OPTIONS = {**(downloader._OBSTORE_CLIENT_OPTIONS or {}),
                                          "allow_http": True}
    folder = _cache_dir(p)
    options = {"endpoint_url": p["link"], "aws_access_key_id": KEY_ID,
               "aws_secret_access_key": SECRET, "region_name": REGION}
    ds = StreamingDataset(f"s3://{BUCKET}/{p['litdata_prefix']}", cache_dir=str(folder),
                          storage_options=options)
    try:
        out = _epochs(ds, p, section, _count_samples, *_shards(p))
        out["cache_bytes_on_disk"] = _du(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def _litdata_samples(path: str) -> Any:
    """litdata.optimize's function: the samples of one tar shard, as dicts."""
    import tarfile

    samples: dict[str, dict[str, Any]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile():
                key, _, ext = member.name.partition(".")
                f = tar.extractfile(member)
                assert f is not None
                samples.setdefault(key, {"key": key})[ext] = f.read()
    yield from samples.values()


def _litdata_convert(shards: Path, out: Path, stamp: Path) -> bool:
    """The shards' samples in litdata's format (its own chunks), once; False without litdata."""
    try:
        from litdata import optimize
    except ImportError:
        return False
    if not stamp.exists():
        optimize(fn=_litdata_samples, inputs=sorted(str(f) for f in shards.glob("*.tar")),
                 output_dir=str(out), chunk_bytes="8MB", num_workers=1, mode="overwrite")
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
    return True


def _aisio_small(p: Params, section: Section, cache: bool, forever: bool = False,
                 manifest: bool = False) -> dict[str, Any]:
    from aisio.torch import IterableDataset

    folder = _cache_dir(p) if cache else None
    config = aisio_config(p["link"], **_cache_options(folder, p, forever))
    if manifest:
        ds = IterableDataset.from_manifest(p["small_manifest"], config=config)
    else:
        ds = IterableDataset.from_prefix(f"s3://{BUCKET}/{p['small_prefix']}", config=config)
    try:
        out = _epochs(ds, p, section, _count_bytes, p["small"], p["small"] * p["small_size"])
        if folder:
            out["cache_bytes_on_disk"] = _du(folder)
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def aisio_small(p: Params, section: Section) -> dict[str, Any]:
    return _aisio_small(p, section, cache=False)


def aisio_small_cache(p: Params, section: Section) -> dict[str, Any]:
    return _aisio_small(p, section, cache=True)


def aisio_small_cache_forever(p: Params, section: Section) -> dict[str, Any]:
    return _aisio_small(p, section, cache=True, forever=True)


def aisio_small_manifest_cache(p: Params, section: Section) -> dict[str, Any]:
    return _aisio_small(p, section, cache=True, manifest=True)


PEERS = {
    "reference: aisio ShardReader, nginx on loopback (no link, no cache)": "aisio_shards_loopback",
    "aisio ShardReader (prefix), no cache": "aisio_shards",
    "aisio ShardReader (prefix) + cache": "aisio_shards_cache",
    "aisio ShardReader (prefix) + cache, validate_after=inf": "aisio_shards_cache_forever",
    "aisio ShardReader (manifest) + cache": "aisio_shards_manifest_cache",
    "webdataset (curl), no cache": "webdataset_stream",
    "webdataset + cache_dir": "webdataset_cache",
    "litdata StreamingDataset (its own chunks), cache_dir": "litdata_cache",
    "aisio IterableDataset (prefix), no cache": "aisio_small",
    "aisio IterableDataset (prefix) + cache": "aisio_small_cache",
    "aisio IterableDataset (prefix) + cache, validate_after=inf": "aisio_small_cache_forever",
    "aisio IterableDataset (manifest) + cache": "aisio_small_manifest_cache",
}


# --- running -----------------------------------------------------------------------------------


def prepare(data: Path, s: dict[str, Any]) -> dict[str, Any]:
    import tarfile

    shard_prefix = f"s9/shards-{s['shards']}x{s['shard_size'] >> 20}m/"
    small_prefix = f"s9/small-{s['small']}x{s['small_size'] // 1000}k/"
    write_shards(data / BUCKET / shard_prefix, s["shards"], s["shard_size"], s["sample_size"])
    write_small_objects(data / BUCKET / small_prefix, s["small"], s["small_size"])
    samples = payload = 0
    for path in sorted((data / BUCKET / shard_prefix).glob("*.tar")):
        with tarfile.open(path) as tar:
            members = [m for m in tar if m.isfile()]
        samples += len({m.name.split(".")[0] for m in members})
        payload += sum(m.size for m in members)
    total = s["shards"] * s["shard_size"] + s["small"] * s["small_size"]
    litdata_prefix = f"s9/litdata-{s['shards']}x{s['shard_size'] >> 20}m/"
    stamp = data / ".stamps" / f"litdata-{s['shards']}x{s['shard_size']}-{s['sample_size']}"
    has_litdata = _litdata_convert(data / BUCKET / shard_prefix, data / BUCKET / litdata_prefix,
                                   stamp)
    return {"shard_prefix": shard_prefix, "small_prefix": small_prefix,
            "litdata_prefix": litdata_prefix if has_litdata else "",
            "shard_samples": samples, "shard_payload": payload, "shards": s["shards"],
            "small": s["small"], "small_size": s["small_size"],
            "cache_max_bytes": 2 * total}


def brief(r: dict[str, Any]) -> str:
    return (f"epoch 1 {r['e1_items_s']:8.0f} items/s ({r['e1_gets']} GETs, {r['e1_heads']} HEADs,"
            f" {r['e1_lists']} LISTs)   epoch 2 {r['e2_items_s']:8.0f} items/s ({r['e2_gets']} "
            f"GETs, {r['e2_heads']} HEADs, {r['e2_lists']} LISTs)   x{r['e2_over_e1']:.2f}")


def report(results: dict[str, Any]) -> str:
    runs = results["runs"]
    rows = []
    for label, rs in runs.items():
        if not rs:
            rows.append([label, "failed" if label in results["errors"] else "-", *["-"] * 7])
            continue
        rows.append([
            label, sa.cell(sa.median(rs, "e1_items_s"), "{:,.0f}"),
            sa.cell(sa.median(rs, "e2_items_s"), "{:,.0f}"),
            sa.cell(sa.median(rs, "e2_over_e1"), "x{:.2f}"),
            f"{sa.med(rs, 'e1_gets'):.0f} / {sa.med(rs, 'e2_gets'):.0f}",
            f"{sa.med(rs, 'e1_heads'):.0f} / {sa.med(rs, 'e2_heads'):.0f}",
            f"{sa.med(rs, 'e1_lists'):.0f} / {sa.med(rs, 'e2_lists'):.0f}",
            f"{sa.med(rs, 'e1_bytes') / MiB:.0f} / {sa.med(rs, 'e2_bytes') / MiB:.0f}",
            sa.cell(sa.median(rs, "cpu"), "{:.1f}"),
        ])
    md = sa.table(["peer", "epoch 1 items/s", "epoch 2 items/s", "epoch 2 / epoch 1",
                   "GETs e1 / e2", "HEADs e1 / e2", "LISTs e1 / e2", "MiB served e1 / e2",
                   "CPU s (both)"], rows)
    pairs = [("aisio ShardReader (prefix) + cache", "webdataset + cache_dir"),
             ("aisio ShardReader (manifest) + cache",
              "litdata StreamingDataset (its own chunks), cache_dir"),
             ("aisio ShardReader (manifest) + cache", "webdataset + cache_dir"),
             ("aisio ShardReader (prefix) + cache", "aisio ShardReader (prefix), no cache")]
    lines = []
    for a, b in pairs:
        for epoch in ("e1", "e2"):
            value = sa.ratio(runs.get(a, []), f"{epoch}_items_s", runs.get(b, []),
                             f"{epoch}_items_s")
            if value is not None:
                lines.append(f"- {a} / {b}, epoch {epoch[1]}: x{value:.2f} (median of the "
                             "per-round ratios)")
    return md + ("\n\n" + "\n".join(lines) if lines else "")


def main(argv: list[str] | None = None) -> int:
    args = sa.arguments(__doc__).parse_args(argv)
    mode = args.mode or "quick"
    s = SIZES[mode]
    data = sa.data_folder(args)
    load_start = __import__("os").getloadavg()
    clock = sa.Clock()
    started_at = sa.commit()
    facts = prepare(data, s)
    cache_root = data.parent / f"{data.name}-cache"
    cache_root.mkdir(exist_ok=True)
    peers = {k: v for k, v in PEERS.items() if not args.only or args.only in k}
    if not facts["litdata_prefix"]:
        peers = {k: v for k, v in peers.items() if v != "litdata_cache"}
        print("litdata is not installed: its peer is left out", flush=True)
    rounds = args.rounds or s["rounds"]
    stub = FolderStub(data, BUCKET)
    for kind in ("shard", "small"):  # written from the stub directly, not over the link
        facts[f"{kind}_manifest"] = str(data / "manifests" / f"s9-{kind}-{mode}.jsonl.gz")
        sa.write_manifest(stub.url, f"s3://{BUCKET}/{facts[kind + '_prefix']}",
                          Path(facts[f"{kind}_manifest"]))
    link = SlowLink([stub.url], args.ttfb, args.rate)
    print(f"== scenario 9 ({mode}): two epochs, 2 workers, through a slow link "
          f"(ttfb {args.ttfb * 1000:.0f} ms, {args.rate / 1e6:.0f} MB/s per connection); "
          f"{facts['shards']} shards ({facts['shard_samples']} samples), {facts['small']} "
          f"small objects; load {load_start[0]:.2f}", flush=True)
    try:
        with serve(data) as fast:
            params = {**facts, "link": link.urls[0], "stub": stub.url, "fast": fast,
                      "cache_root": str(cache_root)}
            runs, errors = sa.run_rounds("s9_cache", peers, params, rounds, brief)
    finally:
        link_stats = link.stop()
        stub_stats = stub.stop()
    results: dict[str, Any] = {"scenario": "9", "mode": mode, "date": sa.now(), "seconds": clock(),
               "machine": sa.machine(load_start, started_at), "sizes": s, "facts": facts,
               "slow_link": {"ttfb_s": args.ttfb, "rate_bytes_per_s": args.rate,
                             "proxy_stats": link_stats},
               "stub_stats": stub_stats, "runs": runs, "errors": errors}
    md = report(results)
    results["markdown"] = md
    link_name = "" if (args.ttfb, args.rate) == (0.02, 100e6) else (
        f"-{args.ttfb * 1000:g}ms-{args.rate / 1e6:g}MBps")
    path = sa.write(sa.out_folder(args), f"s9_cache-{mode}{link_name}", results)
    print("\n" + md)
    print(f"\naisio {results['machine']['commit_end']}; load average "
          f"{results['machine']['load_average_start'][0]:.2f} -> "
          f"{results['machine']['load_average_end'][0]:.2f}; {clock():.0f} s; wrote {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
