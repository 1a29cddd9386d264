"""C11: an idempotency key is bound to one caller and one request."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from gwtest import ALICE, BOB, Client, Head, create_project, new_id, upload

from gateway import idempotency
from gateway.errors import IdempotencyKeyInProgress
from gateway.idempotency import RequestIdentity
from gateway.services import GatewayServices

TRAIN = {"name": "train", "command": ["python", "train.py"], "parameters": {"lr": 0.01}}


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def submit(
    client: Client, project_id: str, body: object, headers: dict[str, str]
) -> object:
    return await client.post(f"/projects/{project_id}/runs", json=body, headers=headers)


class TestReplay:
    async def test_the_same_request_replays_and_appends_nothing(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        key = new_id("k")
        first = await submit(client, project_id, TRAIN, keyed(ALICE, key))
        assert first.status_code == 201, first.text
        assert "idempotency-replayed" not in first.headers
        before = await head()

        second = await submit(client, project_id, TRAIN, keyed(ALICE, key))
        assert second.status_code == 201
        assert second.content == first.content
        assert second.headers["idempotency-replayed"] == "true"
        assert await head() == before

    async def test_reordered_keys_and_whitespace_are_the_same_request(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        key = new_id("k")
        first = await submit(client, project_id, TRAIN, keyed(ALICE, key))
        before = await head()
        reordered = json.dumps(dict(reversed(list(TRAIN.items()))), indent=7)
        second = await client.post(
            f"/projects/{project_id}/runs",
            content=reordered.encode(),
            headers={**keyed(ALICE, key), "Content-Type": "application/json"},
        )
        assert second.status_code == 201
        assert second.content == first.content
        assert second.headers["idempotency-replayed"] == "true"
        assert await head() == before

    async def test_without_a_key_each_request_runs(self, client: Client) -> None:
        project_id = await create_project(client)
        first = await submit(client, project_id, TRAIN, ALICE)
        second = await submit(client, project_id, TRAIN, ALICE)
        assert first.json()["run_id"] != second.json()["run_id"]


class TestMismatch:
    async def test_another_body_is_422_and_appends_nothing(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        key = new_id("k")
        await submit(client, project_id, TRAIN, keyed(ALICE, key))
        before = await head()
        other = {**TRAIN, "parameters": {"lr": 0.1}}
        answer = await submit(client, project_id, other, keyed(ALICE, key))
        assert answer.status_code == 422
        assert "idempotency key mismatch" in answer.json()["detail"]
        assert await head() == before

    async def test_another_route_is_422(self, client: Client, head: Head) -> None:
        project_id = await create_project(client)
        key = new_id("k")
        await submit(client, project_id, TRAIN, keyed(ALICE, key))
        before = await head()
        answer = await client.post(
            f"/projects/{project_id}/datasets",
            json={"dataset_id": new_id("d"), "name": "D"},
            headers=keyed(ALICE, key),
        )
        assert answer.status_code == 422
        assert answer.json()["type"].endswith("idempotency-key-mismatch")
        assert await head() == before

    async def test_another_project_is_422(self, client: Client, head: Head) -> None:
        project_id = await create_project(client)
        other_project = await create_project(client)
        key = new_id("k")
        await submit(client, project_id, TRAIN, keyed(ALICE, key))
        before = await head()
        answer = await submit(client, other_project, TRAIN, keyed(ALICE, key))
        assert answer.status_code == 422
        assert await head() == before

    async def test_a_malformed_key_is_400(self, client: Client) -> None:
        project_id = await create_project(client)
        answer = await submit(client, project_id, TRAIN, keyed(ALICE, "k" * 300))
        assert answer.status_code == 400


class TestKeySpaces:
    async def test_another_principal_has_its_own_key_space(
        self, client: Client
    ) -> None:
        project_id = await create_project(client)
        key = new_id("k")
        alice = await submit(client, project_id, TRAIN, keyed(ALICE, key))
        bob = await submit(client, project_id, TRAIN, keyed(BOB, key))
        assert bob.status_code == 201
        assert "idempotency-replayed" not in bob.headers
        assert bob.json()["run_id"] != alice.json()["run_id"]


class TestConcurrency:
    async def test_two_simultaneous_requests_run_exactly_once(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        key = new_id("k")
        bodies = [TRAIN, {**TRAIN, "parameters": {"lr": 0.5}}]
        answers = await asyncio.gather(
            *(submit(client, project_id, body, keyed(ALICE, key)) for body in bodies)
        )
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses in ([201, 409], [201, 422])
        runs = await client.get(f"/projects/{project_id}/runs", headers=ALICE)
        assert len(runs.json()["items"]) == 1

        winner = next(answer for answer in answers if answer.status_code == 201)
        winning_body = bodies[answers.index(winner)]
        again = await submit(client, project_id, winning_body, keyed(ALICE, key))
        assert again.content == winner.content


class TestRelease:
    async def test_a_failed_request_frees_its_key_for_a_retry(
        self, client: Client
    ) -> None:
        project_id = await create_project(client)
        key = new_id("k")
        missing = {**TRAIN, "inputs": {"data": {"dataset": "nope", "version": 1}}}
        failed = await submit(client, project_id, missing, keyed(ALICE, key))
        assert failed.status_code in (404, 409, 422)
        retried = await submit(client, project_id, TRAIN, keyed(ALICE, key))
        assert retried.status_code == 201
        assert "idempotency-replayed" not in retried.headers


class TestUploads:
    async def test_the_same_upload_replays_without_a_second_version(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        dataset = await client.post(
            f"/projects/{project_id}/datasets",
            json={"dataset_id": "d1", "name": "D"},
            headers=ALICE,
        )
        assert dataset.status_code == 201
        key = new_id("k")
        first = await upload(client, project_id, "d1", b"a,b\n1,2\n", **{
            "Idempotency-Key": key
        })
        assert first.status_code == 201, first.text
        before = await head()
        second = await upload(client, project_id, "d1", b"a,b\n1,2\n", **{
            "Idempotency-Key": key
        })
        assert second.status_code == 201
        assert second.headers["idempotency-replayed"] == "true"
        assert second.content == first.content

        other = await upload(client, project_id, "d1", b"other\n", **{
            "Idempotency-Key": key
        })
        assert other.status_code == 422
        assert await head() == before
        versions = await client.get(
            f"/projects/{project_id}/datasets/d1/versions", headers=ALICE
        )
        assert [v["version"] for v in versions.json()["items"]] == [1]


class TestLease:
    """A claim is a lease renewed while its request runs (C08 variant C: a
    gateway killed mid-request must not hold the key for long)."""

    def identity(self) -> RequestIdentity:
        return RequestIdentity(
            principal="user:alice",
            key=new_id("k"),
            method="POST",
            path="/projects/p/runs",
            fingerprint="f" * 64,
        )

    async def test_a_claim_its_request_stopped_renewing_is_taken_over(
        self, gateway_services: GatewayServices
    ) -> None:
        store = gateway_services.idempotency
        dead = self.identity()
        assert await store.claim(dead) is None  # claimed, then the process died
        with pytest.raises(IdempotencyKeyInProgress):
            await store.claim(dead)
        async with gateway_services.pool.connection() as conn:
            await conn.execute(
                "UPDATE idempotency_keys SET created_at = now() - %s "
                "WHERE key = %s",
                (idempotency.CLAIM_LEASE + timedelta(seconds=1), dead.key),
            )
        assert await store.claim(dead) is None  # the retry owns it now

    async def test_a_request_outliving_the_lease_keeps_its_claim(
        self, gateway_services: GatewayServices, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(idempotency, "CLAIM_LEASE", timedelta(seconds=1))
        monkeypatch.setattr(idempotency, "CLAIM_RENEW", timedelta(seconds=0.2))
        store = gateway_services.idempotency
        request = self.identity()
        assert await store.claim(request) is None
        refused: list[Exception] = []

        async def slow() -> bytes:
            for _ in range(6):  # 1.8 s, well past the 1 s lease
                await asyncio.sleep(0.3)
                try:
                    await store.claim(request)
                except IdempotencyKeyInProgress as exc:
                    refused.append(exc)
            return b"{}"

        assert await idempotency.run_claimed(store, request, slow) == b"{}"
        assert len(refused) == 6  # no one took the key over meanwhile
