"""The hash chain: canonical envelope, link hash, genesis, verification.

Canonical form v1 is RFC 8785 (JCS) over this envelope:

    {"canonical_version": 1, "position", "event_id", "stream_type",
     "stream_id", "stream_version", "project_id", "type", "schema_version",
     "data", "metadata", "recorded_at"}

`recorded_at` is UTC with microseconds, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
`hash = sha256(prev_hash || canonical)`, over the raw 32-byte digests; the
first event chains from `GENESIS_HASH`. The exact canonical bytes are stored
beside the event and are what gets hashed; the queryable columns must decode
from them, which `animus verify` checks too. See contracts/chain.md.

`canonical_json` is the serialiser. The `rfc8785` package is the reference;
for values whose JCS form equals what the standard library's C encoder writes
(ASCII keys, safe integers, plain floats, UTF-8-encodable strings) the C
encoder is used, as it is several times faster; anything else goes through
`rfc8785`. tests/integration/test_chain.py holds both to the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import rfc8785

CANONICAL_VERSION = 1
GENESIS_HASH = hashlib.sha256(b"animus-datalab/chain/v1/genesis").digest()

_SAFE_INT = 2**53 - 1
_C_ENCODER = json.JSONEncoder(
    ensure_ascii=False,
    check_circular=False,
    allow_nan=False,
    sort_keys=True,
    separators=(",", ":"),
)


@functools.lru_cache(maxsize=64)
def format_timestamp(moment: datetime) -> str:
    """The one textual form of a timestamp inside the canonical envelope."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _plain_float(value: float) -> bool:
    """True when Python's repr of `value` is already its JCS form."""
    if not math.isfinite(value):
        return False
    text = repr(value)
    return "e" not in text and not text.endswith(".0")


def _plain(value: Any) -> bool:
    """True when the C encoder writes `value` exactly as RFC 8785 does.

    JCS sorts keys by UTF-16 code units and the C encoder by code points;
    the orders agree on ASCII. Integers beyond 2**53 and floats in exponent
    form or with a trailing `.0` are written differently, so they are not
    plain; neither is any type but the JSON ones.
    """
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii() or not _plain(item):
                return False
        return True
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -_SAFE_INT <= value <= _SAFE_INT
    if kind is float:
        return _plain_float(value)
    if kind is list:
        return all(_plain(item) for item in value)
    return False


def canonical_text(value: Any) -> str:
    """RFC 8785 (JCS) text of a JSON value.

    Raises:
        rfc8785.CanonicalizationError: the value has no JCS form (NaN, an
            integer beyond 2**53, a lone surrogate, a non-string key).
    """
    if _plain(value):
        text = _C_ENCODER.encode(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: let the reference refuse it
        else:
            return text
    return rfc8785.dumps(value).decode("utf-8")


def _string_text(value: str) -> str:
    """`canonical_text` of a string; printable ASCII needs no escapes."""
    if value.isascii() and value.isprintable() and '"' not in value:
        if "\\" not in value:
            return f'"{value}"'
    return canonical_text(value)


def _nullable_text(value: str | None) -> str:
    return "null" if value is None else _string_text(value)


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value; see `canonical_text`."""
    return canonical_text(value).encode("utf-8")


@dataclass(frozen=True, slots=True)
class EnvelopeTemplate:
    """One event's canonical envelope before the appender places it.

    RFC 8785 is compositional: an object's canonical text is its members'
    canonical texts in key order. So everything but the position, the
    stream version and the time is canonicalised once, by the caller,
    outside the chain lock; `render` splices those three in under it. The
    envelope's keys are ASCII, so their UTF-16 order is this one.
    """

    before_position: str
    before_recorded_at: str
    before_stream_version: str
    after_stream_version: str

    @classmethod
    def build(
        cls,
        *,
        event_id: str,
        stream_type: str,
        stream_id: str,
        project_id: str | None,
        event_type: str,
        schema_version: int,
        data_text: str,
        metadata_text: str,
    ) -> EnvelopeTemplate:
        """Pieces around the placed fields; `*_text` are `canonical_text`s."""
        return cls(
            before_position=(
                f'{{"canonical_version":{CANONICAL_VERSION},"data":{data_text}'
                f',"event_id":{_string_text(event_id)}'
                f',"metadata":{metadata_text},"position":'
            ),
            before_recorded_at=(
                f',"project_id":{_nullable_text(project_id)},"recorded_at":"'
            ),
            before_stream_version=(
                f'","schema_version":{canonical_text(schema_version)}'
                f',"stream_id":{_string_text(stream_id)}'
                f',"stream_type":{_string_text(stream_type)},"stream_version":'
            ),
            after_stream_version=f',"type":{_string_text(event_type)}}}',
        )

    def render(self, *, position: int, stream_version: int, recorded_at: str) -> str:
        """The canonical text; `recorded_at` as `format_timestamp` writes it."""
        return (
            f"{self.before_position}{int(position)}{self.before_recorded_at}"
            f"{recorded_at}{self.before_stream_version}{int(stream_version)}"
            f"{self.after_stream_version}"
        )


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
    template = EnvelopeTemplate.build(
        event_id=event_id,
        stream_type=stream_type,
        stream_id=stream_id,
        project_id=project_id,
        event_type=event_type,
        schema_version=schema_version,
        data_text=canonical_text(data),
        metadata_text=canonical_text(metadata),
    )
    text = template.render(
        position=position,
        stream_version=stream_version,
        recorded_at=format_timestamp(recorded_at),
    )
    return text.encode("utf-8")


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
