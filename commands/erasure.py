"""Erase a data subject: record the erasure, destroy their key, vacuum.

Everything is checked before anything changes: the subject id's form, the
reason (at most 200 storable characters: it is kept in the log for ever)
and that the subject exists. Then, in this order:

1. A `SubjectErased` event (pseudonym and reason only) is appended to the
   subject's stream, unless the stream holds it already.
2. The subject's key, identity link and profile are destroyed in
   `subject_keys`; from then on every sealed field of theirs reads as erased.
3. `subject_keys` is rewritten with the owner role (VACUUM FULL), so the
   destroyed key lingers in no dead tuple.

The event and the key live in one database but not in one transaction (the
event store appends through its own batching connection), so a failure can
stop the erasure between steps 1 and 2. Recording first means that window
leaves an erasure that is recorded but not yet done, never one that is done
but unrecorded: the log never lacks an erasure that happened. Any retry is
idempotent and repairs what is missing, whichever half it is (a key
destroyed by an older version or by hand, without its event, gets its event
too), and every run that has the owner role vacuums again, so a retry also
finishes an interrupted or refused VACUUM. `repaired` says a run completed
a half-done erasure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pydantic
import structlog
from psycopg_pool import AsyncConnectionPool

from animus.db import app_dsn, open_pool
from animus.errors import (
    ConfigurationError,
    ConflictError,
    StoreError,
    StreamVersionConflict,
    ValidationError,
)
from animus.eventstore import EventStore, NewEvent
from animus.personal import (
    SUBJECT_PATTERN,
    erase_subject_key,
    erased_at_of,
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
    """What an erasure did; `position` is the log's SubjectErased event.

    `already_erased`: the key was destroyed before this run. `repaired`:
    this run completed an erasure a failure had left half done (its event
    was missing, or its key was still there).
    """

    subject: str
    erased_at: datetime
    already_erased: bool
    position: int
    repaired: bool
    vacuumed: bool

    def line(self) -> str:
        """One line for the operator."""
        when = self.erased_at.isoformat(timespec="seconds")
        if self.already_erased:
            done = f"subject {self.subject} was already erased at {when}"
        else:
            done = f"subject {self.subject} erased at {when}"
        if self.repaired and self.already_erased:
            recorded = (
                f"its missing SubjectErased recorded now at position {self.position}"
            )
        elif self.repaired:
            recorded = (
                f"completing the SubjectErased recorded earlier at position "
                f"{self.position}"
            )
        else:
            recorded = f"SubjectErased at position {self.position}"
        vacuumed = (
            "subject_keys vacuumed"
            if self.vacuumed
            else "subject_keys NOT vacuumed (needs the owner role; retry with it)"
        )
        return f"{done}; {recorded}; {vacuumed}"

    def as_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "erased_at": self.erased_at.isoformat(),
            "already_erased": self.already_erased,
            "position": self.position,
            "repaired": self.repaired,
            "vacuumed": self.vacuumed,
        }


def erasure_event(subject: str, reason: str) -> SubjectErased:
    """The SubjectErased event an erasure appends, checked before anything
    is changed.

    Raises:
        ValidationError: the subject id or the reason is refused (`field`
            names which).
    """
    try:
        return SubjectErased(subject=subject, reason=reason)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "reason"
        if field == "subject":
            message = f"not a subject id ({SUBJECT_PATTERN})"
        elif error["type"] == "string_too_long":
            limit = error.get("ctx", {}).get("max_length")
            message = (
                f"at most {limit} characters (this one has {len(reason)}); "
                "it is kept in the log for ever"
            )
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
        raise ValidationError(message, field=field) from None


async def erase_subject(
    store: EventStore,
    pool: AsyncConnectionPool,
    ctx: CommandContext,
    subject: str,
    *,
    reason: str = "",
    owner_dsn: str | None = None,
) -> ErasureResult:
    """Record a subject's erasure, destroy their key, vacuum; idempotent.

    Args:
        store: the event store the erasure is recorded in.
        pool: the application role's pool (the key store's table).
        ctx: who asks (the metadata of the SubjectErased event).
        subject: the pseudonymous subject id.
        reason: kept in the log for ever: no personal data.
        owner_dsn: the owner role, to VACUUM the key table; None skips it.

    Raises:
        ValidationError: the subject id or the reason is refused; nothing
            was changed.
        NotFoundError: no such subject; nothing was changed.
        ConflictError: the subject's stream kept moving; nothing destroyed.
    """
    event = erasure_event(subject, reason)
    await erased_at_of(pool, subject)  # NotFoundError before any change
    position, appended = await _record(store, ctx, event)
    erasure = await erase_subject_key(pool, subject)
    # a run that appended the event for a key already gone, or destroyed a
    # key whose event was already there, completed a half-done erasure
    repaired = appended == erasure.already_erased
    if repaired:
        log.warning(
            "subject_erasure_repaired",
            subject=subject,
            position=position,
            key_destroyed_now=not erasure.already_erased,
            event_recorded_now=appended,
        )
    vacuumed = False
    if owner_dsn:
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
        repaired=repaired,
        vacuumed=vacuumed,
    )


async def _record(
    store: EventStore, ctx: CommandContext, event: SubjectErased
) -> tuple[int, bool]:
    """(position, appended now) of the subject's SubjectErased event.

    Raises:
        ConflictError: the stream moved twice under us.
    """
    stream_id = subject_stream(event.subject)
    for _ in range(2):
        recorded = await store.read_stream(stream_id)
        for old in recorded:
            if old.type == SubjectErased.event_type:
                return old.position, False
        new = NewEvent(
            stream_type=SUBJECT_STREAM_TYPE,
            stream_id=stream_id,
            project_id=None,
            event=event,
        )
        try:
            appended = await store.append(
                [new],
                expected_versions={stream_id: len(recorded)},
                metadata=ctx.metadata("EraseSubject"),
            )
        except StreamVersionConflict:
            continue  # a concurrent erasure recorded it: read it back
        position = appended[-1].position
        log.info("subject_erasure_recorded", subject=event.subject, position=position)
        return position, True
    raise ConflictError(
        f"the stream of subject {event.subject} kept changing; nothing was "
        "destroyed, retry the erasure"
    )


OPERATOR_ACTOR = "operator:cli"
"""The actor of an erasure run from the command line (a service name)."""


def erase_command(settings: Settings, args: argparse.Namespace) -> int:
    """`animus erase-subject SUBJECT [--reason TEXT] [--json]`.

    Everything is checked before anything changes (exit 2, one line).

    Raises:
        ConfigurationError: SUBJECT is not a subject id, or the reason is
            refused (too long, or not storable text).
        NotFoundError: no such subject.
    """
    from animus.stack import resolve_services

    if not is_subject(args.subject):
        raise ConfigurationError(
            f"SUBJECT: {args.subject!r} is not a subject id ({SUBJECT_PATTERN})"
        )
    try:
        erasure_event(args.subject, args.reason)
    except ValidationError as exc:
        raise ConfigurationError(f"--reason: {exc.detail}") from None
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
