"""Query and header parameters: one missing is a 400 `invalid-parameter`
problem that names it, on every route."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from gwtest import ALICE, Client
from litestar import Litestar, get
from litestar.params import HeaderParameter, QueryParameter
from litestar.testing import TestClient

from gateway.errors import problem_details_plugin

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


def test_a_missing_header_or_list_parameter_is_named() -> None:
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
        plugins=[problem_details_plugin()],
    )
    with TestClient(app) as test:
        listed = test.get("/things?tag=a&tag=b&size=2")
        assert listed.status_code == 200, listed.text
        assert listed.json() == {"tag": ["a", "b"], "size": 2}

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
