"""The sync bridge: one loop thread per process, many caller threads, fork, interrupts."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import aisio
from aisio import _bridge

from .conftest import Store
from .servers import stall_server


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "aisio-loop"]


def test_one_loop_thread_serves_many_caller_threads(store: Store) -> None:
    blobs = {store.url(f"t/{i}"): os.urandom(1000 + i) for i in range(40)}
    with aisio.Client(store.config) as client:
        for url, data in blobs.items():
            client.put(url, data)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(client.get, blobs))
    assert results == list(blobs.values())
    assert len(loop_threads()) == 1


def test_calling_from_the_loop_thread_raises_instead_of_deadlocking(store: Store) -> None:
    client = aisio.Client(store.config)

    async def inside() -> None:
        client.get(store.url("x"))

    with pytest.raises(RuntimeError, match="event loop thread"):
        _bridge.run(inside)
    client.close()


def test_client_pickles_as_its_config(store: Store) -> None:
    client = aisio.Client(store.config)
    client.put(store.url("p"), b"1")
    clone = pickle.loads(pickle.dumps(client))
    assert clone.config == store.config
    assert clone.get(store.url("p")) == b"1"
    clone.close()
    client.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_forked_child_gets_its_own_loop_and_connections(store: Store) -> None:
    with aisio.Client(store.config) as client:
        client.put(store.url("f"), b"parent data")
        assert client.get(store.url("f")) == b"parent data"  # loop thread and pool exist now
        pid = os.fork()
        if pid == 0:  # child: the parent's loop thread does not exist here
            code = 1
            try:
                ok = client.get(store.url("f")) == b"parent data" and len(loop_threads()) == 1
                code = 0 if ok else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.get(store.url("f")) == b"parent data"  # the parent's client still works


class ObjectSums(Dataset[tuple[int, int]]):
    """Reads each object through a Client shared with the parent process."""

    def __init__(self, client: aisio.Client, urls: list[str]) -> None:
        self.client, self.urls = client, urls

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, i: int) -> tuple[int, int]:
        data = self.client.get(self.urls[i])
        return i, int(torch.frombuffer(bytearray(data), dtype=torch.uint8).sum())


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_dataloader_workers_read_through_client_for_two_epochs(
    store: Store, context: str, capfd: pytest.CaptureFixture[str]
) -> None:
    blobs = [os.urandom(3000 + i) for i in range(24)]
    urls = [store.url(f"dl/{i}") for i in range(len(blobs))]
    expected = {i: sum(b) for i, b in enumerate(blobs)}
    with aisio.Client(store.config) as client:
        for url, data in zip(urls, blobs, strict=True):
            client.put(url, data)
        loader = DataLoader(ObjectSums(client, urls), batch_size=4, num_workers=2,
                            multiprocessing_context=context, persistent_workers=context == "fork")
        for _epoch in range(2):
            seen = {}
            for idx, sums in loader:
                seen.update(zip(idx.tolist(), sums.tolist(), strict=True))
            assert seen == expected
    err = capfd.readouterr().err
    assert "Warning" not in err and "Traceback" not in err, err


def test_keyboard_interrupt_cancels_the_get_and_closes_its_connection() -> None:
    with stall_server() as server:
        config = aisio.ClientConfig(read_timeout=60, s3=aisio.S3Options(
            endpoint_url=server.url, region="us-east-1", force_path_style=True,
            access_key_id="k", secret_access_key="s"))
        with aisio.Client(config) as client:
            def interrupt_when_in_flight() -> None:
                for _ in range(400):
                    if server.connections:
                        break
                    threading.Event().wait(0.05)
                threading.Event().wait(0.2)
                os.kill(os.getpid(), signal.SIGINT)

            timer = threading.Thread(target=interrupt_when_in_flight)
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                client.get("s3://bucket/stalls")
            timer.join()
            assert server.closed.wait(5), "the stalled GET's connection stayed open"

            async def tasks() -> int:
                return len(asyncio.all_tasks())

            assert _bridge.run(tasks) <= 2  # this one and the portal's own


def test_closing_a_reader_mid_read_from_another_thread_stops_its_get() -> None:
    with stall_server(send=10) as server:
        config = aisio.ClientConfig(read_timeout=60, s3=aisio.S3Options(
            endpoint_url=server.url, region="us-east-1", force_path_style=True,
            access_key_id="k", secret_access_key="s"))
        with aisio.Client(config) as client:
            info = aisio.ObjectInfo("s3://bucket/stalls", 10_000_000, '"stall"')
            reader = client.open("s3://bucket/stalls", info=info)
            errors: list[BaseException] = []

            def read() -> None:
                try:
                    reader.read(5_000_000)
                except BaseException as exc:
                    errors.append(exc)

            t = threading.Thread(target=read)
            t.start()
            for _ in range(200):  # until the GET is in flight
                if server.connections:
                    break
                t.join(0.05)
            t.join(0.3)
            assert server.connections == 1 and t.is_alive()  # stalled mid-read
            reader.close()
            t.join(5)
            assert not t.is_alive()
            assert errors and isinstance(errors[0], (aisio.ClosedError, asyncio.CancelledError))
            assert server.closed.wait(5)


def test_import_aisio_does_not_import_torch_or_sdks() -> None:
    import subprocess

    code = ("import sys, aisio; "
            "print(sorted(m for m in ('torch', 'botocore', 'aiobotocore', 'httpx', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
