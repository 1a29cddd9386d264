"""Walk the chain from genesis and report the first break, if any.

The walk is split into ranges of positions, each checked by one query on a
connection of its own, so the database's cores share the work. For every
row a range query checks, in this order: the position follows the previous
one without a gap; `prev_hash` equals the previous row's `hash` (across a
range boundary, the hash read at the position before the range); `hash`
equals `sha256(prev_hash || canonical)` over the stored bytes; and the
scalar columns agree with the canonical envelope. The payload columns are
generated from the canonical text; if a forger dropped that generation,
they are compared in full as well.

The link hash is computed by PostgreSQL's own `sha256` over the exact bytes
it stores. That asks no more trust of the database than reading the rows
out would: a server that lies about what it computes could as well lie
about what it returns. Copies of the chain held outside the database are
what remove that trust (signed checkpoints, in their own issue).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable

import psycopg

from animus.chain import GENESIS_HASH, ChainBreak, VerificationResult
from animus.db import translate_db_errors

RANGE_EVENTS = 100_000  # positions per range query

_TS = """to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""

# The canonical envelope's keys are sorted (RFC 8785): after "metadata" come
# position, project_id, recorded_at, schema_version, stream_id, stream_type,
# stream_version, type. Rebuild that tail from the columns and compare its
# bytes with the end of the stored text (byte offsets: counting characters
# would walk every row's text). Ids and type names are restricted to
# characters JSON never escapes, so plain quoting reproduces their form.
_TAIL = (
    """'"position":' || position || ',"project_id":' """
    """|| coalesce('"' || project_id || '"', 'null') """
    f"""|| ',"recorded_at":"' || {_TS} """
    """|| '","schema_version":' || schema_version """
    """|| ',"stream_id":"' || stream_id || '","stream_type":"' || stream_type """
    """|| '","stream_version":' || stream_version """
    """|| ',"type":"' || type || '"}'"""
)

_RANGE_CHECKS = f"""
SELECT CASE WHEN gap THEN expected ELSE position END, reason FROM (
  SELECT position, %(first)s - 1 + row_number() OVER w AS expected,
    position <> %(first)s - 1 + row_number() OVER w AS gap, CASE
    WHEN position <> %(first)s - 1 + row_number() OVER w
        THEN 'position is not gap-free: missing, the next stored position is '
             || position
    WHEN prev_hash IS DISTINCT FROM coalesce(lag(hash) OVER w, %(prev)s)
        THEN 'prev_hash does not match the previous event''s hash'
    WHEN pg_catalog.sha256(prev_hash || textsend(canonical)) <> hash
        THEN 'hash does not match sha256(prev_hash || canonical)'
    WHEN substr(textsend(canonical), octet_length(canonical)
                - octet_length(t.tail) + 1) <> t.tail
      OR strpos(canonical, ',"event_id":"' || event_id || '","metadata":') = 0
        THEN 'stored columns differ from the canonical envelope'
    -- FULL
  END AS reason
  FROM events, LATERAL (SELECT textsend({_TAIL}) AS tail) AS t
  WHERE position BETWEEN %(first)s AND %(last)s
  WINDOW w AS (ORDER BY position)
) AS checked
WHERE reason IS NOT NULL ORDER BY 1 LIMIT 1
"""

_FULL_CHECK = """
    WHEN (canonical::jsonb) -> 'data' <> data
      OR (canonical::jsonb) -> 'metadata' <> metadata
        THEN 'stored payload differs from the canonical envelope'
"""

_GENERATED = """
SELECT count(*) FROM pg_attribute
WHERE attrelid = 'events'::regclass AND attname IN ('data', 'metadata')
  AND attgenerated = 's'
"""

_HASH_AT = "SELECT hash FROM events WHERE position = %s"


def _range_query(conn: psycopg.Connection) -> str:
    row = conn.execute(_GENERATED).fetchone()
    full = _FULL_CHECK if not row or row[0] != 2 else ""
    return _RANGE_CHECKS.replace("-- FULL", full)


def _check_range(dsn: str, first: int, last: int) -> ChainBreak | None:
    """The first break among positions `first`..`last`, or None."""
    with translate_db_errors(), psycopg.connect(dsn, autocommit=True) as conn:
        prev = GENESIS_HASH
        if first > 1:
            row = conn.execute(_HASH_AT, (first - 1,)).fetchone()
            if row is None:
                # the range before ends early: its last row is gone
                return ChainBreak(
                    position=first - 1,
                    reason="position is not gap-free: missing",
                )
            prev = bytes(row[0])
        params = {"first": first, "last": last, "prev": prev}
        found = conn.execute(_range_query(conn), params).fetchone()
    return None if found is None else ChainBreak(position=found[0], reason=found[1])


def _head(dsn: str) -> tuple[int, bytes]:
    with translate_db_errors(), psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
        ).fetchone()
    return (0, GENESIS_HASH) if row is None else (int(row[0]), bytes(row[1]))


def _hash_at(dsn: str, position: int) -> bytes:
    if position < 1:
        return GENESIS_HASH
    with translate_db_errors(), psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(_HASH_AT, (position,)).fetchone()
    return GENESIS_HASH if row is None else bytes(row[0])


def verify_chain(
    dsn: str,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerificationResult:
    """Verify every event from genesis to the current head.

    Args:
        dsn: a role that can read `events`.
        workers: concurrent range queries (default: this machine's cores).
        progress: called with the number of positions of each range done.
    """
    head_position, head_hash = _head(dsn)
    ranges = [
        (first, min(first + RANGE_EVENTS - 1, head_position))
        for first in range(1, head_position + 1, RANGE_EVENTS)
    ]
    breaks: list[ChainBreak] = []
    threads = max(2, workers or os.cpu_count() or 2)
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        futures = {pool.submit(_check_range, dsn, *span): span for span in ranges}
        for future in concurrent.futures.as_completed(futures):
            found = future.result()
            if found is not None:
                breaks.append(found)
            if progress is not None:
                first, last = futures[future]
                progress(last - first + 1)
    if not breaks:
        return VerificationResult(
            events=head_position,
            head_position=head_position,
            head_hash=head_hash,
            first_break=None,
        )
    first_break = min(breaks, key=lambda b: b.position)
    verified_to = first_break.position - 1
    return VerificationResult(
        events=verified_to,
        head_position=verified_to,
        head_hash=_hash_at(dsn, verified_to),
        first_break=first_break,
    )
