"""Idempotency keys for POST routes (`Idempotency-Key` header).

Keys live in the `idempotency_keys` table, one row per (principal, key):
each principal has its own key space. A row remembers the method, the path
and a fingerprint of the request (sha256 over method, path and the RFC 8785
canonical JSON of the body, so reordered keys and whitespace are the same
request). The first request claims the row `in_progress` with an INSERT that
only one concurrent request can win; it ends `done` with the status and body
to replay, or is deleted when the request failed, so a retry can run.

- same key, same request, done: the stored answer, `Idempotency-Replayed: true`;
- same key, another request (body, method or path): 422 mismatch;
- same key while the first still runs: 409 in progress.

A claim is a lease: the request renews it every `CLAIM_RENEW` while it
runs, so a claim not renewed for `CLAIM_LEASE` belongs to a request that
died with its process (a gateway killed mid-upload) and a retry takes it
over within seconds. A finished key older than `KEY_RETENTION` may be taken
over too. Keys are not events.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import rfc8785
import structlog
from litestar.response import Response

from animus.db import translate_db_errors
from animus.errors import AnimusError
from gateway.errors import BadRequest, IdempotencyKeyInProgress, IdempotencyKeyMismatch

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

log = structlog.get_logger(__name__)

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotency-Replayed"
CLAIM_LEASE = timedelta(seconds=30)
CLAIM_RENEW = timedelta(seconds=10)
KEY_RETENTION = timedelta(hours=24)
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_CLAIM_ATTEMPTS = 3


def check_key(value: str | None) -> str | None:
    """The key from the header, or None; printable ASCII, at most 255 chars.

    Raises:
        BadRequest: the header is present but not a valid key.
    """
    if value is None:
        return None
    if not _KEY.match(value):
        raise BadRequest("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return value


def fingerprint(method: str, path: str, body: Any) -> str:
    """sha256 of method, path and the body's canonical JSON (RFC 8785).

    Values outside JSON's exact number range fall back to the repr of the
    parsed body, which is still stable for the same request.
    """
    try:
        canonical = rfc8785.dumps(body)
    except rfc8785.CanonicalizationError:
        canonical = repr(body).encode()
    return _digest(method, path, canonical)


def upload_fingerprint(method: str, path: str, sha256: str) -> str:
    """An upload is the same request when its content digest is the same."""
    return _digest(method, path, f"sha256:{sha256}".encode())


def _digest(method: str, path: str, payload: bytes) -> str:
    hasher = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), payload):
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()


@dataclass(frozen=True, kw_only=True)
class RequestIdentity:
    """What a key must always be used for."""

    principal: str
    key: str
    method: str
    path: str
    fingerprint: str


@dataclass(frozen=True, kw_only=True)
class StoredResponse:
    status_code: int
    body: bytes


class IdempotencyStore:
    """The `idempotency_keys` table on the application role's pool."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def claim(self, request: RequestIdentity) -> StoredResponse | None:
        """Claim the key for this request, or return the answer to replay.

        Returns:
            None when this request now owns the key and must run.

        Raises:
            IdempotencyKeyMismatch: the key was used for another request.
            IdempotencyKeyInProgress: the key's first request still runs.
        """
        for _ in range(_CLAIM_ATTEMPTS):
            if await self._insert(request) or await self._take_over(request):
                return None
            row = await self._select(request)
            if row is not None:
                return _judge(request, row)
        raise IdempotencyKeyInProgress("the idempotency key is changing hands; retry")

    async def peek(self, request: RequestIdentity) -> StoredResponse | None:
        """Judge the key without claiming it (None: unused or expired).

        Raises:
            IdempotencyKeyMismatch: the key was used for another request.
            IdempotencyKeyInProgress: the key's first request still runs.
        """
        row = await self._select(request)
        return None if row is None else _judge(request, row)

    async def complete(
        self, request: RequestIdentity, *, status_code: int, body: bytes
    ) -> None:
        """Store the answer of a claimed key, to replay from now on."""
        await self._execute(
            "UPDATE idempotency_keys SET state = 'done', status_code = %s, "
            "response_body = %s, completed_at = now() "
            "WHERE principal = %s AND key = %s AND state = 'in_progress'",
            (status_code, body, request.principal, request.key),
        )

    async def release(self, request: RequestIdentity) -> None:
        """Forget a claimed key whose request failed, so a retry can run."""
        await self._execute(
            "DELETE FROM idempotency_keys "
            "WHERE principal = %s AND key = %s AND state = 'in_progress' "
            "AND fingerprint = %s",
            (request.principal, request.key, request.fingerprint),
        )

    async def renew(self, request: RequestIdentity) -> None:
        """Extend a claim's lease while its request still runs."""
        await self._execute(
            "UPDATE idempotency_keys SET created_at = now() "
            "WHERE principal = %s AND key = %s AND state = 'in_progress' "
            "AND fingerprint = %s",
            (request.principal, request.key, request.fingerprint),
        )

    async def _insert(self, request: RequestIdentity) -> bool:
        return await self._changed(
            "INSERT INTO idempotency_keys "
            "(principal, key, method, path, fingerprint, state) "
            "VALUES (%s, %s, %s, %s, %s, 'in_progress') "
            "ON CONFLICT (principal, key) DO NOTHING",
            (
                request.principal,
                request.key,
                request.method,
                request.path,
                request.fingerprint,
            ),
        )

    async def _take_over(self, request: RequestIdentity) -> bool:
        """Reclaim a key whose claim went stale or whose answer expired."""
        return await self._changed(
            "UPDATE idempotency_keys SET method = %s, path = %s, fingerprint = %s, "
            "state = 'in_progress', status_code = NULL, response_body = NULL, "
            "created_at = now(), completed_at = NULL "
            "WHERE principal = %s AND key = %s AND ("
            "(state = 'in_progress' AND created_at < now() - %s) "
            "OR (state = 'done' AND created_at < now() - %s))",
            (
                request.method,
                request.path,
                request.fingerprint,
                request.principal,
                request.key,
                CLAIM_LEASE,
                KEY_RETENTION,
            ),
        )

    async def _select(self, request: RequestIdentity) -> tuple[Any, ...] | None:
        with translate_db_errors():
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT method, path, fingerprint, state, status_code, "
                    "response_body FROM idempotency_keys "
                    "WHERE principal = %s AND key = %s AND created_at >= "
                    "now() - CASE state WHEN 'done' THEN %s ELSE %s END",
                    (request.principal, request.key, KEY_RETENTION, CLAIM_LEASE),
                )
                return await cur.fetchone()

    async def _changed(self, query: str, params: tuple[Any, ...]) -> bool:
        with translate_db_errors():
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                return cur.rowcount == 1

    async def _execute(self, query: str, params: tuple[Any, ...]) -> None:
        with translate_db_errors():
            async with self._pool.connection() as conn:
                await conn.execute(query, params)


def _judge(request: RequestIdentity, row: tuple[Any, ...]) -> StoredResponse:
    method, path, stored_fingerprint, state, status_code, body = row
    if (method, path, stored_fingerprint) != (
        request.method,
        request.path,
        request.fingerprint,
    ):
        raise IdempotencyKeyMismatch(
            "idempotency key mismatch: the key was used for a different request"
        )
    if state != "done":
        raise IdempotencyKeyInProgress(
            "a request with this idempotency key is still in progress"
        )
    return StoredResponse(status_code=int(status_code), body=bytes(body))


def replay(stored: StoredResponse) -> Response[Any]:
    return Response(
        content=stored.body,
        status_code=stored.status_code,
        media_type="application/json",
        headers={REPLAYED_HEADER: "true"},
    )


Operation = Callable[[], Awaitable[bytes]]


async def respond_once(
    store: IdempotencyStore,
    request: RequestIdentity | None,
    *,
    status_code: int,
    operation: Operation,
) -> Response[Any]:
    """Run `operation` at most once per key; replay its answer afterwards.

    Without a key (`request` None) the operation simply runs. A failing
    operation releases the key and re-raises.
    """
    if request is not None:
        stored = await store.claim(request)
        if stored is not None:
            log.info("idempotent_replay", key_path=request.path)
            return replay(stored)
    body = await run_claimed(store, request, operation)
    if request is not None:
        await store.complete(request, status_code=status_code, body=body)
    return Response(
        content=body, status_code=status_code, media_type="application/json"
    )


async def run_claimed(
    store: IdempotencyStore, request: RequestIdentity | None, operation: Operation
) -> bytes:
    """Run `operation`, renewing the claim; on any failure release it first."""
    if request is None:
        return await operation()
    renewing = asyncio.create_task(_keep_claimed(store, request))
    try:
        return await operation()
    except BaseException:
        await asyncio.shield(store.release(request))
        raise
    finally:
        renewing.cancel()


async def _keep_claimed(store: IdempotencyStore, request: RequestIdentity) -> None:
    while True:
        await asyncio.sleep(CLAIM_RENEW.total_seconds())
        try:
            await store.renew(request)
        except AnimusError as exc:  # the next renewal may succeed
            log.warning("idempotency_renew_failed", error=type(exc).__name__)
