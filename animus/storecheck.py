"""`animus check-storage`: the bucket held to the events that record it.

The operator's consistency check after a crash or a restore (CASES C08, C09).
It reads the log first and lists the bucket second, so an upload that
commits meanwhile shows up as a young unreferenced object (pending), never
as a recorded object that is missing. It reports, as problems:

- **unreferenced**: objects no event names, older than the sweeper's cutoff
  (`animus.sweeper`, rule 3); younger ones may belong to an upload in flight
  or an open run and are counted as pending;
- **missing**: objects a `DatasetVersionCommitted` or `ArtifactRecorded` event
  records that the bucket does not hold;
- **mismatched**: recorded objects whose size differs from the record, and,
  with `content=True` (it reads every byte), objects whose sha256 differs
  from the record or from the digest their `sha256/<hex>` key names;
- **stale uploads**: multipart uploads and staging objects older than the
  bound, which the sweeper should already have removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from animus.blobrefs import BlobRecord, BlobReferences
from animus.storage import STAGING_PREFIX, BlobStore, ObjectInfo, key_digest
from animus.sweeper import blob_cutoff, single_connection


class CheckProgress(Protocol):
    """Where the check reports how far it got (a rich progress bar, or not)."""

    def phase(self, name: str, total: int | None) -> None: ...

    def advance(self, amount: int) -> None: ...


class _Silent:
    def phase(self, name: str, total: int | None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


class RichProgress:
    """CheckProgress on a rich bar: a count per phase, bytes while hashing."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    @staticmethod
    def bar(console: Console) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}{task.fields[unit]}"),
            console=console,
            transient=True,
            disable=not console.is_terminal,  # else it leaves an empty line
        )

    def phase(self, name: str, total: int | None) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        unit = " bytes" if name == "hashing" else ""
        self._task = self._progress.add_task(name, total=total, unit=unit)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)


@dataclass(frozen=True, kw_only=True)
class Mismatch:
    key: str
    what: str  # "size" or "sha256"
    expected: str | int | None
    found: str | int
    record: BlobRecord | None

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "what": self.what,
            "expected": self.expected,
            "found": self.found,
            "record": None if self.record is None else self.record.as_json(),
        }


@dataclass(kw_only=True)
class StorageReport:
    objects: int = 0
    events: int = 0
    recorded: int = 0
    content_checked: bool = False
    unreferenced: list[ObjectInfo] = field(default_factory=list)
    missing: list[BlobRecord] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    stale_uploads: list[dict[str, str]] = field(default_factory=list)
    pending_objects: int = 0
    pending_uploads: int = 0

    @property
    def problems(self) -> int:
        return (
            len(self.unreferenced)
            + len(self.missing)
            + len(self.mismatched)
            + len(self.stale_uploads)
        )

    @property
    def clean(self) -> bool:
        return self.problems == 0

    def as_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "problems": self.problems,
            "objects": self.objects,
            "events": self.events,
            "recorded": self.recorded,
            "content_checked": self.content_checked,
            "unreferenced": [_object_json(item) for item in self.unreferenced],
            "missing": [record.as_json() for record in self.missing],
            "mismatched": [item.as_json() for item in self.mismatched],
            "stale_uploads": self.stale_uploads,
            "pending": {
                "objects": self.pending_objects,
                "uploads": self.pending_uploads,
            },
        }

    def lines(self) -> list[str]:
        """The report as plain lines: a summary, then one line per problem."""
        scope = (
            "sha256 of every object checked"
            if self.content_checked
            else "sizes checked (--content re-hashes every object)"
        )
        pending = ""
        if self.pending_objects or self.pending_uploads:
            pending = (
                f"; pending (younger than the bound): {self.pending_objects} "
                f"unreferenced objects, {self.pending_uploads} uploads"
            )
        head = (
            f"{self.objects} objects, {self.recorded} recorded, "
            f"{self.events} events read; {scope}{pending}"
        )
        if self.clean:
            return [f"storage consistent: {head}"]
        found = f"{self.problems} problem{'' if self.problems == 1 else 's'}"
        out = [f"storage check found {found}: {head}"]
        for item in self.unreferenced:
            out.append(
                f"unreferenced  {item.key}  {item.size} bytes, last written "
                f"{item.last_modified.isoformat()}, named by no event"
            )
        for record in self.missing:
            out.append(
                f"missing       {record.key}  recorded by {record.event_type} "
                f"at position {record.position} ({record.stream_id})"
            )
        for mismatch in self.mismatched:
            where = ""
            if mismatch.record is not None:
                where = (
                    f" (recorded by {mismatch.record.event_type} at position "
                    f"{mismatch.record.position})"
                )
            out.append(
                f"mismatched    {mismatch.key}  {mismatch.what} is "
                f"{mismatch.found}, expected {mismatch.expected}{where}"
            )
        for upload in self.stale_uploads:
            out.append(
                f"stale upload  {upload['key']}  {upload['kind']} idle since "
                f"{upload['since']}"
            )
        return out


def _object_json(item: ObjectInfo) -> dict[str, Any]:
    return {
        "key": item.key,
        "size": item.size,
        "last_modified": item.last_modified.isoformat(),
    }


async def check_storage(
    *,
    blobs: BlobStore,
    conninfo: str,
    older_than: float,
    content: bool = False,
    now: datetime | None = None,
    progress: CheckProgress | None = None,
) -> StorageReport:
    """Compare the bucket with the log; see the module docstring.

    Raises:
        StorageError, StoreError: S3 or the database failed.
    """
    now = now or datetime.now(UTC)
    bound = timedelta(seconds=older_than)
    bar = progress or _Silent()
    refs = BlobReferences()
    report = StorageReport(content_checked=content)

    bar.phase("reading events", None)
    async with single_connection(conninfo) as conn:
        report.events = await refs.catch_up(conn, progress=bar.advance)
    report.recorded = len(refs.records)

    bar.phase("listing uploads", None)
    for upload in await blobs.list_uploads():
        idle_since = await blobs.last_activity(upload)
        if idle_since < now - bound:
            report.stale_uploads.append(
                {
                    "key": upload.key,
                    "kind": "multipart upload",
                    "upload_id": upload.upload_id,
                    "since": idle_since.isoformat(),
                }
            )
        else:
            report.pending_uploads += 1
        bar.advance(1)

    bar.phase("listing objects", None)
    objects: dict[str, ObjectInfo] = {}
    async for item in blobs.list_objects():
        objects[item.key] = item
        bar.advance(1)
    report.objects = len(objects)

    cutoff = blob_cutoff(refs, now, bound)
    for item in objects.values():
        _judge_object(item, refs, now - bound, cutoff, report)
    await _find_missing(blobs, refs, objects, report)
    if content:
        await _rehash(blobs, refs, objects, report, bar)
    return report


def _judge_object(
    item: ObjectInfo,
    refs: BlobReferences,
    staging_cutoff: datetime,
    blob_cutoff: datetime,
    report: StorageReport,
) -> None:
    if item.key.startswith(STAGING_PREFIX):
        if item.last_modified < staging_cutoff:
            report.stale_uploads.append(
                {
                    "key": item.key,
                    "kind": "staging object",
                    "since": item.last_modified.isoformat(),
                }
            )
        else:
            report.pending_uploads += 1
        return
    if not refs.is_named(item.key):
        if item.last_modified < blob_cutoff:
            report.unreferenced.append(item)
        else:
            report.pending_objects += 1
        return
    for record in refs.records.get(item.key, []):
        if record.size is not None and record.size != item.size:
            report.mismatched.append(
                Mismatch(
                    key=item.key,
                    what="size",
                    expected=record.size,
                    found=item.size,
                    record=record,
                )
            )
            break


async def _find_missing(
    blobs: BlobStore,
    refs: BlobReferences,
    objects: dict[str, ObjectInfo],
    report: StorageReport,
) -> None:
    for key, records in refs.records.items():
        # a listing may lag a write: ask for the object itself before saying so
        if key not in objects and await blobs.head(key) is None:
            report.missing.extend(records)


async def _rehash(
    blobs: BlobStore,
    refs: BlobReferences,
    objects: dict[str, ObjectInfo],
    report: StorageReport,
    bar: CheckProgress,
) -> None:
    targets = [
        item
        for item in objects.values()
        if not item.key.startswith(STAGING_PREFIX)
        and (key_digest(item.key) is not None or item.key in refs.records)
    ]
    bar.phase("hashing", sum(item.size for item in targets))
    advance: Callable[[int], None] = bar.advance
    for item in targets:
        digest, _size = await blobs.content_sha256(item.key, advance)
        expected: list[tuple[str, BlobRecord | None]] = [
            (record.sha256, record)
            for record in refs.records.get(item.key, [])
            if record.sha256 is not None
        ]
        named = key_digest(item.key)
        if named is not None:
            expected.append((named, None))
        for want, record in expected:
            if want != digest:
                report.mismatched.append(
                    Mismatch(
                        key=item.key,
                        what="sha256",
                        expected=want,
                        found=digest,
                        record=record,
                    )
                )
                break
