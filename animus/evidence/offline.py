"""The offline verifier: checks evidence with nothing but files and a public key.

It needs no database and no network, and imports nothing of the control
plane (an import-linter contract holds it to the standard library,
`cryptography`, `rfc8785`, `jsonschema` with the schemas published in
contracts/, the chain's canonical form, the RFC 9162 Merkle functions and
the signed-note module). What it checks, each failure naming
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
import os
import re
import stat
import sys
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, BinaryIO

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from animus import merkle
from animus.chain import GENESIS_HASH, canonical_text, link_hash
from animus.evidence import bundle as layout
from animus.evidence.note import (
    Checkpoint,
    NoteError,
    VerifierKey,
    format_checkpoint_body,
    parse_vkey,
    verify_checkpoint,
)

__all__ = [
    "BundleReport",
    "ChainRecord",
    "ConsistencyProof",
    "InclusionProof",
    "KeyOptionError",
    "SegmentReport",
    "VerificationFailure",
    "assemble_bundle",
    "build_manifest",
    "check_checkpoint",
    "check_consistency",
    "check_inclusion",
    "check_segment",
    "key_option",
    "load_key",
    "parse_consistency_proof",
    "parse_inclusion_proof",
    "parse_records",
    "read_archive",
    "run_claims",
    "validate",
    "verify_bundle",
    "verify_bundle_file",
    "verify_members",
    "walk_archive",
    "verify_command",
]

INCLUSION_FORMAT = "animus-inclusion-proof/v1"
CONSISTENCY_FORMAT = "animus-consistency-proof/v1"

_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_COUNT = {"type": "integer", "minimum": 0}


def _object(required: dict[str, Any], *, closed: bool = True) -> dict[str, Any]:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": required,
        "additionalProperties": not closed,
    }




def _published(name: str) -> dict[str, Any]:
    """A schema published in contracts/, without its annotations."""
    schema = json.loads((files("contracts") / name).read_text(encoding="utf-8"))
    return {k: v for k, v in schema.items() if k not in _ANNOTATIONS}


_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description"})
INCLUSION_PROOF_SCHEMA = _published("evidence-inclusion-proof.schema.json")
CONSISTENCY_PROOF_SCHEMA = _published("evidence-consistency-proof.schema.json")
CHAIN_RECORD_SCHEMA = _published("evidence-chain-record.schema.json")
MANIFEST_SCHEMA = _published("evidence-manifest.schema.json")

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


# -- JSON Schema ------------------------------------------------------------------

_VALIDATORS: dict[int, Draft202012Validator] = {}


def validate(value: Any, schema: Mapping[str, Any]) -> str | None:
    """The first way `value` breaks `schema` (JSON Schema 2020-12), located by
    its JSON path, or None."""
    validator = _VALIDATORS.get(id(schema))
    if validator is None or validator.schema is not schema:
        validator = _VALIDATORS[id(schema)] = Draft202012Validator(schema)
    error = best_match(validator.iter_errors(value))
    return None if error is None else f"{error.json_path}: {error.message}"


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


@dataclass(frozen=True, slots=True)
class Digest:
    """A member read as a stream: its sha256 (hex) and size, not its bytes.

    Artifacts can be large; the verifier needs only their hash and size."""

    sha256: str
    size: int


Content = bytes | Digest
"""A member's content: its bytes, or for a streamed artifact its digest."""

CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 4 << 30
"""The largest bundle `animus evidence verify` reads unless --max-bytes says."""
MAX_KEY_BYTES = 4096
"""A vkey is about 100 bytes; a --key file larger than this is not one."""

_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_CHECKSUM = slice(148, 156)


def read_archive(data: bytes) -> dict[str, bytes]:
    """Read a bundle's members, requiring the archive's one byte form.

    Raises:
        VerificationFailure: the bytes are not the canonical archive of
            regular files named by the bundle layout (`walk_archive`).
    """
    members = walk_archive(io.BytesIO(data), len(data), stream=lambda name: False)
    return {
        name: content for name, content in members.items() if isinstance(content, bytes)
    }


def walk_archive(
    file: BinaryIO, length: int, *, stream: Callable[[str], bool]
) -> dict[str, Content]:
    """Read the archive in `file` (`length` bytes) header by header.

    Every header must be the one the writer makes for its name and size,
    every padding byte zero, the members sorted and unique, and the file must
    end where the canonical archive ends, so the file is byte for byte the
    canonical archive of its members. Members for which `stream(name)` holds
    are hashed in chunks rather than kept. A difference is located: "byte B
    differs, in the header of M" (or its padding, or the end of the archive).

    Raises:
        VerificationFailure: (archive) the first departure from the layout.
    """

    def fail(reason: str, member: str | None = None) -> VerificationFailure:
        return VerificationFailure("archive", reason, member=member)

    def differs(offset: int, where: str) -> VerificationFailure:
        return fail(f"not in the canonical layout: byte {offset} differs, in {where}")

    members: dict[str, Content] = {}
    previous = b""
    offset = 0
    while True:
        block = file.read(tarfile.BLOCKSIZE)
        if len(block) < tarfile.BLOCKSIZE:
            raise fail(
                "not a readable tar archive (it ends at byte "
                f"{offset + len(block)}, inside a header or the end-of-archive zeros)"
            )
        if block == _ZERO_BLOCK:
            break
        raw_name = block[:100].split(b"\0", 1)[0]
        if not raw_name or not any(block[_CHECKSUM]):  # stray bytes, no header
            raise differs(offset + _first_nonzero(block), "the end-of-archive padding")
        name = raw_name.decode("utf-8", "backslashreplace")
        size = _octal(block[124:136])
        if not _checksum_ok(block) or size is None:
            departs = _name_departure(raw_name)
            if departs is None and size is None:
                departs = _size_departure(block[124:136])
            if departs is None:
                departs = _header_difference(block, name, size or 0)
            if departs is None:
                raise fail(
                    f"not in the canonical layout: a byte of {offset}.."
                    f"{offset + 511} differs, in the header of {name}, which "
                    "does not match its checksum: its name, size or checksum "
                    "was changed"
                )
            raise differs(offset + departs, f"the header of {name}")
        if block[156:157] not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise fail("not a regular file", name)
        if reason := layout.check_member_name(name):
            raise fail(reason, name)
        if name in members:
            raise fail("the member appears twice", name)
        if raw_name < previous:
            raise fail(
                "not in the canonical layout: members are not sorted by name "
                f"(it follows {previous.decode()})",
                name,
            )
        if block != layout.member_header(name, size):
            departs = _header_difference(block, name, size)
            raise differs(offset + (departs or 0), f"the header of {name}")
        offset += tarfile.BLOCKSIZE
        if offset + size > length:
            raise fail(f"not a readable tar archive (it ends inside {name})", name)
        members[name] = _read_content(file, size, keep=not stream(name))
        offset += size
        padding = file.read(-size % tarfile.BLOCKSIZE)
        if any(padding):
            raise differs(offset + _first_nonzero(padding), f"the padding of {name}")
        offset += len(padding)
        previous = raw_name
    end = layout.archive_size(offset)
    offset += tarfile.BLOCKSIZE
    while offset < end:
        chunk = file.read(min(CHUNK, end - offset))
        if not chunk:
            raise fail(
                f"not in the canonical layout: the file ends at byte {offset}, "
                f"inside the end-of-archive padding (which ends at byte {end})"
            )
        if any(chunk):
            raise differs(offset + _first_nonzero(chunk), "the end-of-archive padding")
        offset += len(chunk)
    if file.read(1):
        raise fail(
            f"not in the canonical layout: byte {end} differs, after the end of "
            "the archive (the file goes on)"
        )
    return members


def _read_content(file: BinaryIO, size: int, *, keep: bool) -> Content:
    if keep:
        return file.read(size)
    digest = hashlib.sha256()
    left = size
    while left:
        chunk = file.read(min(CHUNK, left))
        digest.update(chunk)
        left -= len(chunk)
    return Digest(sha256=digest.hexdigest(), size=size)


def _octal(field: bytes) -> int | None:
    """A header's numeric field as tarfile reads it, or None if it is not one."""
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        return None


def _checksum_ok(block: bytes) -> bool:
    stored = _octal(block[_CHECKSUM])
    return stored is not None and stored in tarfile.calc_chksums(block)


def _first_nonzero(data: bytes) -> int:
    return len(data) - len(data.lstrip(b"\0"))


def _name_departure(raw_name: bytes) -> int | None:
    """The first byte of a member name no layout name could have there, or
    None when the name is one the layout allows."""
    name = raw_name.decode("latin-1")
    if layout.check_member_name(name) is None:
        return None
    hexdigits = "0123456789abcdef"
    for end in range(1, len(name) + 1):
        prefix = name[:end]
        fixed = any(n.startswith(prefix) for n in layout.FIXED_MEMBERS)
        artifact = layout.ARTIFACTS_DIR.startswith(prefix[:10]) and (
            all(c in hexdigits for c in prefix[10:]) and end <= 74
        )
        if not (fixed or artifact):
            return end - 1
    return len(raw_name)  # a name cut short


def _size_departure(field: bytes) -> int:
    """Where a size field that does not read as a number departs from the
    writer's form (11 octal digits and a NUL), from the header's start."""
    for index, byte in enumerate(field):
        if (index < 11 and byte not in b"01234567") or (index == 11 and byte):
            return 124 + index
    return 124


def _header_difference(block: bytes, name: str, size: int) -> int | None:
    """Where a header departs from the writer's header for `name` and `size`:
    the first differing byte outside the checksum field; else, when the
    checksum field is well-formed, None (the name, the size or the checksum
    changed into another valid value, and which byte cannot be known); else
    the checksum field's first changed byte."""
    try:
        expected = layout.member_header(name, size)
    except (ValueError, UnicodeError):
        return _CHECKSUM.start
    if len(expected) != len(block):  # a name the writer would need pax for
        return 0
    for index, (have, want) in enumerate(zip(block, expected, strict=True)):
        if have != want and not _CHECKSUM.start <= index < _CHECKSUM.stop:
            return index
    if re.fullmatch(rb"[0-7]{6}\0 ", block[_CHECKSUM]):
        # a well-formed checksum of another header: the name or the size
        # (read from the changed bytes) or a digit of the checksum changed
        return None
    return _CHECKSUM.start + next(
        (i for i in range(8) if block[148 + i] != expected[148 + i]), 0
    )


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


def _digest(content: Content) -> tuple[str, int]:
    """A member's sha256 (hex) and size, whether read or streamed."""
    if isinstance(content, Digest):
        return content.sha256, content.size
    return _sha256(content), len(content)


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
    members: Mapping[str, Content],
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
            {"name": name, "sha256": sha256, "size": size}
            for name, (sha256, size) in sorted(
                (name, _digest(content)) for name, content in members.items()
            )
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
    members: dict[str, Content] = {
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
        records=parse_records(layout.ndjson(list(records)), member="events"),
        checkpoint=check_checkpoint(note, load_key(vkey)),
    )
    members[layout.MANIFEST_MEMBER] = layout.render_json(manifest)
    return layout.write_archive(
        {name: c for name, c in members.items() if isinstance(c, bytes)}
    )


def verify_bundle(
    data: bytes, *, key: VerifierKey | None, trust_bundle_key: bool = False
) -> BundleReport:
    """Verify an evidence bundle's bytes against the pinned signer's `key`.

    With `key` None the bundle's own key.vkey is used, but only when the
    caller says so with `trust_bundle_key` (and must then say that the key
    was not pinned): anyone can sign a bundle with a key of their own.

    Raises:
        VerificationFailure: the first check that fails.
    """
    members = walk_archive(io.BytesIO(data), len(data), stream=_is_artifact)
    return verify_members(members, key=key, trust_bundle_key=trust_bundle_key)


def verify_bundle_file(
    path: str,
    *,
    key: VerifierKey | None,
    trust_bundle_key: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> BundleReport:
    """Verify the bundle in file `path`, streaming its artifacts.

    Raises:
        VerificationFailure: (input) not a regular file, or over `max_bytes`;
            else the first check that fails.
    """
    with _open_regular(path, max_bytes, what="--max-bytes") as (file, length):
        members = walk_archive(file, length, stream=_is_artifact)
    return verify_members(members, key=key, trust_bundle_key=trust_bundle_key)


def _is_artifact(name: str) -> bool:
    return name.startswith(layout.ARTIFACTS_DIR)


def _fixed(members: Mapping[str, Content], name: str) -> bytes:
    content = members[name]
    assert isinstance(content, bytes)  # only artifacts are streamed
    return content


def verify_members(
    members: Mapping[str, Content],
    *,
    key: VerifierKey | None,
    trust_bundle_key: bool = False,
) -> BundleReport:
    """Verify a bundle's members read by `walk_archive` (see `verify_bundle`).

    Raises:
        VerificationFailure: the first check that fails.
    """
    if key is None and not trust_bundle_key:
        raise VerificationFailure(
            "key", "no key pinned (and the bundle's own key was not trusted)"
        )
    for name in layout.FIXED_MEMBERS:
        if name not in members:
            raise VerificationFailure("archive", "the member is missing", member=name)
    manifest = _read_manifest(members)
    _check_member_hashes(manifest, members)

    pinned = key is not None
    key = _check_bundle_key(_fixed(members, layout.KEY_MEMBER), key)
    note = _fixed(members, layout.CHECKPOINT_MEMBER)
    checkpoint = check_checkpoint(note, key, member=layout.CHECKPOINT_MEMBER)
    _check_note_form(note, key, checkpoint)
    events = _fixed(members, layout.EVENTS_MEMBER)
    records = parse_records(events, member=layout.EVENTS_MEMBER)
    if not records:
        raise VerificationFailure("chain segment", "no events", member="events.ndjson")
    check_segment(
        records,
        member=layout.EVENTS_MEMBER,
        contiguous=False,
        checkpoints=[checkpoint],
    )
    _check_rebuilt_lines(
        events,
        [chain_record_json(r) for r in records],
        check="chain record",
        member=layout.EVENTS_MEMBER,
        what="the chain record the exporter writes (its members only, RFC 8785)",
    )
    _check_bundle_proofs(_fixed(members, layout.PROOFS_MEMBER), records, checkpoint)

    expected = build_manifest(
        run_id=manifest["run_id"],
        members=members,
        records=records,
        checkpoint=checkpoint,
    )
    _compare_manifest(manifest, expected, _fixed(members, layout.MANIFEST_MEMBER))
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


def chain_record_json(record: ChainRecord) -> dict[str, Any]:
    """The chain record of an event: its envelope's members, the links and
    the canonical text, and nothing else (contracts/evidence.md section 4)."""
    return {
        "position": record.position,
        "event_id": record.event_id,
        "stream_type": record.stream_type,
        "stream_id": record.stream_id,
        "stream_version": record.stream_version,
        "project_id": record.project_id,
        "type": record.type,
        "recorded_at": record.recorded_at,
        "prev_hash": record.prev_hash.hex(),
        "hash": record.hash.hex(),
        "canonical": record.canonical.decode("utf-8"),
    }


def _inclusion_json(proof: InclusionProof) -> dict[str, Any]:
    return {
        "format": INCLUSION_FORMAT,
        "position": proof.position,
        "leaf_index": proof.leaf_index,
        "tree_size": proof.tree_size,
        "leaf_hash": proof.leaf_hash.hex(),
        "root_hash": proof.root_hash.hex(),
        "path": [node.hex() for node in proof.path],
    }


def _check_rebuilt_lines(
    content: bytes,
    rebuilt: Sequence[Mapping[str, Any]],
    *,
    check: str,
    member: str,
    what: str,
) -> None:
    """Require NDJSON `content` to be, byte for byte, the `rebuilt` values."""
    lines = content.split(b"\n")[:-1]  # it ends in a newline (_json_lines)
    for number, value in enumerate(rebuilt):
        if number >= len(lines) or lines[number] + b"\n" != layout.render_json(value):
            raise VerificationFailure(
                check,
                f"line {number + 1} is not {what}",
                member=member,
                position=value.get("position"),
            )
    if len(lines) != len(rebuilt):
        raise VerificationFailure(
            check, f"{len(lines)} lines for {len(rebuilt)} values", member=member
        )


def _check_bundle_key(content: bytes, pinned: VerifierKey | None) -> VerifierKey:
    """key.vkey must be one vkey and a newline: the pinned key when one is."""
    name = layout.KEY_MEMBER
    bundled = load_key(content.decode("utf-8", "replace"), member=name)
    if content != f"{bundled}\n".encode():
        raise VerificationFailure(
            "key", "not exactly one vkey followed by one newline", member=name
        )
    if pinned is None:
        return bundled
    if bundled != pinned:
        raise VerificationFailure(
            "key",
            f"not the pinned key {pinned.name}+{pinned.key_id} (it holds "
            f"{bundled.name}+{bundled.key_id})",
            member=name,
        )
    return pinned


def _check_note_form(note: bytes, key: VerifierKey, checkpoint: Checkpoint) -> None:
    """checkpoint.note must be the checkpoint's text and the key's signature
    line alone, as the checkpointer signs it: nothing added, nothing else."""
    rebuilt = format_checkpoint_body(
        checkpoint.origin,
        checkpoint.tree_size,
        checkpoint.root_hash,
        checkpoint.chain_head,
    )
    signatures = [
        line
        for line in note.decode("utf-8").split("\n\n")[-1].splitlines(keepends=True)
        if line.startswith(f"\u2014 {key.name} ")
    ]
    if note.decode("utf-8") != rebuilt + "\n" + "".join(signatures[:1]):
        raise VerificationFailure(
            "checkpoint",
            "not exactly the signed text and the key's one signature line",
            member=layout.CHECKPOINT_MEMBER,
        )


def _read_manifest(members: Mapping[str, Content]) -> dict[str, Any]:
    name = layout.MANIFEST_MEMBER
    try:
        manifest = json.loads(_fixed(members, name))
    except ValueError:
        raise VerificationFailure("manifest", "not JSON", member=name) from None
    if problem := validate(manifest, MANIFEST_SCHEMA):
        raise VerificationFailure("manifest schema", problem, member=name)
    return manifest  # type: ignore[no-any-return]


def _check_member_hashes(
    manifest: Mapping[str, Any], members: Mapping[str, Content]
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
        if (entry["sha256"], entry["size"]) != _digest(content):
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
    parsed = []
    for value, record in zip(proofs, records, strict=True):
        proof = parse_inclusion_proof(value, member=name)
        parsed.append(proof)
        if proof.position != record.position:
            raise VerificationFailure(
                "inclusion proof",
                "the proof is not for the event on the same line of events.ndjson",
                member=name,
                position=proof.position,
            )
        check_inclusion(proof, checkpoint, canonical=record.canonical, member=name)
    _check_rebuilt_lines(
        content,
        [_inclusion_json(proof) for proof in parsed],
        check="inclusion proof",
        member=name,
        what="the inclusion proof as written (RFC 8785)",
    )


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
    expected: Mapping[str, Any], members: Mapping[str, Content]
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
        sha256, size = _digest(content)
        if (sha256, size) != (artifact["sha256"], artifact["size"]):
            raise VerificationFailure(
                "artifact bytes",
                "the bytes differ from the recorded sha256 and size",
                member=name,
                position=artifact["position"],
            )
        total += size
    return total


# -- the command line --------------------------------------------------------------


class KeyOptionError(ValueError):
    """`--key` is neither a readable vkey file nor a vkey: a usage error."""


@contextmanager
def _open_regular(
    path: str, max_bytes: int, *, what: str
) -> Iterator[tuple[BinaryIO, int]]:
    """Open `path` only if it is a regular file of at most `max_bytes`.

    Opened without blocking (a FIFO would wait for a writer) and checked on
    the open descriptor, so a device, a pipe or a directory is refused
    before a single byte is read.

    Raises:
        VerificationFailure: (input) it cannot be opened, is not a regular
            file, or is larger than `max_bytes` (`what` names the limit).
    """

    def fail(reason: str) -> VerificationFailure:
        return VerificationFailure("input", reason, member=path)

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from None
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise fail("not a regular file")
        if status.st_size > max_bytes:
            raise fail(f"{status.st_size} bytes, larger than {what} {max_bytes}")
        yield file, status.st_size


def _read(
    path: str, max_bytes: int = DEFAULT_MAX_BYTES, *, what: str = "--max-bytes"
) -> bytes:
    with _open_regular(path, max_bytes, what=what) as (file, length):
        try:
            return file.read(length)
        except OSError as exc:
            raise VerificationFailure(
                "input", exc.strerror or str(exc), member=path
            ) from None


def key_option(value: str) -> VerifierKey:
    """`--key`: a vkey's text, or a file that holds one (and nothing else).

    A value naming an existing path is read as a file (a regular file of at
    most MAX_KEY_BYTES); any other value must be a vkey itself.

    Raises:
        KeyOptionError: one line saying what is wrong with the value.
    """
    if not value.strip():
        raise KeyOptionError("--key is empty: give the log's vkey or a file holding it")
    if os.path.lexists(value):
        try:
            text = _read(value, MAX_KEY_BYTES, what="the limit for a key file of")
        except VerificationFailure as failure:
            raise KeyOptionError(f"--key {value}: {failure.reason}") from None
        try:
            return parse_vkey(text.decode("utf-8"))
        except UnicodeDecodeError:
            problem = "it is not UTF-8 text"
        except NoteError as exc:
            problem = exc.detail
        raise KeyOptionError(f"--key {value}: the file does not hold a vkey: {problem}")
    try:
        return parse_vkey(value)
    except NoteError as exc:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise KeyOptionError(
            f"--key {shown!r}: no file of that name, and not a vkey "
            f"(name+keyhash+key): {exc.detail}"
        ) from None


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
        key = key_option(self.key)
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


def _usage(message: str) -> int:
    print(f"animus: evidence verify: {' '.join(message.split())}", file=sys.stderr)
    return 2


def verify_command(settings: object, args: Any) -> int:
    """`animus evidence verify`: a bundle, or separate files, offline.

    Prints a short summary and returns 0, or prints one line naming the
    first failing check and returns 1; a usage error (no key, a bad --key)
    is one line on stderr and 2. `settings` is not used: nothing here
    reaches a database or the network.
    """
    files = (args.checkpoint, args.proof, args.segment, args.consistency)
    if not args.bundle and not any(files):
        return _usage(
            "give a BUNDLE, or --checkpoint, --proof, --segment or --consistency "
            "files (try: animus evidence verify --help)"
        )
    trust = bool(getattr(args, "trust_bundle_key", False))
    max_bytes = getattr(args, "max_bytes", None) or DEFAULT_MAX_BYTES
    if args.key is not None and trust:
        return _usage("give --key or --trust-bundle-key, not both")
    if args.key is None and not trust:
        return _usage(
            "--key VKEY is required: pin the log's public key (`animus evidence "
            "key` or GET /evidence/key, kept apart from the evidence), or pass "
            "--trust-bundle-key to check with the bundle's own key"
        )
    if trust and not args.bundle:
        return _usage("--trust-bundle-key is for a BUNDLE; files need --key")
    try:
        key = key_option(args.key) if args.key is not None else None
    except KeyOptionError as exc:
        return _usage(str(exc))
    try:
        if args.bundle:
            lines = _verify_bundle_file(args.bundle, key, max_bytes)
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


def _verify_bundle_file(
    path: str, key: VerifierKey | None, max_bytes: int
) -> list[str]:
    report = verify_bundle_file(
        path, key=key, trust_bundle_key=key is None, max_bytes=max_bytes
    )
    checkpoint = report.checkpoint
    signer = f"{checkpoint.origin}+{checkpoint.key_id}"
    if not report.key_pinned:
        print(
            f"WARNING: KEY NOT PINNED: the bundle verified under its own key "
            f"{signer} (key id {checkpoint.key_id}); it proves nothing unless "
            "that is the log's key",
            file=sys.stderr,
            flush=True,
        )
    pinning = "pinned" if report.key_pinned else "the bundle's own, NOT PINNED"
    return [
        f"bundle verified: run {report.run_id} ({report.status}), "
        f"{report.events} events proven in tree size {checkpoint.tree_size}",
        f"checkpoint {checkpoint.origin} root {checkpoint.root_hex} "
        f"signed by key {checkpoint.key_id} ({pinning})",
        f"{report.artifacts} artifacts recorded, {report.artifact_bytes} bytes "
        "re-hashed",
    ]
