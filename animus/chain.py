"""The hash chain: canonical envelope, link hash, genesis, verification.

Canonical form v1 is RFC 8785 (JCS) over this envelope:

    {"canonical_version": 1, "position", "event_id", "stream_type",
     "stream_id", "stream_version", "project_id", "type", "schema_version",
     "data", "metadata", "recorded_at"}

`recorded_at` is UTC with microseconds, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
`hash = sha256(prev_hash || canonical)`, over the raw 32-byte digests; the
first event chains from `GENESIS_HASH`. The exact canonical bytes are stored
beside the event and are what gets hashed; the queryable columns must decode
from them, which `animus verify` checks too. See contracts/CHAIN.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import rfc8785

CANONICAL_VERSION = 1
GENESIS_HASH = hashlib.sha256(b"animus-datalab/chain/v1/genesis").digest()


def format_timestamp(moment: datetime) -> str:
    """The one textual form of a timestamp inside the canonical envelope."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_envelope(
    *,
    position: int,
    event_id: str,
    stream_type: str,
    stream_id: str,
    stream_version: int,
    project_id: str | None,
    event_type: str,
    schema_version: int,
    data: dict[str, Any],
    metadata: dict[str, Any],
    recorded_at: datetime,
) -> bytes:
    """Serialise one event's envelope to its canonical bytes (RFC 8785)."""
    envelope = {
        "canonical_version": CANONICAL_VERSION,
        "position": position,
        "event_id": event_id,
        "stream_type": stream_type,
        "stream_id": stream_id,
        "stream_version": stream_version,
        "project_id": project_id,
        "type": event_type,
        "schema_version": schema_version,
        "data": data,
        "metadata": metadata,
        "recorded_at": format_timestamp(recorded_at),
    }
    return rfc8785.dumps(envelope)


def link_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(prev_hash + canonical).digest()


@dataclass(frozen=True, kw_only=True)
class ChainBreak:
    position: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class VerificationResult:
    events: int
    head_position: int
    head_hash: bytes
    first_break: ChainBreak | None

    @property
    def verified(self) -> bool:
        return self.first_break is None


class ChainVerifier:
    """Walks rows in position order and remembers the first break."""

    def __init__(self) -> None:
        self.expected_position = 1
        self.prev_hash = GENESIS_HASH
        self.events = 0
        self.first_break: ChainBreak | None = None

    def feed_hash(self, position: int, canonical: bytes, stored_hash: bytes) -> bool:
        """Recompute one link; return False once the chain is broken.

        Linkage of the stored `prev_hash` column and the columns' agreement
        with the envelope are checked by the database (see animus.verify).
        """
        reason = None
        if position != self.expected_position:
            reason = f"expected position {self.expected_position}, found {position}"
        elif link_hash(self.prev_hash, canonical) != stored_hash:
            reason = "hash does not match sha256(prev_hash || canonical)"
        if reason is not None:
            self.first_break = ChainBreak(position=position, reason=reason)
            return False
        self.prev_hash = stored_hash
        self.expected_position += 1
        self.events += 1
        return True

    def result(self) -> VerificationResult:
        return VerificationResult(
            events=self.events,
            head_position=self.expected_position - 1,
            head_hash=self.prev_hash,
            first_break=self.first_break,
        )
