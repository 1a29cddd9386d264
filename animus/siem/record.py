"""The SIEM record (`animus-siem/v1`) and the checks a subscriber runs alone.

A SIEM record is one event of the log as a chain record (contracts/chain.md)
plus its decoded `data` and `metadata`: the same line is published on
JetStream, streamed by the HTTP export and carried by syslog messages. Its
`canonical` member is the exact stored text the chain hashes, so a
subscriber needs nothing from us to check it:

- each record: `hash == sha256(prev_hash || canonical)`, and every other
  member agrees with the envelope in `canonical` (a changed record);
- two records in a row: `prev_hash` equals the previous record's `hash`,
  and positions are consecutive (a gap names the missing positions).

`ChainChecker` does both. This module uses the standard library only, so
code outside the platform can import it (`from animus.siem import
ChainChecker`) with nothing else installed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "ENVELOPE_MEMBERS",
    "FORMAT",
    "GENESIS_HASH",
    "ChainChecker",
    "Finding",
    "build_record",
    "record_line",
]

FORMAT = "animus-siem/v1"
GENESIS_HASH = hashlib.sha256(b"animus-datalab/chain/v1/genesis").digest()
"""What the event at position 1 chains from (contracts/chain.md)."""

ENVELOPE_MEMBERS = (
    "position",
    "event_id",
    "stream_type",
    "stream_id",
    "stream_version",
    "project_id",
    "type",
    "schema_version",
    "recorded_at",
    "data",
    "metadata",
)
"""Record members that repeat a member of the canonical envelope."""

_HASH_MISMATCH = "hash does not match sha256(prev_hash || canonical)"
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_record(
    *,
    position: int,
    event_id: object,
    stream_type: str,
    stream_id: str,
    stream_version: int,
    project_id: str | None,
    type: str,  # noqa: A002 - the record's member name
    schema_version: int,
    recorded_at: datetime | str,
    prev_hash: bytes,
    hash: bytes,  # noqa: A002 - the record's member name
    canonical: str,
) -> dict[str, Any]:
    """The SIEM record of one stored event, from its columns.

    `data` and `metadata` are decoded from `canonical`; a canonical text that
    does not decode (only a tampered store holds one) gives null for both,
    and the record still carries the text as stored, so the subscriber's
    own check reports the change.
    """
    try:
        envelope = json.loads(canonical)
        data, metadata = envelope["data"], envelope["metadata"]
    except (ValueError, TypeError, KeyError):
        data = metadata = None
    if isinstance(recorded_at, datetime):
        recorded_at = _timestamp(recorded_at)
    return {
        "format": FORMAT,
        "position": position,
        "event_id": str(event_id),
        "stream_type": stream_type,
        "stream_id": stream_id,
        "stream_version": stream_version,
        "project_id": project_id,
        "type": type,
        "schema_version": schema_version,
        "recorded_at": recorded_at,
        "prev_hash": prev_hash.hex(),
        "hash": hash.hex(),
        "data": data,
        "metadata": metadata,
        "canonical": canonical,
    }


def record_line(record: Mapping[str, Any]) -> str:
    """One record as compact JSON, without the newline."""
    return _dumps(record)


FindingKind = Literal["gap", "changed", "out-of-order"]


@dataclass(frozen=True, kw_only=True)
class Finding:
    """Something a subscriber's check found, at one position.

    `kind` is "gap" (records `missing_from`..`missing_to` never arrived),
    "changed" (a record does not hash to its `hash`, does not agree with its
    canonical text, or does not link to the one before), or "out-of-order"
    (a position at or below one already seen).
    """

    kind: FindingKind
    position: int
    reason: str
    missing_from: int | None = None
    missing_to: int | None = None

    def __str__(self) -> str:
        return f"{self.kind} at position {self.position}: {self.reason}"


class ChainChecker:
    """Checks records in the order received; keeps what the next one needs.

    Args:
        after: the position just before the first record expected (0 from
            the start; None: take the first record as it comes).
        prev_hash: the hash of the record at `after`, if known (hex or raw);
            at `after=0` it is the genesis hash.
        contiguous: True for an unfiltered stream, where every position
            arrives; a subscriber filtered by project or type sets False and
            checks only each record alone and that positions increase.
    """

    def __init__(
        self,
        *,
        after: int | None = None,
        prev_hash: bytes | str | None = None,
        contiguous: bool = True,
    ) -> None:
        self.contiguous = contiguous
        self.last_position = after
        if isinstance(prev_hash, str):
            prev_hash = bytes.fromhex(prev_hash)
        if prev_hash is None and after == 0:
            prev_hash = GENESIS_HASH
        self.last_hash: bytes | None = prev_hash
        self.checked = 0

    def check(self, record: Mapping[str, Any]) -> list[Finding]:
        """Check one record; what is wrong with it, or an empty list.

        A record that does not parse as one (a member missing or of the
        wrong type) is reported as changed.
        """
        try:
            position = int(record["position"])
            own_hash = bytes.fromhex(record["hash"])
            prev_hash = bytes.fromhex(record["prev_hash"])
        except (KeyError, TypeError, ValueError) as exc:
            where = record.get("position", 0) if isinstance(record, Mapping) else 0
            return [_changed(int(where or 0), f"not a record: {exc}")]
        findings = self._check_alone(record, position, own_hash, prev_hash)
        findings += self._check_sequence(position, prev_hash)
        if not any(f.kind == "out-of-order" for f in findings):
            self.last_position = position
            self.last_hash = own_hash
        self.checked += 1
        return findings

    def _check_alone(
        self,
        record: Mapping[str, Any],
        position: int,
        own_hash: bytes,
        prev_hash: bytes,
    ) -> list[Finding]:
        canonical = record.get("canonical")
        if not isinstance(canonical, str):
            return [_changed(position, "the record has no canonical text")]
        digest = hashlib.sha256(prev_hash + canonical.encode("utf-8")).digest()
        if digest != own_hash:
            return [_changed(position, _HASH_MISMATCH)]
        try:
            envelope = json.loads(canonical)
        except ValueError:
            return [_changed(position, "canonical text is not JSON")]
        differing = [
            name
            for name in ENVELOPE_MEMBERS
            if name in record and record[name] != envelope.get(name)
        ]
        if differing:
            names = ", ".join(differing)
            return [
                _changed(position, f"members differ from the canonical text: {names}")
            ]
        return []

    def _check_sequence(self, position: int, prev_hash: bytes) -> list[Finding]:
        last = self.last_position
        if last is None:
            return []
        if position <= last:
            return [
                Finding(
                    kind="out-of-order",
                    position=position,
                    reason=f"position {position} arrived after position {last}",
                )
            ]
        if not self.contiguous:
            return []
        if position > last + 1:
            first, final = last + 1, position - 1
            if first == final:
                reason = f"position {first} is missing"
            else:
                reason = f"positions {first}..{final} are missing"
            return [
                Finding(
                    kind="gap",
                    position=position,
                    reason=reason,
                    missing_from=first,
                    missing_to=final,
                )
            ]
        if self.last_hash is not None and prev_hash != self.last_hash:
            return [
                _changed(position, f"prev_hash does not link to position {last}'s hash")
            ]
        return []


def _changed(position: int, reason: str) -> Finding:
    return Finding(kind="changed", position=position, reason=reason)
