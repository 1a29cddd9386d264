"""API payloads of the evidence routes: the log's public key, pages of signed
checkpoints, and inclusion and consistency proofs (contracts/evidence.md
describes the formats and how to verify them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.bus import SignedCheckpoint

__all__ = [
    "CheckpointPage",
    "ConsistencyProof",
    "EvidenceKey",
    "InclusionProof",
    "SignedCheckpoint",
]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EvidenceKey(_Payload):
    """The public key that verifies every checkpoint of this log."""

    vkey: str = Field(description="signed-note verifier key: <name>+<hash>+<key>")
    key_id: str = Field(description="8-hex key hash, as in checkpoints' key_id")
    algorithm: Literal["ed25519"] = "ed25519"
    origin: str = Field(description="the log's name: the key's and checkpoints'")


class CheckpointPage(_Payload):
    """Signed checkpoints, newest first."""

    items: list[SignedCheckpoint]
    next_before: int | None = Field(
        description="pass as `before` for the next (older) page; null at the end"
    )


class InclusionProof(_Payload):
    """RFC 9162 audit path of one event's leaf under a checkpoint's root."""

    format: Literal["animus-inclusion-proof/v1"]
    position: int
    leaf_index: int = Field(description="position - 1")
    tree_size: int
    leaf_hash: str = Field(description="sha256(0x00 || canonical), 64 hex")
    root_hash: str = Field(description="the checkpoint's root, 64 hex")
    path: list[str] = Field(description="sibling hashes, leaf to root, 64 hex each")


class ConsistencyProof(_Payload):
    """RFC 9162 proof that checkpoint `first`'s tree is a prefix of `second`'s."""

    format: Literal["animus-consistency-proof/v1"]
    first: int
    second: int
    first_root: str
    second_root: str
    path: list[str]
