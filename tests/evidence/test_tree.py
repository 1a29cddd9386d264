"""The Merkle tree kept in PostgreSQL against the pure reference
(animus/merkle.py): the same heads and proofs at every size, proofs that
verify, built in any chunking, and reading only O(log^2 N) nodes."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from animus import merkle
from animus.db import open_pool, with_user
from animus.errors import StoreError, ValidationError
from animus.eventstore import EventStore
from animus.evidence import tree
from tests.evidence.evtest import fill, stored_leaves

EVENTS = 300


@pytest.fixture(scope="module")
async def pool(fresh_database: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = await open_pool(with_user(fresh_database, "animus_app"), max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def leaves(pool: AsyncConnectionPool) -> list[bytes]:
    """EVENTS events, and the tree built over them in uneven chunks."""
    async with EventStore(pool) as store:
        await fill(store, EVENTS, batch=37)
    chunks = random.Random(7)
    async with pool.connection() as conn:
        builder = tree.TreeBuilder()
        await builder.load(conn)
        leaves = await stored_leaves(conn)
        while builder.size < len(leaves):
            step = chunks.randint(1, 40)
            async with conn.transaction():
                for leaf in leaves[builder.size : builder.size + step]:
                    builder.append(leaf)
                await builder.flush(conn)
            # a fresh builder resumes where the stored one stopped
            builder = tree.TreeBuilder()
            await builder.load(conn)
    return leaves


PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


class TestHeadsAndProofs:
    async def test_the_tree_is_built_to_the_last_event(
        self, pool: AsyncConnectionPool, leaves: list[bytes]
    ) -> None:
        async with pool.connection() as conn:
            assert await tree.built_size(conn) == EVENTS
            assert await tree.root(conn, EVENTS) == merkle.root(leaves)
            assert await tree.root(conn, 0) == merkle.EMPTY_ROOT

    @PROPERTY
    @given(data=st.data())
    async def test_inclusion_proofs_equal_the_reference_and_verify(
        self, pool: AsyncConnectionPool, leaves: list[bytes], data: Any
    ) -> None:
        size = data.draw(st.integers(1, EVENTS), label="tree_size")
        index = data.draw(st.integers(0, size - 1), label="leaf_index")
        async with pool.connection() as conn:
            head = await tree.root(conn, size)
            proof = await tree.inclusion_proof(conn, index, size)
        assert head == merkle.root(leaves[:size])
        assert proof == merkle.inclusion_proof(index, leaves[:size])
        assert merkle.verify_inclusion(index, size, leaves[index], proof, head)

    @PROPERTY
    @given(data=st.data())
    async def test_consistency_proofs_equal_the_reference_and_verify(
        self, pool: AsyncConnectionPool, leaves: list[bytes], data: Any
    ) -> None:
        second = data.draw(st.integers(1, EVENTS), label="second")
        first = data.draw(st.integers(1, second), label="first")
        async with pool.connection() as conn:
            proof = await tree.consistency_proof(conn, first, second)
            old, new = await tree.root(conn, first), await tree.root(conn, second)
        assert proof == merkle.consistency_proof(first, leaves[:second])
        assert merkle.verify_consistency(first, second, old, new, proof)

    async def test_every_power_of_two_edge_matches(
        self, pool: AsyncConnectionPool, leaves: list[bytes]
    ) -> None:
        sizes = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 256, 257}
        async with pool.connection() as conn:
            for size in sorted(s for s in sizes if s <= EVENTS):
                for index in {0, size // 2, size - 1}:
                    proof = await tree.inclusion_proof(conn, index, size)
                    assert proof == merkle.inclusion_proof(index, leaves[:size])


class TestRefusals:
    async def test_a_position_beyond_the_tree_is_refused(
        self, pool: AsyncConnectionPool, leaves: list[bytes]
    ) -> None:
        async with pool.connection() as conn:
            with pytest.raises(ValidationError, match="position 11 is not in"):
                await tree.inclusion_proof(conn, 10, 10)
            with pytest.raises(ValidationError, match="from 0 to 5"):
                await tree.consistency_proof(conn, 0, 5)

    async def test_a_size_not_built_yet_names_where_the_tree_ends(
        self, pool: AsyncConnectionPool, leaves: list[bytes]
    ) -> None:
        async with pool.connection() as conn:
            with pytest.raises(StoreError, match="not built up to position"):
                await tree.root(conn, EVENTS + 8)


class TestBuilder:
    def test_the_in_memory_head_follows_the_reference_leaf_by_leaf(self) -> None:
        builder = tree.TreeBuilder()
        hashes = [merkle.leaf_hash(str(i).encode()) for i in range(130)]
        for n, leaf in enumerate(hashes, start=1):
            builder.append(leaf)
            assert builder.root() == merkle.root(hashes[:n])

    def test_a_proof_reads_log_squared_nodes_at_a_million(self) -> None:
        size = 1_000_000
        for index in (0, 123_456, size - 1):
            ranges = tree._path(index, 0, size)
            nodes = {n for lo, hi in ranges for n in tree.decompose(lo, hi)}
            assert len(ranges) <= 20
            assert len(nodes) <= 20 * 20
