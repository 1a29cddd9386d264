"""What the event log says about blobs, read incrementally.

The sweeper (`animus.sweeper`) and `animus check-storage` (`animus.storecheck`)
both ask the log three things:

- **which keys are named**: every value of an `object_key` member anywhere in
  any event's payload (dataset versions, artifacts, run plans' resolved
  inputs, and whatever a later event type adds). A named key is never
  swept, whatever the event.
- **what was recorded about them**: the sha256 and size stated beside the key
  by `DatasetVersionCommitted` and `ArtifactRecorded`, the two events that
  bring an object into the record. The check holds the bucket to these.
- **which runs are still open**: a run dispatched and not yet ended may still
  record artifacts whose bytes the executor has already uploaded (the data
  plane uploads first, then reports; the coordinator appends later, maybe
  much later if it was down). The sweeper keeps every blob written since
  the oldest open run was dispatched.

The log is append-only, so `catch_up` reads only events past the last
position it saw; the raw stored payload is read (jsonpath in PostgreSQL), so
no upcasting can hide a key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from animus.db import translate_db_errors
from contracts.events import TERMINAL_RUN_EVENTS

RECORDING_EVENTS = frozenset({"DatasetVersionCommitted", "ArtifactRecorded"})
"""Events that bring an object into the record, with its sha256 and size."""

_BATCH = 5000
_READ = (
    "SELECT position, type, stream_id, recorded_at, "
    "jsonb_path_query_array(data, 'strict $.** ? (exists (@.object_key))') "
    "FROM events WHERE position > %s ORDER BY position LIMIT %s"
)


@dataclass(frozen=True, kw_only=True)
class BlobRecord:
    """One event's statement about an object: its digest and size."""

    key: str
    sha256: str | None
    size: int | None
    event_type: str
    stream_id: str
    position: int

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "sha256": self.sha256,
            "size": self.size,
            "event_type": self.event_type,
            "stream_id": self.stream_id,
            "position": self.position,
        }


@dataclass(kw_only=True)
class BlobReferences:
    """The blob-related facts of the log up to `position`."""

    position: int = 0
    named: set[str] = field(default_factory=set)
    records: dict[str, list[BlobRecord]] = field(default_factory=dict)
    open_runs: dict[str, datetime] = field(default_factory=dict)

    async def catch_up(
        self,
        conn: AsyncConnection[Any],
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Read the events appended since the last call; return how many.

        Raises:
            StoreError: the database failed.
        """
        seen = 0
        while True:
            with translate_db_errors():
                cur = await conn.execute(_READ, (self.position, _BATCH))
                rows = await cur.fetchall()
            for position, event_type, stream_id, recorded_at, found in rows:
                self._fold(position, event_type, stream_id, recorded_at, found)
            seen += len(rows)
            if progress is not None and rows:
                progress(len(rows))
            if len(rows) < _BATCH:
                return seen

    def is_named(self, key: str) -> bool:
        return key in self.named

    def oldest_open_run(self) -> datetime | None:
        """When the oldest run that may still record artifacts was dispatched."""
        return min(self.open_runs.values(), default=None)

    def _fold(
        self,
        position: int,
        event_type: str,
        stream_id: str,
        recorded_at: datetime,
        found: list[dict[str, Any]],
    ) -> None:
        self.position = position
        if event_type == "RunDispatched":
            self.open_runs.setdefault(stream_id, recorded_at)
        elif event_type in TERMINAL_RUN_EVENTS:
            self.open_runs.pop(stream_id, None)
        for item in found:
            key = item.get("object_key")
            if not isinstance(key, str):
                continue
            self.named.add(key)
            if event_type in RECORDING_EVENTS:
                sha256, size = item.get("sha256"), item.get("size")
                self.records.setdefault(key, []).append(
                    BlobRecord(
                        key=key,
                        sha256=sha256 if isinstance(sha256, str) else None,
                        size=size if isinstance(size, int) else None,
                        event_type=event_type,
                        stream_id=stream_id,
                        position=position,
                    )
                )
