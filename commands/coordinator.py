"""The coordinator: turns executor reports from the bus into run events.

A durable pull consumer on the report stream hands each report to the run
aggregate (`commands.run`): the run stream is folded, `decide_report` says
which events follow, and they are appended at the version that was folded.
A report is acknowledged only once its events are committed, or once it was
found to change nothing. Transient failures put it back with a delay, so no
report is lost; a redelivered report is a duplicate by the folded state, so
none yields a second event.

A poison report (one that does not parse, names another run than its
subject, holds ids the event store cannot keep, or whose events keep failing
to append with a permanent error) never stalls the consumer: it is
republished byte for byte to `animus.deadletter.report.<run_id>`, recorded as
ReportRejected (on the run's stream while the run is open, else on the
coordinator's stream), and only then terminated. If it claims to be the
terminal report of the run's current attempt, the run fails at once with
reason `report_rejected` (commands/NOTES.md).

Alongside, a liveness watch follows the log for running runs and taps every
report as it is published (a plain subscription, so each coordinator sees
all of them even when they share the durable consumer). Silence is measured
on this process's monotonic clock from each report's arrival, never from the
executor's timestamps; a running run silent for `lost_after` seconds is failed
with reason `lost`, and its executor is asked to kill whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard, get_args

import pydantic
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from animus.bus import (
    ACK_WAIT_SECONDS,
    Bus,
    drop_subscription,
    fetch_batch,
    settle,
)
from animus.errors import (
    AnimusError,
    BusError,
    ConflictError,
    StreamVersionConflict,
    TransientStoreError,
)
from animus.eventstore import EventStore, NewEvent, RecordedEvent
from commands.run import (
    STREAM_TYPE,
    Applied,
    Ignored,
    IgnoreReason,
    Outcome,
    Rejection,
    RunState,
    claimed_attempt,
    decide_lost,
    decide_rejection,
    decide_report,
    fold_run,
    message_key,
    screen_report,
    storable_text,
)
from contracts.bus import (
    REPORT_STREAM,
    CancelRequested,
    ReportKind,
    RunReport,
    cancel_subject,
    dead_letter_subject,
    report_subject,
)
from contracts.events import (
    TERMINAL_RUN_EVENTS,
    DomainEvent,
    RejectReason,
    ReportRejected,
)
from contracts.streams import (
    COORDINATOR_STREAM_TYPE,
    REJECTED_REPORTS_STREAM,
    run_stream,
)

__all__ = ["Coordinator", "CoordinatorState", "LivenessWatch"]

log = structlog.get_logger(__name__)

DURABLE = "coordinator"
SUBJECT = "animus.report.>"
BATCH_SIZE = 64
FETCH_TIMEOUT = 1.0
CONFLICT_RETRIES = 8
RETRY_INITIAL = 0.2
RETRY_MAX = 5.0
REDELIVERY_MAX_DELAY = 30.0
STOP_GRACE = 10.0
IN_PROGRESS_AFTER = ACK_WAIT_SECONDS / 3
LOST_AFTER = 60.0
READ_PAGE = 1000
_EXECUTOR_TIME_LIMIT = 64
UNAPPLIABLE_AFTER = 5
"""Deliveries of a report whose events fail to append with a permanent error
(not a lost connection or a lost race) before it is dead-lettered."""
_TRANSIENT = (TransientStoreError, ConflictError, BusError, TimeoutError, OSError)
_SUBJECT_PREFIX = "animus.report."
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_REPORT_KINDS = frozenset(get_args(ReportKind))
_LIVE_EVENTS = frozenset({"RunStarted", "ArtifactRecorded", "MetricsRecorded"})
SUSPICIOUS = frozenset(
    {
        IgnoreReason.UNKNOWN_RUN,
        IgnoreReason.PROJECT_MISMATCH,
        IgnoreReason.MISSING_PAYLOAD,
        IgnoreReason.UNSTORABLE_REPORT,
        IgnoreReason.TERMINAL_CONFLICT,
    }
)
"""Ignore reasons that point at a misbehaving executor: logged as warnings."""


@dataclass
class _Watched:
    attempt: int
    heard_at: float


class LivenessWatch:
    """The running runs, and when each was last heard from by this process.

    Times come from `clock` (monotonic by default) at the moment a report
    arrives or the run is first seen running in the log, so a skewed or
    stepped executor clock can neither fake liveness nor cause a false loss.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._runs: dict[str, _Watched] = {}
        self.position = 0

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def follow(self, event: RecordedEvent) -> None:
        """Watch a run once the log shows it running; drop it when it ends."""
        self.position = max(self.position, event.position)
        run_id = event.data.get("run_id")
        if event.stream_type != STREAM_TYPE or not isinstance(run_id, str):
            return
        if event.type in TERMINAL_RUN_EVENTS or event.type == "RunDispatched":
            self._runs.pop(run_id, None)
        elif event.type in _LIVE_EVENTS and run_id not in self._runs:
            attempt = int(event.data.get("attempt", 0))
            self._runs[run_id] = _Watched(attempt=attempt, heard_at=self._clock())

    def heard(self, run_id: str, attempt: int) -> None:
        """A report of `run_id` arrived; one of an older attempt proves nothing."""
        watched = self._runs.get(run_id)
        if watched is not None and watched.attempt == attempt:
            watched.heard_at = self._clock()

    def refresh(self) -> None:
        """Restart every count, after a time in which reports went unseen."""
        now = self._clock()
        for watched in self._runs.values():
            watched.heard_at = now

    def forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def silent(self, lost_after: float) -> list[tuple[str, float]]:
        """(run_id, seconds of silence) of every run silent for `lost_after`."""
        now = self._clock()
        return sorted(
            (run_id, now - watched.heard_at)
            for run_id, watched in self._runs.items()
            if now - watched.heard_at >= lost_after
        )


class CoordinatorState(enum.Enum):
    """Where a coordinator is in its lifecycle."""

    CREATED = "created"  # constructed; nothing consumes yet
    RUNNING = "running"  # the consuming loop is active
    STOPPING = "stopping"  # stop() was called; the current batch is finishing
    STOPPED = "stopped"  # the loop has ended; start() may run it again


class Coordinator:
    """Consumes run reports and appends the events they imply.

    Use as `async with Coordinator(store, bus):` or call start() and stop().
    Several coordinators may share one durable consumer: reports are spread
    between them, and a lost race on a run stream is retried on fresh state.
    """

    def __init__(
        self,
        store: EventStore,
        bus: Bus,
        *,
        durable: str = DURABLE,
        subject: str = SUBJECT,
        batch_size: int = BATCH_SIZE,
        fetch_timeout: float = FETCH_TIMEOUT,
        lost_after: float = LOST_AFTER,
        sweep_interval: float | None = None,
    ) -> None:
        self.durable = durable
        self.liveness = LivenessWatch()
        self._lost_after = lost_after
        self._sweep_interval = sweep_interval or min(max(lost_after / 4, 0.05), 5.0)
        self._watch_task: asyncio.Task[None] | None = None
        self._store = store
        self._bus = bus
        self._subject = subject
        self._batch_size = batch_size
        self._fetch_timeout = fetch_timeout
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._state = CoordinatorState.CREATED
        self.applied = 0
        self.ignored = 0
        self.rejected = 0
        self.redelivered = 0
        self.dead_lettered = 0

    @property
    def state(self) -> CoordinatorState:
        return self._state

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start consuming; the durable consumer resumes after its last ack."""
        if self._task is not None:
            return
        self._stopping.clear()
        self._state = CoordinatorState.RUNNING
        self._task = asyncio.create_task(
            self._run(), name=f"coordinator-{self.durable}"
        )
        self._watch_task = asyncio.create_task(
            self._watch(), name=f"coordinator-{self.durable}-liveness"
        )
        log.info(
            "coordinator_started", durable=self.durable, lost_after=self._lost_after
        )

    async def stop(self, *, grace: float = STOP_GRACE) -> None:
        """Finish the batch in hand, then end the loop.

        A batch still unfinished after `grace` seconds is abandoned; its
        reports are redelivered after the consumer's ack wait.
        """
        if self._task is None:
            return
        self._state = CoordinatorState.STOPPING
        self._stopping.set()
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        self._state = CoordinatorState.STOPPED
        log.info("coordinator_stopped", durable=self.durable, applied=self.applied)

    async def apply(self, report: RunReport) -> Outcome:
        """Turn one report into events on its run stream, or say why not.

        Raises:
            StreamVersionConflict: the stream kept moving through every retry.
            StoreError: the event store failed; the report may be retried.
        """
        screened = screen_report(report)
        if screened is not None:
            return screened
        stream_id = run_stream(report.run_id)
        for _ in range(CONFLICT_RETRIES):
            state = fold_run(report.run_id, await self._store.read_stream(stream_id))
            decision = decide_report(state, report)
            if isinstance(decision, Ignored):
                return decision
            try:
                return await self._append(state, decision, _metadata(state, report))
            except StreamVersionConflict:
                log.info("report_conflict_retry", report_id=report.report_id)
        raise StreamVersionConflict(f"stream {stream_id} kept moving; report retried")

    async def declare_lost(self, run_id: str, *, silent_for: float) -> Outcome:
        """Fail a running run nothing was heard from, then kill what is left.

        Raises:
            StreamVersionConflict: the stream kept moving through every retry.
            StoreError: the event store failed; the next sweep tries again.
        """
        stream_id = run_stream(run_id)
        for _ in range(CONFLICT_RETRIES):
            state = fold_run(run_id, await self._store.read_stream(stream_id))
            decision = decide_lost(state, silent_for=silent_for)
            if isinstance(decision, Ignored):
                self.liveness.forget(run_id)
                return decision
            metadata = {
                "actor": "coordinator:liveness",
                "attempt": state.attempt,
                "silent_seconds": round(silent_for, 3),
                "correlation_id": run_id,
            }
            try:
                applied = await self._append(state, decision, metadata)
            except StreamVersionConflict:
                continue
            self.liveness.forget(run_id)
            log.warning(
                "run_lost",
                run_id=run_id,
                attempt=state.attempt,
                silent_for=round(silent_for, 3),
                position=applied.position,
            )
            await self._kill_leftover(state)
            return applied
        raise StreamVersionConflict(f"stream {stream_id} kept moving; sweep retried")

    async def record_rejection(self, rejection: Rejection) -> Outcome:
        """Record a dead-lettered report once: on its run's stream while the
        run is open (failing it when the report claimed its end), else on the
        coordinator's stream.

        Raises:
            StreamVersionConflict: the stream kept moving through every retry.
            StoreError: the event store failed; the message is redelivered.
        """
        project_id: str | None = None
        run_id: str | None = None
        if rejection.run_id is not None:
            stream_id = run_stream(rejection.run_id)
            for _ in range(CONFLICT_RETRIES):
                events = await self._store.read_stream(stream_id)
                state = fold_run(rejection.run_id, events)
                decision = decide_rejection(state, rejection)
                if not isinstance(decision, Ignored):
                    try:
                        return await self._append(
                            state, decision, _rejection_metadata(rejection)
                        )
                    except StreamVersionConflict:
                        continue
                if decision.reason is IgnoreReason.DUPLICATE_REPORT:
                    return decision
                if state.exists:  # finished: nothing more on its stream
                    project_id, run_id = state.project_id, state.run_id
                break
            else:
                raise StreamVersionConflict(f"stream {stream_id} kept moving")
        return await self._record_elsewhere(rejection, project_id, run_id)

    async def _record_elsewhere(
        self, rejection: Rejection, project_id: str | None, run_id: str | None
    ) -> Outcome:
        """Record a rejection of no open run on the coordinator's stream."""
        stream_id = REJECTED_REPORTS_STREAM
        for _ in range(CONFLICT_RETRIES):
            events = await self._store.read_stream(stream_id)
            if rejection.key in _rejected_keys(events):
                return Ignored(reason=IgnoreReason.DUPLICATE_REPORT)
            version = events[-1].stream_version if events else 0
            event = rejection.event(project_id=project_id, run_id=run_id)
            try:
                recorded = await self._store.append(
                    [
                        NewEvent(
                            stream_type=COORDINATOR_STREAM_TYPE,
                            stream_id=stream_id,
                            project_id=project_id,
                            event=event,
                        )
                    ],
                    expected_versions={stream_id: version},
                    metadata=_rejection_metadata(rejection),
                )
            except StreamVersionConflict:
                continue
            return Applied(
                event_types=(event.event_type,), position=recorded[-1].position
            )
        raise StreamVersionConflict(f"stream {stream_id} kept moving")

    async def _append(
        self,
        state: RunState,
        decision: list[DomainEvent],
        metadata: Mapping[str, Any],
    ) -> Applied:
        stream_id = run_stream(state.run_id)
        events = [
            NewEvent(
                stream_type=STREAM_TYPE,
                stream_id=stream_id,
                project_id=state.project_id,
                event=event,
            )
            for event in decision
        ]
        recorded = await self._store.append(
            events, expected_versions={stream_id: state.version}, metadata=metadata
        )
        return Applied(
            event_types=tuple(e.type for e in recorded),
            position=recorded[-1].position,
        )

    async def _kill_leftover(self, state: RunState) -> None:
        """Ask the run's executor to kill a workload that may still be running."""
        executor = state.executor or "local"
        cancel = CancelRequested(
            project_id=state.project_id or "",
            run_id=state.run_id,
            attempt=state.attempt,
        )
        try:
            await self._bus.publish(
                cancel_subject(executor),
                cancel.model_dump_json().encode(),
                msg_id=f"lost:{state.run_id}:{state.attempt}",
            )
        except BusError as exc:
            log.warning("lost_cancel_failed", run_id=state.run_id, error=exc.detail)

    # -- liveness ------------------------------------------------------------

    async def _watch(self) -> None:
        """Follow the log and the report tap; fail runs that fell silent."""
        tap: Any = None
        blind = True
        try:
            while not self._stopping.is_set():
                try:
                    if tap is None:
                        tap = await self._bus.nc.subscribe(
                            self._subject, cb=self._on_tap
                        )
                    if not self._bus.nc.is_connected:
                        blind = True  # reports pass unseen: no count is fair
                    else:
                        await self._sweep(refresh=blind)
                        blind = False
                except Exception as exc:  # noqa: BLE001 - the watch outlives a bad sweep
                    log.warning("liveness_sweep_failed", error=str(exc))
                await self._pause(self._sweep_interval)
        finally:
            if tap is not None:
                with contextlib.suppress(Exception):
                    await tap.unsubscribe()

    async def _on_tap(self, msg: Msg) -> None:
        report = _decode_report(msg.data)
        if report is not None and msg.subject == report_subject(report.run_id):
            self.liveness.heard(report.run_id, report.attempt)

    async def _sweep(self, *, refresh: bool) -> None:
        while True:
            page = await self._store.read_all(
                after=self.liveness.position, limit=READ_PAGE
            )
            for event in page:
                self.liveness.follow(event)
            if len(page) < READ_PAGE:
                break
        if refresh:
            self.liveness.refresh()
        for run_id, silent_for in self.liveness.silent(self._lost_after):
            await self.declare_lost(run_id, silent_for=silent_for)

    async def _run(self) -> None:
        delay = RETRY_INITIAL
        sub: JetStreamContext.PullSubscription | None = None
        try:
            while not self._stopping.is_set():
                try:
                    if sub is None:
                        sub = await self._bus.pull_consumer(
                            stream=REPORT_STREAM,
                            durable=self.durable,
                            subject=self._subject,
                        )
                    batch = await fetch_batch(
                        sub, batch=self._batch_size, timeout=self._fetch_timeout
                    )
                    await self._handle_batch(batch)
                except Exception as exc:  # noqa: BLE001 - the loop outlives a bad batch
                    if isinstance(exc, AnimusError):
                        log.warning("coordinator_retrying", error=exc.detail)
                    else:
                        log.exception("coordinator_batch_failed")
                    await _drop(sub)
                    sub = None
                    await self._pause(delay)
                    delay = min(delay * 2, RETRY_MAX)
                else:
                    delay = RETRY_INITIAL
        finally:
            await _drop(sub)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _handle_batch(self, batch: list[Msg]) -> None:
        """Handle a batch: one run's reports in order, different runs at once."""
        by_run: dict[str, list[Msg]] = {}
        for msg in batch:
            by_run.setdefault(msg.subject, []).append(msg)
        async with asyncio.TaskGroup() as group:
            for messages in by_run.values():
                group.create_task(self._handle_in_order(messages))

    async def _handle_in_order(self, messages: list[Msg]) -> None:
        fetched = time.monotonic()
        for msg in messages:
            if time.monotonic() - fetched > IN_PROGRESS_AFTER:
                # a slow database must not let the ack wait expire mid-batch
                await _settle(msg.in_progress)
            await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        """Settle one message: ack, term or nak; never raise."""
        parsed = self._parse(msg)
        if isinstance(parsed, _Poison):
            await self._dead_letter(msg, parsed)
            return
        report = parsed
        try:
            outcome = await self.apply(report)
        except Exception as exc:  # noqa: BLE001 - a report is never dropped
            if _delivered(msg) >= UNAPPLIABLE_AFTER and not isinstance(exc, _TRANSIENT):
                detail = exc.detail if isinstance(exc, AnimusError) else ""
                poison = _Poison(
                    "unappliable_report",
                    f"{type(exc).__name__}: {detail}".rstrip(": "),
                    report,
                )
                await self._dead_letter(msg, poison)
            else:
                await self._redeliver(msg, report, exc)
            return
        if (
            isinstance(outcome, Ignored)
            and outcome.reason is IgnoreReason.UNSTORABLE_REPORT
        ):
            poison = _Poison(
                "unstorable_report",
                "an id, artifact or metric name holds NUL or a lone surrogate, "
                "or a number is out of range",
                report,
            )
            await self._dead_letter(msg, poison)
            return
        self._log_outcome(report, outcome)
        await _settle(msg.ack)

    def _parse(self, msg: Msg) -> RunReport | _Poison:
        report = _decode_report(msg.data)
        if report is None:
            return _Poison("invalid_report", "the payload is not a valid RunReport")
        if msg.subject != report_subject(report.run_id):
            return _Poison(
                "subject_mismatch", "the report names another run than its subject"
            )
        self.liveness.heard(report.run_id, report.attempt)
        return report

    async def _dead_letter(self, msg: Msg, poison: _Poison) -> None:
        """Republish a poison message, record its rejection, then terminate it.

        Both steps are idempotent (dedupe id, message key), so a failure of
        either puts the message back and the next delivery completes it.
        """
        try:
            rejection = _rejection(msg, poison)
            await self._bus.publish(
                rejection.dead_letter_subject,
                msg.data,
                msg_id=f"dead-letter:{REPORT_STREAM}:{rejection.key}",
                headers={
                    "Animus-Original-Subject": msg.subject,
                    "Animus-Original-Stream": REPORT_STREAM,
                    "Animus-Original-Sequence": str(rejection.stream_sequence),
                    "Animus-Reject-Reason": rejection.reason,
                    "Animus-Payload-Sha256": rejection.sha256,
                },
            )
            outcome = await self.record_rejection(rejection)
        except Exception as exc:  # noqa: BLE001 - the message comes back
            self.redelivered += 1
            delay = _redelivery_delay(msg)
            log.warning(
                "report_dead_letter_failed",
                subject=msg.subject,
                reason=poison.reason,
                error=exc.detail if isinstance(exc, AnimusError) else repr(exc),
                delay=delay,
            )
            await _settle(msg.nak, delay=delay)
            return
        self.rejected += 1
        self.dead_lettered += 1
        log.warning(
            "report_dead_lettered",
            subject=msg.subject,
            reason=rejection.reason,
            detail=rejection.detail,
            run_id=rejection.run_id,
            sha256=rejection.sha256,
            size=rejection.size,
            dead_letter_subject=rejection.dead_letter_subject,
            recorded=not isinstance(outcome, Ignored),
            event_types=(
                list(outcome.event_types) if isinstance(outcome, Applied) else []
            ),
        )
        await _settle(msg.term)

    async def _redeliver(self, msg: Msg, report: RunReport, exc: Exception) -> None:
        self.redelivered += 1
        delay = _redelivery_delay(msg)
        if isinstance(exc, AnimusError):
            log.warning(
                "report_redelivery",
                report_id=report.report_id,
                run_id=report.run_id,
                error=exc.detail,
                delay=delay,
            )
        else:
            log.exception(
                "report_redelivery", report_id=report.report_id, run_id=report.run_id
            )
        await _settle(msg.nak, delay=delay)

    def _log_outcome(self, report: RunReport, outcome: Outcome) -> None:
        fields = {
            "report_id": report.report_id,
            "run_id": report.run_id,
            "attempt": report.attempt,
            "seq": report.seq,
            "kind": report.kind,
        }
        if isinstance(outcome, Ignored):
            self.ignored += 1
            level = log.warning if outcome.reason in SUSPICIOUS else log.info
            if outcome.reason is IgnoreReason.LIVENESS_ONLY:
                level = log.debug  # one per heartbeat: too many for INFO
            level("report_ignored", reason=str(outcome.reason), **fields)
        else:
            self.applied += 1
            log.info(
                "report_applied",
                event_types=list(outcome.event_types),
                position=outcome.position,
                **fields,
            )


def _decode_report(data: bytes) -> RunReport | None:
    """Parse a report; lone surrogates and bad UTF-8 in its text are tolerated.

    pydantic's JSON parser refuses a lone surrogate escape, which would make
    a terminal report with such a log tail unreadable and leave its run
    unfinished. The standard library keeps it, and `storable_text` replaces
    it with U+FFFD before anything is stored.
    """
    with contextlib.suppress(pydantic.ValidationError):
        return RunReport.model_validate_json(data)
    try:
        payload = json.loads(data.decode("utf-8", errors="replace"))
        return RunReport.model_validate(payload)
    except (ValueError, RecursionError, pydantic.ValidationError):
        return None


@dataclass(frozen=True)
class _Poison:
    """Why a message is dead-lettered, with its report when it parsed."""

    reason: RejectReason
    detail: str
    report: RunReport | None = None


def _rejection(msg: Msg, poison: _Poison) -> Rejection:
    """What is known of a poison message; its run comes from its subject."""
    token = msg.subject.removeprefix(_SUBJECT_PREFIX)
    claims = (
        _claims(msg.data)
        if poison.report is None
        else {
            "run_id": poison.report.run_id,
            "kind": poison.report.kind,
            "attempt": poison.report.attempt,
        }
    )
    kind = claims.get("kind")
    claimed_run = claims.get("run_id")
    return Rejection(
        reason=poison.reason,
        detail=poison.detail,
        subject=msg.subject,
        stream_sequence=_stream_sequence(msg),
        sha256=hashlib.sha256(msg.data).hexdigest(),
        size=len(msg.data),
        dead_letter_subject=dead_letter_subject(msg.subject),
        run_id=token if _RUN_ID.match(token) else None,
        claimed_run_id=claimed_run if isinstance(claimed_run, str) else None,
        claimed_kind=kind if _is_kind(kind) else None,
        claimed_attempt=claimed_attempt(claims.get("attempt")),
    )


def _is_kind(value: object) -> TypeGuard[ReportKind]:
    return isinstance(value, str) and value in _REPORT_KINDS


def _claims(data: bytes) -> dict[str, Any]:
    """What an unreadable payload says of itself, read as leniently as can be."""
    try:
        payload = json.loads(data.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _rejected_keys(events: list[RecordedEvent]) -> frozenset[str]:
    return frozenset(
        message_key(int(e.data["stream_sequence"]), str(e.data["sha256"]))
        for e in events
        if e.type == ReportRejected.event_type
    )


def _rejection_metadata(rejection: Rejection) -> Mapping[str, Any]:
    source = f"{REPORT_STREAM}:{rejection.stream_sequence}"
    return {
        "actor": "coordinator:dead-letter",
        "causation_id": source,
        "correlation_id": rejection.run_id or source,
    }


def _stream_sequence(msg: Msg) -> int:
    """The message's sequence in the report stream (stable across redelivery)."""
    try:
        return int(msg.metadata.sequence.stream)
    except (AttributeError, ValueError, TypeError, IndexError):
        return 0


def _delivered(msg: Msg) -> int:
    try:
        return max(int(msg.metadata.num_delivered), 1)
    except (AttributeError, ValueError, TypeError, IndexError):
        return 1


def _metadata(state: RunState, report: RunReport) -> Mapping[str, Any]:
    """The envelope metadata of a report's events; executor times are kept
    here as metadata only."""
    metadata: dict[str, Any] = {
        "actor": f"executor:{state.executor or 'local'}",
        "report_id": report.report_id,
        "report_kind": report.kind,
        "report_seq": report.seq,
        "attempt": report.attempt,
        "causation_id": report.report_id,
        "correlation_id": report.run_id,
        "executor_sent_at": storable_text(report.sent_at, _EXECUTOR_TIME_LIMIT),
    }
    if report.occurred_at is not None:
        workload_time = storable_text(report.occurred_at, _EXECUTOR_TIME_LIMIT)
        metadata["workload_time"] = workload_time
    return metadata


def _redelivery_delay(msg: Msg) -> float:
    delivered = _delivered(msg)
    return min(RETRY_INITIAL * 2 ** min(delivered - 1, 16), REDELIVERY_MAX_DELAY)


async def _settle(action: Any, **kwargs: Any) -> None:
    """Ack, nak or term; a failure only means the message comes back."""
    await settle(action, **kwargs)


async def _drop(sub: JetStreamContext.PullSubscription | None) -> None:
    await drop_subscription(sub)
