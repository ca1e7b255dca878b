"""DCP restore benchmark: a 1 GiB checkpoint of 128 float32 tensors in 8 files on local_s3().

    python tests/benchmarks/bench_dcp.py [--gib 1.0] [--rounds 3]

Readers compared, all against the same moto server (run in a process of its own, so it
does not share this process's GIL): aisio's StorageReader with its default reader and
with ``sequential()``, the S3 connector's S3StorageReader with ``dcp_optimized`` and
``sequential`` (its defaults otherwise), and torch's FileSystemReader on a local copy
(page cache warm). The checkpoint is saved once by aisio's StorageWriter (its time is
printed too) and once locally by torch's FileSystemWriter.

Each run is a fresh subprocess: it allocates the state dict (pages touched), makes one
request so the client is set up, then times ``dcp.load`` and checks every tensor. Peak RSS
is the process's high-water mark during the load minus its RSS with the state dict in
place. Runs of the readers are interleaved, ``--rounds`` of each; the table shows medians.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

TENSORS, FILES, BUCKET, PREFIX = 128, 8, "bench", "ckpt"
READERS = {
    "aisio default (dcp_optimized)": "aisio-default",
    "aisio sequential()": "aisio-sequential",
    "s3torchconnector dcp_optimized": "s3tc-dcp_optimized",
    "s3torchconnector sequential": "s3tc-sequential",
    "torch FileSystemReader (local disk)": "torch-local",
}


def serve(port: int, ready: Any, stop: Any) -> None:
    """The moto server, in a process of its own."""
    from aisio.testing import local_s3

    with local_s3(port) as s3:
        s3.create_bucket(BUCKET)
        ready.set()
        stop.wait()


def tensor_shape(gib: float) -> tuple[int, int]:
    return 1024, int(gib * 2**30) // TENSORS // 4 // 1024


def expected(gib: float) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    return {f"layer{i:03d}.w": torch.randn(tensor_shape(gib), generator=g) for i in range(TENSORS)}


def rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def run_one(kind: str, gib: float, endpoint: str, local: str) -> dict[str, Any]:
    """One timed load in this (fresh) process."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    warnings.filterwarnings("ignore")
    from aisio.testing._s3 import LocalS3

    url = f"s3://{BUCKET}/{PREFIX}"
    server = LocalS3(endpoint)
    if kind.startswith("aisio"):
        import aisio
        from aisio.torch.dcp import StorageReader

        constructor = aisio.ReaderConstructor.sequential() if kind.endswith("sequential") else None
        reader: Any = StorageReader(url, server.config(), constructor)
        reader.client.head(url + "/.metadata")  # the client is set up before the clock starts
    elif kind.startswith("s3tc"):
        os.environ.update(AWS_ACCESS_KEY_ID=server.access_key_id,
                          AWS_SECRET_ACCESS_KEY=server.secret_access_key)
        from s3torchconnector import S3ClientConfig, S3ReaderConstructor
        from s3torchconnector._s3client import S3Client
        from s3torchconnector.dcp import S3StorageReader

        seed = S3ClientConfig(force_path_style=True)
        constructor = getattr(S3ReaderConstructor, kind.split("-", 1)[1])()
        reader = S3StorageReader(server.region, url, s3client_config=seed,
                                 reader_constructor=constructor)
        # S3StorageReader takes no endpoint: give its file system a client pointed at ours
        reader.fs._client = S3Client(server.region, endpoint=endpoint, s3client_config=seed)
        reader.fs._client.head_object(BUCKET, f"{PREFIX}/.metadata")
    else:
        reader = dcp.FileSystemReader(local)
    sd = {k: torch.zeros(tensor_shape(gib)) for k in (f"layer{i:03d}.w" for i in range(TENSORS))}
    base = rss("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark
    start = time.perf_counter()
    dcp.load(sd, storage_reader=reader)
    seconds = time.perf_counter() - start
    peak = rss("VmHWM:") - base
    want = expected(gib)
    bad = [k for k in sd if not torch.equal(sd[k], want[k])]
    if bad:
        raise RuntimeError(f"{kind}: wrong values in {bad[:3]}")
    return {"kind": kind, "seconds": seconds, "peak_mib": peak / 2**20}


def prepare(gib: float, endpoint: str, local: str) -> float:
    """Save the checkpoint to S3 with aisio and locally with torch; returns aisio's save time."""
    import warnings

    import torch.distributed.checkpoint as dcp

    from aisio.testing._s3 import LocalS3
    from aisio.torch.dcp import StorageWriter

    warnings.filterwarnings("ignore")
    sd = expected(gib)
    writer = StorageWriter(f"s3://{BUCKET}/{PREFIX}", LocalS3(endpoint).config(), thread_count=FILES)
    start = time.perf_counter()
    dcp.save(sd, storage_writer=writer)
    seconds = time.perf_counter() - start
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(local, thread_count=FILES, sync_files=False))
    return seconds


def in_subprocess(*args: str) -> Any:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=list(READERS.values()))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, gib, endpoint, local = args.child
        if step == "prepare":
            print(json.dumps(prepare(float(gib), endpoint, local)))
        else:
            print(json.dumps(run_one(step, float(gib), endpoint, local)))
        return

    from aisio.testing._s3 import free_port

    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    port = free_port()
    server = context.Process(target=serve, args=(port, ready, stop), daemon=True)
    server.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the local S3 server did not start")
        endpoint = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as local:
            save = in_subprocess("--child", "prepare", str(args.gib), endpoint, local)
            print(f"checkpoint: {args.gib:g} GiB, {TENSORS} tensors, {FILES} files; "
                  f"aisio StorageWriter saved it to local_s3() in {save:.2f} s", flush=True)
            kinds = {name: kind for name, kind in READERS.items()
                     if not args.only or kind in args.only}
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in kinds}
            for round_ in range(args.rounds):
                for name, kind in kinds.items():
                    result = in_subprocess("--child", kind, str(args.gib), endpoint, local)
                    runs[name].append(result)
                    print(f"  round {round_ + 1}: {name}: {result['seconds']:.2f} s", flush=True)
    finally:
        stop.set()
        server.join(10)
    print(f"\n{'reader':38} {'median s':>9} {'GiB/s':>7} {'peak RSS above state dict':>27}")
    for name, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        peak = statistics.median(r["peak_mib"] for r in results)
        print(f"{name:38} {seconds:9.2f} {args.gib / seconds:7.2f} {peak:23.0f} MiB")


if __name__ == "__main__":
    main()
