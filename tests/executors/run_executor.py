"""A local executor as a process of its own, for tests that SIGKILL it.

python run_executor.py NAME [HOST_DIR:SANDBOX_DIR]   (settings from ANIMUS_*)
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from animus.bus import bus_session
from animus.settings import Settings
from animus.storage import BlobStore
from animus.telemetry import configure_logging
from executors.local import LocalExecutor


async def main(name: str, binds: list[str]) -> None:
    settings = Settings()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    assert settings.nats_url and settings.s3_endpoint
    store = BlobStore(
        endpoint=settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        bucket=settings.s3_bucket,
    )
    async with bus_session(settings.nats_url, name=f"test-{name}") as bus, store:
        extra = [(Path(b.split(":")[0]), b.split(":")[1]) for b in binds]
        executor = LocalExecutor(
            bus, store, settings, name=name, poll_interval=0.05, extra_rw_binds=extra
        )
        await executor.run(stop)


if __name__ == "__main__":
    configure_logging(fmt="console")
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
