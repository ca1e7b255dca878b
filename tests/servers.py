"""Small HTTP servers on loopback for behaviour the real stores cannot be made to show."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StallServer:
    """Answers every GET with a 206 for ``size`` bytes, sends ``send`` of them, then stalls."""

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
            head = (
                "HTTP/1.1 206 Partial Content\r\n"
                f"Content-Length: {size}\r\n"
                f"Content-Range: bytes 0-{size - 1}/{size}\r\n"
                'ETag: "stall"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            )
            try:
                conn.sendall(head.encode() + b"x" * send)
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
