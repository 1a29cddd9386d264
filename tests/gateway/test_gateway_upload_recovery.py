"""C08 recovery: what an interrupted upload leaves, the sweeper removes; what
the log and the bucket disagree on, `animus check-storage` reports.

Variant B cuts the gateway's S3 connection mid-upload with a TCP proxy that
stops forwarding after a byte budget; variant C makes the append fail after
the blob was settled (what a SIGKILL there leaves); variant D (S3 fails to
complete) appends nothing, by construction. Each test leaves the bucket
consistent with the log, so the next can expect a clean check. The sweeper
and the check take `now`, so "after the bound" needs no sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from botocore.exceptions import ClientError
from gwtest import ALICE, Client, Head, create_project, register_dataset, upload
from litestar import Litestar

from animus.errors import StoreError
from animus.eventstore import NewEvent
from animus.settings import Settings
from animus.storage import STAGING_PREFIX, BlobStore, blob_key
from animus.storecheck import StorageReport, check_storage
from animus.sweeper import StorageSweeper, settle_lock
from contracts.events import RunFailed
from contracts.streams import dataset_stream, run_stream
from gateway.app import create_app
from gateway.services import GatewayServices

BOUND = 60.0
"""The sweeper's bound in these tests, in seconds."""


def after_the_bound() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=BOUND + 5)


def sweeper(services: GatewayServices) -> StorageSweeper:
    return StorageSweeper(
        blobs=services.blobs, conninfo=services.pool.conninfo, older_than=BOUND
    )


async def check(
    services: GatewayServices, *, now: datetime | None = None, content: bool = False
) -> StorageReport:
    return await check_storage(
        blobs=services.blobs,
        conninfo=services.pool.conninfo,
        older_than=BOUND,
        content=content,
        now=now,
    )


async def staging_objects(blobs: BlobStore) -> list[str]:
    return [item.key async for item in blobs.list_objects(STAGING_PREFIX)]


async def versions(client: Client, project_id: str, dataset_id: str) -> list[Any]:
    answer = await client.get(
        f"/projects/{project_id}/datasets/{dataset_id}/versions", headers=ALICE
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["items"])


class CuttingProxy:
    """A TCP proxy to S3 that cuts every connection once `budget` bytes went
    upstream, and refuses every connection after that: a network cut."""

    def __init__(self, target: str, budget: int) -> None:
        parts = urlsplit(target)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._budget = budget
        self._sent = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.cut = False
        self.endpoint = ""

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.cut:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer, upstream=True),
            self._pipe(up_reader, writer, upstream=False),
            return_exceptions=True,
        )

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if upstream:
                    self._sent += len(data)
                    if self._sent > self._budget:
                        self._cut()
                        return
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()

    def _cut(self) -> None:
        self.cut = True
        for writer in self._writers:
            writer.transport.abort()


@pytest.fixture
async def cut_client(
    settings: Settings, gateway_services: GatewayServices
) -> AsyncIterator[tuple[Client, CuttingProxy]]:
    """A gateway whose S3 connection is cut after 7 MiB went upstream."""
    assert settings.s3_endpoint is not None
    async with (
        CuttingProxy(settings.s3_endpoint, budget=7 * 2**20) as proxy,
        BlobStore(
            endpoint=proxy.endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            bucket=settings.s3_bucket,
        ) as blobs,
    ):
        services = dataclasses.replace(gateway_services, blobs=blobs)
        app = create_app(settings, services=services)
        transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 50000))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=120
        ) as client:
            yield client, proxy


async def test_a_cut_s3_connection_leaves_nothing_once_swept(
    client: Client,
    cut_client: tuple[Client, CuttingProxy],
    head: Head,
    gateway_services: GatewayServices,
) -> None:
    """Variant B: 12 MiB in 5 MiB parts, the connection cut in part 2.

    The abort cannot reach S3 either, so the multipart upload stays until the
    sweeper aborts it; a retry with the same key then commits v1 once.
    """
    cut, proxy = cut_client
    project_id = await create_project(client)
    dataset_id = await register_dataset(client, project_id)
    content = os.urandom(12 * 2**20)
    digest = hashlib.sha256(content).hexdigest()
    sent = {"X-Content-SHA256": digest, "Idempotency-Key": f"c08-b-{digest[:8]}"}
    before = await head()

    answer = await upload(cut, project_id, dataset_id, content, **sent)

    assert proxy.cut
    assert answer.status_code == 503, answer.text
    assert await head() == before
    assert await versions(client, project_id, dataset_id) == []
    blobs = gateway_services.blobs
    assert len(await blobs.list_uploads()) == 1
    assert (await check(gateway_services)).clean
    stale = await check(gateway_services, now=after_the_bound())
    assert [u["kind"] for u in stale.stale_uploads] == ["multipart upload"]
    assert not stale.clean

    swept = await sweeper(gateway_services).sweep(now=after_the_bound())

    assert len(swept.aborted_uploads) == 1
    assert await blobs.list_uploads() == []
    assert await staging_objects(blobs) == []
    assert not await blobs.exists(blob_key(digest))
    assert (await check(gateway_services, now=after_the_bound())).clean

    retried = await upload(client, project_id, dataset_id, content, **sent)
    again = await upload(client, project_id, dataset_id, content, **sent)
    assert retried.status_code == again.status_code == 201, again.text
    assert again.headers.get("Idempotency-Replayed") == "true"
    assert again.json() == retried.json()
    listed = await versions(client, project_id, dataset_id)
    assert [(v["version"], v["sha256"]) for v in listed] == [(1, digest)]
    assert (await check(gateway_services, content=True)).clean


async def test_a_death_between_settle_and_append_is_reported_then_swept(
    client: Client,
    head: Head,
    gateway_services: GatewayServices,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Variant C: the blob is settled, then the append never happens."""
    project_id = await create_project(client)
    dataset_id = await register_dataset(client, project_id)
    content = os.urandom(6 * 2**20)
    digest = hashlib.sha256(content).hexdigest()
    sent = {"X-Content-SHA256": digest, "Idempotency-Key": f"c08-c-{digest[:8]}"}
    handlers = gateway_services.handlers

    async def dies(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("the gateway died before the append")

    before = await head()
    with monkeypatch.context() as patch:
        patch.setattr(handlers, "commit_dataset_version", dies)
        answer = await upload(client, project_id, dataset_id, content, **sent)

    assert answer.status_code == 500, answer.text
    assert await head() == before
    assert await versions(client, project_id, dataset_id) == []
    run = await client.post(
        f"/projects/{project_id}/runs",
        json={
            "command": ["true"],
            "inputs": {"data": {"dataset": dataset_id, "version": 1}},
        },
        headers=ALICE,
    )
    assert run.status_code == 422, run.text
    assert await head() == before
    blobs = gateway_services.blobs
    assert await blobs.exists(blob_key(digest))
    assert await blobs.list_uploads() == []
    assert await staging_objects(blobs) == []

    young = await check(gateway_services)
    assert young.clean and young.pending_objects == 1
    report = await check(gateway_services, now=after_the_bound())
    assert [item.key for item in report.unreferenced] == [blob_key(digest)]
    assert report.problems == 1
    assert (await sweeper(gateway_services).sweep()).deleted_blobs == []
    assert await blobs.exists(blob_key(digest))

    swept = await sweeper(gateway_services).sweep(now=after_the_bound())

    assert swept.deleted_blobs == [blob_key(digest)]
    assert not await blobs.exists(blob_key(digest))
    assert (await check(gateway_services, now=after_the_bound())).clean

    retried = await upload(client, project_id, dataset_id, content, **sent)
    again = await upload(client, project_id, dataset_id, content, **sent)
    assert retried.status_code == again.status_code == 201, again.text
    assert again.headers.get("Idempotency-Replayed") == "true"
    listed = await versions(client, project_id, dataset_id)
    assert [(v["version"], v["sha256"]) for v in listed] == [(1, digest)]
    stream = dataset_stream(project_id, dataset_id)
    types = [e.type for e in await gateway_services.store.read_stream(stream)]
    assert types == ["DatasetRegistered", "DatasetVersionCommitted"]
    assert (await check(gateway_services, content=True)).clean


async def test_s3_failing_to_complete_appends_nothing(
    client: Client,
    head: Head,
    gateway_services: GatewayServices,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Variant D cannot happen: the append waits for S3's complete."""
    project_id = await create_project(client)
    dataset_id = await register_dataset(client, project_id)
    content = os.urandom(2**20)
    digest = hashlib.sha256(content).hexdigest()
    s3 = gateway_services.blobs._s3

    async def fails(**kwargs: Any) -> Any:
        raise ClientError(
            {"Error": {"Code": "InternalError", "Message": "injected"}},
            "CompleteMultipartUpload",
        )

    before = await head()
    with monkeypatch.context() as patch:
        patch.setattr(s3, "complete_multipart_upload", fails)
        answer = await upload(client, project_id, dataset_id, content)

    assert answer.status_code == 503, answer.text
    assert await head() == before
    assert await versions(client, project_id, dataset_id) == []
    assert await gateway_services.blobs.list_uploads() == []
    assert not await gateway_services.blobs.exists(blob_key(digest))
    assert (await check(gateway_services, now=after_the_bound())).clean


async def test_a_blob_under_its_settle_lock_is_not_swept(
    gateway_services: GatewayServices,
) -> None:
    """An upload holds the lock from its copy to its append: the sweeper
    skips that blob however old it looks, and deletes it once released."""
    blobs = gateway_services.blobs
    orphan = await blobs.put_bytes(os.urandom(1024))
    conninfo = gateway_services.pool.conninfo

    async with settle_lock(conninfo, orphan.sha256):
        held = await sweeper(gateway_services).sweep(now=after_the_bound())
        assert held.kept_settling == [orphan.key]
        assert held.deleted_blobs == []
        assert await blobs.exists(orphan.key)

    freed = await sweeper(gateway_services).sweep(now=after_the_bound())
    assert freed.deleted_blobs == [orphan.key]
    assert not await blobs.exists(orphan.key)


async def test_an_orphan_with_the_bytes_of_a_new_upload_is_kept(
    client: Client, gateway_services: GatewayServices
) -> None:
    """The retry of an interrupted upload finds its old orphan: the version
    that now names it keeps it, and the settle renewed its LastModified."""
    project_id = await create_project(client)
    dataset_id = await register_dataset(client, project_id)
    content = os.urandom(4096)
    orphan = await gateway_services.blobs.put_bytes(content)
    first = await gateway_services.blobs.head(orphan.key)
    assert first is not None
    await asyncio.sleep(1.1)  # LastModified counts whole seconds

    answer = await upload(client, project_id, dataset_id, content)

    assert answer.status_code == 201, answer.text
    renewed = await gateway_services.blobs.head(orphan.key)
    assert renewed is not None and renewed.last_modified > first.last_modified
    swept = await sweeper(gateway_services).sweep(now=after_the_bound())
    assert orphan.key not in swept.deleted_blobs
    assert (await check(gateway_services, now=after_the_bound())).clean


async def test_an_open_run_keeps_blobs_written_since_its_dispatch(
    client: Client, gateway_services: GatewayServices
) -> None:
    """An executor's outputs are uploaded before the coordinator records
    them: while the run is open, nothing written since its dispatch goes."""
    project_id = await create_project(client)
    submitted = await client.post(
        f"/projects/{project_id}/runs", json={"command": ["true"]}, headers=ALICE
    )
    assert submitted.status_code == 201, submitted.text
    run_id = submitted.json()["run_id"]
    output = await gateway_services.blobs.put_bytes(os.urandom(2048))

    kept = await sweeper(gateway_services).sweep(now=after_the_bound())
    assert kept.deleted_blobs == []
    report = await check(gateway_services, now=after_the_bound())
    assert report.clean and report.pending_objects == 1

    ended = RunFailed(
        project_id=project_id, run_id=run_id, attempt=1, reason="lost", message=""
    )
    await gateway_services.store.append(
        [
            NewEvent(
                stream_type="run",
                stream_id=run_stream(run_id),
                project_id=project_id,
                event=ended,
            )
        ],
        metadata={"actor": "test"},
    )
    swept = await sweeper(gateway_services).sweep(now=after_the_bound())
    assert swept.deleted_blobs == [output.key]


async def test_a_version_whose_object_vanished_is_reported_missing(
    client: Client, gateway_services: GatewayServices
) -> None:
    project_id = await create_project(client)
    dataset_id = await register_dataset(client, project_id)
    content = os.urandom(3000)
    answer = await upload(client, project_id, dataset_id, content)
    assert answer.status_code == 201, answer.text
    key = blob_key(answer.json()["sha256"])
    await gateway_services.blobs.delete(key)

    report = await check(gateway_services)

    assert not report.clean
    assert [(r.key, r.event_type) for r in report.missing] == [
        (key, "DatasetVersionCommitted")
    ]
    assert report.missing[0].stream_id == dataset_stream(project_id, dataset_id)
    assert report.as_json()["missing"][0]["key"] == key
    await gateway_services.blobs.put_bytes(content)
    assert (await check(gateway_services)).clean


async def test_a_corrupted_object_is_caught_by_the_content_check(
    client: Client, gateway_services: GatewayServices
) -> None:
    """C09's audit: same size, other bytes; only re-hashing sees it."""
    project_id = await create_project(client)
    dataset_id = await register_dataset(client, project_id)
    content = os.urandom(6 * 2**20)
    digest = hashlib.sha256(content).hexdigest()
    answer = await upload(client, project_id, dataset_id, content)
    assert answer.status_code == 201, answer.text
    blobs = gateway_services.blobs
    rotten = content[:100] + bytes([content[100] ^ 1]) + content[101:]
    await blobs._call(
        "put_object", Bucket=blobs.bucket, Key=blob_key(digest), Body=rotten
    )

    assert (await check(gateway_services)).clean
    report = await check(gateway_services, content=True)

    found = hashlib.sha256(rotten).hexdigest()
    assert [(m.key, m.what, m.expected, m.found) for m in report.mismatched] == [
        (blob_key(digest), "sha256", digest, found)
    ]
    assert report.mismatched[0].record is not None
    assert report.mismatched[0].record.event_type == "DatasetVersionCommitted"
    await blobs._call(
        "put_object", Bucket=blobs.bucket, Key=blob_key(digest), Body=content
    )
    assert (await check(gateway_services, content=True)).clean


async def test_the_gateway_lifespan_runs_the_sweeper(settings: Settings) -> None:
    """A gateway started from settings sweeps by itself, every interval."""
    settings = settings.model_copy(
        update={
            "s3_bucket": f"gw-{secrets.token_hex(4)}",
            "storage_orphan_after_seconds": 1.0,
            "storage_sweep_interval_seconds": 0.2,
        }
    )
    app: Litestar = create_app(settings)
    async with app.lifespan():
        services: GatewayServices = app.state.services
        blobs = services.blobs
        leftover = f"{STAGING_PREFIX}{secrets.token_hex(8)}"
        await blobs._call("put_object", Bucket=blobs.bucket, Key=leftover, Body=b"x")
        for _ in range(100):
            if not await staging_objects(blobs):
                break
            await asyncio.sleep(0.1)
        assert await staging_objects(blobs) == []


async def animus(*args: str, **env: str) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANIMUS_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "animus",
        *args,
        env={**clean, "COLUMNS": "200", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_animus_check_storage_exits_1_with_a_listing(
    settings: Settings, gateway_services: GatewayServices, tmp_path: Path
) -> None:
    assert settings.database_url is not None and settings.s3_endpoint is not None
    env = {
        "ANIMUS_HOME": str(tmp_path),
        "ANIMUS_DATABASE_URL": settings.database_url,
        "ANIMUS_S3_ENDPOINT": settings.s3_endpoint,
        "ANIMUS_S3_ACCESS_KEY": settings.s3_access_key,
        "ANIMUS_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "ANIMUS_S3_BUCKET": settings.s3_bucket,
        "ANIMUS_STORAGE_ORPHAN_AFTER_SECONDS": "1",
    }
    code, out, err = await animus("check-storage", "--json", **env)
    assert code == 0, err
    assert json.loads(out)["clean"] is True

    orphan = await gateway_services.blobs.put_bytes(os.urandom(512))
    await asyncio.sleep(2.1)  # older than the bound, in whole seconds
    code, out, err = await animus("check-storage", "--json", "--content", **env)
    assert code == 1, err
    report = json.loads(out)
    assert report["content_checked"] is True
    assert [item["key"] for item in report["unreferenced"]] == [orphan.key]
    code, out, err = await animus("check-storage", **env)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("storage check found 1 problem: ")
    assert lines[1].startswith(f"unreferenced  {orphan.key}  512 bytes")

    await sweeper(gateway_services).sweep(now=after_the_bound())
    code, out, err = await animus("check-storage", **env)
    assert code == 0, out
    assert out.startswith("storage consistent: ")


async def test_animus_check_storage_names_an_unreachable_s3_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    assert settings.database_url is not None
    code, out, err = await animus(
        "check-storage",
        ANIMUS_HOME=str(tmp_path),
        ANIMUS_DATABASE_URL=settings.database_url,
        ANIMUS_S3_ENDPOINT="http://127.0.0.1:9",
    )
    assert code == 1
    assert out == ""
    assert err.strip().startswith("animus: object storage")
    assert len(err.strip().splitlines()) == 1
