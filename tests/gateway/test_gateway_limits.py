"""C13: NUL, lone surrogates, odd text and oversized or deep bodies.

Every refusal happens before a side effect: the events head does not move.
"""

from __future__ import annotations

import json

import pytest
from gwtest import ALICE, Client, Head, create_project, new_id

from gateway.limits import MAX_JSON_DEPTH, check_nesting


def dataset_body(**fields: object) -> dict[str, object]:
    return {"dataset_id": new_id("d"), "name": "D", **fields}


async def post_raw(client: Client, path: str, body: bytes) -> object:
    return await client.post(
        path, content=body, headers={**ALICE, "Content-Type": "application/json"}
    )


class TestTextFields:
    async def test_a_nul_in_a_description_is_422_and_appends_nothing(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        before = await head()
        answer = await client.post(
            f"/projects/{project_id}/datasets",
            json=dataset_body(description="col\u0000umn"),
            headers=ALICE,
        )
        assert answer.status_code == 422
        assert answer.json()["errors"][0]["field"] == "description"
        assert await head() == before

    async def test_a_lone_surrogate_is_refused_and_appends_nothing(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        before = await head()
        body = b'{"dataset_id": "d-x", "name": "\\ud800"}'
        answer = await post_raw(client, f"/projects/{project_id}/datasets", body)
        assert answer.status_code in (400, 422)
        assert await head() == before

    @pytest.mark.parametrize(
        "name", ["\u202eevil\u202c.csv", "data \U0001f4ca\U0001f680", "日本語"]
    )
    async def test_rtl_override_and_emoji_come_back_exactly(
        self, client: Client, name: str
    ) -> None:
        project_id = await create_project(client)
        body = dataset_body(name=name)
        answer = await client.post(
            f"/projects/{project_id}/datasets", json=body, headers=ALICE
        )
        assert answer.status_code == 201, answer.text
        read = await client.get(
            f"/projects/{project_id}/datasets/{body['dataset_id']}", headers=ALICE
        )
        assert read.json()["name"] == name

    async def test_a_one_mebibyte_name_is_refused_and_appends_nothing(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        before = await head()
        answer = await client.post(
            f"/projects/{project_id}/datasets",
            json=dataset_body(name="n" * 1024 * 1024),
            headers=ALICE,
        )
        assert answer.status_code in (413, 422)
        assert await head() == before


class TestBodies:
    async def test_invalid_utf8_is_400(self, client: Client, head: Head) -> None:
        project_id = await create_project(client)
        before = await head()
        body = b'{"dataset_id": "d-x", "name": "\xff\xfe"}'
        answer = await post_raw(client, f"/projects/{project_id}/datasets", body)
        assert answer.status_code == 400
        assert "UTF-8" in answer.json()["detail"]
        assert await head() == before

    async def test_ten_thousand_levels_of_nesting_is_400(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        before = await head()
        deep = b'{"dataset_id": "d-x", "name": ' + b"[" * 10_000 + b"]" * 10_000
        answer = await post_raw(client, f"/projects/{project_id}/datasets", deep + b"}")
        assert answer.status_code == 400
        assert "nesting" in answer.json()["detail"]
        assert await head() == before

    async def test_a_ten_megabyte_body_is_413(self, client: Client, head: Head) -> None:
        project_id = await create_project(client)
        before = await head()
        body = json.dumps(dataset_body(description="x" * 10_000_000)).encode()
        answer = await post_raw(client, f"/projects/{project_id}/datasets", body)
        assert answer.status_code == 413
        assert await head() == before

    async def test_malformed_json_is_400(self, client: Client, head: Head) -> None:
        before = await head()
        answer = await post_raw(client, "/projects", b'{"project_id": "p-x", "name"')
        assert answer.status_code == 400
        assert answer.json()["detail"] == "the body is not valid JSON"
        assert await head() == before

    async def test_an_unknown_field_is_422_naming_it(
        self, client: Client, head: Head
    ) -> None:
        before = await head()
        answer = await client.post(
            "/projects",
            json={"project_id": new_id("p"), "name": "P", "owner": "mallory"},
            headers=ALICE,
        )
        assert answer.status_code == 422
        assert [e["field"] for e in answer.json()["errors"]] == ["owner"]
        assert await head() == before

    async def test_a_json_array_instead_of_an_object_is_422(
        self, client: Client
    ) -> None:
        answer = await post_raw(client, "/projects", b"[1, 2]")
        assert answer.status_code == 422


class TestNestingScan:
    def test_brackets_inside_strings_do_not_count(self) -> None:
        check_nesting(json.dumps({"a": "[" * 1000 + '\\"{' * 100}).encode())

    def test_the_limit_itself_is_accepted(self) -> None:
        check_nesting(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)

    def test_one_level_more_is_refused(self) -> None:
        from gateway.errors import BadRequest

        with pytest.raises(BadRequest):
            check_nesting(b"[" * (MAX_JSON_DEPTH + 1))
