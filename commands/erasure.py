"""Erase a data subject: destroy their key, then record it in the log.

The key goes first: once `subject_keys` has no key for the subject, every
sealed field of theirs reads as erased, whatever happens next. Then a
`SubjectErased` event (pseudonym and reason only) is appended to the
subject's stream, so the chain records the erasure. A crash between the two
leaves an erased key without its event; erasing again is idempotent and
appends the missing event. Last, `subject_keys` is rewritten with the owner
role (VACUUM FULL), so the destroyed key lingers in no dead tuple.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

from animus.errors import StoreError, StreamVersionConflict
from animus.eventstore import EventStore, NewEvent
from animus.personal import erase_subject_key, vacuum_subject_keys
from commands.handlers import CommandContext
from contracts.events import SubjectErased
from contracts.streams import SUBJECT_STREAM_TYPE, subject_stream

log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class ErasureResult:
    """What an erasure did; `position` is the log's SubjectErased event."""

    subject: str
    erased_at: datetime
    already_erased: bool
    position: int | None
    vacuumed: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "erased_at": self.erased_at.isoformat(),
            "already_erased": self.already_erased,
            "position": self.position,
            "vacuumed": self.vacuumed,
        }


async def erase_subject(
    store: EventStore,
    pool: AsyncConnectionPool,
    ctx: CommandContext,
    subject: str,
    *,
    reason: str = "",
    owner_dsn: str | None = None,
) -> ErasureResult:
    """Destroy a subject's key and record the erasure; idempotent.

    Args:
        store: the event store the erasure is recorded in.
        pool: the application role's pool (the key store's table).
        ctx: who asks (the metadata of the SubjectErased event).
        subject: the pseudonymous subject id.
        reason: kept in the log for ever: no personal data.
        owner_dsn: the owner role, to VACUUM the key table; None skips it.

    Raises:
        NotFoundError: no such subject.
    """
    erasure = await erase_subject_key(pool, subject)
    position = await _record(store, ctx, subject, reason)
    vacuumed = False
    if owner_dsn and not erasure.already_erased:
        try:
            await vacuum_subject_keys(owner_dsn)
            vacuumed = True
        except StoreError as exc:
            log.warning("subject_keys_not_vacuumed", subject=subject, error=exc.detail)
    return ErasureResult(
        subject=subject,
        erased_at=erasure.erased_at,
        already_erased=erasure.already_erased,
        position=position,
        vacuumed=vacuumed,
    )


async def _record(
    store: EventStore, ctx: CommandContext, subject: str, reason: str
) -> int | None:
    """Append SubjectErased unless the subject's stream holds it already."""
    stream_id = subject_stream(subject)
    for _ in range(2):
        recorded = await store.read_stream(stream_id)
        for event in recorded:
            if event.type == SubjectErased.event_type:
                return event.position
        new = NewEvent(
            stream_type=SUBJECT_STREAM_TYPE,
            stream_id=stream_id,
            project_id=None,
            event=SubjectErased(subject=subject, reason=reason),
        )
        try:
            appended = await store.append(
                [new],
                expected_versions={stream_id: len(recorded)},
                metadata=ctx.metadata("EraseSubject"),
            )
        except StreamVersionConflict:
            continue  # a concurrent erasure recorded it: read it back
        log.info(
            "subject_erasure_recorded", subject=subject, position=appended[-1].position
        )
        return appended[-1].position
    return None
