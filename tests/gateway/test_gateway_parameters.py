"""Query and header parameters: one missing, or one given twice, is a 400
`invalid-parameter` problem that names it, on every route."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from gwtest import ALICE, Client, create_project
from litestar import Litestar, get
from litestar.params import HeaderParameter, QueryParameter
from litestar.testing import TestClient

from gateway.asof import AS_OF_HEADER
from gateway.errors import problem_details_plugin
from gateway.params import refuse_repeated_parameters
from gateway.services import GatewayServices
from projections.asof import snapshots

INVALID_PARAMETER = "urn:animus:problem:invalid-parameter"


def assert_names(answer: Any, detail: str, fields: list[str]) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["type"] == INVALID_PARAMETER
    assert problem["title"] == "Invalid parameter"
    assert problem["detail"] == detail
    assert [error["field"] for error in problem["errors"]] == fields
    assert all(error["message"] for error in problem["errors"])


@pytest.mark.parametrize(
    ("path", "params", "missing"),
    [
        ("/evidence/proofs/inclusion", {}, "position"),
        ("/evidence/proofs/inclusion", {"tree_size": 5}, "position"),
        ("/evidence/proofs/consistency", {"first": 23}, "second"),
        ("/evidence/proofs/consistency", {"second": 23}, "first"),
    ],
)
async def test_a_missing_required_parameter_is_400_naming_it(
    client: Client, path: str, params: dict[str, Any], missing: str
) -> None:
    answer = await client.get(path, params=params, headers=ALICE)

    assert_names(answer, f"missing parameter: {missing}", [missing])
    assert answer.json()["errors"][0]["message"] == "the query parameter is required"


@pytest.mark.parametrize(
    ("path", "query", "repeated"),
    [
        ("/projects", "as_of=1&as_of=2", "as_of"),
        ("/projects", "offset=0&offset=1", "offset"),
        ("/projects", "limit=1&offset=0&limit=2&offset=1", "limit, offset"),
        ("/evidence/proofs/inclusion", "position=5&position=6", "position"),
        ("/evidence/proofs/consistency", "first=1&second=2&second=3", "second"),
        ("/audit/events", "type=A&type=B", "type"),
    ],
)
async def test_a_repeated_parameter_is_400_naming_it(
    client: Client, path: str, query: str, repeated: str
) -> None:
    answer = await client.get(f"{path}?{query}", headers=ALICE)

    assert_names(answer, f"repeated parameter: {repeated}", repeated.split(", "))


async def test_a_repeated_as_of_builds_no_snapshot(
    client: Client, gateway_services: GatewayServices
) -> None:
    await create_project(client)
    await create_project(client)  # so both as_of=1 and as_of=2 name a point
    kept = await snapshots(gateway_services.pool)

    answer = await client.get("/projects?as_of=1&as_of=2", headers=ALICE)

    assert answer.status_code == 400, answer.text
    assert AS_OF_HEADER not in answer.headers
    assert await snapshots(gateway_services.pool) == kept


async def test_a_repeated_parameter_needs_a_token_first(client: Client) -> None:
    answer = await client.get("/projects?as_of=1&as_of=2")
    assert answer.status_code == 401


async def test_a_parameter_given_once_with_another_repeated_is_answered(
    client: Client,
) -> None:
    """Only what the route takes is checked: an unknown one may repeat."""
    answer = await client.get("/projects?unknown=1&unknown=2", headers=ALICE)
    assert answer.status_code == 200, answer.text


def test_a_list_parameter_may_repeat_and_a_missing_header_is_named() -> None:
    @get("/things", sync_to_thread=False)
    def things(
        tag: Annotated[list[str], QueryParameter()],
        size: Annotated[int, QueryParameter(ge=1)] = 1,
    ) -> dict[str, Any]:
        return {"tag": tag, "size": size}

    @get("/header", sync_to_thread=False)
    def header(thing: Annotated[str, HeaderParameter(name="X-Thing")]) -> str:
        return thing

    app = Litestar(
        [things, header],
        before_request=refuse_repeated_parameters,
        plugins=[problem_details_plugin()],
    )
    with TestClient(app) as test:
        listed = test.get("/things?tag=a&tag=b&size=2")
        assert listed.status_code == 200, listed.text
        assert listed.json() == {"tag": ["a", "b"], "size": 2}

        assert_names(
            test.get("/things?tag=a&size=2&size=3"),
            "repeated parameter: size",
            ["size"],
        )
        assert_names(test.get("/things"), "missing parameter: tag", ["tag"])
        missing = test.get("/header")
        assert_names(missing, "missing parameter: x-thing", ["x-thing"])
        assert missing.json()["errors"][0]["message"] == (
            "the header parameter is required"
        )


def test_every_route_that_takes_a_query_parameter_documents_400(
    app: Litestar,
) -> None:
    schema = app.openapi_schema.to_schema()
    undocumented = [
        f"{method.upper()} {path}"
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict)
        and any(p.get("in") == "query" for p in operation.get("parameters", []))
        and "400" not in operation.get("responses", {})
    ]
    assert undocumented == []
