"""Structured logs (structlog, one JSON event per line) and trace context.

Request and trace ids are bound once per request through contextvars; one
processor redacts anything that looks like a secret before it is rendered.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

_SECRET_WORDS = ("password", "secret", "token", "authorization", "cookie", "dsn")
REDACTED = "[redacted]"


def redact_secrets(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace values of secret-looking keys, at any depth of dicts."""
    for key, value in list(event.items()):
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_WORDS):
            event[key] = REDACTED
        elif isinstance(value, dict):
            event[key] = redact_secrets(_logger, _name, dict(value))
    return event


def add_trace_context(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event.setdefault("trace_id", format(span.trace_id, "032x"))
        event.setdefault("span_id", format(span.span_id, "016x"))
    return event


def _stderr_logger(*args: Any) -> structlog.PrintLogger:
    """A logger writing to stderr as it is now, not as it was at configuration.

    Loggers are not cached, so each log call asks again: whoever swaps
    sys.stderr (a test capturing a command's output, a daemon redirecting it)
    never leaves the process writing into a closed stream.
    """
    return structlog.PrintLogger(sys.stderr)


def configure_logging(
    *, level: str = "info", fmt: str = "json", process: str | None = None
) -> None:
    """Configure structlog and the stdlib root logger for one process."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_context,
        redact_secrets,
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    if process:
        structlog.contextvars.bind_contextvars(process=process)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for noisy in ("botocore", "aiobotocore", "nats", "alembic", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)
