"""Entry point of `animus gateway` (see `animus.cli.PROCESSES`)."""

from __future__ import annotations

import asyncio

from animus.evidence.keys import verifier
from animus.settings import Settings
from gateway.server import serve


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the gateway until `stop` is set.

    Raises:
        ConfigurationError: in production, no key verifies checkpoints
            (the gateway needs ANIMUS_CHECKPOINT_VERIFY_KEY, not the
            signing key).
    """
    verifier(settings)  # refuse at start rather than on the first request
    await serve(settings, stop=stop)
