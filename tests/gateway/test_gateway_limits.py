"""C13: NUL, lone surrogates, odd text and oversized or deep bodies.

Every refusal happens before a side effect: the events head does not move.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from gwtest import ALICE, Client, Head, create_project, new_id, register_dataset
from litestar import Litestar

from gateway.limits import MAX_JSON_DEPTH, check_nesting, size_text


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
        problem = answer.json()
        assert problem["title"] == "Content too large"
        assert problem["detail"] == (
            "the body is larger than the 1 MiB limit (ANIMUS_MAX_BODY_BYTES)"
        )
        assert await head() == before

    @pytest.mark.parametrize("announced", [True, False])
    async def test_an_upload_beyond_the_limit_is_413_naming_it(
        self,
        client: Client,
        head: Head,
        app: Litestar,
        monkeypatch: pytest.MonkeyPatch,
        announced: bool,
    ) -> None:
        small = app.state.settings.model_copy(update={"max_upload_bytes": 64 * 1024})
        monkeypatch.setattr(app.state, "settings", small)
        project_id = await create_project(client)
        dataset_id = await register_dataset(client, project_id)
        before = await head()

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length
            yield b"x" * 100_000

        content: bytes | AsyncIterator[bytes] = (
            b"x" * 100_000 if announced else chunks()
        )
        answer = await client.post(
            f"/projects/{project_id}/datasets/{dataset_id}/versions",
            content=content,
            headers={**ALICE, "Content-Type": "text/csv"},
        )

        assert answer.status_code == 413, answer.text
        assert answer.json()["detail"] == (
            "the upload is larger than the 64 KiB limit (ANIMUS_MAX_UPLOAD_BYTES)"
        )
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


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (1024 * 1024, "1 MiB"),
        (50 * 1024**3, "50 GiB"),
        (64 * 1024, "64 KiB"),
        (1_000_000, "1000000 bytes"),
    ],
)
def test_a_limit_is_said_in_the_unit_that_divides_it(size: int, text: str) -> None:
    assert size_text(size) == text
