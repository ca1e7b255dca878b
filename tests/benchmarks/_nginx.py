"""Start Debian's nginx on a free loopback port, serving a folder, for benchmarks.

nginx is the yardstick server: sendfile on, keep-alive, no logging, one worker by default.
It runs as the current user with its config, pid file and temp paths in a temp dir, and
stops when the context exits.

    with serve("/path/to/folder") as base_url:   # "http://127.0.0.1:PORT"
        ...                                        # GET base_url + "/name"

Install it with ``apt-get install -y nginx`` (the binary is looked up on PATH and in
/usr/sbin).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["find_nginx", "serve"]

_CONFIG = """\
{user}
worker_processes {workers};
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections {connections}; }}
worker_rlimit_nofile {rlimit};
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def find_nginx() -> str | None:
    """Path of the nginx binary, or None if it is not installed."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """True once the port accepts connections; False if nginx exited first."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


@contextmanager
def serve(
    root: str | os.PathLike[str], *, workers: int = 1, connections: int = 1024
) -> Iterator[str]:
    """Serve ``root`` over HTTP on 127.0.0.1; yields the base URL (no trailing slash).

    ``connections``: open connections each worker accepts (1,000-way benchmarks need more).
    """
    binary = find_nginx()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install -y nginx)")
    root = Path(root).resolve()
    with tempfile.TemporaryDirectory(prefix="aisio-nginx-") as tmp:
        # Workers run as the current user; the directive only matters when that is root.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        for attempt in range(5):  # a free port can be taken between probing and binding
            port = _free_port()
            conf = Path(tmp, "nginx.conf")
            conf.write_text(_CONFIG.format(user=user, workers=workers, tmp=tmp, port=port, root=root,
                               connections=connections, rlimit=2 * connections + 64))
            log = Path(tmp, "error.log")
            proc = subprocess.Popen(
                [binary, "-p", tmp, "-c", str(conf), "-e", str(log)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if _wait_listening(port, proc, time.monotonic() + 10):
                break
            _stop(proc)
            if attempt == 4:
                detail = log.read_text() if log.exists() else ""
                raise RuntimeError(f"nginx did not start: {detail.strip()[-500:]}")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Fast shutdown (SIGTERM), then SIGKILL if nginx lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()
