"""``local_rgw()``: Ceph's RADOS Gateway, a production S3, on loopback for tests.

One throwaway Ceph cluster per block, in a temporary folder: a monitor, one OSD that
keeps everything in RAM (``memstore``) and ``radosgw`` with its beast frontend on
127.0.0.1, plus a user with known keys. Ceph 16.2 (Pacific, Debian 12) has no
stand-alone store for the gateway, hence the monitor and the OSD. Tuned as below it
answers its first S3 request about 1.5 s after the block starts (on two shared cores);
stopping takes well under a second: every daemon is killed (SIGKILL, by pid) since
nothing in it is worth saving, and a memstore OSD sent SIGTERM would first write all
its RAM to disk.

Settings that matter, found the hard way:

- ``auth ... required = none``: no keyrings to make; with it radosgw waits for ever for
  its monitor session unless ``ms mon client mode`` allows ``crc``.
- ``paxos propose interval`` (1 s by default) paces every pool the gateway creates at
  start; 0.05 s brings the start from about 13 s to a few.
- one placement group per pool, pool size 1, no CRUSH host level: one OSD is a cluster.
- ``mon data avail crit = 0``: the monitor would stop itself when the disk holding the
  temporary folder is 95% full.
- deleted objects give their space back within seconds (the gateway's garbage collector
  waits two hours by default).
- relaxed bucket names: a bucket may have capitals (``AisioTest``), which no client can
  address as a virtual host, so botocore sends it path-style even from an endpoint
  given by host name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .._config import ClientConfig
from ..errors import MissingDependencyError
from ._s3 import LocalS3, free_port

__all__ = ["LocalRGW", "local_rgw"]

_KEY_ID = "aisio-rgw-key"
_SECRET = "aisio-rgw-secret"

# the program each step runs, and the Debian package that installs it
_PROGRAMS = {"ceph-mon": "ceph-mon", "monmaptool": "ceph-mon", "ceph-osd": "ceph-osd",
             "ceph": "ceph-mon", "radosgw": "radosgw", "radosgw-admin": "radosgw"}
PACKAGES = ("radosgw", "ceph-mon", "ceph-osd")
INSTALL = "apt-get install -y --no-install-recommends " + " ".join(PACKAGES)
"""The command that installs what ``local_rgw()`` runs (as root, on Debian or Ubuntu)."""

DEFAULT_MEMORY = 3 * 2**30
"""Bytes the OSD may hold by default; it keeps every object in RAM."""


def missing_programs() -> list[str]:
    """The programs ``local_rgw()`` needs that are not on PATH (empty when all are there)."""
    return [p for p in _PROGRAMS if shutil.which(p) is None]


def check_installed() -> None:
    """Raise MissingDependencyError naming the packages to install, if any program is missing."""
    missing = missing_programs()
    if missing:
        packages = [p for p in PACKAGES if p in {_PROGRAMS[m] for m in missing}]
        raise MissingDependencyError(
            f"local_rgw() needs Ceph's {', '.join(packages)} (missing: {', '.join(missing)}); "
            f"as root: apt-get update && {INSTALL}")


def _conf(root: str, fsid: str, mon_port: int, frontend: str, memory: int) -> str:
    return f"""\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
run dir = {root}/run
admin socket = {root}/run/$name.asok
log file = {root}/log/$name.log
err to stderr = true
log to stderr = false
debug ms = 0/0
debug rgw = 0/0
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 1
osd pool default pgp num = 1
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
paxos propose interval = 0.05
mon data avail crit = 0
mon data avail warn = 0

[mon.a]
mon data = {root}/mon

[osd.0]
osd data = {root}/osd
osd objectstore = memstore
memstore device bytes = {memory}

[client.rgw]
rgw frontends = beast {frontend}
rgw enable usage log = false
rgw enable ops log = false
rgw gc obj min wait = 0
rgw gc processor period = 5
rgw relaxed s3 bucket names = true
"""


@dataclass
class LocalRGW(LocalS3):
    """A running RADOS Gateway on loopback: its endpoint, a user's keys, the daemons."""

    access_key_id: str = _KEY_ID
    secret_access_key: str = _SECRET
    root: str = ""
    """The temporary folder: ``ceph.conf``, the monitor's store and every log (``log/``)."""
    pids: tuple[int, ...] = ()
    """The monitor, OSD and gateway processes, in that order."""
    version: tuple[int, ...] = ()
    """Ceph's version, e.g. ``(16, 2, 15)``: behaviours differ between releases."""
    ca_bundle: str | None = None
    """The CA that signed the gateway's certificate (HTTPS only), for config() and boto3."""
    _boto3: Any = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def config(self, **changes: Any) -> ClientConfig:
        """A ClientConfig that reaches this gateway (and trusts its CA, over HTTPS)."""
        if self.ca_bundle is not None:
            changes.setdefault("ca_bundle", self.ca_bundle)
        return ClientConfig(s3=self.s3_options(), **changes)

    def boto3_client(self) -> Any:
        """A boto3 client for this gateway, as this user: one, shared, closed at the end.

        Shared because the gateway keeps connections open (moto closes them): a client
        per call would leave sockets for the garbage collector, a ResourceWarning each.
        """
        with self._lock:
            if self._boto3 is None:
                import boto3

                self._boto3 = boto3.client(
                    "s3", endpoint_url=self.endpoint_url, region_name=self.region,
                    aws_access_key_id=self.access_key_id,
                    aws_secret_access_key=self.secret_access_key,
                    verify=self.ca_bundle if self.ca_bundle is not None else True)
            return self._boto3

    def _close(self) -> None:
        with self._lock:
            client, self._boto3 = self._boto3, None
        if client is not None:
            client.close()

    def admin(self, *args: str) -> str:
        """Run ``radosgw-admin`` against this cluster; its standard output."""
        return _run(self.root, ["radosgw-admin", *args], timeout=60)


def _run(root: str, argv: list[str], timeout: float) -> str:
    done = subprocess.run([argv[0], "-c", f"{root}/ceph.conf", *argv[1:]], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode:
        raise RuntimeError(f"local_rgw(): {' '.join(argv[:3])} failed ({done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    return done.stdout


class _Cluster:
    """The daemons of one local_rgw() block; stop() kills whatever was started."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        out = open(f"{self.root}/log/{name}.out", "wb")  # noqa: SIM115 (the child keeps it)
        with out:
            proc = subprocess.Popen([argv[0], "-c", f"{self.root}/ceph.conf", "-f", *argv[1:]],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)  # a Ctrl-C is ours to handle
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"local_rgw(): {name} exited ({proc.returncode}) while "
                                   f"starting: {self.tail(name)}")

    def tail(self, name: str) -> str:
        with contextlib.suppress(OSError), open(f"{self.root}/log/{name}.out", "rb") as f:
            return f.read()[-2000:].decode(errors="replace").strip() or "(no output)"
        return "(no output)"

    def stop(self) -> None:
        # SIGKILL for all: a memstore OSD would save its RAM to disk on SIGTERM, and the
        # gateway and the monitor each take about 2 s to stop gracefully for nothing
        for _, proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        for _, proc in self.procs:
            proc.wait()


@functools.cache
def _version() -> tuple[int, ...]:
    out = subprocess.run(["radosgw", "--version"], capture_output=True, text=True, timeout=30,
                         check=False).stdout
    words = out.split()  # "ceph version 16.2.15 (<commit>) pacific (stable)"
    if len(words) < 3:
        return ()
    return tuple(int(n) for n in words[2].split("-")[0].split(".") if n.isdigit())


def _wait_for_http(cluster: _Cluster, url: str, deadline: float) -> None:
    probe = ssl.create_default_context()
    probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE  # up, not trusted: the caller's
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2, context=probe):
                return
        except urllib.error.HTTPError:
            return  # any S3 answer will do
        except OSError:
            pass
        cluster.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"local_rgw(): no answer from {url} in time; logs in "
                               f"{cluster.root}/log")
        time.sleep(0.05)


@contextlib.contextmanager
def local_rgw(
    *, memory: int = DEFAULT_MEMORY, certificate: tuple[str, str] | None = None,
    ca_bundle: str | None = None, timeout: float = 60.0,
) -> Iterator[LocalRGW]:
    """Run a throwaway RADOS Gateway on 127.0.0.1 for the duration of the block.

    ``memory`` bounds the bytes the OSD holds, all of them in RAM: once it holds about
    that much, Ceph marks it full and writes wait (for ever) instead of failing, so size
    it to the data. ``certificate`` (PEM files: certificate chain, private key) makes the
    gateway speak HTTPS only; ``ca_bundle`` names the CA that signed it, which the
    object's ``config()`` and ``boto3_client()`` then trust.
    Needs Debian's ``radosgw``, ``ceph-mon`` and ``ceph-osd`` packages
    (:data:`INSTALL`); raises :class:`~aisio.errors.MissingDependencyError` without them.
    Every process started is killed and the temporary folder removed on the way out,
    whether the block returns or raises.
    """
    check_installed()
    root = tempfile.mkdtemp(prefix="aisio-rgw-")
    cluster = _Cluster(root)
    try:
        deadline = time.monotonic() + timeout
        for sub in ("run", "log", "mon", "osd"):
            os.mkdir(f"{root}/{sub}")
        fsid, osd_uuid = str(uuid.uuid4()), str(uuid.uuid4())
        mon_port, rgw_port = free_port(), free_port()
        while rgw_port == mon_port:
            rgw_port = free_port()
        if certificate is None:
            frontend, endpoint = f"endpoint=127.0.0.1:{rgw_port}", f"http://127.0.0.1:{rgw_port}"
        else:
            cert, key = (os.path.abspath(p) for p in certificate)
            frontend = (f"ssl_endpoint=127.0.0.1:{rgw_port} ssl_certificate={cert} "
                        f"ssl_private_key={key}")
            endpoint = f"https://127.0.0.1:{rgw_port}"
        with open(f"{root}/ceph.conf", "w") as f:
            f.write(_conf(root, fsid, mon_port, frontend, memory))
        subprocess.run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                        f"[v2:127.0.0.1:{mon_port}]", f"{root}/monmap"],
                       capture_output=True, check=True, timeout=30)
        _run(root, ["ceph-mon", "--mkfs", "-i", "a", "--monmap", f"{root}/monmap"], timeout=30)
        cluster.spawn("mon", ["ceph-mon", "-i", "a"])
        # registering the OSD (and its mkfs, which asks the monitor too) waits for the
        # monitor to be up; the gateway and the user's creation then wait for the OSD,
        # which their first pool needs
        left = max(1.0, deadline - time.monotonic())
        _run(root, ["ceph", "--connect-timeout", str(int(left) + 1), "osd", "new", osd_uuid, "0"],
             timeout=left)
        _run(root, ["ceph-osd", "--mkfs", "-i", "0", "--osd-uuid", osd_uuid], timeout=30)
        cluster.spawn("osd", ["ceph-osd", "-i", "0"])
        cluster.spawn("rgw", ["radosgw", "-n", "client.rgw"])
        _run(root, ["radosgw-admin", "user", "create", "--uid", "aisio", "--display-name",
                    "aisio tests", "--access-key", _KEY_ID, "--secret", _SECRET],
             timeout=max(1.0, deadline - time.monotonic()))
        _wait_for_http(cluster, endpoint, deadline)
        rgw = LocalRGW(endpoint, root=root, pids=tuple(p.pid for _, p in cluster.procs),
                       version=_version(), ca_bundle=ca_bundle)
        try:
            yield rgw
        finally:
            rgw._close()
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
