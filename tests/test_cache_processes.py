"""The local cache shared by real processes, with requests counted at the server.

The S3 server (moto) sits behind the recording proxy of ``tests/faults.py``, so each test
counts the GETs and HEADs that reached it: epoch 2 of a 2-worker DataLoader makes no data
GET; 4 processes that miss one object at once fetch each block once; a HEAD's answer is
trusted for ``validate_after``. Processes fill the cache at once and its folder never
exceeds the limit; a process killed while fetching or while writing a block leaves nothing
that is served or waited on; a full disk (a tmpfs) or a refused write is a warning, never
a failed read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch.utils.data as tud

import aisio
from aisio._cache._store import Store
from aisio.torch import MapDataset

from .faults import Exchange, Fault, FaultProxy, fault_proxy

KiB = 2**10
BLOCK = 64 * KiB
BUCKET = "aisio-test"
ROOT = str(Path(__file__).resolve().parent.parent)
_counter = itertools.count()

# A reader process: waits for the go file, reads each URL whole (get), prints its digest
# and its statistics. DIE_WRITING=1 kills it with SIGKILL halfway through writing a block.
CHILD = r"""
import hashlib, os, pickle, signal, sys, time
import aisio
if os.environ.get("DIE_WRITING") == "1":
    from aisio._cache import _store
    real = _store._write_all
    def dying(fd, data, offset):
        if offset > 0:  # the block's data (the header went first): half of it, then die
            real(fd, memoryview(data)[: len(data) // 2], offset)
            os.kill(os.getpid(), signal.SIGKILL)
        real(fd, data, offset)
    _store._write_all = dying
if os.environ.get("FSIZE_LIMIT"):
    import resource
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(os.environ["FSIZE_LIMIT"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
with open(sys.argv[1], "rb") as f:
    config = pickle.load(f)
go, rounds, urls = sys.argv[2], int(sys.argv[3]), sys.argv[4:]
open(f"{go}.{os.getpid()}.ready", "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
with aisio.Client(config) as c:
    for _ in range(rounds):
        for url in urls:
            print(url, hashlib.sha256(c.get(url)).hexdigest(), flush=True)
    s = c.statistics()
    print("stats", s.cache_hits, s.cache_misses, s.cache_bytes, flush=True)
"""


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Proxied:
    """moto behind a recording proxy; objects under a fresh prefix; a cache folder."""

    proxy: FaultProxy
    server: Any
    prefix: str
    endpoint: str
    folder: str

    def url(self, key: str) -> str:
        return f"s3://{BUCKET}/{self.prefix}{key}"

    def config(self, **options: Any) -> aisio.ClientConfig:
        """Through the proxy, with the cache (part size = block size: parts are blocks)."""
        s3 = dataclasses.replace(self.server.s3_options(), endpoint_url=self.endpoint)
        cache = aisio.CacheOptions(self.folder, **{"block_size": BLOCK, **options})
        return aisio.ClientConfig(s3=s3, part_size=BLOCK, cache=cache)

    def put(self, objects: dict[str, bytes]) -> None:
        """Straight to the server: set-up is not counted."""
        with aisio.Client(self.server.config()) as c:
            for key, data in objects.items():
                c.put(self.url(key), data)

    def requests(self, method: str, key: str | None = None) -> list[Exchange]:
        """Requests of ``method`` for objects (listings aside), of ``key`` if given."""
        path = f"/{BUCKET}/{self.prefix}{key or ''}"
        return [x for x in self.proxy.snapshot() if x.method == method and "list-type" not in x.query
                and (x.path == path if key else x.path.startswith(path))]


@pytest.fixture
def proxied(s3_server: Any, tmp_path: Path) -> Iterator[Proxied]:
    with fault_proxy() as proxy:
        endpoint = proxy.listen(s3_server.endpoint_url, "s3")
        prefix = f"cache-{os.getpid()}-{next(_counter)}/"
        yield Proxied(proxy, s3_server, prefix, endpoint, str(tmp_path / "cache"))


@dataclass
class Children:
    """Reader processes (``CHILD``) started together on a go signal."""

    procs: list[subprocess.Popen[str]]
    go: Path

    @classmethod
    def start(cls, tmp: Path, config: aisio.ClientConfig, urls: list[list[str]], rounds: int = 1,
              env: dict[str, str] | None = None, wrap: list[str] | None = None) -> Children:
        n = next(_counter)
        script, cfg, go = tmp / "child.py", tmp / f"config-{n}.pickle", tmp / f"go-{n}"
        script.write_text(CHILD)
        cfg.write_bytes(pickle.dumps(config))
        environ = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
        procs = [subprocess.Popen([*(wrap or []), sys.executable, str(script), str(cfg), str(go),
                                   str(rounds), *mine], env=environ, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for mine in urls]
        children = cls(procs, go)
        deadline = time.monotonic() + 30
        while len(list(tmp.glob(f"{go.name}.*.ready"))) < len(procs):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                children.kill()
                raise AssertionError(f"a child did not start: {children.finish()}")
            time.sleep(0.01)
        return children

    def release(self) -> None:
        self.go.touch()

    def finish(self, timeout: float = 60) -> list[tuple[int, str, str]]:
        return [(p.wait(timeout), *p.communicate(timeout=timeout)) for p in self.procs]

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()


def digests(out: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in out.splitlines() if not line.startswith("stats"))


def stats_of(out: str) -> tuple[int, int, int]:
    line = next(line for line in out.splitlines() if line.startswith("stats"))
    hits, misses, served = map(int, line.split()[1:])
    return hits, misses, served


def leftovers(folder: str) -> list[str]:
    """Temp and lock files in the cache folder."""
    return sorted(n for _, _, names in os.walk(folder) for n in names
                  if n.endswith((".tmp", ".lock")))


def folder_bytes(folder: str) -> int:
    """Bytes of the files in the cache's blocks folder now, each file once (a file renamed
    while the folder is read may be listed twice)."""
    seen: dict[int, int] = {}
    blocks = os.path.join(folder, "v1", "blocks")
    for sub in os.scandir(blocks) if os.path.isdir(blocks) else []:
        for e in os.scandir(sub.path):
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if e.is_file(follow_symlinks=False):
                seen[st.st_ino] = st.st_size
    return sum(seen.values())


def ledger_and_disk(folder: str) -> tuple[int, int]:
    store = Store(folder, 1, BLOCK)
    with store._ledger() as led:
        return led.total, store.usage()[0]


# -- requests counted at the server --


def test_epoch_two_of_a_two_worker_dataloader_makes_no_data_get(proxied: Proxied) -> None:
    objects = {f"ds/{i:02d}.bin": payload(3000 + 9000 * i, i) for i in range(12)}  # 1 or 2 blocks
    proxied.put(objects)
    blocks = sum(-(-len(d) // BLOCK) for d in objects.values())
    expected = {proxied.url(k): d for k, d in objects.items()}
    dataset = MapDataset.from_prefix(proxied.url("ds/"), config=proxied.config())
    assert len(dataset) == 12  # listed in the main process, before the workers start

    def epoch() -> dict[str, bytes]:
        loader = tud.DataLoader(dataset, num_workers=2, batch_size=None,
                                multiprocessing_context="fork")
        return dict(loader)

    proxied.proxy.clear()
    assert epoch() == expected
    assert len(proxied.requests("GET")) == blocks
    proxied.proxy.clear()
    assert epoch() == expected  # new worker processes: the cache is on disk
    assert proxied.requests("GET") == []
    assert len(proxied.requests("HEAD")) == 12  # validate_after=0: a HEAD per object per epoch


def test_four_processes_missing_one_object_at_once_fetch_each_block_once(
        proxied: Proxied, tmp_path: Path) -> None:
    data = payload(3 * BLOCK + 5, 1)  # four blocks
    proxied.put({"shared.bin": data})
    # every GET of it waits 0.3 s for its answer, so the four readers really overlap
    proxied.proxy.add(Fault("delay", seconds=0.3), method="GET", path=f"{proxied.prefix}shared.bin",
                      times=-1)
    url = proxied.url("shared.bin")
    children = Children.start(tmp_path, proxied.config(), [[url]] * 4)
    children.release()
    results = children.finish()
    assert all(code == 0 for code, _, _ in results), results
    assert all(digests(out) == {url: digest(data)} for _, out, _ in results)
    gets = proxied.requests("GET", "shared.bin")
    starts = sorted(int((x.range or "").removeprefix("bytes=").split("-")[0]) for x in gets)
    assert starts == list(range(0, len(data), BLOCK))  # each block once, in all
    assert sum(x.body_bytes for x in gets) == len(data)
    assert len(proxied.requests("HEAD", "shared.bin")) == 4
    assert sum(stats_of(out)[1] for _, out, _ in results) == 4  # misses: one per block
    assert leftovers(proxied.folder) == []


def test_validate_after_trusts_a_head_and_known_etags_need_no_request(proxied: Proxied) -> None:
    old, new = payload(BLOCK + 1, 2), payload(BLOCK + 1, 3)
    proxied.put({"v.bin": old})
    url = proxied.url("v.bin")
    with aisio.Client(proxied.config()) as c:  # validate_after=0: each get(url) asks a HEAD
        assert c.get(url) == old and c.get(url) == old
        assert (len(proxied.requests("HEAD")), len(proxied.requests("GET"))) == (2, 2)
        info = next(iter(c.list(proxied.url(""))))
        proxied.proxy.clear()
        with c.open(url, info=info) as f:  # the listing's ETag: no request at all
            assert f.read() == old
        assert proxied.requests("HEAD") == proxied.requests("GET") == []
    with aisio.Client(proxied.config(validate_after=60)) as c:
        assert c.get(url) == old  # one HEAD, trusted 60 s by every process
        proxied.put({"v.bin": new})
        proxied.proxy.clear()
        assert c.get(url) == old  # within the minute: served as the HEAD said
    with aisio.Client(proxied.config(validate_after=60)) as c:
        assert c.get(url) == old
    assert proxied.requests("HEAD") == proxied.requests("GET") == []
    with aisio.Client(proxied.config()) as c:  # validate_after=0 asks, and reads the new one
        assert c.get(url) == new
    with aisio.Client(proxied.config(validate_after=math.inf)) as c:
        assert c.get(url) == new  # trusted for good from now on
        proxied.put({"v.bin": old})
        Store(proxied.folder, 1, BLOCK).clear()  # evicted: the trusted version must be fetched
        assert c.get(url) == old  # the store no longer has it: asked again, not an error
        assert c.get(url) == old


def test_an_object_replaced_between_the_head_and_the_get_is_read_in_its_new_version(
        proxied: Proxied) -> None:
    old, new = payload(BLOCK + 1, 5), payload(BLOCK + 1, 6)
    proxied.put({"r.bin": old})
    proxied.proxy.add(Fault("delay", seconds=0), method="GET", path=f"{proxied.prefix}r.bin",
                      hook=lambda: proxied.put({"r.bin": new}))
    with aisio.Client(proxied.config()) as c:
        assert c.get(proxied.url("r.bin")) == new
    assert len(proxied.requests("HEAD")) == 2  # the second HEAD names the new version


# -- several processes on one folder --


def test_the_limit_holds_while_processes_fill_the_cache_at_once(tmp_path: Path) -> None:
    folder, limit = str(tmp_path / "cache"), 6 * BLOCK + 2 * KiB
    objects = {}
    for i in range(24):
        path = tmp_path / f"o{i:02d}.bin"
        path.write_bytes(payload(2 * BLOCK - 100 * i, i))
        objects[str(path)] = path.read_bytes()
    config = aisio.ClientConfig(part_size=BLOCK, cache=aisio.CacheOptions(
        folder, max_bytes=limit, block_size=BLOCK))
    shares = [sorted(objects)[i::3] for i in range(3)]
    children = Children.start(tmp_path, config, shares, rounds=3)
    peak = samples = 0
    children.release()
    while any(p.poll() is None for p in children.procs):
        peak, samples = max(peak, folder_bytes(folder)), samples + 1
        time.sleep(0.001)
    results = children.finish()
    assert all(code == 0 for code, _, _ in results), results
    for share, (_, out, _) in zip(shares, results, strict=True):
        assert digests(out) == {u: digest(objects[u]) for u in share}
    assert samples > 10 and 0 < peak <= limit
    total, on_disk = ledger_and_disk(folder)
    assert total == on_disk <= limit and leftovers(folder) == []


@pytest.mark.parametrize("when", ["fetching", "writing"])
def test_a_process_killed_mid_fill_leaves_nothing_served_or_waited_on(
        proxied: Proxied, tmp_path: Path, when: str) -> None:
    data = payload(2 * BLOCK, 4)
    proxied.put({"k.bin": data})
    url = proxied.url("k.bin")
    stalled = threading.Event()
    env = {}
    if when == "fetching":  # the block's GET stalls halfway; the reader is killed meanwhile
        proxied.proxy.add(Fault("stall", after=BLOCK // 2, seconds=30), path=f"{proxied.prefix}k.bin",
                          range="bytes=0-", hook=stalled.set)
    else:  # the reader kills itself halfway through writing a block to the cache
        env = {"DIE_WRITING": "1"}
    children = Children.start(tmp_path, proxied.config(), [[url]], env=env)
    children.release()
    if when == "fetching":
        assert stalled.wait(30)
        children.procs[0].send_signal(signal.SIGKILL)
    (code, out, err), = children.finish()
    assert code == -signal.SIGKILL and out == "", err
    if when == "writing":  # a partial block was on disk, as a temp file
        assert any(n.endswith(".blk.tmp") for n in leftovers(proxied.folder))
    started = time.monotonic()
    with aisio.Client(proxied.config()) as c:  # read_timeout=60: a lock waited on would show
        assert c.get(url) == data
        first = c.statistics()
        assert c.get(url) == data
        second = c.statistics()
    assert time.monotonic() - started < 10
    assert first.cache_misses >= 1  # what the killed process had not stored is fetched again
    assert (second.cache_hits - first.cache_hits, second.cache_misses) == (2, first.cache_misses)
    assert leftovers(proxied.folder) == []
    total, on_disk = ledger_and_disk(proxied.folder)
    assert total == on_disk > 2 * BLOCK


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs none /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.parametrize("disk", ["full", "refusing"])
def test_a_cache_that_cannot_be_written_is_a_warning_not_a_failed_read(
        tmp_path: Path, disk: str) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    objects = {}
    for i in range(4):
        path = tmp_path / f"d{i}.bin"
        path.write_bytes(payload(2 * BLOCK, 10 + i))
        objects[str(path)] = digest(path.read_bytes())
    config = aisio.ClientConfig(part_size=BLOCK, cache=aisio.CacheOptions(
        str(folder), max_bytes=2**30, block_size=BLOCK))
    if disk == "full":  # a 200 KiB tmpfs: room for three blocks, the ledger thinks for 16 000
        if not _can_mount_tmpfs():
            pytest.skip("cannot mount a tmpfs here (needs unshare -rm and user namespaces)")
        wrap = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=200k aisio "{folder}" '
                '&& exec "$0" "$@"']
        env, reason = {}, "No space left on device"
    else:  # RLIMIT_FSIZE: the kernel refuses every block file (EFBIG)
        wrap, env, reason = [], {"FSIZE_LIMIT": str(BLOCK // 2)}, "File too large"
    children = Children.start(tmp_path, config, [sorted(objects)], rounds=2, env=env, wrap=wrap)
    children.release()
    (code, out, err), = children.finish()
    assert code == 0, err
    assert digests(out) == objects
    assert err.count("cannot write a block") == 1 and reason in err  # one warning per client
    hits, misses, _ = stats_of(out)
    assert hits + misses == 16  # 8 blocks, twice
    if disk == "full":
        assert 1 <= hits <= 3  # those that fit before the disk was full
    else:
        assert hits == 0
