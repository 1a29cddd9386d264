"""`animus verify` with signed checkpoints, and the CLI's proofs.

The fourth tamper test of issue 3: a database superuser rewrites the chain
consistently from some position on (recomputed hashes, a rebuilt Merkle
tree, the checkpoints deleted). The chain alone still verifies; the copies
of the checkpoints taken from the bus before the rewrite do not, and the
report names the checkpoint and the range the rewrite lies in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from animus import merkle
from animus.bus import Bus, connect_bus
from animus.db import open_pool, with_user
from animus.eventstore import EventStore
from animus.evidence import tree
from animus.evidence.checkpoints import list_checkpoints
from animus.evidence.note import vkey_of
from tests.evidence.evtest import fill, new_database, stored_leaves
from tests.evidence.test_checkpointer import Signer, published, until
from tests.integration.test_eventstore import tamper

if TYPE_CHECKING:
    from tests.conftest import Services

EVENTS = 300
EVERY = 50


class Log:
    """A log of EVENTS events with a checkpoint every EVERY, and its key."""

    def __init__(self, dsn: str, signer: Signer, home: Path) -> None:
        self.dsn = dsn
        self.signer = signer
        self.home = home

    def animus(self, *args: str) -> subprocess.CompletedProcess[str]:
        seed = self.signer.key.private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ANIMUS_")}
        env = {
            **clean,
            "ANIMUS_HOME": str(self.home),
            "ANIMUS_DATABASE_URL": self.dsn,
            "ANIMUS_CHECKPOINT_SIGNING_KEY": base64.b64encode(seed).decode(),
            "ANIMUS_CHECKPOINT_ORIGIN": self.signer.origin,
        }
        return subprocess.run(
            [sys.executable, "-m", "animus", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
async def bus(services: Services) -> AsyncIterator[Bus]:
    bus = await connect_bus(services.nats_url, name="test-verify", wait=10)
    await bus.ensure_streams()
    yield bus
    await bus.close()


@pytest.fixture
async def log(services: Services, bus: Bus, tmp_path: Path) -> AsyncIterator[Log]:
    async with new_database(services) as dsn:
        pool = await open_pool(with_user(dsn, "animus_app"), max_size=4)
        signer = Signer()
        async with EventStore(pool) as store:
            await fill(store, EVENTS)
        async with signer.checkpointer(pool, bus, every_events=EVERY) as running:
            await until(lambda: _published(running, EVENTS))
        await pool.close()
        yield Log(dsn, signer, tmp_path)


async def _published(running: Any, size: int) -> bool:
    return running.published_size >= size


async def rewrite_from(dsn: str, position: int) -> None:
    """As a superuser: forge event `position` and re-chain everything after,
    rebuild the Merkle tree over the forged log and drop the checkpoints."""
    tamper(
        dsn,
        "UPDATE events SET canonical = regexp_replace(canonical, "
        '\'"name":"[^"]*"\', \'"name":"forged"\') '
        f"WHERE position = {position}",
    )
    with psycopg.connect(dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        rows = conn.execute(
            "SELECT position, prev_hash, textsend(canonical) FROM events "
            "WHERE position >= %s ORDER BY position",
            (position,),
        ).fetchall()
        prev = bytes(rows[0][1])
        for pos, _, canonical in rows:
            digest = hashlib.sha256(prev + bytes(canonical)).digest()
            conn.execute(
                "UPDATE events SET prev_hash = %s, hash = %s WHERE position = %s",
                (prev, digest, pos),
            )
            prev = digest
        conn.execute("DELETE FROM merkle_nodes")
        conn.execute("DELETE FROM checkpoints")
        conn.execute("DELETE FROM relay_checkpoints WHERE name = 'merkle'")
        leaves = [
            merkle.leaf_hash(bytes(text))
            for (text,) in conn.execute(
                "SELECT textsend(canonical) FROM events ORDER BY position"
            )
        ]
    await _rebuild_tree(dsn, leaves)


async def _rebuild_tree(dsn: str, leaves: list[bytes]) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        builder = tree.TreeBuilder()
        await builder.load(conn)
        for leaf in leaves:
            builder.append(leaf)
        await builder.flush(conn)


class TestConsistentRewrite:
    async def test_only_the_copies_outside_the_database_catch_a_consistent_rewrite(
        self, log: Log, bus: Bus, tmp_path: Path
    ) -> None:
        copies = tmp_path / "checkpoints.jsonl"
        messages = await published(bus, log.signer.origin)
        copies.write_text("".join(json.dumps(m) + "\n" for m in messages))
        before = log.animus(
            "verify", "--checkpoints", str(copies), "--key", log.signer.vkey
        )
        assert before.returncode == 0, before.stdout + before.stderr
        assert "checkpoints verified: 12 signed checkpoints" in before.stdout

        await rewrite_from(log.dsn, 173)

        chain_only = log.animus("verify")
        assert chain_only.returncode == 0, chain_only.stdout + chain_only.stderr
        assert f"chain verified: {EVENTS} events" in chain_only.stdout
        assert "checkpoints: none signed yet" in chain_only.stdout

        caught = log.animus(
            "verify", "--checkpoints", str(copies), "--key", log.signer.vkey
        )
        assert caught.returncode == 1, caught.stdout + caught.stderr
        key_id = log.signer.vkey.split("+")[1]
        assert caught.stdout.strip().endswith(
            f"checkpoints broken at position 151: checkpoint 200 (key {key_id}) "
            f"from {copies} no longer matches the events: its root hash and chain "
            "head differ; the log was rewritten within positions 151..200 "
            "(checkpoint 150 still matches)"
        ), caught.stdout

    async def test_a_forger_who_left_the_tree_alone_is_caught_by_the_chain_head(
        self, log: Log, bus: Bus, tmp_path: Path
    ) -> None:
        copies = tmp_path / "notes.txt"
        messages = await published(bus, log.signer.origin)
        copies.write_text("".join(m["note"] for m in messages))  # concatenated notes
        tamper(
            log.dsn,
            "UPDATE events SET canonical = regexp_replace(canonical, "
            '\'"name":"[^"]*"\', \'"name":"forged"\') WHERE position = 300',
            "UPDATE events SET hash = sha256(prev_hash || textsend(canonical)) "
            "WHERE position = 300",
        )
        caught = log.animus(
            "verify", "--checkpoints", str(copies), "--key", log.signer.vkey
        )
        assert caught.returncode == 1, caught.stdout + caught.stderr
        assert "checkpoints broken at position 251: checkpoint 300" in caught.stdout
        assert "its chain head differ" in caught.stdout

    async def test_a_copy_signed_by_another_key_is_refused(
        self, log: Log, bus: Bus, tmp_path: Path
    ) -> None:
        copies = tmp_path / "checkpoints.jsonl"
        messages = await published(bus, log.signer.origin)
        copies.write_text("".join(json.dumps(m) + "\n" for m in messages))
        other = vkey_of(Ed25519PrivateKey.generate().public_key(), log.signer.origin)
        done = log.animus("verify", "--checkpoints", str(copies), "--key", other)
        assert done.returncode == 1
        assert "checkpoints broken at position 50: checkpoint 50 from" in done.stdout
        assert "unknown key" in done.stdout


class TestProofsFromTheCli:
    async def test_inclusion_and_consistency_proofs_verify_with_the_reference(
        self, log: Log, tmp_path: Path
    ) -> None:
        latest = log.animus("evidence", "checkpoint", "--json")
        assert latest.returncode == 0, latest.stderr
        checkpoint = json.loads(latest.stdout)
        assert checkpoint["tree_size"] == EVENTS
        key = log.animus("evidence", "key")
        assert key.stdout.strip() == log.signer.vkey

        out = tmp_path / "proof.json"
        done = log.animus(
            "evidence", "prove", "--position", "123", "--output", str(out)
        )
        assert done.returncode == 0, done.stderr
        proof = json.loads(out.read_text())
        async with await psycopg.AsyncConnection.connect(log.dsn) as conn:
            leaves = await stored_leaves(conn)
            stored = {c.tree_size: c for c in await list_checkpoints(conn)}
        assert proof["format"] == "animus-inclusion-proof/v1"
        assert proof["leaf_hash"] == leaves[122].hex()
        assert merkle.verify_inclusion(
            122,
            EVENTS,
            leaves[122],
            [bytes.fromhex(p) for p in proof["path"]],
            bytes.fromhex(checkpoint["root_hash"]),
        )

        done = log.animus(
            "evidence", "consistency", "--first", "150", "--second", "300"
        )
        consistency = json.loads(done.stdout)
        assert consistency["first_root"] == stored[150].root_hash.hex()
        assert merkle.verify_consistency(
            150,
            300,
            stored[150].root_hash,
            stored[300].root_hash,
            [bytes.fromhex(p) for p in consistency["path"]],
        )

    async def test_bad_proof_requests_answer_with_one_line(self, log: Log) -> None:
        beyond = log.animus(
            "evidence", "prove", "--position", "301", "--tree-size", "300"
        )
        assert beyond.returncode == 1
        assert beyond.stderr.strip() == (
            "animus: position 301 is not in the tree of checkpoint 300 "
            "(positions 1..300)"
        )
        unknown = log.animus("evidence", "prove", "--position", "3", "--tree-size", "7")
        assert unknown.returncode == 1
        assert unknown.stderr.strip() == "animus: no checkpoint at tree size 7"
