"""Walk the chain from genesis and report the first break, if any.

Hashes are recomputed here over the stored canonical bytes; the database
checks, in the same query, that the queryable columns still decode from those
bytes, so an edit to `data` alone is caught as well.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from animus.chain import ChainVerifier, VerificationResult
from animus.db import translate_db_errors

_QUERY = """
SELECT position, prev_hash, hash, canonical,
       (c->>'position')::bigint = position
       AND c->>'event_id' = event_id::text
       AND c->>'stream_type' = stream_type
       AND c->>'stream_id' = stream_id
       AND (c->>'stream_version')::int = stream_version
       AND c->'project_id' = coalesce(to_jsonb(project_id), 'null'::jsonb)
       AND c->>'type' = type
       AND (c->>'schema_version')::int = schema_version
       AND c->'data' = data
       AND c->'metadata' = metadata
       AS consistent
FROM (SELECT *, convert_from(canonical, 'UTF8')::jsonb AS c FROM events
      WHERE position > %s ORDER BY position LIMIT %s) AS e
ORDER BY position
"""


def verify_chain(
    dsn: str,
    *,
    batch: int = 20_000,
    progress: Callable[[int], None] | None = None,
) -> VerificationResult:
    """Verify every event from genesis to the current head."""
    verifier = ChainVerifier()
    last = 0
    with translate_db_errors(), psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            rows = conn.execute(_QUERY, (last, batch), binary=True).fetchall()
            for position, prev, digest, canonical, consistent in rows:
                if not verifier.feed(position, prev, digest, canonical, consistent):
                    return verifier.result()
            if progress is not None:
                progress(len(rows))
            if len(rows) < batch:
                return verifier.result()
            last = rows[-1][0]
