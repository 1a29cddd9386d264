"""Project routes, read-your-writes, and ids that look like paths."""

from __future__ import annotations

import pytest
from gwtest import ALICE, Client, Head, create_project, new_id

from gateway.routing import MAX_OFFSET


class TestCreateProject:
    async def test_a_created_project_is_readable_at_once(self, client: Client) -> None:
        project_id = new_id("p")
        created = await client.post(
            "/projects",
            json={"project_id": project_id, "name": "Churn", "description": "d"},
            headers=ALICE,
        )
        assert created.status_code == 201, created.text
        receipt = created.json()
        assert receipt["project_id"] == project_id
        assert receipt["position"] >= 1

        read = await client.get(f"/projects/{project_id}", headers=ALICE)
        assert read.status_code == 200, read.text
        project = read.json()
        assert project["name"] == "Churn"
        assert project["created_by"] == "alice"
        assert project["position"] == receipt["position"]

    async def test_a_second_create_conflicts_and_appends_nothing(
        self, client: Client, head
    ) -> None:
        project_id = await create_project(client)
        before = await head()
        again = await client.post(
            "/projects", json={"project_id": project_id, "name": "X"}, headers=ALICE
        )
        assert again.status_code == 409
        assert again.json()["type"].endswith("already-exists")
        assert await head() == before

    async def test_listing_pages_through_projects(self, client: Client) -> None:
        ids = [await create_project(client) for _ in range(3)]
        page = await client.get("/projects?limit=500", headers=ALICE)
        assert page.status_code == 200
        listed = [item["project_id"] for item in page.json()["items"]]
        assert set(ids) <= set(listed)
        one = await client.get("/projects?limit=1&offset=1", headers=ALICE)
        assert len(one.json()["items"]) == 1
        assert one.json()["offset"] == 1

    async def test_a_bad_page_size_is_a_bad_request(self, client: Client) -> None:
        answer = await client.get("/projects?limit=0", headers=ALICE)
        assert answer.status_code == 400
        assert answer.json()["errors"][0]["field"] == "limit"


class TestPaging:
    """Every paged list takes the same bounded `limit` and `offset`."""

    @pytest.mark.parametrize("route", ["/projects", "/projects/{project}/runs"])
    @pytest.mark.parametrize(
        "offset", ["99999999999999999999", str(2**63), str(2**31), "-1"]
    )
    async def test_an_offset_out_of_range_is_400_naming_it(
        self, client: Client, head: Head, route: str, offset: str
    ) -> None:
        path = route.format(project=await create_project(client))
        before = await head()
        answer = await client.get(f"{path}?offset={offset}", headers=ALICE)
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["type"].endswith("invalid-parameter")
        assert problem["detail"] == "invalid parameter: offset"
        assert [error["field"] for error in problem["errors"]] == ["offset"]
        assert await head() == before

    @pytest.mark.parametrize("route", ["/projects", "/projects/{project}/runs"])
    async def test_the_largest_offset_is_an_empty_page(
        self, client: Client, route: str
    ) -> None:
        path = route.format(project=await create_project(client))
        answer = await client.get(f"{path}?offset={MAX_OFFSET}", headers=ALICE)
        assert answer.status_code == 200, answer.text
        assert answer.json()["items"] == []
        assert answer.json()["offset"] == MAX_OFFSET == 2**31 - 1


class TestReadProject:
    async def test_an_unknown_project_is_404_problem_details(
        self, client: Client
    ) -> None:
        answer = await client.get("/projects/nope-nope", headers=ALICE)
        assert answer.status_code == 404
        problem = answer.json()
        assert problem["instance"] == "/projects/nope-nope"
        assert problem["request_id"] == answer.headers["x-request-id"]
        assert set(problem) >= {"type", "title", "status", "detail", "instance"}

    async def test_not_found_reads_the_same_from_every_route(
        self, client: Client
    ) -> None:
        """One title per problem type, one style of detail, whoever refused:
        the read side, the write side, or the router."""
        read = await client.get("/projects/nope-x", headers=ALICE)
        write = await client.post(
            "/projects/nope-x/datasets",
            json={"dataset_id": "d-x", "name": "D"},
            headers=ALICE,
        )
        no_route = await client.get("/projects/nope-x/nothing-here", headers=ALICE)

        problems = [answer.json() for answer in (read, write, no_route)]
        assert [p["status"] for p in problems] == [404, 404, 404]
        assert {p["type"] for p in problems} == {"urn:animus:problem:not-found"}
        assert {p["title"] for p in problems} == {"Not found"}
        assert read.json()["detail"] == write.json()["detail"]
        assert read.json()["detail"] == "project nope-x does not exist"

    @pytest.mark.parametrize(
        "path",
        [
            "/projects/..%2F",
            "/projects/..%2F..%2Fetc",
            "/projects/a%2Fb",
            "/projects/a/b",
            "/projects/UPPER",
            "/projects/..%2F/datasets",
            "/projects/%2E%2E/datasets/x/versions/1/content",
        ],
    )
    async def test_ids_with_path_characters_never_match(
        self, client: Client, path: str
    ) -> None:
        answer = await client.get(path, headers=ALICE)
        assert answer.status_code in (404, 422), answer.text
        assert answer.headers["content-type"] == "application/problem+json"
