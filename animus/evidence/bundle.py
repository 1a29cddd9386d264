"""The evidence bundle's layout: one deterministic, uncompressed tar archive.

A bundle holds everything about one run that an auditor needs, and nothing
that must be trusted: the events (as chain records), one inclusion proof per
event, the signed checkpoint they prove against, the public key, the
artifact bytes, and a manifest that lists every member's sha256 and says
what the events claim (contracts/evidence.md).

The archive has one byte form per set of members: POSIX.1-2001 (pax) tar,
regular files only, sorted by name, mode 0644, uid/gid 0, empty owner
names, mtime 0, padded as Python's tarfile pads. The verifier rewrites the
members it read and requires the same bytes, so a change anywhere in the
file, headers and padding included, fails verification.

Pure: the standard library and the chain's canonical form only, so the
offline verifier uses it as it is.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Mapping
from typing import Any

from animus.chain import canonical_text

__all__ = [
    "ARTIFACTS_DIR",
    "BUNDLE_FORMAT",
    "CHECKPOINT_MEMBER",
    "EVENTS_MEMBER",
    "KEY_MEMBER",
    "MANIFEST_MEMBER",
    "PROOFS_MEMBER",
    "artifact_member",
    "archive_size",
    "check_member_name",
    "member_header",
    "ndjson",
    "render_json",
    "write_archive",
]

BUNDLE_FORMAT = "animus-evidence-bundle/v1"
ARTIFACTS_DIR = "artifacts/"
CHECKPOINT_MEMBER = "checkpoint.note"
EVENTS_MEMBER = "events.ndjson"
KEY_MEMBER = "key.vkey"
MANIFEST_MEMBER = "manifest.json"
PROOFS_MEMBER = "proofs.ndjson"
FIXED_MEMBERS = (
    CHECKPOINT_MEMBER,
    EVENTS_MEMBER,
    KEY_MEMBER,
    MANIFEST_MEMBER,
    PROOFS_MEMBER,
)

_ARTIFACT = re.compile(r"artifacts/[0-9a-f]{64}")


def check_member_name(name: str) -> str | None:
    """Why `name` may not be a bundle member, or None when it may."""
    if name in FIXED_MEMBERS or _ARTIFACT.fullmatch(name):
        return None
    return "not a member of the bundle layout"


def artifact_member(sha256: str) -> str:
    """The member that holds artifact bytes: named by their sha256 (hex)."""
    return ARTIFACTS_DIR + sha256


def render_json(value: Any) -> bytes:
    """One JSON document as the bundle writes it: RFC 8785 and a newline."""
    return canonical_text(value).encode("utf-8") + b"\n"


def ndjson(values: list[Any]) -> bytes:
    """Lines of RFC 8785 JSON, each ending in a newline."""
    return b"".join(render_json(value) for value in values)


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def member_header(name: str, size: int) -> bytes:
    """The one header block the writer makes for a member of `name` and `size`."""
    return _member_info(name, size).tobuf(
        tarfile.PAX_FORMAT, "utf-8", "surrogateescape"
    )


def archive_size(end_of_members: int) -> int:
    """The archive's length when its last member's padding ends at
    `end_of_members`: two zero blocks, then zeros to a whole tar record."""
    end = end_of_members + 2 * tarfile.BLOCKSIZE
    return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def write_archive(members: Mapping[str, bytes]) -> bytes:
    """The one byte form of an archive of `members` (name to content).

    Raises:
        ValueError: a name is not part of the bundle layout.
    """
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8"
    ) as archive:
        for name in sorted(members, key=lambda n: n.encode("utf-8")):
            if reason := check_member_name(name):
                raise ValueError(f"{name!r}: {reason}")
            content = members[name]
            archive.addfile(_member_info(name, len(content)), io.BytesIO(content))
    return buffer.getvalue()
