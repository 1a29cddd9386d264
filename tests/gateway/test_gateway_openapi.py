"""The committed OpenAPI document is the one the app generates."""

from __future__ import annotations

from gateway.openapi import OPENAPI_PATH, render_openapi


def test_the_committed_openapi_document_is_current() -> None:
    committed = OPENAPI_PATH.read_text(encoding="utf-8")
    assert committed == render_openapi(), (
        "contracts/openapi.json is stale: run `make openapi` and commit it"
    )


def test_every_command_route_documents_its_problems() -> None:
    import json

    document = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    submit = document["paths"]["/projects/{project_id}/runs"]["post"]
    assert {"201", "400", "413", "422"} <= set(submit["responses"])
