"""The `animus executor` process: the local executor against NATS and S3."""

from __future__ import annotations

import asyncio

import structlog

from animus.bus import bus_session
from animus.errors import ConfigurationError
from animus.settings import Settings
from animus.storage import BlobStore
from executors.local import LocalExecutor
from executors.sandbox import SandboxMode, SandboxUnavailable, choose_policy

__all__ = ["run"]

log = structlog.get_logger(__name__)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Consume launches and cancels for `settings.executor_kind` until `stop`."""
    if not settings.nats_url:
        raise ConfigurationError("ANIMUS_NATS_URL: the executor needs a NATS server")
    if not settings.s3_endpoint:
        raise ConfigurationError("ANIMUS_S3_ENDPOINT: the executor needs S3 storage")
    try:
        policy = choose_policy(settings)
    except SandboxUnavailable as exc:
        # every launch is then reported failed with reason sandbox_unavailable
        log.error("sandbox_unavailable", detail=exc.detail)
    else:
        if policy.mode is SandboxMode.UNSANDBOXED:
            log.warning(
                "sandbox_disabled",
                detail="bubblewrap is missing and allow_unsandboxed is set: "
                "workloads run WITHOUT a sandbox",
            )
    store = BlobStore(
        endpoint=settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        bucket=settings.s3_bucket,
        region=settings.s3_region,
    )
    async with (
        bus_session(
            settings.nats_url,
            name="animus-executor",
            wait=settings.nats_wait_seconds,
        ) as bus,
        store,
    ):
        await store.ensure_bucket()
        executor = LocalExecutor(bus, store, settings, name=settings.executor_kind)
        await executor.run(stop)
