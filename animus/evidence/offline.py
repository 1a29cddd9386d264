"""The offline verifier: checks evidence with nothing but files and a public key.

It needs no database and no network, and imports nothing of the control
plane (an import-linter contract holds it to the standard library,
`cryptography`, `rfc8785`, the chain's canonical form, the RFC 9162 Merkle
functions and the signed-note module). What it checks, each failure naming
the member, the position and the reason (contracts/evidence.md):

- a checkpoint: a signed note whose signature by the given key verifies;
- a chain segment: NDJSON chain records, each `hash = sha256(prev_hash ||
  canonical)`, linked to the one before it, with the record's fields equal
  to its canonical envelope's;
- inclusion proofs of events against a checkpoint's root, and consistency
  proofs between two checkpoints;
- an evidence bundle: its byte-exact layout, its manifest, every member's
  sha256, every event's hash and inclusion proof, the checkpoint, what the
  manifest claims against what the proven events say, and artifact bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from animus import merkle
from animus.chain import GENESIS_HASH, canonical_text, link_hash
from animus.evidence import bundle as layout
from animus.evidence.note import (
    Checkpoint,
    NoteError,
    VerifierKey,
    parse_vkey,
    verify_checkpoint,
)

__all__ = [
    "BundleReport",
    "ChainRecord",
    "ConsistencyProof",
    "InclusionProof",
    "SegmentReport",
    "VerificationFailure",
    "assemble_bundle",
    "build_manifest",
    "check_checkpoint",
    "check_consistency",
    "check_inclusion",
    "check_segment",
    "load_key",
    "parse_consistency_proof",
    "parse_inclusion_proof",
    "parse_records",
    "read_archive",
    "run_claims",
    "validate",
    "verify_bundle",
    "verify_command",
]

INCLUSION_FORMAT = "animus-inclusion-proof/v1"
CONSISTENCY_FORMAT = "animus-consistency-proof/v1"
MAX_PATH = 64  # a tree of 2**63 leaves needs fewer nodes

_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_COUNT = {"type": "integer", "minimum": 0}
_POSITIVE = {"type": "integer", "minimum": 1}
_PATH = {"type": "array", "items": _HEX64, "maxItems": MAX_PATH}


def _object(required: dict[str, Any], *, closed: bool = True) -> dict[str, Any]:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": required,
        "additionalProperties": not closed,
    }


INCLUSION_PROOF_SCHEMA = _object(
    {
        "format": {"const": INCLUSION_FORMAT},
        "position": _POSITIVE,
        "leaf_index": _COUNT,
        "tree_size": _POSITIVE,
        "leaf_hash": _HEX64,
        "root_hash": _HEX64,
        "path": _PATH,
    }
)
CONSISTENCY_PROOF_SCHEMA = _object(
    {
        "format": {"const": CONSISTENCY_FORMAT},
        "first": _POSITIVE,
        "second": _POSITIVE,
        "first_root": _HEX64,
        "second_root": _HEX64,
        "path": _PATH,
    }
)
CHAIN_RECORD_SCHEMA = _object(
    {
        "position": _POSITIVE,
        "event_id": {"type": "string"},
        "stream_type": {"type": "string"},
        "stream_id": {"type": "string"},
        "stream_version": _POSITIVE,
        "project_id": {"type": ["string", "null"]},
        "type": {"type": "string"},
        "recorded_at": {"type": "string"},
        "prev_hash": _HEX64,
        "hash": _HEX64,
        "canonical": {"type": "string"},
    },
    closed=False,
)
MANIFEST_SCHEMA: dict[str, Any] = _object(
    {
        "format": {"const": layout.BUNDLE_FORMAT},
        "run_id": {"type": "string", "minLength": 1},
        "project_id": {"type": ["string", "null"]},
        "checkpoint": _object(
            {
                "origin": {"type": "string", "minLength": 1},
                "tree_size": _POSITIVE,
                "root_hash": _HEX64,
                "chain_head": _HEX64,
                "key_id": {"type": "string", "pattern": "^[0-9a-f]{8}$"},
            }
        ),
        "members": {
            "type": "array",
            "items": _object(
                {
                    "name": {"type": "string"},
                    "sha256": _HEX64,
                    "size": _COUNT,
                }
            ),
        },
        "events": {
            "type": "array",
            "minItems": 1,
            "items": _object(
                {
                    "position": _POSITIVE,
                    "event_id": {"type": "string"},
                    "type": {"type": "string"},
                    "stream_id": {"type": "string"},
                    "hash": _HEX64,
                }
            ),
        },
        "run": _object(
            {
                "status": {"type": "string"},
                "spec_hash": _HEX64,
                "plan_hash": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
            }
        ),
        "dataset_versions": {
            "type": "array",
            "items": _object(
                {
                    "input": {"type": "string"},
                    "dataset_id": {"type": "string"},
                    "version": _POSITIVE,
                    "sha256": _HEX64,
                    "size": _COUNT,
                    "position": _POSITIVE,
                }
            ),
        },
        "artifacts": {
            "type": "array",
            "items": _object(
                {
                    "name": {"type": "string"},
                    "kind": {"type": "string"},
                    "sha256": _HEX64,
                    "size": _COUNT,
                    "position": _POSITIVE,
                    "member": {
                        "type": ["string", "null"],
                        "pattern": "^artifacts/[0-9a-f]{64}$",
                    },
                }
            ),
        },
        "decisions": {
            "type": "array",
            "items": _object({"position": _POSITIVE, "type": {"type": "string"}}),
        },
    }
)

RUN_TERMINAL = {
    "RunSucceeded": "succeeded",
    "RunFailed": "failed",
    "RunCanceled": "canceled",
}
DECISION_TYPES = frozenset(
    {"RunPlanned", "RunDispatched", "RunCancelRequested", "ReportRejected"}
)
"""The control plane's decisions about a run. No policy engine exists yet;
its decision events join this set when it does."""


class VerificationFailure(Exception):
    """One check failed: which check, in which member, at which position, why."""

    def __init__(
        self,
        check: str,
        reason: str,
        *,
        member: str | None = None,
        position: int | None = None,
    ) -> None:
        self.check = check
        self.reason = reason
        self.member = member
        self.position = position
        where = [check]
        if member:
            where.append(member)
        if position is not None:
            where.append(f"position {position}")
        super().__init__(f"{', '.join(where)}: {reason}")


# -- a small JSON Schema subset, enough for the published schemas --------------

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "null": (type(None),),
}


def _type_ok(value: Any, name: str) -> bool:
    if name == "integer" and isinstance(value, bool):
        return False
    return isinstance(value, _JSON_TYPES[name])


def _schema_error(value: Any, schema: Mapping[str, Any], at: str) -> str | None:
    """The first way `value` breaks `schema`, located by the JSON path `at`."""
    if "const" in schema:
        return (
            None
            if value == schema["const"]
            else (f"{at}: must be {json.dumps(schema['const'])}")
        )
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_type_ok(value, name) for name in names):
            return f"{at}: must be of type {' or '.join(names)}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{at}: must not be empty"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{at}: does not match {schema['pattern']}"
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if value < schema.get("minimum", value):
            return f"{at}: must be at least {schema['minimum']}"
    elif isinstance(value, list):
        return _array_error(value, schema, at)
    elif isinstance(value, dict):
        return _object_error(value, schema, at)
    return None


def _array_error(value: list[Any], schema: Mapping[str, Any], at: str) -> str | None:
    if len(value) < schema.get("minItems", 0):
        return f"{at}: must have at least {schema['minItems']} items"
    if len(value) > schema.get("maxItems", len(value)):
        return f"{at}: must have at most {schema['maxItems']} items"
    items = schema.get("items", {})
    for index, item in enumerate(value):
        if problem := _schema_error(item, items, f"{at}[{index}]"):
            return problem
    return None


def _object_error(
    value: dict[str, Any], schema: Mapping[str, Any], at: str
) -> str | None:
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            return f"{at}: {name} is missing"
    closed = schema.get("additionalProperties", True) is False
    for name, item in value.items():
        if name in properties:
            if problem := _schema_error(item, properties[name], f"{at}.{name}"):
                return problem
        elif closed:
            return f"{at}: {name} is not allowed"
    return None


def validate(value: Any, schema: Mapping[str, Any]) -> str | None:
    """The first way `value` breaks `schema` (a JSON Schema subset), or None."""
    return _schema_error(value, schema, "$")


# -- keys and checkpoints --------------------------------------------------------


def load_key(text: str, *, member: str = "key") -> VerifierKey:
    """Parse a vkey, failing as a verification check.

    Raises:
        VerificationFailure: the text is not a vkey.
    """
    try:
        return parse_vkey(text)
    except NoteError as exc:
        raise VerificationFailure("key", exc.detail, member=member) from None
    except ValueError:
        raise VerificationFailure("key", "not an Ed25519 key", member=member) from None


def check_checkpoint(
    note: str | bytes, key: VerifierKey, *, member: str = "checkpoint"
) -> Checkpoint:
    """Verify a checkpoint note's signature by `key` and return it.

    Raises:
        VerificationFailure: the note is malformed, for another origin, not
            signed by this key, or its signature does not verify.
    """
    try:
        return verify_checkpoint(note, key)
    except NoteError as exc:
        raise VerificationFailure("checkpoint", str(exc), member=member) from None


# -- chain records -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainRecord:
    """One event as a chain record, its canonical envelope decoded."""

    position: int
    event_id: str
    stream_type: str
    stream_id: str
    stream_version: int
    project_id: str | None
    type: str
    recorded_at: str
    prev_hash: bytes
    hash: bytes
    canonical: bytes
    envelope: dict[str, Any] = field(repr=False)

    @property
    def data(self) -> dict[str, Any]:
        data = self.envelope.get("data")
        return data if isinstance(data, dict) else {}


_ENVELOPE_FIELDS = (
    "position",
    "event_id",
    "stream_type",
    "stream_id",
    "stream_version",
    "project_id",
    "type",
    "recorded_at",
)


def _record(value: Any, *, member: str, line: int) -> ChainRecord:
    position = value.get("position") if isinstance(value, dict) else None
    at = position if isinstance(position, int) else None
    if problem := validate(value, CHAIN_RECORD_SCHEMA):
        where = f"line {line}: " if at is None else ""
        raise VerificationFailure(
            "chain record", where + problem, member=member, position=at
        )
    canonical = value["canonical"].encode("utf-8")
    if link_hash(bytes.fromhex(value["prev_hash"]), canonical).hex() != value["hash"]:
        raise VerificationFailure(
            "event hash",
            "hash does not match sha256(prev_hash || canonical)",
            member=member,
            position=at,
        )
    try:
        envelope = json.loads(canonical)
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict) or envelope.get("canonical_version") != 1:
        raise VerificationFailure(
            "event envelope",
            "canonical is not a version 1 envelope",
            member=member,
            position=at,
        )
    for name in _ENVELOPE_FIELDS:
        if envelope.get(name, ...) != value[name] or name not in envelope:
            raise VerificationFailure(
                "event envelope",
                f"the record's {name} differs from the canonical envelope's",
                member=member,
                position=at,
            )
    if canonical_text(envelope) != value["canonical"]:
        raise VerificationFailure(
            "event envelope",
            "canonical is not in RFC 8785 canonical form",
            member=member,
            position=at,
        )
    return ChainRecord(
        position=value["position"],
        event_id=value["event_id"],
        stream_type=value["stream_type"],
        stream_id=value["stream_id"],
        stream_version=value["stream_version"],
        project_id=value["project_id"],
        type=value["type"],
        recorded_at=value["recorded_at"],
        prev_hash=bytes.fromhex(value["prev_hash"]),
        hash=bytes.fromhex(value["hash"]),
        canonical=canonical,
        envelope=envelope,
    )


def _json_lines(content: bytes, *, member: str, check: str) -> Iterator[Any]:
    if content and not content.endswith(b"\n"):
        raise VerificationFailure(check, "the last line has no newline", member=member)
    for number, line in enumerate(content.splitlines(), start=1):
        try:
            yield json.loads(line)
        except ValueError:
            raise VerificationFailure(
                check, f"line {number} is not JSON", member=member
            ) from None


def parse_records(content: bytes, *, member: str = "segment") -> list[ChainRecord]:
    """Parse NDJSON chain records, checking each record on its own.

    Each record's hash must be sha256(prev_hash || canonical) and its fields
    must equal its canonical envelope's. Links between records are checked
    by `check_segment`.

    Raises:
        VerificationFailure: the first record that fails.
    """
    return [
        _record(value, member=member, line=number)
        for number, value in enumerate(
            _json_lines(content, member=member, check="chain record"), start=1
        )
    ]


@dataclass(frozen=True, slots=True)
class SegmentReport:
    first: int
    last: int
    events: int
    head_hash: bytes
    root_checked: bool


def check_segment(
    records: Sequence[ChainRecord],
    *,
    member: str = "segment",
    contiguous: bool = True,
    checkpoints: Iterable[Checkpoint] = (),
) -> SegmentReport:
    """Check the links of parsed records and tie them to checkpoints.

    Positions must increase (and, when `contiguous`, by one); wherever two
    records are at consecutive positions the later's prev_hash must be the
    earlier's hash, and position 1 must chain from genesis. A record at a
    checkpoint's tree size must have its chain head as hash, and a segment
    from position 1 through a checkpoint's tree size must rebuild its root.

    Raises:
        VerificationFailure: the first link or tie that fails.
    """
    if not records:
        raise VerificationFailure("chain segment", "no records", member=member)
    previous: ChainRecord | None = None
    for record in records:
        _check_link(previous, record, member=member, contiguous=contiguous)
        previous = record

    by_position = {record.position: record for record in records}
    root_checked = False
    for checkpoint in checkpoints:
        head = by_position.get(checkpoint.tree_size)
        if head is not None and head.hash != checkpoint.chain_head:
            raise VerificationFailure(
                "chain segment",
                "the hash differs from the checkpoint's chain head",
                member=member,
                position=head.position,
            )
        if records[0].position == 1 and contiguous and head is not None:
            leaves = [merkle.leaf_hash(r.canonical) for r in records]
            if merkle.root(leaves[: checkpoint.tree_size]) != checkpoint.root_hash:
                raise VerificationFailure(
                    "chain segment",
                    f"positions 1..{checkpoint.tree_size} do not rebuild the "
                    "checkpoint's root hash",
                    member=member,
                )
            root_checked = True
    return SegmentReport(
        first=records[0].position,
        last=records[-1].position,
        events=len(records),
        head_hash=records[-1].hash,
        root_checked=root_checked,
    )


def _check_link(
    previous: ChainRecord | None,
    record: ChainRecord,
    *,
    member: str,
    contiguous: bool,
) -> None:
    def fail(reason: str) -> VerificationFailure:
        return VerificationFailure(
            "chain link", reason, member=member, position=record.position
        )

    if record.position == 1 and record.prev_hash != GENESIS_HASH:
        raise fail("position 1 does not chain from genesis")
    if previous is None:
        return
    if record.position <= previous.position:
        raise fail(f"positions do not increase (after {previous.position})")
    if contiguous and record.position != previous.position + 1:
        raise fail(f"position is not gap-free: missing {previous.position + 1}")
    if record.position == previous.position + 1 and record.prev_hash != previous.hash:
        raise fail("prev_hash does not match the previous event's hash")


# -- proofs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InclusionProof:
    position: int
    leaf_index: int
    tree_size: int
    leaf_hash: bytes
    root_hash: bytes
    path: list[bytes]


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    first: int
    second: int
    first_root: bytes
    second_root: bytes
    path: list[bytes]


def parse_inclusion_proof(value: Any, *, member: str = "proof") -> InclusionProof:
    """Read an inclusion proof's JSON object.

    Raises:
        VerificationFailure: it is not an `animus-inclusion-proof/v1` object.
    """
    position = value.get("position") if isinstance(value, dict) else None
    at = position if isinstance(position, int) else None
    if problem := validate(value, INCLUSION_PROOF_SCHEMA):
        raise VerificationFailure(
            "inclusion proof", problem, member=member, position=at
        )
    return InclusionProof(
        position=value["position"],
        leaf_index=value["leaf_index"],
        tree_size=value["tree_size"],
        leaf_hash=bytes.fromhex(value["leaf_hash"]),
        root_hash=bytes.fromhex(value["root_hash"]),
        path=[bytes.fromhex(node) for node in value["path"]],
    )


def parse_consistency_proof(value: Any, *, member: str = "proof") -> ConsistencyProof:
    """Read a consistency proof's JSON object.

    Raises:
        VerificationFailure: it is not an `animus-consistency-proof/v1` object.
    """
    if problem := validate(value, CONSISTENCY_PROOF_SCHEMA):
        raise VerificationFailure("consistency proof", problem, member=member)
    return ConsistencyProof(
        first=value["first"],
        second=value["second"],
        first_root=bytes.fromhex(value["first_root"]),
        second_root=bytes.fromhex(value["second_root"]),
        path=[bytes.fromhex(node) for node in value["path"]],
    )


def check_inclusion(
    proof: InclusionProof,
    checkpoint: Checkpoint,
    *,
    canonical: bytes | None = None,
    member: str = "proof",
) -> None:
    """Check that `proof` puts an event in the tree `checkpoint` signs.

    With `canonical`, the proven leaf must be those bytes' leaf hash.

    Raises:
        VerificationFailure: the proof is for another tree or leaf, or its
            path does not lead to the checkpoint's root.
    """

    def fail(reason: str) -> VerificationFailure:
        return VerificationFailure(
            "inclusion proof", reason, member=member, position=proof.position
        )

    if proof.leaf_index != proof.position - 1:
        raise fail("leaf_index is not position - 1")
    if proof.tree_size != checkpoint.tree_size:
        raise fail(
            f"the proof is for tree size {proof.tree_size}, the checkpoint's "
            f"is {checkpoint.tree_size}"
        )
    if proof.root_hash != checkpoint.root_hash:
        raise fail("root_hash differs from the checkpoint's root hash")
    if canonical is not None and merkle.leaf_hash(canonical) != proof.leaf_hash:
        raise fail("leaf_hash is not the leaf hash of the event's canonical bytes")
    if not merkle.verify_inclusion(
        proof.leaf_index, proof.tree_size, proof.leaf_hash, proof.path, proof.root_hash
    ):
        raise fail("the path does not lead from the leaf to the root hash")


def check_consistency(
    proof: ConsistencyProof,
    first: Checkpoint,
    second: Checkpoint,
    *,
    member: str = "proof",
) -> None:
    """Check that checkpoint `first`'s tree is a prefix of `second`'s.

    Raises:
        VerificationFailure: the proof is for other trees or does not verify.
    """

    def fail(reason: str) -> VerificationFailure:
        return VerificationFailure("consistency proof", reason, member=member)

    for name, size, root, checkpoint in (
        ("first", proof.first, proof.first_root, first),
        ("second", proof.second, proof.second_root, second),
    ):
        if size != checkpoint.tree_size or root != checkpoint.root_hash:
            raise fail(
                f"{name} ({size}) is not the checkpoint of tree size "
                f"{checkpoint.tree_size} and its root"
            )
    if not merkle.verify_consistency(
        proof.first, proof.second, proof.first_root, proof.second_root, proof.path
    ):
        raise fail(
            f"the path does not prove tree {proof.first} a prefix of "
            f"tree {proof.second}"
        )


# -- evidence bundles ------------------------------------------------------------


def read_archive(data: bytes) -> dict[str, bytes]:
    """Read a bundle's members, requiring the archive's one byte form.

    Raises:
        VerificationFailure: the file is not a tar archive of regular files
            named by the bundle layout, or its bytes differ from what the
            deterministic writer makes of its members.
    """

    def fail(reason: str, member: str | None = None) -> VerificationFailure:
        return VerificationFailure("archive", reason, member=member)

    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for info in archive:
                if not info.isreg():
                    raise fail("not a regular file", info.name)
                if reason := layout.check_member_name(info.name):
                    raise fail(reason, info.name)
                if info.name in members:
                    raise fail("the member appears twice", info.name)
                extracted = archive.extractfile(info)
                assert extracted is not None  # a regular file
                members[info.name] = extracted.read()
    except (tarfile.TarError, EOFError, UnicodeError, OSError) as exc:
        raise fail(f"not a readable tar archive ({exc})") from None
    try:
        canonical = layout.write_archive(members)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if canonical != data:
        raise fail(_first_difference(canonical, data, members))
    return members


def _first_differing_byte(a: bytes, b: bytes) -> int:
    """The first offset where `a` and `b` differ (or the shorter's length)."""
    common, offset = min(len(a), len(b)), 0
    for chunk in (65536, 4096, 64, 1):
        while offset + chunk <= common and (
            a[offset : offset + chunk] == b[offset : offset + chunk]
        ):
            offset += chunk
    return offset


def _first_difference(
    canonical: bytes, data: bytes, members: Mapping[str, bytes]
) -> str:
    """Say where the file departs from the canonical layout of its members."""
    offset = _first_differing_byte(canonical, data)
    where = "the end-of-archive padding"
    start = 0
    for name in sorted(members, key=lambda n: n.encode("utf-8")):
        content_start = start + tarfile.BLOCKSIZE
        end = content_start + -(-len(members[name]) // 512) * 512
        if offset < content_start:
            where = f"the header of {name}"
            break
        if offset < end:
            where = f"the content or padding of {name}"
            break
        start = end
    return f"not in the canonical layout: byte {offset} differs, in {where}"


@dataclass(frozen=True, slots=True)
class BundleReport:
    """What a verified bundle proves."""

    run_id: str
    project_id: str | None
    status: str
    events: int
    artifacts: int
    artifact_bytes: int
    checkpoint: Checkpoint
    key_pinned: bool


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _canonical_sha256(value: Any) -> str:
    return _sha256(canonical_text(value).encode("utf-8"))


def run_claims(
    run_id: str, records: Sequence[ChainRecord], *, member: str = "events"
) -> dict[str, Any]:
    """What the proven events say about the run: the manifest's claims.

    The run's stream must be there from its first version without a gap,
    its spec and plan hashes must be the sha256 of their canonical JSON,
    and every input of the plan must be a committed dataset version among
    the events with the same sha256 and size. Any other event is refused.

    Raises:
        VerificationFailure: the events do not make such a run.
    """

    def fail(reason: str, position: int | None = None) -> VerificationFailure:
        return VerificationFailure("claims", reason, member=member, position=position)

    stream_id = f"run-{run_id}"
    run_events = [r for r in records if r.stream_id == stream_id]
    for expected, record in enumerate(run_events, start=1):
        if record.stream_type != "run" or record.stream_version != expected:
            raise fail(
                f"the run's stream is not whole: version {expected} is missing",
                record.position,
            )
        if record.data.get("run_id") != run_id:
            raise fail("the event names another run", record.position)
    if not run_events or run_events[0].type != "RunSubmitted":
        raise fail(f"no RunSubmitted event on stream {stream_id}")
    submitted = run_events[0]
    spec_hash = submitted.data.get("spec_hash")
    if spec_hash != _canonical_sha256(submitted.data.get("spec")):
        raise fail(
            "spec_hash is not the sha256 of the canonical spec", submitted.position
        )

    planned = next((r for r in run_events if r.type == "RunPlanned"), None)
    plan: dict[str, Any] = {}
    plan_hash = None
    if planned is not None:
        plan = planned.data.get("plan") or {}
        plan_hash = planned.data.get("plan_hash")
        if plan_hash != _canonical_sha256(plan):
            raise fail(
                "plan_hash is not the sha256 of the canonical plan", planned.position
            )
        if not isinstance(plan, dict) or plan.get("spec_hash") != spec_hash:
            raise fail("the plan is not for the submitted spec", planned.position)

    datasets = _dataset_claims(plan, records, submitted.project_id, fail)
    used = {r.position for r in run_events} | {d["position"] for d in datasets}
    for record in records:
        if record.position not in used:
            raise fail(
                f"{record.type} is neither the run's nor one of its inputs",
                record.position,
            )

    status = "open"
    if run_events[-1].type in RUN_TERMINAL:
        status = RUN_TERMINAL[run_events[-1].type]
    return {
        "run_id": run_id,
        "project_id": submitted.project_id,
        "run": {"status": status, "spec_hash": spec_hash, "plan_hash": plan_hash},
        "dataset_versions": datasets,
        "artifacts": [
            _artifact_claim(r, fail) for r in run_events if r.type == "ArtifactRecorded"
        ],
        "decisions": [
            {"position": r.position, "type": r.type}
            for r in run_events
            if r.type in DECISION_TYPES
        ],
    }


def _dataset_claims(
    plan: Mapping[str, Any],
    records: Sequence[ChainRecord],
    project_id: str | None,
    fail: Any,
) -> list[dict[str, Any]]:
    committed = {
        (r.data.get("dataset_id"), r.data.get("version")): r
        for r in records
        if r.type == "DatasetVersionCommitted" and r.project_id == project_id
    }
    inputs = plan.get("inputs") or {}
    claims = []
    for name in sorted(inputs):
        wanted = inputs[name]
        record = committed.get((wanted.get("dataset"), wanted.get("version")))
        label = f"input {name} ({wanted.get('dataset')} v{wanted.get('version')})"
        if record is None:
            raise fail(f"{label}: its DatasetVersionCommitted event is missing")
        if (record.data.get("sha256"), record.data.get("size")) != (
            wanted.get("sha256"),
            wanted.get("size"),
        ):
            raise fail(
                f"{label}: the plan's sha256 or size differs from the "
                "committed version's",
                record.position,
            )
        claims.append(
            {
                "input": name,
                "dataset_id": record.data["dataset_id"],
                "version": record.data["version"],
                "sha256": record.data["sha256"],
                "size": record.data["size"],
                "position": record.position,
            }
        )
    return claims


def _artifact_claim(record: ChainRecord, fail: Any) -> dict[str, Any]:
    artifact = record.data.get("artifact")
    schema = _object(
        {
            "name": {"type": "string"},
            "sha256": _HEX64,
            "size": _COUNT,
            "kind": {"type": "string"},
        },
        closed=False,
    )
    if problem := validate(artifact, schema):
        raise fail(f"the artifact is not described: {problem}", record.position)
    assert isinstance(artifact, dict)
    return {
        "name": artifact["name"],
        "kind": artifact["kind"],
        "sha256": artifact["sha256"],
        "size": artifact["size"],
        "position": record.position,
        "member": None,
    }


def build_manifest(
    *,
    run_id: str,
    members: Mapping[str, bytes],
    records: Sequence[ChainRecord],
    checkpoint: Checkpoint,
) -> dict[str, Any]:
    """The manifest a bundle of these members and proven events must carry.

    The exporter writes it and the verifier rebuilds it: every value in it
    follows from the members and the events, so none is taken on trust.

    Raises:
        VerificationFailure: the events do not make a run (`run_claims`).
    """
    claims = run_claims(run_id, records, member=layout.EVENTS_MEMBER)
    for artifact in claims["artifacts"]:
        name = layout.artifact_member(artifact["sha256"])
        artifact["member"] = name if name in members else None
    return {
        "format": layout.BUNDLE_FORMAT,
        **claims,
        "checkpoint": {
            "origin": checkpoint.origin,
            "tree_size": checkpoint.tree_size,
            "root_hash": checkpoint.root_hex,
            "chain_head": checkpoint.chain_head_hex,
            "key_id": checkpoint.key_id,
        },
        "members": [
            {"name": name, "sha256": _sha256(content), "size": len(content)}
            for name, content in sorted(members.items())
            if name != layout.MANIFEST_MEMBER
        ],
        "events": [
            {
                "position": r.position,
                "event_id": r.event_id,
                "type": r.type,
                "stream_id": r.stream_id,
                "hash": r.hash.hex(),
            }
            for r in records
        ],
    }


def assemble_bundle(
    *,
    run_id: str,
    records: Sequence[Mapping[str, Any]],
    proofs: Sequence[Mapping[str, Any]],
    note: str,
    vkey: str,
    artifacts: Mapping[str, bytes] = {},
) -> bytes:
    """Write a bundle: chain records and their proofs in position order, the
    checkpoint note they prove against, its vkey, and artifact bytes keyed
    by their sha256 (hex). The manifest is built from these, as the
    verifier rebuilds it.

    Raises:
        VerificationFailure: the pieces do not make a bundle that verifies
            (the exporter's own check of what it is about to write).
    """
    members = {
        layout.EVENTS_MEMBER: layout.ndjson(list(records)),
        layout.PROOFS_MEMBER: layout.ndjson(list(proofs)),
        layout.CHECKPOINT_MEMBER: note.encode("utf-8"),
        layout.KEY_MEMBER: (vkey.strip() + "\n").encode("utf-8"),
    }
    for sha256, content in artifacts.items():
        members[layout.artifact_member(sha256)] = content
    manifest = build_manifest(
        run_id=run_id,
        members=members,
        records=parse_records(members[layout.EVENTS_MEMBER], member="events"),
        checkpoint=check_checkpoint(note, load_key(vkey)),
    )
    members[layout.MANIFEST_MEMBER] = layout.render_json(manifest)
    return layout.write_archive(members)


def verify_bundle(data: bytes, *, key: VerifierKey | None = None) -> BundleReport:
    """Verify an evidence bundle's bytes; `key` pins the signer's key.

    Without `key`, the bundle's own key.vkey is used: the caller must say
    that the key was not pinned.

    Raises:
        VerificationFailure: the first check that fails.
    """
    members = read_archive(data)
    for name in layout.FIXED_MEMBERS:
        if name not in members:
            raise VerificationFailure("archive", "the member is missing", member=name)
    manifest = _read_manifest(members)
    _check_member_hashes(manifest, members)

    pinned = key is not None
    bundled = load_key(
        members[layout.KEY_MEMBER].decode("utf-8", "replace"), member=layout.KEY_MEMBER
    )
    checkpoint = check_checkpoint(
        members[layout.CHECKPOINT_MEMBER],
        key or bundled,
        member=layout.CHECKPOINT_MEMBER,
    )
    records = parse_records(members[layout.EVENTS_MEMBER], member=layout.EVENTS_MEMBER)
    if not records:
        raise VerificationFailure("chain segment", "no events", member="events.ndjson")
    check_segment(
        records,
        member=layout.EVENTS_MEMBER,
        contiguous=False,
        checkpoints=[checkpoint],
    )
    _check_bundle_proofs(members[layout.PROOFS_MEMBER], records, checkpoint)

    expected = build_manifest(
        run_id=manifest["run_id"],
        members=members,
        records=records,
        checkpoint=checkpoint,
    )
    _compare_manifest(manifest, expected, members[layout.MANIFEST_MEMBER])
    artifact_bytes = _check_artifact_bytes(expected, members)
    return BundleReport(
        run_id=expected["run_id"],
        project_id=expected["project_id"],
        status=expected["run"]["status"],
        events=len(records),
        artifacts=len(expected["artifacts"]),
        artifact_bytes=artifact_bytes,
        checkpoint=checkpoint,
        key_pinned=pinned,
    )


def _read_manifest(members: Mapping[str, bytes]) -> dict[str, Any]:
    name = layout.MANIFEST_MEMBER
    try:
        manifest = json.loads(members[name])
    except ValueError:
        raise VerificationFailure("manifest", "not JSON", member=name) from None
    if problem := validate(manifest, MANIFEST_SCHEMA):
        raise VerificationFailure("manifest schema", problem, member=name)
    return manifest  # type: ignore[no-any-return]


def _check_member_hashes(
    manifest: Mapping[str, Any], members: Mapping[str, bytes]
) -> None:
    listed = {entry["name"]: entry for entry in manifest["members"]}
    for name, content in sorted(members.items()):
        if name == layout.MANIFEST_MEMBER:
            continue
        entry = listed.pop(name, None)
        if entry is None:
            raise VerificationFailure(
                "member hash", "the manifest does not list it", member=name
            )
        if entry["size"] != len(content) or entry["sha256"] != _sha256(content):
            raise VerificationFailure(
                "member hash",
                "the content differs from the manifest's sha256 and size",
                member=name,
            )
    for name in listed:
        raise VerificationFailure(
            "member hash", "listed in the manifest but not in the archive", member=name
        )


def _check_bundle_proofs(
    content: bytes, records: Sequence[ChainRecord], checkpoint: Checkpoint
) -> None:
    name = layout.PROOFS_MEMBER
    proofs = list(_json_lines(content, member=name, check="inclusion proof"))
    if len(proofs) != len(records):
        raise VerificationFailure(
            "inclusion proof",
            f"{len(proofs)} proofs for {len(records)} events",
            member=name,
        )
    for value, record in zip(proofs, records, strict=True):
        proof = parse_inclusion_proof(value, member=name)
        if proof.position != record.position:
            raise VerificationFailure(
                "inclusion proof",
                "the proof is not for the event on the same line of events.ndjson",
                member=name,
                position=proof.position,
            )
        check_inclusion(proof, checkpoint, canonical=record.canonical, member=name)


def _compare_manifest(
    manifest: Mapping[str, Any], expected: Mapping[str, Any], content: bytes
) -> None:
    for section in sorted(expected):
        if manifest.get(section) != expected[section]:
            raise VerificationFailure(
                "manifest claims",
                f"{section} differs from what the proven events and members say",
                member=layout.MANIFEST_MEMBER,
            )
    if content != layout.render_json(expected):
        raise VerificationFailure(
            "manifest claims",
            "not in canonical form (RFC 8785 and one newline)",
            member=layout.MANIFEST_MEMBER,
        )


def _check_artifact_bytes(
    expected: Mapping[str, Any], members: Mapping[str, bytes]
) -> int:
    recorded = {a["member"]: a for a in expected["artifacts"] if a["member"]}
    total = 0
    for name, content in sorted(members.items()):
        if not name.startswith(layout.ARTIFACTS_DIR):
            continue
        artifact = recorded.get(name)
        if artifact is None:
            raise VerificationFailure(
                "artifact bytes", "no ArtifactRecorded event names it", member=name
            )
        if _sha256(content) != artifact["sha256"] or len(content) != artifact["size"]:
            raise VerificationFailure(
                "artifact bytes",
                "the bytes differ from the recorded sha256 and size",
                member=name,
                position=artifact["position"],
            )
        total += len(content)
    return total


# -- the command line --------------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise VerificationFailure(
            "input", exc.strerror or str(exc), member=path
        ) from None


def _key_argument(value: str) -> VerifierKey:
    """`--key`: a vkey's text, or a file that holds one."""
    if value.count("+") >= 2 and not value.startswith(("/", ".")):
        try:
            return parse_vkey(value)
        except (NoteError, ValueError):
            pass
    return load_key(_read(value).decode("utf-8", "replace"), member=value)


def _json_file(path: str) -> Any:
    try:
        return json.loads(_read(path))
    except ValueError:
        raise VerificationFailure("input", "not JSON", member=path) from None


@dataclass(slots=True)
class FileChecks:
    """`animus evidence verify` over separate files rather than a bundle."""

    key: str | None = None
    checkpoints: Sequence[str] = ()
    proofs: Sequence[str] = ()
    segments: Sequence[str] = ()
    consistency: Sequence[str] = ()
    sparse: bool = False

    def run(self) -> list[str]:
        """Check every file given; return the summary lines.

        Raises:
            VerificationFailure: the first check that fails.
        """
        if self.key is None:
            raise VerificationFailure("key", "--key is required to check files")
        key = _key_argument(self.key)
        checkpoints = [
            check_checkpoint(_read(path), key, member=path) for path in self.checkpoints
        ]
        by_size = {c.tree_size: c for c in checkpoints}
        lines = [
            f"checkpoint {path}: tree size {c.tree_size}, root {c.root_hex}"
            for path, c in zip(self.checkpoints, checkpoints, strict=True)
        ]
        for path in self.segments:
            records = parse_records(_read(path), member=path)
            report = check_segment(
                records,
                member=path,
                contiguous=not self.sparse,
                checkpoints=checkpoints,
            )
            rebuilt = ", root rebuilt" if report.root_checked else ""
            lines.append(
                f"segment {path}: {report.events} events, positions "
                f"{report.first}..{report.last}{rebuilt}"
            )
        for path in self.proofs:
            proof = parse_inclusion_proof(_json_file(path), member=path)
            checkpoint = self._checkpoint(by_size, proof.tree_size, path)
            check_inclusion(proof, checkpoint, member=path)
            lines.append(
                f"inclusion proof {path}: position {proof.position} in tree "
                f"size {proof.tree_size}"
            )
        for path in self.consistency:
            consistent = parse_consistency_proof(_json_file(path), member=path)
            first = self._checkpoint(by_size, consistent.first, path)
            second = self._checkpoint(by_size, consistent.second, path)
            check_consistency(consistent, first, second, member=path)
            lines.append(
                f"consistency proof {path}: tree {consistent.first} is a prefix "
                f"of tree {consistent.second}"
            )
        return lines

    @staticmethod
    def _checkpoint(
        by_size: Mapping[int, Checkpoint], size: int, path: str
    ) -> Checkpoint:
        if size not in by_size:
            raise VerificationFailure(
                "input",
                f"no --checkpoint of tree size {size} was given",
                member=path,
            )
        return by_size[size]


def verify_command(settings: object, args: Any) -> int:
    """`animus evidence verify`: a bundle, or separate files, offline.

    Prints a short summary and returns 0, or prints one line naming the
    first failing check and returns 1. `settings` is not used: nothing here
    reaches a database or the network.
    """
    files = (args.checkpoint, args.proof, args.segment, args.consistency)
    if not args.bundle and not any(files):
        print(
            "animus: evidence verify: give a BUNDLE, or --checkpoint, --proof, "
            "--segment or --consistency files (try: animus evidence verify --help)",
            file=sys.stderr,
        )
        return 2
    try:
        if args.bundle:
            lines = _verify_bundle_file(args.bundle, args.key)
        else:
            lines = FileChecks(
                key=args.key,
                checkpoints=args.checkpoint or (),
                proofs=args.proof or (),
                segments=args.segment or (),
                consistency=args.consistency or (),
                sparse=args.sparse,
            ).run()
    except VerificationFailure as failure:
        line = " ".join(str(failure).split())  # one line, whatever the reason
        print(f"verification failed: {line}", flush=True)
        return 1
    print("\n".join(lines), flush=True)
    return 0


def _verify_bundle_file(path: str, key_argument: str | None) -> list[str]:
    key = _key_argument(key_argument) if key_argument else None
    report = verify_bundle(_read(path), key=key)
    checkpoint = report.checkpoint
    if not report.key_pinned:
        print(
            f"warning: the key was not pinned: checked with the bundle's own key "
            f"{checkpoint.origin}+{checkpoint.key_id}; pass --key to pin it",
            file=sys.stderr,
            flush=True,
        )
    return [
        f"bundle verified: run {report.run_id} ({report.status}), "
        f"{report.events} events proven in tree size {checkpoint.tree_size}",
        f"checkpoint {checkpoint.origin} root {checkpoint.root_hex} "
        f"signed by key {checkpoint.key_id}",
        f"{report.artifacts} artifacts recorded, {report.artifact_bytes} bytes "
        "re-hashed",
    ]
