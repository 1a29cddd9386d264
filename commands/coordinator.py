"""The coordinator: turns executor reports from the bus into run events.

A durable pull consumer on the report stream hands each report to the run
aggregate (`commands.run`): the run stream is folded, `decide_report` says
which events follow, and they are appended at the version that was folded.
A report is acknowledged only once its events are committed, or once it was
found to change nothing. Transient failures put it back with a delay, so no
report is lost; a redelivered report is a duplicate by the folded state, so
none yields a second event.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Mapping
from typing import Any

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
from animus.errors import AnimusError, StreamVersionConflict
from animus.eventstore import EventStore, NewEvent
from commands.run import (
    STREAM_TYPE,
    Applied,
    Ignored,
    IgnoreReason,
    Outcome,
    RunState,
    decide_report,
    fold_run,
    screen_report,
)
from contracts.bus import REPORT_STREAM, RunReport, report_subject
from contracts.streams import run_stream

__all__ = ["Coordinator", "CoordinatorState"]

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
SUSPICIOUS = frozenset(
    {
        IgnoreReason.UNKNOWN_RUN,
        IgnoreReason.PROJECT_MISMATCH,
        IgnoreReason.MISSING_PAYLOAD,
        IgnoreReason.UNSTORABLE_REPORT,
    }
)
"""Ignore reasons that point at a misbehaving executor: logged as warnings."""


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
    ) -> None:
        self.durable = durable
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
        log.info("coordinator_started", durable=self.durable)

    async def stop(self, *, grace: float = STOP_GRACE) -> None:
        """Finish the batch in hand, then end the loop.

        A batch still unfinished after `grace` seconds is abandoned; its
        reports are redelivered after the consumer's ack wait.
        """
        if self._task is None:
            return
        self._state = CoordinatorState.STOPPING
        self._stopping.set()
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
            events = [
                NewEvent(
                    stream_type=STREAM_TYPE,
                    stream_id=stream_id,
                    project_id=state.project_id,
                    event=event,
                )
                for event in decision
            ]
            try:
                recorded = await self._store.append(
                    events,
                    expected_versions={stream_id: state.version},
                    metadata=_metadata(state, report),
                )
            except StreamVersionConflict:
                log.info("report_conflict_retry", report_id=report.report_id)
                continue
            return Applied(
                event_types=tuple(e.type for e in recorded),
                position=recorded[-1].position,
            )
        raise StreamVersionConflict(f"stream {stream_id} kept moving; report retried")

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
        report = self._parse(msg)
        if report is None:
            self.rejected += 1
            await _settle(msg.term)
            return
        try:
            outcome = await self.apply(report)
        except Exception as exc:  # noqa: BLE001 - a report is never dropped
            await self._redeliver(msg, report, exc)
            return
        self._log_outcome(report, outcome)
        await _settle(msg.ack)

    def _parse(self, msg: Msg) -> RunReport | None:
        try:
            report = RunReport.model_validate_json(msg.data)
        except pydantic.ValidationError as exc:
            log.warning(
                "report_rejected",
                subject=msg.subject,
                reason="invalid_report",
                errors=exc.error_count(),
            )
            return None
        if msg.subject != report_subject(report.run_id):
            log.warning(
                "report_rejected",
                subject=msg.subject,
                reason="subject_mismatch",
                report_id=report.report_id,
                run_id=report.run_id,
            )
            return None
        return report

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
            level("report_ignored", reason=str(outcome.reason), **fields)
        else:
            self.applied += 1
            log.info(
                "report_applied",
                event_types=list(outcome.event_types),
                position=outcome.position,
                **fields,
            )


def _metadata(state: RunState, report: RunReport) -> Mapping[str, Any]:
    return {
        "actor": f"executor:{state.executor or 'local'}",
        "report_id": report.report_id,
        "report_kind": report.kind,
        "report_seq": report.seq,
        "attempt": report.attempt,
        "causation_id": report.report_id,
        "correlation_id": report.run_id,
    }


def _redelivery_delay(msg: Msg) -> float:
    try:
        delivered = max(msg.metadata.num_delivered, 1)
    except (AttributeError, ValueError, IndexError):
        delivered = 1
    return min(RETRY_INITIAL * 2 ** min(delivered - 1, 16), REDELIVERY_MAX_DELAY)


async def _settle(action: Any, **kwargs: Any) -> None:
    """Ack, nak or term; a failure only means the message comes back."""
    await settle(action, **kwargs)


async def _drop(sub: JetStreamContext.PullSubscription | None) -> None:
    await drop_subscription(sub)
