"""Helpers shared by the gateway tests: tokens, ids and common requests."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}
TOKENS = {"alice-token": "alice", "bob-token": "bob"}
PERSONAL_DATA_KEY = base64.b64encode(secrets.token_bytes(32)).decode()
"""The tests' key-encryption key for personal data (never a file in the repo)."""
Client = httpx.AsyncClient


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def create_project(client: Client) -> str:
    project_id = new_id("p")
    answer = await client.post(
        "/projects", json={"project_id": project_id, "name": "P"}, headers=ALICE
    )
    assert answer.status_code == 201, answer.text
    return project_id


async def register_dataset(client: Client, project_id: str) -> str:
    dataset_id = new_id("d")
    answer = await client.post(
        f"/projects/{project_id}/datasets",
        json={"dataset_id": dataset_id, "name": "D"},
        headers=ALICE,
    )
    assert answer.status_code == 201, answer.text
    return dataset_id


async def upload(
    client: Client,
    project_id: str,
    dataset_id: str,
    content: bytes,
    **headers: str,
) -> Any:
    return await client.post(
        f"/projects/{project_id}/datasets/{dataset_id}/versions",
        content=content,
        headers={**ALICE, "Content-Type": "text/csv", **headers},
    )


Head = Callable[[], Awaitable[int]]
"""The events head position; unchanged after a refused request."""
