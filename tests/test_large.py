"""A 1 GiB object round-trips byte for byte through the multipart writer and get_into."""

from __future__ import annotations

import numpy as np
import pytest

import aisio

from .conftest import Store, make_store

GiB = 2**30


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["s3", "rgw", "ais"])
def test_one_gib_object_read_with_get_into_is_identical(
    backend: str, request: pytest.FixtureRequest
) -> None:
    # moto loads the whole object for every ranged GET, so fewer, larger parts here
    store: Store = make_store(backend, request, part_size=64 * 2**20)
    data = np.random.default_rng(42).integers(0, 256, GiB, dtype=np.uint8)
    url = store.url("one-gib.bin")
    with aisio.Client(store.config) as client:
        client.put(url, data)
        assert client.head(url).size == GiB
        out = np.empty(GiB, dtype=np.uint8)
        assert client.get_into(url, out) == GiB
        assert np.array_equal(out, data)
        client.delete(url)
