"""The ``aisio`` command, in-process through ``main(argv)`` and as ``python -m aisio``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import aisio
from aisio import cli
from aisio.cli import UnsafeKeyError, main, parse_size, safe_destination

from .conftest import Store

KiB, MiB = 2**10, 2**20
COMMANDS = ["ls", "cat", "cp", "stat", "bench"]
_ENV_PREFIXES = ("AWS_", "AIS_", "AISIO_")


def payload(n: int, seed: int = 0) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[seed:seed + n] if n else b""


def put(store: Store, files: dict[str, bytes]) -> None:
    async def go() -> None:
        async with aisio.AsyncClient(store.config) as c:
            for key, data in files.items():
                await c.put(store.url(key), data)
    asyncio.run(go())


def store_env(store: Store) -> dict[str, str]:
    """The variables that make ClientConfig.from_env() reach ``store``."""
    if store.name == "s3":
        env: dict[str, str] = store.server.env()
        return env
    if store.name == "ais":
        return {"AIS_ENDPOINT": store.server.endpoint}
    return {}


@pytest.fixture
def env(store: Store, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the environment at the store; returns a full environment for subprocesses."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name)
    for name, value in store_env(store).items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


def run(argv: list[str], capsys: pytest.CaptureFixture[Any]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, command: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"aisio: {command}: "), err
    assert "Traceback" not in err
    return lines[0]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


FILES = {"a.txt": b"hello", "sub/b.bin": payload(3000), "sub/deep/c.bin": payload(10, 3)}


# ------------------------------------------------------------------------------------ ls


def test_ls_lists_one_level_then_everything(store: Store, env: dict[str, str], capsys: Any) -> None:
    put(store, FILES)
    code, out, err = run(["ls", store.prefix], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [store.url("a.txt"), store.url("sub/")]

    code, out, _ = run(["ls", "-r", store.prefix.rstrip("/")], capsys)
    assert code == 0
    assert out.splitlines() == [store.url(k) for k in sorted(FILES)]

    code, out, _ = run(["ls", "-l", "--recursive", store.url("sub/")], capsys)
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert [(r[0], r[-1]) for r in rows] == [("3000", store.url("sub/b.bin")),
                                            ("10", store.url("sub/deep/c.bin"))]

    code, out, _ = run(["ls", "-l", store.url("a.txt")], capsys)
    assert code == 0 and out.split()[0] == "5" and out.split()[-1] == store.url("a.txt")

    code, out, _ = run(["ls", "-l", "--human-readable", store.prefix], capsys)
    assert code == 0 and "5 B" in out and "DIR" in out


def test_ls_missing_prefix_is_an_error(store: Store, env: dict[str, str], capsys: Any) -> None:
    code, out, err = run(["ls", store.url("nothing/")], capsys)
    assert code == 1 and out == ""
    assert "nothing" in one_error_line(err, "ls")


# ------------------------------------------------------------------------------ stat/cat


def test_stat(store: Store, env: dict[str, str], capsys: Any) -> None:
    put(store, {"a.txt": b"hello"})
    code, out, err = run(["stat", store.url("a.txt")], capsys)
    assert (code, err) == (0, "")
    assert "size:          5 (5 B)" in out
    assert "etag:" in out and "last modified:" in out

    code, out, _ = run(["stat", "--json", store.url("a.txt")], capsys)
    record = json.loads(out)
    assert record["size"] == 5 and record["etag"]
    assert record["last_modified"] or store.name == "ais"  # the AIS backend reports no time yet

    code, out, err = run(["stat", store.url("missing.txt")], capsys)
    assert code == 1 and out == ""
    assert "missing.txt" in one_error_line(err, "stat")


@pytest.mark.parametrize(("spec", "piece"), [
    (None, slice(None)), ("2:5", slice(2, 5)), ("-3:", slice(-3, None)), (":4", slice(None, 4)),
    ("100000:", slice(100000, None)), ("7:7", slice(7, 7)), ("0:99999999", slice(0, None)),
])
def test_cat_whole_and_ranges(
    store: Store, env: dict[str, str], capsysbinary: Any, spec: str | None, piece: slice,
) -> None:
    data = payload(700 * KiB)
    put(store, {"obj.bin": data})
    argv = ["cat", "--part-size", "64KiB", store.url("obj.bin")]  # several windows
    if spec is not None:
        argv += ["--range", spec]
    code = main(argv)
    out, err = capsysbinary.readouterr()
    assert (code, err) == (0, b"")
    assert out == data[piece]


def test_cat_errors(store: Store, env: dict[str, str], capsys: Any) -> None:
    put(store, {"a.txt": b"hello"})
    code, _, err = run(["cat", store.url("nope.txt")], capsys)
    assert code == 1 and "nope.txt" in one_error_line(err, "cat")
    code, _, err = run(["cat", store.url("a.txt"), "--range", "10:"], capsys)
    assert code == 1 and "past the end" in one_error_line(err, "cat")
    code, _, err = run(["cat", store.prefix], capsys)
    assert code == 1 and "prefix" in one_error_line(err, "cat")
    code, _, err = run(["cat", "gopher://bucket/key"], capsys)
    assert code == 1 and "scheme" in one_error_line(err, "cat")


# ------------------------------------------------------------------------------------ cp


def test_cp_tree_up_and_down(store: Store, env: dict[str, str], tmp_path: Path, capsys: Any) -> None:
    src = tmp_path / "src"
    files = dict(FILES, **{"big/model.bin": payload(3 * MiB + 5, 7), "empty": b""})
    for key, data in files.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    remote = store.url("tree/")
    code, out, err = run(["cp", "-r", "-j", "3", "--part-size", "1MiB", str(src), remote], capsys)
    assert (code, out, err) == (0, "", "")

    back = tmp_path / "back"
    code, _, err = run(["cp", "--recursive", "--part-size", "1MiB", remote.rstrip("/"),
                        str(back) + "/"], capsys)
    assert (code, err) == (0, "")
    assert tree(back) == files
    assert not list(back.rglob(".*.part"))  # no temporary files left behind


def test_cp_single_objects(store: Store, env: dict[str, str], tmp_path: Path, capsys: Any) -> None:
    put(store, {"dir/a.txt": b"hello"})
    (tmp_path / "into").mkdir()
    assert main(["cp", store.url("dir/a.txt"), str(tmp_path / "into")]) == 0
    assert (tmp_path / "into" / "a.txt").read_bytes() == b"hello"
    assert main(["cp", store.url("dir/a.txt"), str(tmp_path / "new" / "b.txt")]) == 0
    assert (tmp_path / "new" / "b.txt").read_bytes() == b"hello"
    # store to store: into a prefix, and to a named object
    assert main(["cp", store.url("dir/a.txt"), store.url("copies/")]) == 0
    assert main(["cp", str(tmp_path / "new" / "b.txt"), store.url("copies/c.txt")]) == 0
    code, out, _ = run(["ls", "-r", store.url("copies/")], capsys)
    assert out.splitlines() == [store.url("copies/a.txt"), store.url("copies/c.txt")]

    code, _, err = run(["cp", store.url("dir/"), str(tmp_path)], capsys)
    assert code == 1 and "-r" in one_error_line(err, "cp")
    code, _, err = run(["cp", store.url("dir/missing"), str(tmp_path)], capsys)
    assert code == 1 and "missing" in one_error_line(err, "cp")
    code, _, err = run(["cp", "-r", store.url("void/"), str(tmp_path / "void")], capsys)
    assert code == 1 and "no objects" in one_error_line(err, "cp")
    code, _, err = run(["cp", "-r", store.url("dir/"), store.url("dir/sub/")], capsys)
    assert code == 1 and "into itself" in one_error_line(err, "cp")


def test_cp_between_s3_and_ais(
    s3_server: Any, ais_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any,
) -> None:
    for name, value in dict(s3_server.env(), AIS_ENDPOINT=ais_server.endpoint).items():
        monkeypatch.setenv(name, value)
    s3 = Store("s3", s3_server.config(), f"s3://aisio-test/cli-{os.getpid()}-x/", s3_server)
    put(s3, FILES)
    ais_prefix = f"ais://aisio-test/cli-{os.getpid()}-x/"
    assert main(["cp", "-r", s3.prefix, ais_prefix]) == 0
    assert main(["cp", "-r", ais_prefix, str(tmp_path / "out")]) == 0
    assert tree(tmp_path / "out") == FILES


def test_cp_progress_bar_and_without_tqdm(
    store: Store, env: dict[str, str], tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    put(store, {"a.bin": payload(4000)})
    code, _, err = run(["cp", "--progress", store.url("a.bin"), str(tmp_path / "a.bin")], capsys)
    assert code == 0 and "100%" in err and "cp" in err

    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now fails
    code, _, err = run(["cp", "--progress", store.url("a.bin"), str(tmp_path / "b.bin")], capsys)
    assert code == 0 and err.startswith("copied 1 object(s)")
    assert (tmp_path / "b.bin").read_bytes() == payload(4000)


# ------------------------------------------------------------------ path traversal guard


@pytest.mark.parametrize("rel", [
    "../evil", "a/../../evil", "a/..", "..", "/etc/passwd", "//x", "a/\x00b", "", ".", "a\\..\\..\\x",
])
def test_safe_destination_refuses(tmp_path: Path, rel: str) -> None:
    with pytest.raises(UnsafeKeyError):
        safe_destination(str(tmp_path), rel)


@pytest.mark.parametrize("rel", ["a", "a/b/c.txt", "a..b", "..a/b", "a/./b", "sp ace/x"])
def test_safe_destination_accepts(tmp_path: Path, rel: str) -> None:
    path = safe_destination(str(tmp_path), rel)
    assert path.startswith(str(tmp_path) + "/")


def test_safe_destination_refuses_symlink_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (tmp_path / "dst").mkdir()
    outside.mkdir()
    (tmp_path / "dst" / "link").symlink_to(outside)
    with pytest.raises(UnsafeKeyError, match="outside"):
        safe_destination(str(tmp_path / "dst"), "link/x.txt")


def test_cp_refuses_malicious_keys_from_a_bucket(
    s3_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any,
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    prefix = f"evil-{os.getpid()}/"
    s3 = s3_server.boto3_client()
    for key in ["ok.txt", "../../escape.txt", "sub/../../../up.txt", "/abs.txt"]:
        s3.put_object(Bucket="aisio-test", Key=prefix + key, Body=b"x")
    target = tmp_path / "a" / "b" / "dst"
    code, _, err = run(["cp", "-r", f"s3://aisio-test/{prefix}", str(target)], capsys)
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 3 and all(line.startswith("aisio: cp: ") for line in lines)
    assert all("refusing" in line for line in lines)
    assert tree(tmp_path) == {"a/b/dst/ok.txt": b"x"}  # nothing written anywhere else


def test_cp_refuses_keys_through_a_symlink(store: Store, env: dict[str, str], tmp_path: Path,
                                           capsys: Any) -> None:
    put(store, {"link/x.txt": b"x", "y.txt": b"y"})
    dst, outside = tmp_path / "dst", tmp_path / "outside"
    dst.mkdir()
    outside.mkdir()
    (dst / "link").symlink_to(outside)
    code, _, err = run(["cp", "-r", store.prefix, str(dst)], capsys)
    assert code == 1 and "outside" in one_error_line(err, "cp")
    assert list(outside.iterdir()) == [] and (dst / "y.txt").read_bytes() == b"y"


# --------------------------------------------------------------------------------- bench


def test_bench_object_and_prefix(store: Store, env: dict[str, str], capsys: Any) -> None:
    put(store, {"p/a.bin": payload(300 * KiB), "p/b.bin": payload(5000), "p/empty": b""})
    for url in (store.url("p/a.bin"), store.url("p/")):
        code, out, err = run(["bench", url, "--seconds", "0.3", "--concurrency", "4",
                              "--part-size", "64KiB", "--json"], capsys)
        assert (code, err) == (0, "")
        result = json.loads(out)
        assert result["reads"] > 0 and result["bytes"] > 0 and result["gb_per_s"] > 0
        assert result["requests"] >= result["reads"]
        assert 0 < result["p50_ms"] <= result["p99_ms"]
        assert result["concurrency"] == 4 and result["part_size"] == 64 * KiB
    code, out, _ = run(["bench", store.url("p/b.bin"), "--seconds", "0.2"], capsys)
    assert code == 0 and "GB/s" in out and "p50" in out and "p99" in out and "requests" in out


# ------------------------------------------------------------------ usage and exit codes


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command: str, capsys: Any) -> None:
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0 and out.startswith(f"usage: aisio {command}") and "--endpoint-url" in out


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["cat"], ["cp", "only-one"], ["cat", "x", "--range", "1-2"],
    ["cat", "--part-size", "huge", "x"], ["bench", "x", "--seconds", "0"], ["ls", "-z", "x"],
])
def test_usage_errors_exit_2(argv: list[str], capsys: Any) -> None:
    code, _, err = run(argv, capsys)
    assert code == 2 and "usage: aisio" in err


def test_settings_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-env:1")
    monkeypatch.setenv("AISIO_PART_SIZE", str(16 * MiB))
    parser = cli.build_parser()
    args = parser.parse_args(["--region", "eu-west-1", "ls", "s3://b/", "--ais-endpoint",
                              "http://ais:51080", "--max-concurrency", "7"])
    config = cli.config_from_args(args)
    assert config.s3.endpoint_url == "http://from-env:1" and config.s3.region == "eu-west-1"
    assert config.ais.endpoint == "http://ais:51080"
    assert (config.part_size, config.max_concurrency) == (16 * MiB, 7)
    args = parser.parse_args(["stat", "--endpoint-url", "http://x:2", "--part-size", "1MB", "a"])
    config = cli.config_from_args(args)
    assert (config.s3.endpoint_url, config.part_size) == ("http://x:2", 10**6)


@pytest.mark.parametrize(("text", "value"), [
    ("8388608", 8 * MiB), ("8M", 8 * MiB), ("8MiB", 8 * MiB), ("8MB", 8 * 10**6),
    ("1.5k", 1536), ("64 KiB", 64 * KiB),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_ctrl_c_in_process_exits_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async def interrupted(client: aisio.AsyncClient, args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._COMMANDS, "stat", interrupted)
    assert main(["stat", str(tmp_path / "x")]) == 130


def test_access_denied_is_one_line_without_the_token(
    monkeypatch: pytest.MonkeyPatch, capsys: Any,
) -> None:
    from aisio.testing._ais import local_ais

    with local_ais(targets=1, token="the-right-token") as ais:
        monkeypatch.setenv("AIS_ENDPOINT", ais.endpoint)
        monkeypatch.setenv("AIS_AUTHN_TOKEN", "s3cr3t-wrong-token")
        code, out, err = run(["stat", "ais://bucket/obj"], capsys)
    assert code == 1 and out == ""
    line = one_error_line(err, "stat")
    assert "s3cr3t" not in line and "the-right-token" not in line


# --------------------------------------------------------------------- as a subprocess


def aisio_cmd(*argv: str, env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aisio", *argv], env=env, capture_output=True,
                          text=True, timeout=60, **kw)


def test_subprocess_commands_and_exit_codes(store: Store, env: dict[str, str]) -> None:
    put(store, {"a.txt": b"hello", "sub/b.txt": b"bye"})
    done = aisio_cmd("ls", "-r", store.prefix, env=env)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [store.url("a.txt"), store.url("sub/b.txt")]
    done = aisio_cmd("cat", "--range", "1:", store.url("a.txt"), env=env)
    assert (done.returncode, done.stdout) == (0, "ello")

    done = aisio_cmd("stat", store.url("missing"), env=env)
    assert done.returncode == 1 and done.stdout == ""
    one_error_line(done.stderr, "stat")
    for secret in (env.get("AWS_SECRET_ACCESS_KEY"), env.get("AWS_ACCESS_KEY_ID")):
        assert not secret or secret not in done.stderr

    done = aisio_cmd("cat", env=env)
    assert done.returncode == 2 and "usage: aisio cat" in done.stderr


@pytest.fixture
def big_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "big.bin"
    path.write_bytes(payload(MiB))
    yield path


def test_subprocess_ctrl_c_exits_130(big_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "aisio", "bench", str(big_file), "--seconds", "60",
         "--concurrency", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("bench: ")  # running now
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130
    assert time.monotonic() - t0 < 20 and "Traceback" not in err


# ------------------------------------------------------- hostile names, sizes and pipes


def raw_files(root: Path, files: dict[bytes, bytes]) -> None:
    """Create files whose names are raw bytes (not necessarily UTF-8) under ``root``."""
    for name, data in files.items():
        path = os.fsencode(str(root)) + b"/" + name
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def test_printable_escapes_what_could_rewrite_a_terminal() -> None:
    assert cli.printable("plain/key with spaces, é and \\") == "plain/key with spaces, é and \\"
    assert cli.printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert cli.printable("new\nline\ttab\r\x00\x7f\x9b") == "new\\nline\\ttab\\r\\x00\\x7f\\x9b"
    assert cli.printable("rtl\u202eexe.txt\u2028") == "rtl\\u202eexe.txt\\u2028"
    assert cli.printable(os.fsdecode(b"caf\xe9")) == "caf\\xe9"  # a byte that is not UTF-8
    assert cli.printable("\ud800") == "\\ud800"


NASTY = {"esc\x1b[2J.txt": b"1", "tab\tbell\x07.txt": b"2", "rtl\u202egnp.exe": b"3", "ok.txt": b"4"}


def test_ls_escapes_control_characters_in_keys(
    store: Store, env: dict[str, str], capsys: Any
) -> None:
    nasty = dict(NASTY, **{"new\nline.txt": b"5"}) if store.name == "file" else NASTY
    put(store, nasty)
    code, out, err = run(["ls", "-r", store.prefix], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert all(line.isprintable() for line in lines)
    assert lines == [cli.printable(store.url(k)) for k in sorted(nasty)]
    code, out, _ = run(["stat", store.url("esc\x1b[2J.txt")], capsys)
    assert code == 0 and "\x1b" not in out
    assert ("esc%1B%5B2J.txt" if store.name == "file" else "esc\\x1b[2J.txt") in out


def test_ls_prints_file_names_that_are_not_utf8(tmp_path: Path, capsys: Any) -> None:
    raw_files(tmp_path, {b"caf\xe9.txt": b"x", b"ok.txt": b"y", b"sub/\xff\xfe": b"z"})
    code, out, err = run(["ls", "-r", str(tmp_path)], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"{tmp_path}/caf\\xe9.txt", f"{tmp_path}/ok.txt",
                                f"{tmp_path}/sub/\\xff\\xfe"]


def test_ls_and_cp_carry_on_past_a_key_that_cannot_be_named(
    s3_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any,
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    prefix = f"nul-{os.getpid()}/"
    s3 = s3_server.boto3_client()
    for key in ["a.txt", "bad\x00key.txt", "z.txt"]:  # S3 stores a NUL; no URL can name it
        s3.put_object(Bucket="aisio-test", Key=prefix + key, Body=key.encode())
    code, out, err = run(["ls", "-r", f"s3://aisio-test/{prefix}"], capsys)
    assert code == 1
    assert out.splitlines() == [f"s3://aisio-test/{prefix}a.txt", f"s3://aisio-test/{prefix}z.txt"]
    assert "bad\\x00key.txt" in one_error_line(err, "ls")

    code, _, err = run(["cp", "-r", f"s3://aisio-test/{prefix}", str(tmp_path / "dst")], capsys)
    assert code == 1 and "bad\\x00key.txt" in one_error_line(err, "cp")
    assert tree(tmp_path / "dst") == {"a.txt": b"a.txt", "z.txt": b"z.txt"}


def test_cp_r_carries_on_past_objects_it_cannot_copy(
    store: Store, env: dict[str, str], tmp_path: Path, capsys: Any,
) -> None:
    dst = tmp_path / "dst"
    (dst / "blocked").mkdir(parents=True)  # a folder where a file should go
    (dst / "blocked" / "mine").write_bytes(b"mine")
    (dst / "notdir").write_bytes(b"a file where a folder should go")
    good = {"a.txt": b"a", "sub/b.bin": payload(3000), "z.txt": b""}
    put(store, {**good, "blocked": b"no room", "notdir/x.txt": b"no room either"})
    bad = ["blocked", "notdir/x.txt"]
    if store.name == "file":
        # listed as a file of 0 bytes that has content: not readable as an object
        (Path(store.prefix) / "status").symlink_to("/proc/self/status")
        bad.append("status")
    if store.name == "s3":
        put(store, {"long/" + "n" * 300: b"a name too long for a local file system"})
        bad.append("long/" + "n" * 300)
    code, out, err = run(["cp", "-r", store.prefix, str(dst)], capsys)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert len(lines) == len(bad) and all(line.startswith("aisio: cp: ") for line in lines), err
    for name in bad:  # each failure on its own line, naming its object
        assert sum(f"/{name}" in line for line in lines) == 1, (name, err)
    assert "Traceback" not in err
    # the rest copied, nothing else touched, no temporary files
    assert tree(dst) == {**good, "blocked/mine": b"mine", "notdir": b"a file where a folder should go"}


def test_cp_r_of_names_a_store_cannot_hold(
    store: Store, env: dict[str, str], tmp_path: Path, capsys: Any,
) -> None:
    src = tmp_path / "src"
    raw_files(src, {b"caf\xe9.txt": b"latin-1 name", b"ok.txt": b"ok"})
    code, _, err = run(["cp", "-r", str(src), store.url("up/")], capsys)
    listed = run(["ls", "-r", store.url("up/")], capsys)[1].splitlines()
    if store.name == "file":  # a file name is bytes: copied as it is
        assert (code, err) == (0, "")
        assert listed == [cli.printable(store.url("up/" + os.fsdecode(b"caf\xe9.txt"))),
                          store.url("up/ok.txt")]
    else:  # an object key is Unicode
        assert code == 1 and "caf\\xe9.txt" in one_error_line(err, "cp")
        assert listed == [store.url("up/ok.txt")]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
@pytest.mark.parametrize("argv", [
    ["cat", "/proc/self/status"], ["stat", "/proc/self/status"],
    ["cp", "/proc/self/status", "{dst}"], ["cp", "-r", "{src}", "{dst}/"],
])
def test_a_size_that_is_not_known_is_an_error_not_an_empty_object(
    argv: list[str], tmp_path: Path, capsys: Any,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "status").symlink_to("/proc/self/status")
    argv = [a.format(src=src, dst=tmp_path / "dst") for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 1 and out == ""
    line = one_error_line(err, argv[0])
    assert "size unknown" in line and ("/proc/self/status" in line or "status" in line)
    assert not (tmp_path / "dst").exists() or tree(tmp_path / "dst") == {}


def read_one_byte_then_close(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``aisio argv`` as ``| head -c1`` would read it: (exit status, stderr)."""
    with subprocess.Popen([sys.executable, "-m", "aisio", *argv], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            assert len(proc.stdout.read(1)) == 1
            proc.stdout.close()
            err = proc.stderr.read().decode()
            return proc.wait(timeout=60), err
        finally:
            proc.kill()


def test_cat_to_a_reader_that_leaves_early_is_quiet(store: Store, env: dict[str, str]) -> None:
    put(store, {"big.bin": payload(2 * MiB)})  # far more than a pipe holds
    assert read_one_byte_then_close(["cat", store.url("big.bin")], env) == (141, "")


def test_ls_to_a_reader_that_leaves_early_is_quiet(tmp_path: Path) -> None:
    for i in range(3000):  # about 300 KB of names
        (tmp_path / f"{i:05}-{'x' * 60}").write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    assert read_one_byte_then_close(["ls", "-r", str(tmp_path)], env) == (141, "")


def test_a_closed_stdout_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    for argv in (["cat", "a.txt"], ["ls", "."]):
        done = subprocess.run(
            ["bash", "-c", 'exec "$@" >&-', "-", sys.executable, "-m", "aisio", *argv],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done
        assert done.stderr == f"aisio: {argv[0]}: stdout is closed\n"
