"""The RFC 9162 Merkle tree over the event order, kept in PostgreSQL.

Leaf i is event position i + 1 (its canonical bytes). `merkle_nodes` holds
the hash of every complete subtree: node (level, idx) covers leaves
[idx * 2^level, (idx + 1) * 2^level). The tree only grows, so a node, once
complete, never changes; `TreeBuilder` appends leaves in order and stores
each node the moment it completes. Level 0 (the leaf hashes) is not stored:
a proof needs at most a couple of leaves, which are hashed again from
`events.canonical`, and leaving them out halves the table (measured in
tests/bench/test_evidence_bench.py).

Any subtree the RFC's recursion visits, [lo, hi), is either a complete node
or a right edge whose hash is the fold of the complete subtrees of its
binary decomposition (largest first). So a tree head or a proof at a
million events reads O(log^2 N) nodes, in one query that reads the stored nodes
and the leaves together. How far the tree is built is row `merkle` of
`relay_checkpoints`, written in the transaction that stores the nodes.

Derived data: a wrong node can only make a proof fail against the signed
tree head, never pass. animus/merkle.py is the reference these functions
are tested against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from animus import merkle
from animus.errors import StoreError, ValidationError

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = [
    "BUILT_NAME",
    "STORED_FROM_LEVEL",
    "TreeBuilder",
    "built_size",
    "consistency_proof",
    "inclusion_proof",
    "root",
    "roots",
]

STORED_FROM_LEVEL = 1  # nodes below this level are hashed again from events
BUILT_NAME = "merkle"  # the relay_checkpoints row: leaves in merkle_nodes

Node = tuple[int, int]  # (level, idx)
Range = tuple[int, int]  # leaves [lo, hi)

_READ_BUILT = "SELECT position FROM relay_checkpoints WHERE name = %s"
_WRITE_BUILT = (
    "INSERT INTO relay_checkpoints (name, position) VALUES (%s, %s) "
    "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position"
)
# stored nodes (level >= 0) and leaves' canonical bytes (level -1), one trip
_READ_NODES = (
    "SELECT n.level, n.idx, n.hash FROM merkle_nodes n "
    "JOIN unnest(%s::smallint[], %s::bigint[]) AS w(level, idx) "
    "ON n.level = w.level AND n.idx = w.idx "
    "UNION ALL SELECT -1, position - 1, textsend(canonical) FROM events "
    "WHERE position = ANY(%s)"
)


async def built_size(conn: AsyncConnection[Any]) -> int:
    """How many leaves `merkle_nodes` holds (0 before the first build)."""
    cur = await conn.execute(_READ_BUILT, (BUILT_NAME,))
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


def decompose(lo: int, hi: int) -> list[Node]:
    """The complete subtrees of [lo, hi), largest first.

    `lo` must be aligned as the RFC's recursion aligns it: a multiple of
    the smallest power of two at least hi - lo.
    """
    nodes: list[Node] = []
    size = hi - lo
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            nodes.append((level, lo >> level))
            lo += 1 << level
    return nodes


def _split(n: int) -> int:
    """The largest power of two smaller than `n` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _path(m: int, lo: int, hi: int) -> list[Range]:
    """The ranges of PATH(m, D[lo:hi]) (RFC 9162 2.1.3.1), bottom first."""
    ranges: list[Range] = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def _subproof(m: int, lo: int, hi: int) -> list[Range]:
    """The ranges of PROOF(m, D[lo:hi]) (RFC 9162 2.1.4.1), bottom first."""
    ranges: list[Range] = []
    complete = True
    while m != hi:
        k = _split(hi - lo)
        if m <= lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
            complete = False
    if not complete:  # the old tree's root is not a node of this proof's path
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


async def _hashes(conn: AsyncConnection[Any], ranges: Sequence[Range]) -> list[bytes]:
    """MTH of every range, from stored nodes and re-hashed leaves."""
    plans = [decompose(lo, hi) for lo, hi in ranges]
    wanted = {node for plan in plans for node in plan}
    known = await _nodes(conn, wanted)
    hashes = []
    for plan in plans:
        parts = [known[node] for node in plan]
        acc = parts[-1]
        for part in reversed(parts[:-1]):
            acc = merkle.node_hash(part, acc)
        hashes.append(acc)
    return hashes


async def _nodes(
    conn: AsyncConnection[Any], wanted: Iterable[Node]
) -> dict[Node, bytes]:
    """Read the stored nodes of `wanted` and hash the small ones from events.

    Raises:
        StoreError: a node is not built yet (the checkpointer is behind).
    """
    stored = [n for n in wanted if n[0] >= STORED_FROM_LEVEL]
    small = [n for n in wanted if n[0] < STORED_FROM_LEVEL]
    leaves = sorted({i for level, idx in small for i in _leaves_of(level, idx)})
    known: dict[Node, bytes] = {}
    leaf: dict[int, bytes] = {}
    if stored or leaves:
        cur = await conn.execute(
            _READ_NODES,
            ([n[0] for n in stored], [n[1] for n in stored], [i + 1 for i in leaves]),
        )
        for level, idx, value in await cur.fetchall():
            if level < 0:
                leaf[int(idx)] = merkle.leaf_hash(bytes(value))
            else:
                known[(int(level), int(idx))] = bytes(value)
    for level, idx in small:
        span = _leaves_of(level, idx)
        if all(i in leaf for i in span):
            known[(level, idx)] = merkle.root([leaf[i] for i in span])
    missing = [n for n in wanted if n not in known]
    if missing:
        level, idx = min(missing, key=lambda n: (n[1] + 1) << n[0])
        raise StoreError(
            f"the Merkle tree is not built up to position {(idx + 1) << level}"
        )
    return known


def _leaves_of(level: int, idx: int) -> range:
    return range(idx << level, (idx + 1) << level)


def _check_size(tree_size: int, what: str) -> None:
    if tree_size < 1:
        raise ValidationError(f"{what} must be at least 1", field=what)


async def root(conn: AsyncConnection[Any], tree_size: int) -> bytes:
    """The tree head over positions 1..tree_size (MTH of the empty tree at 0)."""
    if tree_size == 0:
        return merkle.EMPTY_ROOT
    _check_size(tree_size, "tree_size")
    return (await _hashes(conn, [(0, tree_size)]))[0]


async def roots(conn: AsyncConnection[Any], sizes: Iterable[int]) -> dict[int, bytes]:
    """The tree heads of many sizes (each at least 1), in two queries."""
    wanted = sorted(set(sizes))
    for size in wanted:
        _check_size(size, "tree_size")
    heads = await _hashes(conn, [(0, size) for size in wanted])
    return dict(zip(wanted, heads, strict=True))


async def inclusion_proof(
    conn: AsyncConnection[Any], leaf_index: int, tree_size: int
) -> list[bytes]:
    """The audit path of leaf `leaf_index` (position leaf_index + 1).

    Raises:
        ValidationError: the leaf is not in a tree of `tree_size`.
        StoreError: the tree is not built that far.
    """
    if not 0 <= leaf_index < tree_size:
        raise ValidationError(
            f"position {leaf_index + 1} is not in a tree of {tree_size} events",
            field="position",
        )
    return await _hashes(conn, _path(leaf_index, 0, tree_size))


async def consistency_proof(
    conn: AsyncConnection[Any], first: int, second: int
) -> list[bytes]:
    """PROOF(first, D[second]): the tree of `first` leaves is a prefix.

    Raises:
        ValidationError: `first` is not between 1 and `second`.
        StoreError: the tree is not built that far.
    """
    if not 0 < first <= second:
        raise ValidationError(
            f"no consistency proof from {first} to {second} events: "
            "first must be between 1 and second",
            field="first",
        )
    return await _hashes(conn, _subproof(first, 0, second))


class TreeBuilder:
    """Appends leaves in order and stores every node that completes.

    It keeps the right edge of the tree (the complete subtrees of [0,
    size)) in memory, so appending a leaf costs one hash per node it
    completes. Load it with `load`, feed it with `append`, and write what
    completed with `flush` in the caller's transaction.
    """

    def __init__(self) -> None:
        self.size = 0
        self._edge: list[tuple[int, bytes]] = []  # (level, hash), largest first
        self._pending: list[tuple[int, int, bytes]] = []

    async def load(self, conn: AsyncConnection[Any]) -> None:
        """Resume at the stored size, reading its right edge."""
        size = await built_size(conn)
        plan = decompose(0, size)
        known = await _nodes(conn, plan)
        self.size = size
        self._edge = [(level, known[(level, idx)]) for level, idx in plan]
        self._pending = []

    def append(self, leaf: bytes) -> None:
        """Add the next leaf's hash (merkle.leaf_hash of its canonical bytes)."""
        level, digest = 0, leaf
        index = self.size
        if STORED_FROM_LEVEL == 0:
            self._pending.append((0, index, leaf))
        while self._edge and self._edge[-1][0] == level:
            _, left = self._edge.pop()
            digest = merkle.node_hash(left, digest)
            level += 1
            index >>= 1
            if level >= STORED_FROM_LEVEL:
                self._pending.append((level, index, digest))
        self._edge.append((level, digest))
        self.size += 1

    def root(self) -> bytes:
        """The tree head at the current size."""
        if not self._edge:
            return merkle.EMPTY_ROOT
        acc = self._edge[-1][1]
        for _, digest in reversed(self._edge[:-1]):
            acc = merkle.node_hash(digest, acc)
        return acc

    async def flush(self, conn: AsyncConnection[Any]) -> int:
        """Store the completed nodes and the new size; the nodes written."""
        pending, self._pending = self._pending, []
        if pending:
            async with conn.cursor().copy(
                "COPY merkle_nodes (level, idx, hash) FROM STDIN"
            ) as copy:
                for row in pending:
                    await copy.write_row(row)
        await conn.execute(_WRITE_BUILT, (BUILT_NAME, self.size))
        return len(pending)
