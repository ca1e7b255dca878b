"""Read a large Parquet file's columns with pyarrow through fsspec: aisio's adapter vs s3fs.

nginx serves the file as a path-style S3 endpoint on loopback (it ignores signatures); each
method opens it by path (nginx cannot list) and runs ``pyarrow.parquet.read_table`` for a
few columns and for all of them. Methods run alternately, round after round; the table shows
the median seconds, GB/s of the column bytes wanted, CPU seconds of the process, and for
aisio the GETs and MiB it fetched (its ``statistics()``; the others do not count theirs).

    python tests/benchmarks/bench_fsspec.py [--size-mib 1024] [--rounds 3] [--columns 2]

Methods: ``aisio`` (aisio.fsspec.AisioFileSystem, defaults), ``s3fs`` (its defaults: 50 MiB
read-ahead blocks), ``s3fs-none`` (s3fs without read-ahead), and ``pyarrow`` (pyarrow's own
S3FileSystem, the yardstick, when built with S3). Needs nginx (apt-get install -y nginx),
s3fs and pyarrow (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BUCKET, KEY_ID, REGION, SECRET, s3fs_filesystem, set_credentials
from _nginx import serve

MiB = 2**20
COLUMNS = 16
NAME = "columns.parquet"


def make_parquet(path: Path, size: int) -> int:
    """A Parquet file of about ``size`` bytes: 16 int64 columns, 64 MiB row groups; its rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = max(1, size // (8 * COLUMNS))
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return rows
    rng = np.random.default_rng(0)
    table = pa.table({f"c{i:02d}": rng.integers(0, 2**62, rows) for i in range(COLUMNS)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="none", row_group_size=max(1, (64 * MiB) // (8 * COLUMNS)))
    return rows


def cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def filesystems(endpoint: str) -> dict[str, Callable[[], tuple[Any, str]]]:
    """Each method: a factory giving (filesystem, path of the file)."""
    import aisio.fsspec

    def ours() -> tuple[Any, str]:
        fs = aisio.fsspec.AisioFileSystem(
            key=KEY_ID, secret=SECRET, skip_instance_cache=True, use_listings_cache=False,
            client_kwargs={"endpoint_url": endpoint, "region_name": REGION},
            config_kwargs={"s3": {"addressing_style": "path"}})
        return fs, f"{BUCKET}/{NAME}"

    def s3fs_default() -> tuple[Any, str]:
        return s3fs_filesystem(endpoint), f"{BUCKET}/{NAME}"

    def s3fs_none() -> tuple[Any, str]:
        fs = s3fs_filesystem(endpoint)
        fs.default_cache_type = "none"
        return fs, f"{BUCKET}/{NAME}"

    out = {"aisio": ours, "s3fs": s3fs_default, "s3fs-none": s3fs_none}
    try:
        from pyarrow.fs import S3FileSystem

        def native() -> tuple[Any, str]:
            fs = S3FileSystem(access_key=KEY_ID, secret_key=SECRET, region=REGION,
                              endpoint_override=endpoint, scheme="http")
            return fs, f"{BUCKET}/{NAME}"

        out["pyarrow"] = native
    except ImportError:
        pass
    return out


def run_once(make: Callable[[], tuple[Any, str]],
             columns: list[str] | None) -> tuple[float, float, int | None, int | None]:
    """One read_table: (seconds, CPU seconds, GETs, bytes fetched); the last two aisio's only."""
    import pyarrow.parquet as pq

    fs, path = make()
    stats = getattr(fs, "statistics", None)
    s0 = stats() if stats else None
    c0, t0 = cpu(), time.perf_counter()
    table = pq.read_table(path, filesystem=fs, columns=columns)
    seconds, used = time.perf_counter() - t0, cpu() - c0
    assert table.num_columns == (len(columns) if columns else COLUMNS)
    if stats is None or s0 is None:
        return seconds, used, None, None
    s1 = stats()
    return seconds, used, s1.requests - s0.requests, s1.bytes_received - s0.bytes_received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--columns", type=int, default=2, help="columns read in the subset case")
    parser.add_argument("--only", action="append", help="run only these methods")
    args = parser.parse_args()
    set_credentials()
    with tempfile.TemporaryDirectory(prefix="aisio-bench-fsspec-") as root:
        path = Path(root, BUCKET, NAME)
        make_parquet(path, args.size_mib * MiB)
        size = path.stat().st_size
        subset = [f"c{i:02d}" for i in range(0, COLUMNS, COLUMNS // args.columns)][:args.columns]
        cases = {f"{len(subset)} of {COLUMNS} columns": subset, "all columns": None}
        with serve(root) as endpoint:
            methods = filesystems(endpoint)
            if args.only:
                methods = {k: v for k, v in methods.items() if k in args.only}
            results: dict[tuple[str, str], list[tuple[float, float, int | None, int | None]]] = {}
            for _ in range(args.rounds):
                for case, columns in cases.items():
                    for name, make in methods.items():
                        results.setdefault((case, name), []).append(run_once(make, columns))
        print(f"file: {size / MiB:.0f} MiB, {COLUMNS} columns, {args.rounds} rounds (medians)")
        print(f"{'case':<22}{'method':<11}{'seconds':>9}{'GB/s':>8}{'CPU s':>8}{'GETs':>7}{'MiB':>8}")
        for (case, name), runs in results.items():
            seconds = statistics.median(r[0] for r in runs)
            used = statistics.median(r[1] for r in runs)
            gets = "-" if runs[0][2] is None else f"{statistics.median(r[2] or 0 for r in runs):.0f}"
            mib = "-" if runs[0][3] is None else f"{statistics.median(r[3] or 0 for r in runs) / MiB:.0f}"
            wanted = size * (len(cases[case] or range(COLUMNS)) / COLUMNS)
            print(f"{case:<22}{name:<11}{seconds:>9.3f}{wanted / seconds / 1e9:>8.2f}{used:>8.2f}"
                  f"{gets:>7}{mib:>8}")


if __name__ == "__main__":
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    main()
