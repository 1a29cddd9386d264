"""The storage sweeper: removes what interrupted uploads leave in the bucket.

An upload that dies partway (CASES C08) can leave, depending on where:

- a multipart upload (the S3 connection was cut, or the process died, before
  the abort went out);
- a complete object under `staging/` (died between S3's complete and the
  copy to the content address);
- a blob `sha256/<hex>` that no event names (died between that copy and the
  append of `DatasetVersionCommitted`; or an executor uploaded outputs of a
  run that ended before they were recorded).

`StorageSweeper.sweep` removes them once they are older than the bound,
`ANIMUS_STORAGE_ORPHAN_AFTER_SECONDS`; the gateway runs it every
`ANIMUS_STORAGE_SWEEP_INTERVAL_SECONDS` (`sweeping`). The rules:

1. A multipart upload anywhere in the bucket with no part and no start within
   the bound is aborted. A live upload sends a part every few seconds; one
   idle for the bound has lost its writer, and aborting a stalled one only
   fails that upload (no event is appended without a complete object).
2. An object under `staging/` last written before the bound is deleted. An
   upload copies it to its content address right after S3 completes it;
   deleting one still in use only fails that upload's copy.
3. A blob under `sha256/` that no event names, last written before the bound
   and before the oldest open run's dispatch less the bound, is deleted.
   Nothing else is ever deleted: not a key any event names, wherever in the
   payload (`animus.blobrefs`), not an artifact of a run that may still
   record it, nothing outside these two prefixes.

Races, and why rule 3 is safe:

- *A dataset upload in flight* has settled its blob and not yet appended its
  event. Settling always writes the blob (`BlobStore.settle`), even over the
  same bytes, so its LastModified is fresh and the bound covers the gap to
  the append; an old orphan with the same content is renewed, not reused.
  The gateway also closes the gap exactly, for an upload stalled longer than
  the bound: it holds the blob's settle lock (`settle_lock`, a shared
  PostgreSQL advisory lock) from before the copy until the append has
  committed, and the sweeper deletes a blob only under the exclusive lock,
  after reading the log and the blob's LastModified again under it. Either
  the append is visible to the sweeper, or the delete came first and the
  upload's copy writes the blob anew.
- *An executor's outputs*: the data plane has no database, so no lock. It
  uploads after the run's dispatch, and the run stays open until the
  coordinator records its end, so every blob written since the oldest open
  run's dispatch is kept, however late `ArtifactRecorded` is appended (the
  coordinator may have been down for days). Nothing is recorded for a run
  after its end (commands/NOTES.md, rule 2), so its unreported outputs are
  orphans. The bound is subtracted once more to absorb clock skew between
  S3 and PostgreSQL. What is left open is an executor re-uploading bytes
  identical to an orphan older than the bound in the milliseconds between the
  sweeper's last look at that blob and its delete.
- *Several sweepers* (one per gateway): a blob's delete runs under its lock,
  and deletes and aborts of what is already gone succeed.

Variant D of C08 (an event appended for an object S3 failed to complete)
cannot arise: the event is appended only after S3 completed the multipart
upload and the copy to the content address returned (`gateway.datasets`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import structlog
from psycopg import AsyncConnection

from animus.blobrefs import BlobReferences
from animus.db import translate_db_errors
from animus.errors import AnimusError
from animus.settings import Settings
from animus.storage import BLOB_PREFIX, STAGING_PREFIX, BlobStore, key_digest

log = structlog.get_logger(__name__)

SETTLE_LOCK_CLASS = 0x626C6F62  # "blob": the first half of each blob's lock key


def settle_lock_key(sha256: str) -> int:
    """The second half of a blob's lock key: its digest's first 32 bits.

    Two digests that share them share a lock: an upload waits a moment
    longer, or a sweep skips a blob until the next one; nothing worse.
    """
    value = int(sha256[:8], 16)
    return value - 2**32 if value >= 2**31 else value


def blob_cutoff(refs: BlobReferences, now: datetime, bound: timedelta) -> datetime:
    """Blobs last written before this instant may be swept (rule 3)."""
    cutoff = now - bound
    oldest = refs.oldest_open_run()
    if oldest is not None:
        cutoff = min(cutoff, oldest - bound)
    return cutoff


@asynccontextmanager
async def single_connection(dsn: str) -> AsyncIterator[AsyncConnection[Any]]:
    """One autocommit connection of its own, outside any pool; closed on exit.

    Raises:
        TransientStoreError, StoreError: the database cannot be reached.
    """
    with translate_db_errors():
        conn = await AsyncConnection.connect(dsn, autocommit=True, connect_timeout=10)
    try:
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            await asyncio.shield(conn.close())


@asynccontextmanager
async def settle_lock(conninfo: str, sha256: str) -> AsyncIterator[None]:
    """Hold a blob's settle lock (shared) while the body settles and appends.

    The lock lives on a connection of its own: the append takes connections
    from the pool and must never wait for one this holds. Closing the
    connection releases the lock.

    Raises:
        TransientStoreError, StoreError: the lock could not be taken.
    """
    async with single_connection(conninfo) as conn:
        with translate_db_errors():
            await conn.execute(
                "SELECT pg_advisory_lock_shared(%s, %s)",
                (SETTLE_LOCK_CLASS, settle_lock_key(sha256)),
            )
        yield


@dataclass(kw_only=True)
class SweepResult:
    """What one sweep removed, and the orphans it kept because of a lock."""

    aborted_uploads: list[str] = field(default_factory=list)
    deleted_staging: list[str] = field(default_factory=list)
    deleted_blobs: list[str] = field(default_factory=list)
    kept_settling: list[str] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return (
            len(self.aborted_uploads)
            + len(self.deleted_staging)
            + len(self.deleted_blobs)
        )


class StorageSweeper:
    """Applies the three rules of this module to one bucket.

    Keeps its reading of the log between sweeps, so each sweep reads only
    the events appended since the last one.
    """

    def __init__(self, *, blobs: BlobStore, conninfo: str, older_than: float) -> None:
        self._blobs = blobs
        self._conninfo = conninfo
        self._bound = timedelta(seconds=older_than)
        self._refs = BlobReferences()

    async def sweep(self, *, now: datetime | None = None) -> SweepResult:
        """One pass over the bucket; `now` is for tests.

        Raises:
            StorageError, StoreError: S3 or the database failed; what was
                removed before stays removed, the next sweep goes on.
        """
        now = now or datetime.now(UTC)
        result = SweepResult()
        await self._sweep_uploads(now, result)
        await self._sweep_staging(now, result)
        await self._sweep_blobs(now, result)
        if result.removed or result.kept_settling:
            log.info(
                "storage_swept",
                aborted_uploads=len(result.aborted_uploads),
                deleted_staging=len(result.deleted_staging),
                deleted_blobs=len(result.deleted_blobs),
                kept_settling=len(result.kept_settling),
            )
        return result

    async def run(self, interval: float) -> None:
        """Sweep every `interval` seconds until cancelled; never raises."""
        while True:
            try:
                await self.sweep()
            except AnimusError as exc:
                log.warning("storage_sweep_failed", error=exc.detail)
            except Exception:
                log.exception("storage_sweep_crashed")
            await asyncio.sleep(interval)

    async def _sweep_uploads(self, now: datetime, result: SweepResult) -> None:
        for upload in await self._blobs.list_uploads():
            idle_since = await self._blobs.last_activity(upload)
            if idle_since >= now - self._bound:
                continue
            await self._blobs.abort_upload(upload)
            log.info(
                "multipart_upload_aborted",
                key=upload.key,
                upload_id=upload.upload_id,
                idle_since=idle_since.isoformat(),
            )
            result.aborted_uploads.append(upload.key)

    async def _sweep_staging(self, now: datetime, result: SweepResult) -> None:
        stale = [
            item
            async for item in self._blobs.list_objects(STAGING_PREFIX)
            if item.last_modified < now - self._bound
        ]
        for item in stale:
            await self._blobs.delete(item.key)
            log.info(
                "staging_object_deleted",
                key=item.key,
                size=item.size,
                last_modified=item.last_modified.isoformat(),
            )
            result.deleted_staging.append(item.key)

    async def _sweep_blobs(self, now: datetime, result: SweepResult) -> None:
        async with single_connection(self._conninfo) as conn:
            await self._refs.catch_up(conn)
            cutoff = blob_cutoff(self._refs, now, self._bound)
            candidates = [
                item.key
                async for item in self._blobs.list_objects(BLOB_PREFIX)
                if key_digest(item.key) is not None
                and item.last_modified < cutoff
                and not self._refs.is_named(item.key)
            ]
            for key in candidates:
                await self._delete_blob(conn, key, now, result)

    async def _delete_blob(
        self,
        conn: AsyncConnection[Any],
        key: str,
        now: datetime,
        result: SweepResult,
    ) -> None:
        """Delete an orphan under its exclusive lock, judged again under it."""
        digest = key_digest(key)
        assert digest is not None
        with translate_db_errors():
            async with conn.transaction():
                cur = await conn.execute(
                    "SELECT pg_try_advisory_xact_lock(%s, %s)",
                    (SETTLE_LOCK_CLASS, settle_lock_key(digest)),
                )
                row = await cur.fetchone()
                if row is None or not row[0]:
                    result.kept_settling.append(key)
                    return
                await self._refs.catch_up(conn)
                if self._refs.is_named(key):
                    return
                item = await self._blobs.head(key)
                cutoff = blob_cutoff(self._refs, now, self._bound)
                if item is None or item.last_modified >= cutoff:
                    return
                await self._blobs.delete(key)
        log.info(
            "orphan_blob_deleted",
            key=key,
            size=item.size,
            last_modified=item.last_modified.isoformat(),
        )
        result.deleted_blobs.append(key)


@asynccontextmanager
async def sweeping(
    blobs: BlobStore, conninfo: str, settings: Settings
) -> AsyncIterator[StorageSweeper | None]:
    """Run a sweeper in the background for the body (None when turned off)."""
    interval = settings.storage_sweep_interval_seconds
    if interval <= 0:
        yield None
        return
    sweeper = StorageSweeper(
        blobs=blobs,
        conninfo=conninfo,
        older_than=settings.storage_orphan_after_seconds,
    )
    task = asyncio.create_task(sweeper.run(interval), name="storage-sweeper")
    try:
        yield sweeper
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
