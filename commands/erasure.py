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

import argparse
import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

from animus.db import app_dsn, open_pool
from animus.errors import ConfigurationError, StoreError, StreamVersionConflict
from animus.eventstore import EventStore, NewEvent
from animus.personal import (
    SUBJECT_PATTERN,
    erase_subject_key,
    is_subject,
    vacuum_subject_keys,
)
from animus.settings import Settings
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

    def line(self) -> str:
        """One line for the operator."""
        when = self.erased_at.isoformat(timespec="seconds")
        recorded = (
            f"SubjectErased at position {self.position}"
            if self.position is not None
            else "SubjectErased not recorded (retry to record it)"
        )
        if self.already_erased:
            return f"subject {self.subject} was already erased at {when}; {recorded}"
        vacuumed = (
            "subject_keys vacuumed"
            if self.vacuumed
            else "subject_keys NOT vacuumed (needs the owner role)"
        )
        return f"subject {self.subject} erased at {when}; {recorded}; {vacuumed}"

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


OPERATOR_ACTOR = "operator:cli"
"""The actor of an erasure run from the command line (a service name)."""


def erase_command(settings: Settings, args: argparse.Namespace) -> int:
    """`animus erase-subject SUBJECT [--reason TEXT] [--json]`.

    Raises:
        ConfigurationError: SUBJECT is not a subject id.
        NotFoundError: no such subject.
    """
    from animus.stack import resolve_services

    if not is_subject(args.subject):
        raise ConfigurationError(
            f"SUBJECT: {args.subject!r} is not a subject id ({SUBJECT_PATTERN})"
        )
    settings = resolve_services(settings)
    result = asyncio.run(_erase(settings, args.subject, args.reason))
    if args.json:
        print(json.dumps(result.as_json(), sort_keys=True))
    else:
        print(result.line())
    return 0


async def _erase(settings: Settings, subject: str, reason: str) -> ErasureResult:
    pool = await open_pool(app_dsn(settings), max_size=2, name="erase-subject")
    try:
        async with EventStore(pool) as store:
            return await erase_subject(
                store,
                pool,
                CommandContext(actor=OPERATOR_ACTOR),
                subject,
                reason=reason,
                owner_dsn=settings.database_url,
            )
    finally:
        await pool.close()
