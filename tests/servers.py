"""Small HTTP servers on loopback for behaviour the real stores cannot be made to show."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StallServer:
    """Answers every GET with a 206 for the range asked (of a ``size``-byte object), sends
    ``send`` bytes of it, then stalls."""

    url: str
    connections: int = 0
    open_connections: int = 0
    closed: threading.Event = field(default_factory=threading.Event)


@contextmanager
def stall_server(size: int = 10_000_000, send: int = 1000) -> Iterator[StallServer]:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    state = StallServer(f"http://127.0.0.1:{listener.getsockname()[1]}")
    stop = threading.Event()
    lock = threading.Lock()

    def serve(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            first, last = _range(data, size)
            head = (
                "HTTP/1.1 206 Partial Content\r\n"
                f"Content-Length: {last - first + 1}\r\n"
                f"Content-Range: bytes {first}-{last}/{size}\r\n"
                'ETag: "stall"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            )
            try:
                conn.sendall(head.encode() + b"x" * min(send, last - first + 1))
                conn.settimeout(0.1)
                while not stop.is_set():  # stall until the client hangs up
                    try:
                        if conn.recv(65536) == b"":
                            break
                    except TimeoutError:
                        continue
            except OSError:
                pass
        with lock:
            state.open_connections -= 1
            if state.open_connections == 0:
                state.closed.set()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with lock:
                state.connections += 1
                state.open_connections += 1
                state.closed.clear()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join()
        listener.close()


def _range(request: bytes, size: int) -> tuple[int, int]:
    """The first and last byte a request's ``Range: bytes=a-b`` (or ``a-``) asks for."""
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"range":
            first, _, last = value.strip().removeprefix(b"bytes=").partition(b"-")
            return int(first), min(int(last), size - 1) if last else size - 1
    return 0, size - 1
