"""The evidence routes: the public key, pages of signed checkpoints, and
proofs that verify with the reference (animus/merkle.py) and the key alone;
bad requests answer with RFC 9457 problems."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from animus import merkle
from animus.db import open_pool, with_user
from animus.eventstore import EventStore
from animus.evidence.note import verify_checkpoint
from animus.settings import load_settings
from gateway.app import create_app
from gateway.services import open_services
from tests.evidence.evtest import fill, stored_leaves
from tests.evidence.test_checkpointer import Signer, until

if TYPE_CHECKING:
    from tests.conftest import Services

EVENTS = 130
TOKEN = "evidence-token"


@pytest.fixture(scope="module")
async def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
async def leaves(fresh_database: str, signer: Signer) -> list[bytes]:
    """EVENTS events with checkpoints at 50 and 100, and their leaf hashes."""
    pool = await open_pool(with_user(fresh_database, "animus_app"), max_size=2)
    async with EventStore(pool) as store:
        await fill(store, EVENTS)
    async with signer.checkpointer(pool, None, every_events=50) as running:
        await until(lambda: _built(running, EVENTS))
    async with pool.connection() as conn:
        found = await stored_leaves(conn)
    await pool.close()
    return found


async def _built(running: Any, size: int) -> bool:
    return running.built_size >= size


@pytest.fixture(scope="module")
async def client(
    services: Services,
    fresh_database: str,
    signer: Signer,
    leaves: list[bytes],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    seed = signer.key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    home: Path = tmp_path_factory.mktemp("evidence-home")
    settings = load_settings(
        environment="test",
        home=home,
        database_url=fresh_database,
        nats_url=services.nats_url,
        s3_endpoint=services.s3_endpoint,
        s3_access_key=services.s3_access_key,
        s3_secret_key=services.s3_secret_key,
        s3_bucket=f"ev-{secrets.token_hex(4)}",
        dev_tokens={TOKEN: "auditor"},
        personal_data_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        checkpoint_signing_key=base64.b64encode(seed).decode(),
        checkpoint_origin=signer.origin,
    )
    async with open_services(settings) as opened:
        app = create_app(settings, services=opened)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as test_client:
            yield test_client


def hashes(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


class TestKeyAndCheckpoints:
    async def test_the_key_verifies_the_latest_checkpoint(
        self, client: httpx.AsyncClient, signer: Signer, leaves: list[bytes]
    ) -> None:
        key = (await client.get("/evidence/key")).json()
        assert key == {
            "vkey": signer.vkey,
            "key_id": signer.vkey.split("+")[1],
            "algorithm": "ed25519",
            "origin": signer.origin,
        }
        latest = (await client.get("/evidence/checkpoints/latest")).json()
        checkpoint = verify_checkpoint(latest["note"], key["vkey"])
        assert checkpoint.tree_size == latest["tree_size"] == 100
        assert checkpoint.root_hash == merkle.root(leaves[:100])

    async def test_checkpoints_page_newest_first(
        self, client: httpx.AsyncClient
    ) -> None:
        first = (await client.get("/evidence/checkpoints", params={"limit": 1})).json()
        assert [c["tree_size"] for c in first["items"]] == [100]
        assert first["next_before"] == 100
        rest = await client.get(
            "/evidence/checkpoints", params={"limit": 1, "before": 100}
        )
        assert [c["tree_size"] for c in rest.json()["items"]] == [50]
        one = await client.get("/evidence/checkpoints/50")
        assert one.json()["tree_size"] == 50

    async def test_an_unknown_checkpoint_is_a_404_problem(
        self, client: httpx.AsyncClient
    ) -> None:
        answer = await client.get("/evidence/checkpoints/51")
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["detail"] == "no checkpoint at tree size 51"

    async def test_without_a_token_nothing_is_served(
        self, client: httpx.AsyncClient
    ) -> None:
        answer = await client.get("/evidence/key", headers={"Authorization": ""})
        assert answer.status_code == 401


class TestProofs:
    @pytest.mark.parametrize(("position", "size"), [(1, 100), (37, 50), (100, 100)])
    async def test_an_inclusion_proof_verifies_with_the_reference(
        self, client: httpx.AsyncClient, leaves: list[bytes], position: int, size: int
    ) -> None:
        answer = await client.get(
            "/evidence/proofs/inclusion",
            params={"position": position, "tree_size": size},
        )
        assert answer.status_code == 200, answer.text
        proof = answer.json()
        assert proof["leaf_hash"] == leaves[position - 1].hex()
        assert merkle.verify_inclusion(
            position - 1,
            size,
            leaves[position - 1],
            hashes(proof["path"]),
            merkle.root(leaves[:size]),
        )

    async def test_the_default_is_the_latest_checkpoint(
        self, client: httpx.AsyncClient
    ) -> None:
        answer = await client.get("/evidence/proofs/inclusion", params={"position": 9})
        assert answer.json()["tree_size"] == 100

    async def test_a_consistency_proof_verifies_with_the_reference(
        self, client: httpx.AsyncClient, leaves: list[bytes]
    ) -> None:
        answer = await client.get(
            "/evidence/proofs/consistency", params={"first": 50, "second": 100}
        )
        proof = answer.json()
        assert merkle.verify_consistency(
            50,
            100,
            merkle.root(leaves[:50]),
            merkle.root(leaves[:100]),
            hashes(proof["path"]),
        )

    async def test_a_position_beyond_the_tree_is_a_422_problem(
        self, client: httpx.AsyncClient
    ) -> None:
        answer = await client.get(
            "/evidence/proofs/inclusion", params={"position": 51, "tree_size": 50}
        )
        assert answer.status_code == 422
        assert "position 51 is not in the tree of checkpoint 50" in answer.text

    @pytest.mark.parametrize(
        ("params", "status"),
        [
            ({"position": 3, "tree_size": 77}, 404),
            ({"position": 0}, 400),
            ({"position": "x"}, 400),
        ],
    )
    async def test_bad_inclusion_requests_are_problems(
        self, client: httpx.AsyncClient, params: dict[str, Any], status: int
    ) -> None:
        answer = await client.get("/evidence/proofs/inclusion", params=params)
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")

    async def test_a_reversed_consistency_request_is_a_422_problem(
        self, client: httpx.AsyncClient
    ) -> None:
        answer = await client.get(
            "/evidence/proofs/consistency", params={"first": 100, "second": 50}
        )
        assert answer.status_code == 422
