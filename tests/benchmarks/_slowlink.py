"""A slow link on loopback: a TCP proxy adding a fixed time to first byte and a bandwidth cap.

It stands between a client and a fast server (nginx, or the local_ais nodes) and makes the
server look like S3 seen from a cloud VM:

- every request waits ``ttfb`` seconds before it is forwarded (each chunk the client
  sends is held that long, so a request's first response byte comes ``ttfb`` late);
- each connection's response bytes are paced to ``rate`` bytes/s from the moment its
  request is forwarded (after a first burst of 64 KiB); a stall of the proxy process is
  caught up afterwards, so a busy machine does not slow the link itself.

Concurrency is what decides throughput here, as on the real link.

The proxy must not be the bottleneck it measures, so response bytes never enter Python:
they move socket -> pipe -> socket with ``splice(2)`` (zero-copy), driven by level-
triggered callbacks on a uvloop (or asyncio) event loop in a process of its own, so its
CPU is not charged to the client under test. It costs about one CPU second per GB moved
on the 2-core benchmark machine (each run's figure is in results.md), taken from the same
cores as the client and nginx. "What the link allows" at a given concurrency is
``min(connections x rate, what this machine can move through it)``; scenario 5 measures
the second term with a raw-socket client that drops the bytes.

    with slow_link(["http://127.0.0.1:8080"], ttfb=0.02, rate=100e6) as [url]:
        ...   # GET url + "/bucket/key"

    python -m tests.benchmarks._slowlink --upstream 127.0.0.1:8080   # prints the port
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

__all__ = ["slow_link"]

_F_SETPIPE_SZ = 1031
_PIPE = 1 << 20  # pipe capacity per connection: bytes in flight between the two splices
_SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_BURST = 64 * 1024  # bytes a response may send at once before pacing starts
_WAKE_SECONDS = 0.002  # a paced connection waits until it may send this long's worth
_MIN_WAKE = 64 * 1024  # ... and at least this much (each wake costs a few syscalls)
_CATCH_UP = 4 << 20  # most bytes a response may run ahead after a stall (a socket buffer)


class _Link:
    """One client connection and its upstream connection; callbacks only, no coroutines."""

    __slots__ = (
        "client", "closed", "in_pipe", "loop", "moved", "owner", "pipe_r", "pipe_w", "rate",
        "reading", "t0", "ttfb", "up", "up_out", "waiting_timer", "wake", "writing",
    )

    def __init__(self, owner: _Proxy, client: socket.socket, up: socket.socket) -> None:
        self.owner = owner
        self.loop = owner.loop
        self.client, self.up = client, up
        self.rate, self.ttfb = owner.rate, owner.ttfb
        self.wake = max(_MIN_WAKE, self.rate * _WAKE_SECONDS)
        self.t0 = time.perf_counter()  # when the current response started (request sent)
        self.moved = 0  # response bytes moved since t0
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, _PIPE)
        self.in_pipe = 0
        self.up_out = bytearray()  # request bytes due upstream that did not fit the socket
        self.reading = self.writing = False
        self.waiting_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.loop.add_reader(client.fileno(), self._from_client)
        self._want_upstream(True)

    # -- client -> upstream: requests, each held back by ttfb --

    def _from_client(self) -> None:
        try:
            data = self.client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        if self.ttfb:
            self.loop.call_later(self.ttfb, self._to_upstream, data)
        else:
            self._to_upstream(data)

    def _to_upstream(self, data: bytes) -> None:
        if self.closed:
            return
        self.t0, self.moved = time.perf_counter(), 0  # a request: its response is paced anew
        if self.up_out:
            self.up_out += data
            return
        try:
            n = self.up.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self.close()
            return
        if n < len(data):
            self.up_out += data[n:]
            self.loop.add_writer(self.up.fileno(), self._flush_upstream)

    def _flush_upstream(self) -> None:
        try:
            n = self.up.send(self.up_out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self.up_out[:n]
        if not self.up_out:
            self.loop.remove_writer(self.up.fileno())

    # -- upstream -> client: responses, spliced and paced --

    def _want_upstream(self, on: bool) -> None:
        if on != self.reading and not self.closed:
            self.reading = on
            if on:
                self.loop.add_reader(self.up.fileno(), self._pump)
            else:
                self.loop.remove_reader(self.up.fileno())

    def _want_client_writable(self, on: bool) -> None:
        if on != self.writing and not self.closed:
            self.writing = on
            if on:
                self.loop.add_writer(self.client.fileno(), self._pump)
            else:
                self.loop.remove_writer(self.client.fileno())

    def _resume(self) -> None:
        self.waiting_timer = None
        self._pump()

    def _pump(self) -> None:
        """Move what the pipe holds to the client, then what the tokens allow into the pipe."""
        if self.closed:
            return
        client_fd, up_fd = self.client.fileno(), self.up.fileno()
        for _ in range(16):  # bounded: let other connections have the loop
            if self.in_pipe:
                try:
                    n = os.splice(self.pipe_r, client_fd, self.in_pipe, flags=_SPLICE)
                except (BlockingIOError, InterruptedError):
                    self._want_upstream(False)
                    self._want_client_writable(True)
                    return
                except OSError:
                    self.close()
                    return
                self.in_pipe -= n
                self.owner.sent += n
                if self.in_pipe:
                    continue
            self._want_client_writable(False)
            want = _PIPE
            if self.rate:
                # The response may have sent rate x (time since it started) bytes, plus a
                # first burst. A stall of this process (a busy machine) is caught up
                # afterwards, as a real link's bytes would have waited in socket buffers.
                allowed = _BURST + (time.perf_counter() - self.t0) * self.rate - self.moved
                if allowed > _CATCH_UP:
                    self.t0 += (allowed - _CATCH_UP) / self.rate
                    allowed = _CATCH_UP
                if allowed < self.wake:
                    self._want_upstream(False)
                    if self.waiting_timer is None:
                        delay = (self.wake - allowed) / self.rate
                        self.waiting_timer = self.loop.call_later(delay, self._resume)
                    return
                want = min(_PIPE, int(allowed))
            try:
                n = os.splice(up_fd, self.pipe_w, want, flags=_SPLICE)
            except (BlockingIOError, InterruptedError):
                self._want_upstream(True)
                return
            except OSError:
                self.close()
                return
            if n == 0:  # the server closed: pass it on
                self.close()
                return
            self.moved += n
            self.in_pipe += n
        self._want_upstream(False)
        self.loop.call_soon(self._pump)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.waiting_timer is not None:
            self.waiting_timer.cancel()
        for sock in (self.client, self.up):
            with contextlib.suppress(Exception):
                self.loop.remove_reader(sock.fileno())
                self.loop.remove_writer(sock.fileno())
            sock.close()
        os.close(self.pipe_r)
        os.close(self.pipe_w)
        self.owner.links.discard(self)


class _Proxy:
    """Accepts on one loopback port and links each connection to ``upstream``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, upstream: tuple[str, int], ttfb: float,
                 rate: float) -> None:
        self.loop, self.upstream, self.ttfb, self.rate = loop, upstream, ttfb, rate
        self.links: set[_Link] = set()
        self.sent = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: drop this one, keep serving
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    return
                raise
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.loop.create_task(self._connect(client))

    async def _connect(self, client: socket.socket) -> None:
        up = socket.socket()
        up.setblocking(False)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self.loop.sock_connect(up, self.upstream)
        except OSError:
            up.close()
            client.close()
            return
        self.links.add(_Link(self, client, up))


def _serve(upstreams: Sequence[str], ttfb: float, rate: float) -> None:
    """Run proxies until SIGTERM; print their ports as one JSON line, and stats at the end."""
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    proxies = []
    for up in upstreams:
        parts = urlsplit(up if "://" in up else "tcp://" + up)
        proxies.append(_Proxy(loop, (parts.hostname or "127.0.0.1", parts.port or 80), ttfb, rate))
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    loop.add_signal_handler(signal.SIGINT, lambda: stop.done() or stop.set_result(None))
    print(json.dumps({"ports": [p.port for p in proxies]}), flush=True)
    start = time.monotonic()
    loop.run_until_complete(stop)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = {"bytes": sum(p.sent for p in proxies), "seconds": time.monotonic() - start,
             "cpu": usage.ru_utime + usage.ru_stime}
    print(json.dumps({"stats": stats}), flush=True)
    for p in proxies:
        for link in list(p.links):
            link.close()


class SlowLink:
    """A running proxy process: ``urls`` (one per upstream) and ``stats()`` after ``stop``."""

    def __init__(self, upstreams: Sequence[str], ttfb: float, rate: float) -> None:
        self.upstreams = list(upstreams)
        self.ttfb, self.rate = ttfb, rate
        cmd = [sys.executable, "-m", "tests.benchmarks._slowlink", "--ttfb", str(ttfb),
               "--rate", str(rate), *[f"--upstream={u}" for u in upstreams]]
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self._proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            raise RuntimeError("the slow-link proxy did not start")
        ports = json.loads(line)["ports"]
        self.urls = [f"http://127.0.0.1:{p}" for p in ports]
        self.last_stats: dict[str, Any] = {}

    def stop(self) -> dict[str, Any]:
        """Stop the proxy; returns bytes sent, seconds up and CPU seconds it used."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                out, _ = self._proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                out, _ = self._proc.communicate()
            for line in out.splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    self.last_stats = json.loads(line)["stats"]
        return self.last_stats


@contextlib.contextmanager
def slow_link(upstreams: Sequence[str], *, ttfb: float = 0.02, rate: float = 100e6
              ) -> Iterator[list[str]]:
    """Proxies in front of ``upstreams`` (base URLs); yields their base URLs, same order."""
    link = SlowLink(upstreams, ttfb, rate)
    try:
        yield link.urls
    finally:
        link.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", action="append", required=True, help="host:port or URL")
    parser.add_argument("--ttfb", type=float, default=0.02, help="seconds added per request")
    parser.add_argument("--rate", type=float, default=100e6, help="bytes/s per connection; 0: none")
    args = parser.parse_args(argv)
    _serve(args.upstream, args.ttfb, args.rate)


if __name__ == "__main__":
    main()
