"""`animus verify`, second part: the signed checkpoints against the events.

The chain check (animus/verify.py) shows the log is internally consistent,
but whoever can write the database can rewrite it consistently. Signed
checkpoints, and above all their copies held elsewhere (from the bus or the
API), are what catch that. Each checkpoint, from the database and from
`--checkpoints FILE`, is checked:

1. its signature, against the configured public key or `--key`;
2. its chain head: the hash of event `tree_size` as stored now. With the
   chain verified from genesis, an equal head pins every event 1..tree_size;
3. its root: the RFC 9162 head at `tree_size` computed from `merkle_nodes`
   (the leaves below the stored levels hashed again from `events`). All
   checkpoints' nodes are read in two queries, so this costs milliseconds,
   not another pass over the log. A forger who rewrote the events but not
   the nodes is caught by (2); one who rebuilt the nodes too, by both.

A checkpoint that no longer matches localises a rewrite: it lies after the
last checkpoint below it that still matches, and at or before its own tree
size. The report names that checkpoint and that range of positions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from animus.errors import ConfigurationError
from animus.evidence import tree
from animus.evidence.note import NoteError, VerifierKey, verify_checkpoint

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from animus.settings import Settings

__all__ = [
    "CheckpointBreak",
    "CheckpointReport",
    "check_checkpoints",
    "parse_key_option",
    "read_checkpoint_file",
    "verify_command",
]

SIGNATURE_PREFIX = "\u2014 "


@dataclass(frozen=True, slots=True)
class Copy:
    """One checkpoint note to check, and where it came from."""

    note: str
    source: str
    columns: tuple[bytes, bytes] | None = None  # a stored row's root, chain head


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointBreak:
    position: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointReport:
    checked: int  # checkpoint copies checked
    sizes: int  # distinct tree sizes among them
    newest: int  # the largest tree size that matches
    key_id: str
    first_break: CheckpointBreak | None


def read_checkpoint_file(path: Path) -> list[str]:
    """Checkpoint notes from a file of JSON lines or of concatenated notes.

    Raises:
        ConfigurationError: the file cannot be read or holds neither form.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"--checkpoints: cannot read {path}: {exc}") from None
    if text.lstrip().startswith(("{", "[")):
        return list(_json_notes(text, path))
    notes = list(_split_notes(text))
    if not notes:
        raise ConfigurationError(f"--checkpoints: {path} holds no checkpoint")
    return notes


def _json_notes(text: str, path: Path) -> Iterator[str]:
    stripped = text.strip()
    documents: Iterable[Any]
    if stripped.startswith("["):
        documents = json.loads(stripped)
    else:
        documents = (json.loads(line) for line in stripped.splitlines() if line)
    try:
        for number, document in enumerate(documents, start=1):
            if not isinstance(document, dict) or not isinstance(
                document.get("note"), str
            ):
                raise ConfigurationError(
                    f"--checkpoints: {path} item {number} has no 'note'"
                )
            yield document["note"]
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"--checkpoints: {path} is not JSON lines ({exc.msg}, line {exc.lineno})"
        ) from None


def _split_notes(text: str) -> Iterator[str]:
    """Split concatenated signed notes: text, blank line, signature lines."""
    body: list[str] = []
    signatures: list[str] = []
    for line in text.splitlines(keepends=True):
        if signatures and not line.startswith(SIGNATURE_PREFIX):
            yield "".join(body) + "\n" + "".join(signatures)
            body, signatures = [], []
        if line.startswith(SIGNATURE_PREFIX) and body:
            signatures.append(line)
        elif line.strip() or body:
            if line == "\n" and body:
                continue  # the blank line between text and signatures
            body.append(line)
    if body and signatures:
        yield "".join(body) + "\n" + "".join(signatures)


async def _stored_notes(conn: AsyncConnection[Any]) -> list[Copy]:
    cur = await conn.execute(
        "SELECT root_hash, chain_head, note FROM checkpoints ORDER BY tree_size"
    )
    return [
        Copy(note=note, source="the database", columns=(bytes(root), bytes(head)))
        for root, head, note in await cur.fetchall()
    ]


async def check_checkpoints(
    conn: AsyncConnection[Any], vkey: VerifierKey, copies: list[Copy]
) -> CheckpointReport:
    """Check every copy against the events; the first break, if any."""
    signed = []
    breaks: list[CheckpointBreak] = []
    for copy in copies:
        try:
            checkpoint = verify_checkpoint(copy.note, vkey)
            signed.append((checkpoint, copy.source))
            stated = (checkpoint.root_hash, checkpoint.chain_head)
            if copy.columns is not None and copy.columns != stated:
                breaks.append(
                    CheckpointBreak(
                        position=checkpoint.tree_size,
                        reason=f"checkpoint {checkpoint.tree_size} in the database: "
                        "its root_hash or chain_head column differs from its "
                        "signed note",
                    )
                )
        except NoteError as exc:
            size = _size_of(copy.note)
            breaks.append(
                CheckpointBreak(
                    position=size,
                    reason=f"checkpoint {size} from {copy.source} does not verify "
                    f"under key {vkey.key_id}: {exc.reason} ({exc.detail})",
                )
            )
    sizes = sorted({c.tree_size for c, _ in signed})
    heads = await _chain_hashes(conn, sizes)
    cur = await conn.execute("SELECT coalesce(max(position), 0) FROM events")
    row = await cur.fetchone()
    head_position = int(row[0]) if row else 0
    roots = await _roots(conn, [s for s in sizes if s <= head_position])

    matching: set[int] = set()
    failing: dict[int, tuple[str, str]] = {}  # size -> (what differs, source)
    for checkpoint, source in sorted(signed, key=lambda c: c[0].tree_size):
        size = checkpoint.tree_size
        if size > head_position:
            breaks.append(
                CheckpointBreak(
                    position=head_position + 1,
                    reason=f"checkpoint {size} (key {checkpoint.key_id}) from "
                    f"{source} covers positions 1..{size}, but the log ends at "
                    f"{head_position}: events were removed",
                )
            )
            continue
        differs = []
        if roots.get(size) != checkpoint.root_hash:
            differs.append("root hash")
        if heads.get(size) != checkpoint.chain_head:
            differs.append("chain head")
        if differs:
            failing.setdefault(size, (" and ".join(differs), source))
        else:
            matching.add(size)

    if failing:
        size = min(failing)
        what, source = failing[size]
        before = max((s for s in matching if s < size), default=0)
        key_id = next(c.key_id for c, _ in signed if c.tree_size == size)
        breaks.append(
            CheckpointBreak(
                position=before + 1,
                reason=f"checkpoint {size} (key {key_id}) from {source} no longer "
                f"matches the events: its {what} differ; the log was rewritten "
                f"within positions {before + 1}..{size}"
                + (f" (checkpoint {before} still matches)" if before else ""),
            )
        )
    return CheckpointReport(
        checked=len(copies),
        sizes=len(sizes),
        newest=max(matching, default=0),
        key_id=vkey.key_id,
        first_break=min(breaks, key=lambda b: b.position) if breaks else None,
    )


def _size_of(note: str) -> int:
    lines = note.split("\n", 2)
    return int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else 0


async def _chain_hashes(
    conn: AsyncConnection[Any], sizes: list[int]
) -> dict[int, bytes]:
    cur = await conn.execute(
        "SELECT position, hash FROM events WHERE position = ANY(%s)", (sizes,)
    )
    return {int(p): bytes(h) for p, h in await cur.fetchall()}


async def _roots(conn: AsyncConnection[Any], sizes: list[int]) -> dict[int, bytes]:
    """Tree heads from the stored nodes; past the built tree, from the events."""
    built = await tree.built_size(conn)
    found = await tree.roots(conn, [s for s in sizes if s <= built])
    beyond = [s for s in sizes if s > built]
    if beyond:
        found |= await _roots_from_events(conn, beyond)
    return found


async def _roots_from_events(
    conn: AsyncConnection[Any], sizes: list[int]
) -> dict[int, bytes]:
    """Tree heads hashed from the events alone (the tree is not built there)."""
    from animus import merkle

    builder = tree.TreeBuilder()
    wanted = sorted(sizes)
    found: dict[int, bytes] = {}
    async with conn.transaction(), conn.cursor(name="leaves") as cur:
        await cur.execute(
            "SELECT textsend(canonical) FROM events WHERE position <= %s "
            "ORDER BY position",
            (wanted[-1],),
        )
        async for (text,) in cur:
            builder.append(merkle.leaf_hash(bytes(text)))
            if builder.size == wanted[len(found)]:
                found[builder.size] = builder.root()
    return found


def parse_key_option(value: str) -> VerifierKey:
    """`--key`: a vkey's text or a file holding one, as `animus evidence
    verify` takes it.

    Raises:
        ConfigurationError: one line saying what is wrong with the value.
    """
    from animus.evidence.offline import KeyOptionError, key_option

    try:
        return key_option(value)
    except KeyOptionError as exc:
        raise ConfigurationError(str(exc)) from None


def verify_command(
    settings: Settings,
    dsn: str,
    *,
    checkpoints: str | None,
    key: str | VerifierKey | None,
) -> int:
    """Check the database's checkpoints and the copies in `checkpoints`.

    Prints one line; 0 when every checkpoint matches, 1 on a break.

    Raises:
        ConfigurationError: a bad --key or --checkpoints, or no key known.
    """
    from psycopg import AsyncConnection

    from animus.db import translate_db_errors
    from animus.evidence.keys import verifier

    if key is not None:
        vkey = key if isinstance(key, VerifierKey) else parse_key_option(key)
    else:
        configured = verifier(settings)
        if configured is None:
            if checkpoints is not None:
                raise ConfigurationError(
                    "--key: needed to check the checkpoints in "
                    f"{checkpoints} (no verify or signing key is configured here)"
                )
            return _unchecked(dsn)
        vkey = configured
    external = []
    if checkpoints is not None:
        notes = read_checkpoint_file(Path(checkpoints))
        external = [Copy(note=n, source=checkpoints) for n in notes]

    async def check() -> CheckpointReport:
        with translate_db_errors():
            async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
                stored = await _stored_notes(conn)
                return await check_checkpoints(conn, vkey, stored + external)

    report = asyncio.run(check())
    if report.first_break is not None:
        brk = report.first_break
        print(f"checkpoints broken at position {brk.position}: {brk.reason}")
        return 1
    if not report.checked:
        print("checkpoints: none signed yet")
        return 0
    print(
        f"checkpoints verified: {report.checked} signed checkpoints "
        f"({report.sizes} tree sizes, key {report.key_id}), the newest at "
        f"tree size {report.newest}"
    )
    return 0


def _unchecked(dsn: str) -> int:
    """No key here: say so only when there are checkpoints left unchecked."""
    import psycopg

    from animus.db import translate_db_errors

    with translate_db_errors(), psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM checkpoints").fetchone()
    stored = int(row[0]) if row else 0
    if stored:
        print(
            f"checkpoints: {stored} in the database left unchecked: no public key "
            "(pass --key, or set ANIMUS_CHECKPOINT_SIGNING_KEY)"
        )
    return 0
