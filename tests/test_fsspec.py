"""aisio.fsspec: directory rules, reads, writes, errors, options, registration, pickling and fork.

Every test that takes ``store`` runs on each backend over loopback (local files, S3 on
moto, the AIS-protocol server); the options tests need no server.
"""

from __future__ import annotations

import importlib
import io
import multiprocessing
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import fsspec
import pytest

import aisio
import aisio.fsspec
from aisio.fsspec import AISFileSystem, AisioFileSystem, AisioLocalFileSystem
from tests.conftest import Store

CLASSES: dict[str, type[AisioFileSystem]] = {
    "file": AisioLocalFileSystem, "s3": AisioFileSystem, "ais": AISFileSystem}


@pytest.fixture
def fs(store: Store) -> Iterator[AisioFileSystem]:
    fs = CLASSES[store.name](config=store.config, skip_instance_cache=True)
    yield fs
    fs._client.close()


def root(fs: AisioFileSystem, store: Store) -> str:
    return str(fs._strip_protocol(store.prefix))


def gets(fs: AisioFileSystem) -> int:
    return fs.statistics().requests


# -- directories are prefixes ----------------------------------------------------------------


def test_directories_are_prefixes(fs: AisioFileSystem, store: Store) -> None:
    r = root(fs, store)
    fs.pipe({f"{r}/a/x": b"x" * 3, f"{r}/a/sub/y": b"yy", f"{r}/top": b"t"})
    assert fs.ls(r, detail=False) == [f"{r}/a", f"{r}/top"]
    assert fs.ls(f"{r}/a", detail=False) == [f"{r}/a/sub", f"{r}/a/x"]
    info = fs.info(f"{r}/a/x")
    assert (info["type"], info["size"], info["name"]) == ("file", 3, f"{r}/a/x")
    assert info["ETag"] and (info["mtime"] is not None or store.name == "ais")  # AIS lists no times
    assert fs.info(f"{r}/a") == {"name": f"{r}/a", "size": 0, "type": "directory"}
    assert fs.isdir(f"{r}/a/sub") and not fs.isfile(f"{r}/a/sub")
    assert fs.isfile(f"{r}/top") and not fs.exists(f"{r}/nope")
    assert fs.find(r) == [f"{r}/a/sub/y", f"{r}/a/x", f"{r}/top"]
    assert fs.find(r, withdirs=True, maxdepth=2) == [r, f"{r}/a", f"{r}/a/sub", f"{r}/a/x", f"{r}/top"]
    assert fs.glob(f"{r}/**/y") == [f"{r}/a/sub/y"]
    assert fs.glob(f"{r}/a/*") == [f"{r}/a/sub", f"{r}/a/x"]
    assert fs.du(r) == 6
    assert [(d, sorted(dirs), sorted(files)) for d, dirs, files in fs.walk(r)] == [
        (r, ["a"], ["top"]), (f"{r}/a", ["sub"], ["x"]), (f"{r}/a/sub", [], ["y"])]
    # mkdir makes nothing visible inside a bucket: a prefix exists once an object is under it
    fs.mkdir(f"{r}/empty")
    fs.makedirs(f"{r}/empty/deeper", exist_ok=True)
    assert not fs.exists(f"{r}/empty")
    fs.rm(f"{r}/a", recursive=True)
    assert fs.ls(r, detail=False) == [f"{r}/top"]
    if store.name == "file":  # rm -r takes the folders with it, as a store would
        assert sorted(os.listdir(r)) == ["empty", "top"]


def test_listing_cache_follows_own_writes(fs: AisioFileSystem, store: Store) -> None:
    r = root(fs, store)
    fs.pipe(f"{r}/d/one", b"1")
    assert fs.ls(f"{r}/d", detail=False) == [f"{r}/d/one"]
    fs.pipe(f"{r}/d/two", b"22")
    with fs.open(f"{r}/d/three", "wb") as f:
        f.write(b"333")
    assert fs.ls(f"{r}/d", detail=False) == [f"{r}/d/one", f"{r}/d/three", f"{r}/d/two"]
    fs.rm(f"{r}/d/one")
    assert fs.ls(f"{r}/d", detail=False) == [f"{r}/d/three", f"{r}/d/two"]
    # a write by someone else shows after refresh (or invalidate_cache), as with s3fs
    with aisio.Client(store.config) as c:
        c.put(store.url("d/four"), b"4444")
    assert f"{r}/d/four" not in fs.ls(f"{r}/d", detail=False)
    assert f"{r}/d/four" in fs.ls(f"{r}/d", detail=False, refresh=True)
    # listed entries spare the HEAD: info, isfile and open of listed files cost no request
    before = gets(fs)
    assert fs.info(f"{r}/d/four")["size"] == 4 and fs.isfile(f"{r}/d/two")
    assert gets(fs) == before


def test_listing_matches_s3fs(s3_server: Any) -> None:
    s3fs = pytest.importorskip("s3fs")
    options = {"key": s3_server.access_key_id, "secret": s3_server.secret_access_key,
               "client_kwargs": {"endpoint_url": s3_server.endpoint_url, "region_name": s3_server.region}}
    ours = AisioFileSystem(skip_instance_cache=True, **options)
    theirs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    r = f"aisio-test/vs-s3fs-{os.getpid()}"
    ours.pipe({f"{r}/a/x": b"1", f"{r}/a/b/y": b"22", f"{r}/a.txt": b"333", f"{r}/z": b""})
    for fs in (ours, theirs):
        fs.invalidate_cache()
    for call in (lambda fs: fs.ls(r, detail=False), lambda fs: fs.ls(f"{r}/a", detail=False),
                 lambda fs: fs.find(r), lambda fs: fs.find(r, maxdepth=1),
                 lambda fs: fs.glob(f"{r}/a*"), lambda fs: fs.glob(f"{r}/**"),
                 lambda fs: fs.glob(f"{r}/*/*"), lambda fs: fs.info(f"{r}/a")["type"],
                 lambda fs: fs.info(f"{r}/a.txt")["size"], lambda fs: fs.du(r),
                 lambda fs: fs.exists(f"{r}/a/b"), lambda fs: fs.exists(f"{r}/a/c"),
                 lambda fs: fs.cat_file(f"{r}/a.txt", start=1, end=100),  # s3fs: version_id second
                 lambda fs: fs.cat_file(f"{r}/a.txt", start=-2),
                 lambda fs: fs.ls(f"{r}/a.txt", detail=False), lambda fs: fs.find(f"{r}/a/x"),
                 lambda fs: fs.checksum(f"{r}/a/x")):
        for fs in (ours, theirs):
            fs.invalidate_cache()
        assert call(ours) == call(theirs)
    assert ours.info(f"{r}/a/x")["ETag"] == theirs.info(f"{r}/a/x")["ETag"]
    ours.rm(r, recursive=True)
    theirs.invalidate_cache()
    assert not theirs.exists(r)
    ours._client.close()


# -- reads -----------------------------------------------------------------------------------


def test_cat_file_clips_ranges_as_fsspec_does(fs: AisioFileSystem, store: Store) -> None:
    r = root(fs, store)
    data = bytes(range(100))
    fs.pipe(f"{r}/obj", data)
    for start in (None, 10, 99, 150, -1, -30, -200):
        for end in (None, 0, 60, 100, 1000, -50, -500):
            assert fs.cat_file(f"{r}/obj", start, end) == data[start:end], (start, end)
    assert fs.cat(f"{r}/obj") == data and fs.read_block(f"{r}/obj", 10, 5) == data[10:15]


def test_cat_ranges_share_gets(fs: AisioFileSystem, store: Store) -> None:
    r = root(fs, store)
    a, b = os.urandom(50_000), os.urandom(3000)
    fs.pipe({f"{r}/a": a, f"{r}/b": b})
    paths = [f"{r}/a", f"{r}/b", f"{r}/a", f"{r}/a", f"{r}/missing"]
    starts, ends = [0, 10, 100, 40_000, 0], [50, 2000, 9000, 60_000, 5]
    before = gets(fs)
    out = fs.cat_ranges(paths, starts, ends)
    assert out[:4] == [a[0:50], b[10:2000], a[100:9000], a[40_000:60_000]]
    assert isinstance(out[4], FileNotFoundError)
    # nearby ranges of one object share a GET: a, b (the past-the-end range costs a HEAD
    # and a second GET of a); the missing object one GET
    assert gets(fs) - before <= 4
    with pytest.raises(FileNotFoundError):
        fs.cat_ranges(paths, starts, ends, on_error="raise")
    assert fs.cat_ranges([f"{r}/a"] * 3, [-10, 0, 5], [None, 3, 5]) == [a[-10:], a[:3], b""]


def test_open_reads_ahead_in_blocks(fs: AisioFileSystem, store: Store) -> None:
    r = root(fs, store)
    data = os.urandom(300_000)
    fs.pipe(f"{r}/obj", data)
    fs.invalidate_cache()
    with fs.open(f"{r}/obj", block_size=64 * 1024) as f:
        assert (f.size, f.seekable(), f.readable(), f.info()["size"]) == (300_000, True, True, 300_000)
        before = gets(fs)
        f.seek(-8, io.SEEK_END)  # a Parquet footer: length and magic, then the metadata
        assert f.read(8) == data[-8:]
        f.seek(-2000, io.SEEK_END)
        assert f.read(1992) == data[-2000:-8]
        assert gets(fs) - before == 2
        f.seek(1000)
        chunks = [f.read(100) for _ in range(300)]  # 30 KB of small reads: one block
        assert b"".join(chunks) == data[1000:31_000]
        assert gets(fs) - before == 3
        f.seek(100_000)
        assert f.read(150_000) == data[100_000:250_000]  # larger than a block: straight through
        assert f.read() == data[250_000:] and f.read(10) == b""
    assert f.closed
    with fs.open(f"{r}/obj", cache_type="none") as f:
        before = gets(fs)
        assert f.read(10) == data[:10] and f.read(10) == data[10:20]
        assert gets(fs) - before == 2
    fs.pipe(f"{r}/lines", b"one\ntwo\nthree")
    with fs.open(f"{r}/lines", "r") as t:
        assert t.readlines() == ["one\n", "two\n", "three"]


def test_write_files(fs: AisioFileSystem, store: Store) -> None:
    r = root(fs, store)
    big = os.urandom(11 * 2**20 + 5)  # three parts at the store fixture's 5 MiB
    with fs.open(f"{r}/big", "wb") as f:
        for i in range(0, len(big), 3 * 2**20):
            f.write(big[i:i + 3 * 2**20])
        assert f.tell() == len(big)
    assert fs.size(f"{r}/big") == len(big) and fs.cat_file(f"{r}/big") == big
    with pytest.raises(RuntimeError), fs.open(f"{r}/failed", "wb") as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert not fs.exists(f"{r}/failed")  # an aborted upload never appears
    with fs.open(f"{r}/text", "w") as t:
        t.write("héllo\n")
    assert fs.cat(f"{r}/text") == "héllo\n".encode()
    with pytest.raises(FileExistsError):
        fs.open(f"{r}/text", "xb")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{r}/text", b"x", mode="create")
    with fs.open(f"{r}/new", "xb") as f:
        f.write(b"first")
    assert fs.cat(f"{r}/new") == b"first"


def test_put_get_copy_move(fs: AisioFileSystem, store: Store, tmp_path: Any) -> None:
    r = root(fs, store)
    data = os.urandom(12 * 2**20)  # large enough to copy part by part
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    sizes: list[int] = []

    class Progress(fsspec.callbacks.Callback):  # type: ignore[misc]
        def set_size(self, size: int) -> None:
            sizes.append(size)

    fs.put_file(str(local), f"{r}/up.bin", callback=Progress())
    assert fs.cat(f"{r}/up.bin") == data and sizes == [len(data)]
    fs.cp_file(f"{r}/up.bin", f"{r}/copy/of.bin")
    fs.get(f"{r}/copy/of.bin", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == data
    fs.mv(f"{r}/copy", f"{r}/moved", recursive=True)
    assert fs.find(r) == [f"{r}/moved/of.bin", f"{r}/up.bin"]
    fs.get(f"{r}/moved", str(tmp_path / "tree"), recursive=True)
    assert (tmp_path / "tree" / "of.bin").read_bytes() == data
    into = io.BytesIO()
    fs.get_file(f"{r}/up.bin", None, outfile=into)
    assert into.getvalue() == data


def test_checksum_ukey_modified(fs: AisioFileSystem, store: Store) -> None:
    r = root(fs, store)
    fs.pipe(f"{r}/obj", b"one")
    first = fs.checksum(f"{r}/obj"), fs.ukey(f"{r}/obj")
    fs.invalidate_cache()
    assert (fs.checksum(f"{r}/obj"), fs.ukey(f"{r}/obj")) == first
    if store.name == "ais":  # the AIS-protocol server sends no Last-Modified
        with pytest.raises(NotImplementedError):
            fs.modified(f"{r}/obj")
    else:
        assert fs.modified(f"{r}/obj").tzinfo is not None
    fs.pipe(f"{r}/obj", b"two, longer")
    second = fs.checksum(f"{r}/obj"), fs.ukey(f"{r}/obj")
    assert second[0] != first[0] and second[1] != first[1]


# -- errors ----------------------------------------------------------------------------------


def test_errors_are_the_builtin_ones(fs: AisioFileSystem, store: Store) -> None:
    r = root(fs, store)
    fs.pipe(f"{r}/dir/obj", b"data")
    for call in (lambda: fs.cat(f"{r}/missing"), lambda: fs.info(f"{r}/missing"),
                 lambda: fs.open(f"{r}/missing"), lambda: fs.ls(f"{r}/missing"),
                 lambda: fs.rm(f"{r}/missing"), lambda: fs.get_file(f"{r}/missing", os.devnull)):
        with pytest.raises(FileNotFoundError):
            call()
    for call in (lambda: fs.open(f"{r}/dir"), lambda: fs.cat_file(f"{r}/dir")):
        with pytest.raises(IsADirectoryError):
            call()
    with pytest.raises(NotImplementedError):
        fs.open(f"{r}/dir/obj", "ab")
    if store.name != "file":  # aisio neither lists nor makes buckets
        for call in (lambda: fs.ls(""), lambda: fs.mkdir("no-such-bucket-aisio")):
            with pytest.raises(NotImplementedError):
                call()
    with pytest.raises(ValueError):
        fs.open(f"{r}/dir/obj", "rb", cache_type="blockcache")


def test_access_denied_is_permission_error() -> None:
    from aisio.testing import local_ais

    with local_ais(targets=1, token="right") as ais:
        ais.create_bucket("b")
        good = AISFileSystem(endpoint=ais.endpoint, token="right", skip_instance_cache=True)
        good.pipe("b/obj", b"secret")
        bad = AISFileSystem(endpoint=ais.endpoint, token="wrong", skip_instance_cache=True)
        for call in (lambda: bad.cat("b/obj"), lambda: bad.info("b/obj"), lambda: bad.ls("b"),
                     lambda: bad.pipe("b/other", b"x")):
            with pytest.raises(PermissionError):
                call()
        assert good.ls("b", detail=False) == ["b/obj"]
        for fs in (good, bad):
            fs._client.close()


# -- asynchronous use ------------------------------------------------------------------------


async def test_asynchronous_in_the_callers_loop(ais_server: Any) -> None:
    fs = AISFileSystem(endpoint=ais_server.endpoint, asynchronous=True, skip_instance_cache=True)
    r = f"aisio-test/async-{os.getpid()}"
    await fs._pipe_file(f"{r}/x", b"hello")
    assert await fs._cat_file(f"{r}/x", 1, 3) == b"el"
    assert await fs._ls(r, detail=False) == [f"{r}/x"]
    assert (await fs._info(f"{r}/x"))["size"] == 5
    await fs._rm(r, recursive=True)
    assert not await fs._exists(f"{r}/x")
    await fs.aclose()


# -- pickling, fork, spawn -------------------------------------------------------------------


def _read_in_forked_child(fs: AisioFileSystem, path: str, out: Any) -> None:
    try:
        out.send(fs.cat_file(path))  # the parent's object, its loop thread gone after fork
    except BaseException as exc:
        out.send(repr(exc))


@pytest.mark.parametrize("backend", ["s3", "ais"])
def test_pickles_and_works_after_fork(backend: str, request: pytest.FixtureRequest) -> None:
    from tests.conftest import make_store

    store = make_store(backend, request)
    fs = CLASSES[backend](config=store.config)
    path = f"{root(fs, store)}/obj"
    fs.pipe(path, b"payload")
    assert fs.cat(path) == b"payload"  # the loop thread and connections exist now
    assert pickle.loads(pickle.dumps(fs)) is fs  # same options, same process: fsspec's cached instance
    # forked: the same object, with no loop thread in the child until it makes its own
    parent_end, child_end = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(
        target=_read_in_forked_child, args=(fs, path, child_end))
    child.start()
    assert parent_end.recv() == b"payload"
    child.join(30)
    assert child.exitcode == 0
    # spawned: a fresh interpreter rebuilds the filesystem from its pickle
    script = "import pickle, sys; fs = pickle.loads(sys.stdin.buffer.read()); " \
             f"sys.stdout.buffer.write(fs.cat_file({path!r}))"
    done = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(fs),
                          capture_output=True, timeout=60, check=True)
    assert done.stdout == b"payload"


# -- storage options -------------------------------------------------------------------------


def test_s3fs_options_map_onto_client_config() -> None:
    fs = AisioFileSystem(
        key="AKID", secret="s3cr3t-value", token="sess-token", requester_pays=True,
        skip_instance_cache=True,
        client_kwargs={"endpoint_url": "http://minio:9000", "region_name": "eu-west-1",
                       "verify": "/etc/ca.pem"},
        config_kwargs={"s3": {"addressing_style": "path"}, "connect_timeout": 3,
                       "read_timeout": 7, "retries": {"max_attempts": 9}, "max_pool_connections": 20})
    s3, cfg = fs.config.s3, fs.config
    assert (s3.endpoint_url, s3.region, s3.force_path_style, s3.requester_pays) == (
        "http://minio:9000", "eu-west-1", True, True)
    assert (s3.access_key_id, s3.secret_access_key, s3.session_token) == (
        "AKID", "s3cr3t-value", "sess-token")
    assert (cfg.ca_bundle, cfg.connect_timeout, cfg.read_timeout, cfg.max_attempts,
            cfg.max_concurrency) == ("/etc/ca.pem", 3.0, 7.0, 10, 20)
    assert "s3cr3t" not in repr(fs.config) and "sess-token" not in repr(fs)  # secrets stay out of reprs
    anon = AisioFileSystem(anon=True, endpoint_url="minio:9000", use_ssl=False,
                           skip_instance_cache=True)
    assert anon.config.s3.unsigned and anon.config.s3.endpoint_url == "http://minio:9000"
    import botocore

    unsigned = AisioFileSystem(config_kwargs={"signature_version": botocore.UNSIGNED},
                               skip_instance_cache=True)
    assert unsigned.config.s3.unsigned
    aliased = AisioFileSystem(username="u", password="p", skip_instance_cache=True)  # s3fs's aliases
    assert aliased.config.s3.access_key_id == "u"
    base = aisio.ClientConfig(part_size=2**20)
    tuned = AisioFileSystem(config=base, profile="dev", max_concurrency=3, skip_instance_cache=True)
    assert (tuned.config.part_size, tuned.config.s3.profile, tuned.config.max_concurrency) == (
        2**20, "dev", 3)
    ais = AISFileSystem(endpoint="http://gw:51080", token="tok", provider="aws", skip_instance_cache=True)
    assert (ais.config.ais.endpoint, ais.config.ais.token, ais._loc("b/k").url) == (
        "http://gw:51080", "tok", "ais://b/k?provider=aws")


@pytest.mark.parametrize(("cls", "options", "error"), [
    (AisioFileSystem, {"bogus": 1}, TypeError),
    (AisioFileSystem, {"version_aware": True}, TypeError),  # s3fs has it; aisio does not
    (AisioFileSystem, {"endpoint": "http://gw"}, TypeError),  # an ais:// option
    (AISFileSystem, {"endpoint_url": "http://s3"}, TypeError),  # an s3:// option
    (AisioLocalFileSystem, {"key": "k", "secret": "s"}, TypeError),
    (AisioFileSystem, {"client_kwargs": {"config": object()}}, TypeError),
    (AisioFileSystem, {"config_kwargs": {"retries": {"mode": "adaptive"}}}, TypeError),
    (AisioFileSystem, {"key": "k"}, ValueError),  # no secret
    (AisioFileSystem, {"anon": True, "key": "k", "secret": "s"}, ValueError),
    (AisioFileSystem, {"endpoint_url": "http://a", "client_kwargs": {"endpoint_url": "http://b"}},
     ValueError),
    (AisioFileSystem, {"config_kwargs": {"signature_version": "s3"}}, ValueError),
    (AisioFileSystem, {"default_cache_type": "bytes"}, ValueError),
    (AisioFileSystem, {"config": {"part_size": 1}}, TypeError),
    (AISFileSystem, {"provider": "dropbox"}, ValueError),
])
def test_options_aisio_cannot_honour_raise(cls: type[AisioFileSystem], options: dict[str, Any],
                                           error: type[Exception]) -> None:
    with pytest.raises(error):
        cls(skip_instance_cache=True, **options)


def test_instances_are_cached_by_every_config_field() -> None:
    one = aisio.ClientConfig(s3=aisio.S3Options(access_key_id="a", secret_access_key="one"))
    two = aisio.ClientConfig(s3=aisio.S3Options(access_key_id="a", secret_access_key="two"))
    assert repr(one) == repr(two)  # the secrets are out of the repr fsspec caches by
    assert AisioFileSystem(config=one) is AisioFileSystem(config=one)
    assert AisioFileSystem(config=one) is not AisioFileSystem(config=two)
    assert AisioFileSystem(config=two).config.s3.secret_access_key == "two"


# -- registration ----------------------------------------------------------------------------


@pytest.fixture
def registry() -> Iterator[None]:
    """Put fsspec's registry back as it was: a test's opt-in must not leak to others."""
    held = importlib.import_module("fsspec.registry")._registry  # the mutable one behind the proxy
    saved = dict(held)
    yield
    held.clear()
    held.update(saved)


def _run(code: str, tmp_path: Any, **env: str) -> str:
    """Run ``code`` in a fresh interpreter outside the repository (as a user would)."""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_ais_found_through_the_entry_point_without_import(tmp_path: Any) -> None:
    out = _run("import sys, fsspec\n"
               "fs = fsspec.filesystem('ais', endpoint='http://127.0.0.1:1')\n"
               "print(type(fs).__module__, type(fs).__name__, 'aisio.fsspec' in sys.modules)\n"
               "print(fsspec.get_filesystem_class('s3').__module__)", tmp_path)
    first, second = out.splitlines()
    assert first == "aisio.fsspec._filesystem AISFileSystem True"
    assert not second.startswith("aisio")  # s3:// stays s3fs's


def test_s3_is_aisios_only_when_asked(registry: None, tmp_path: Any) -> None:
    assert fsspec.get_filesystem_class("ais") is AISFileSystem
    assert fsspec.get_filesystem_class("s3") is not AisioFileSystem
    assert fsspec.get_filesystem_class("file") is not AisioLocalFileSystem
    aisio.fsspec.register("s3")
    assert fsspec.get_filesystem_class("s3") is AisioFileSystem
    aisio.fsspec.register("file")
    assert isinstance(fsspec.filesystem("file", skip_instance_cache=True), AisioLocalFileSystem)
    with pytest.raises(ValueError):
        aisio.fsspec.register("gs")
    out = _run("import fsspec, aisio.fsspec\nprint(fsspec.get_filesystem_class('s3').__name__, "
               "fsspec.get_filesystem_class('s3a').__name__)", tmp_path, AISIO_FSSPEC_S3="1")
    assert out == "AisioFileSystem AisioFileSystem"


def test_urls_through_fsspec_open(registry: None, ais_server: Any, s3_server: Any) -> None:
    aisio.fsspec.register("s3")
    s3 = s3_server
    options = {"key": s3.access_key_id, "secret": s3.secret_access_key,
               "client_kwargs": {"endpoint_url": s3.endpoint_url, "region_name": s3.region}}
    url = f"s3://aisio-test/via-open-{os.getpid()}.txt"
    with fsspec.open(url, "wt", **options) as f:
        f.write("through s3://")
    with fsspec.open(url, "rt", **options) as f:
        assert f.read() == "through s3://"
    assert isinstance(fsspec.core.url_to_fs(url, **options)[0], AisioFileSystem)
    fs, path = fsspec.core.url_to_fs("ais://aisio-test/u/x", endpoint=ais_server.endpoint)
    assert isinstance(fs, AISFileSystem) and path == "aisio-test/u/x"
    fs.pipe(path, b"ais")
    assert fsspec.open("ais://aisio-test/u/x", endpoint=ais_server.endpoint).open().read() == b"ais"
