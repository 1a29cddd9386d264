"""Reads `as_of` a past point: the past answer, the position header, the
AUDIT_READ check, and problem details for an `as_of` that names no point."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from gwtest import ALICE, Client, create_project, register_dataset, upload

from gateway.asof import AS_OF_HEADER, require_permission
from gateway.auth import Permission, Principal
from gateway.errors import PermissionDenied
from gateway.services import GatewayServices
from projections.asof import snapshots


async def test_a_read_as_of_a_past_position_answers_the_past(
    client: Client, head: Any
) -> None:
    project_id = await create_project(client)
    before = await head()
    dataset_id = await register_dataset(client, project_id)
    answer = await upload(client, project_id, dataset_id, b"a,b\n1,2\n")
    assert answer.status_code == 201, answer.text
    datasets = f"/projects/{project_id}/datasets"

    past = await client.get(datasets, params={"as_of": before}, headers=ALICE)
    now = await client.get(datasets, headers=ALICE)

    assert past.status_code == 200, past.text
    assert past.json()["items"] == []
    assert past.headers[AS_OF_HEADER] == str(before)
    assert [d["dataset_id"] for d in now.json()["items"]] == [dataset_id]
    assert AS_OF_HEADER not in now.headers

    registered = before + 1
    dataset = await client.get(
        f"{datasets}/{dataset_id}", params={"as_of": registered}, headers=ALICE
    )
    assert dataset.status_code == 200, dataset.text
    assert dataset.json()["latest_version"] == 0
    assert dataset.headers[AS_OF_HEADER] == str(registered)
    missing = await client.get(
        f"{datasets}/{dataset_id}/versions/1",
        params={"as_of": registered},
        headers=ALICE,
    )
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


async def test_an_instant_resolves_to_a_position_named_in_the_header(
    client: Client, head: Any
) -> None:
    project_id = await create_project(client)
    at = await head()
    await asyncio.sleep(0.05)
    instant = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await register_dataset(client, project_id)

    answer = await client.get(
        f"/projects/{project_id}/datasets",
        params={"as_of": instant.isoformat()},
        headers=ALICE,
    )

    assert answer.status_code == 200, answer.text
    assert answer.headers[AS_OF_HEADER] == str(at)
    assert answer.json()["items"] == []


async def test_a_project_not_yet_created_is_not_found_as_of_then(
    client: Client, head: Any
) -> None:
    before = await head()
    project_id = await create_project(client)

    answer = await client.get(
        f"/projects/{project_id}", params={"as_of": before}, headers=ALICE
    )
    assert answer.status_code == 404
    listed = await client.get("/projects", params={"as_of": before}, headers=ALICE)
    assert project_id not in [p["project_id"] for p in listed.json()["items"]]


@pytest.mark.parametrize(
    ("as_of", "status", "words"),
    [
        ("yesterday", 400, "neither a position nor an RFC 3339 timestamp"),
        ("2025-01-01T00:00:00", 400, "has no time zone"),
        ("0", 422, "before the first event"),
        ("-1", 422, "position -1 is negative"),
        ("-5", 422, "position -5 is negative"),
        ("999999999", 422, "beyond the head of the log"),
        ("2999-01-01T00:00:00Z", 422, "is in the future"),
        ("1990-01-01T00:00:00Z", 422, "before the first event"),
    ],
)
async def test_an_as_of_that_names_no_point_is_a_problem(
    client: Client, as_of: str, status: int, words: str
) -> None:
    await create_project(client)
    for path in ("/projects", "/projects/nope/runs/nope/timeline"):
        answer = await client.get(path, params={"as_of": as_of}, headers=ALICE)

        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        problem = answer.json()
        assert problem["status"] == status
        assert words in problem["detail"]
        assert problem["detail"].startswith("as_of: ")


async def test_a_negative_as_of_builds_no_snapshot(
    client: Client, gateway_services: GatewayServices
) -> None:
    await create_project(client)
    kept = await snapshots(gateway_services.pool)

    answer = await client.get("/projects", params={"as_of": "-1"}, headers=ALICE)

    assert answer.status_code == 422, answer.text
    assert AS_OF_HEADER not in answer.headers
    assert answer.json()["errors"] == [
        {"field": "as_of", "message": answer.json()["detail"]}
    ]
    assert await snapshots(gateway_services.pool) == kept


async def test_as_of_needs_a_token_like_any_read(client: Client) -> None:
    answer = await client.get("/projects", params={"as_of": "1"})
    assert answer.status_code == 401


def test_a_principal_without_audit_read_is_refused() -> None:
    class Narrow(Principal):
        pass

    narrow = Narrow(name="carol")
    object.__setattr__(narrow, "permissions", frozenset({Permission.PROJECT_READ}))

    with pytest.raises(PermissionDenied, match="audit:read"):
        require_permission(narrow, Permission.AUDIT_READ)
    require_permission(narrow, Permission.PROJECT_READ)
    require_permission(Principal(name="dev"), Permission.AUDIT_READ)  # dev: all
