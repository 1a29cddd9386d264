"""Liveness and readiness, both public.

`/healthz` answers while the process serves, naming in a header the
`animus up` it belongs to, if any; `/readyz` asks PostgreSQL, NATS and S3 at
once, each with a short timeout, and names whatever failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from litestar import Response, get

from animus.db import translate_db_errors
from animus.settings import INSTANCE_HEADER
from contracts.api import Health, Readiness
from gateway.auth import PERMISSION_OPT, Permission
from gateway.errors import NotReady
from gateway.routing import AppSettings, Services, problem_spec
from gateway.services import GatewayServices

log = structlog.get_logger(__name__)

CHECK_TIMEOUT = 2.0
PUBLIC = {PERMISSION_OPT: Permission.PUBLIC}

Check = Callable[[], Awaitable[None]]


@get("/healthz", opt=PUBLIC, tags=["health"])
async def healthz(settings: AppSettings) -> Response[Health]:
    """The process is up."""
    instance = settings.instance_id
    return Response(Health(), headers={INSTANCE_HEADER: instance} if instance else None)


@get("/readyz", opt=PUBLIC, tags=["health"], responses={503: problem_spec(503)})
async def readyz(services: Services) -> Readiness:
    """Every dependency answers: PostgreSQL, NATS (when configured) and S3."""
    checks = readiness_checks(services)
    outcomes = await asyncio.gather(
        *(_within_timeout(check) for check in checks.values())
    )
    results = dict(zip(checks, outcomes, strict=True))
    failing = sorted(name for name, ok in results.items() if not ok)
    if failing:
        log.warning("not_ready", failing=failing)
        raise NotReady(
            f"not ready: {', '.join(failing)} did not answer",
            checks={name: "ok" if ok else "failed" for name, ok in results.items()},
        )
    return Readiness(checks={name: "ok" for name in results})


def readiness_checks(services: GatewayServices) -> dict[str, Check]:
    async def postgres() -> None:
        with translate_db_errors():
            async with services.pool.connection(timeout=CHECK_TIMEOUT) as conn:
                await conn.execute("SELECT 1")

    checks: dict[str, Check] = {"postgres": postgres, "s3": services.blobs.check}
    if services.bus is not None:
        checks["nats"] = services.bus.check
    return checks


async def _within_timeout(check: Check) -> bool:
    try:
        await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT)
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return False
    return True


ROUTES = [healthz, readyz]
