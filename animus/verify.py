"""Walk the chain from genesis and report the first break, if any.

Two checks run side by side. Here, every link hash is recomputed over the
stored canonical bytes. In the database, one query checks what only needs
the rows themselves: positions are gap-free, each `prev_hash` equals the
previous row's `hash`, and the scalar columns match the canonical envelope
(the payload columns are generated from it). If the events table no longer
generates its payload columns, the full column-by-column comparison runs.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

import psycopg

from animus.chain import ChainBreak, ChainVerifier, VerificationResult
from animus.db import translate_db_errors

_TS = """to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""

# The canonical envelope's keys are sorted (RFC 8785): after "metadata" come
# position, project_id, recorded_at, schema_version, stream_id, stream_type,
# stream_version, type. Rebuild that tail from the columns and compare. Ids
# and type names are restricted to characters JSON never escapes, so plain
# quoting reproduces their canonical form.
_TAIL = (
    """'"position":' || position || ',"project_id":' """
    """|| coalesce('"' || project_id || '"', 'null') """
    f"""|| ',"recorded_at":"' || {_TS} """
    """|| '","schema_version":' || schema_version """
    """|| ',"stream_id":"' || stream_id || '","stream_type":"' || stream_type """
    """|| '","stream_version":' || stream_version """
    """|| ',"type":"' || type || '"}'"""
)

_ROW_CHECKS = f"""
SELECT position, CASE
    WHEN position <> row_number() OVER w THEN 'position is not gap-free'
    WHEN prev_hash IS DISTINCT FROM coalesce(lag(hash) OVER w, %(genesis)s)
        THEN 'prev_hash does not match the previous event''s hash'
    WHEN right(canonical, length(t.tail)) <> t.tail
      OR strpos(canonical, ',"event_id":"' || event_id || '","metadata":') = 0
        THEN 'stored columns differ from the canonical envelope'
    -- FULL
  END AS reason
FROM events, LATERAL (SELECT {_TAIL} AS tail) AS t
WINDOW w AS (ORDER BY position)
"""

_FULL_CHECK = """
    WHEN (canonical::jsonb) -> 'data' <> data
      OR (canonical::jsonb) -> 'metadata' <> metadata
        THEN 'stored payload differs from the canonical envelope'
"""

_FIRST_BAD = (
    "SELECT position, reason FROM (-- Q\n) AS c WHERE reason IS NOT NULL "
    "ORDER BY position LIMIT 1"
)

_GENERATED = """
SELECT count(*) FROM pg_attribute
WHERE attrelid = 'events'::regclass AND attname IN ('data', 'metadata')
  AND attgenerated = 's'
"""


def _server_checks(dsn: str, genesis: bytes) -> ChainBreak | None:
    with translate_db_errors(), psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(_GENERATED).fetchone()
        full = _FULL_CHECK if not row or row[0] != 2 else ""
        query = _FIRST_BAD.replace("-- Q", _ROW_CHECKS.replace("-- FULL", full))
        found = conn.execute(query, {"genesis": genesis}).fetchone()
    return None if found is None else ChainBreak(position=found[0], reason=found[1])


def _client_hashes(
    dsn: str, batch: int, progress: Callable[[int], None] | None
) -> VerificationResult:
    verifier = ChainVerifier()
    with translate_db_errors(), psycopg.connect(dsn) as conn:
        with conn.cursor(name="verify", binary=True) as cur:
            cur.itersize = batch
            cur.execute(
                "SELECT position, canonical, hash FROM events ORDER BY position"
            )
            while rows := cur.fetchmany(batch):
                for position, canonical, digest in rows:
                    if not verifier.feed_hash(position, canonical.encode(), digest):
                        return verifier.result()
                if progress is not None:
                    progress(len(rows))
    return verifier.result()


def verify_chain(
    dsn: str,
    *,
    batch: int = 50_000,
    progress: Callable[[int], None] | None = None,
) -> VerificationResult:
    """Verify every event from genesis to the current head."""
    from animus.chain import GENESIS_HASH

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        server = pool.submit(_server_checks, dsn, GENESIS_HASH)
        client = _client_hashes(dsn, batch, progress)
        row_break = server.result()
    breaks = [b for b in (client.first_break, row_break) if b is not None]
    if not breaks:
        return client
    first = min(breaks, key=lambda b: b.position)
    return VerificationResult(
        events=first.position - 1,
        head_position=first.position - 1,
        head_hash=client.head_hash,
        first_break=first,
    )
