"""The Merkle tree of RFC 9162 over the event order: roots against the
published test vectors, and every inclusion and consistency proof checked
both ways (it verifies; any change to it, or a wrong claim, does not)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from animus.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# The eight leaves of Certificate Transparency's reference test vectors,
# and the tree heads over their first 1..8.
VECTOR_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
VECTOR_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(f"event {i}".encode()) for i in range(n)]


def flipped(digest: bytes) -> bytes:
    return bytes([digest[0] ^ 1]) + digest[1:]


def test_the_empty_tree_is_the_hash_of_nothing() -> None:
    assert root([]) == EMPTY_ROOT
    assert EMPTY_ROOT.hex().startswith("e3b0c442")


@pytest.mark.parametrize("n", range(1, 9))
def test_tree_heads_match_the_reference_vectors(n: int) -> None:
    hashes = [leaf_hash(leaf) for leaf in VECTOR_LEAVES[:n]]
    assert root(hashes).hex() == VECTOR_ROOTS[n - 1]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1)))
)
def test_every_inclusion_proof_verifies_and_nothing_else_does(
    case: tuple[int, int],
) -> None:
    n, index = case
    tree = leaves(n)
    head = root(tree)
    proof = inclusion_proof(index, tree)

    assert len(proof) <= (math.ceil(math.log2(n)) if n > 1 else 0)
    assert verify_inclusion(index, n, tree[index], proof, head)
    assert not verify_inclusion(index, n, flipped(tree[index]), proof, head)
    assert not verify_inclusion(index, n, tree[index], proof, flipped(head))
    if proof:
        assert not verify_inclusion(
            index, n, tree[index], [flipped(proof[0]), *proof[1:]], head
        )
        assert not verify_inclusion(index, n, tree[index], proof[:-1], head)
    if n > 1:
        other = (index + 1) % n
        assert not verify_inclusion(other, n, tree[index], proof, head)
    assert not verify_inclusion(n, n, tree[index], proof, head)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_every_consistency_proof_verifies_and_nothing_else_does(
    case: tuple[int, int],
) -> None:
    m, n = case
    tree = leaves(n)
    old, new = root(tree[:m]), root(tree)
    proof = consistency_proof(m, tree)

    assert verify_consistency(m, n, old, new, proof)
    assert not verify_consistency(m, n, flipped(old), new, proof)
    assert not verify_consistency(m, n, old, flipped(new), proof)
    if proof:
        assert not verify_consistency(m, n, old, new, [*proof[:-1], flipped(proof[-1])])
    if m < n:
        # a rewritten history: the old head over other leaves
        forged = root([flipped(leaf) for leaf in tree[:m]])
        assert not verify_consistency(m, n, forged, new, proof)


def test_proof_size_grows_with_log_n() -> None:
    tree = leaves(4096)
    assert len(inclusion_proof(1234, tree)) == 12
    assert len(consistency_proof(1000, tree)) <= 2 * 12


@pytest.mark.parametrize(("index", "size"), [(-1, 4), (4, 4)])
def test_a_leaf_outside_the_tree_has_no_proof(index: int, size: int) -> None:
    with pytest.raises(ValueError):
        inclusion_proof(index, leaves(size))


@pytest.mark.parametrize(("m", "n"), [(0, 4), (5, 4)])
def test_no_consistency_proof_outside_the_tree(m: int, n: int) -> None:
    with pytest.raises(ValueError):
        consistency_proof(m, leaves(n))
