"""Commands through HTTP: refusals leave the log unchanged, uploads are whole,
runs plan deterministically and carry who asked in their metadata."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from gwtest import (
    ALICE,
    Client,
    Head,
    create_project,
    new_id,
    register_dataset,
    upload,
)
from litestar import Litestar

from animus.personal import ACTOR_NAME, CLIENT_ADDRESS, is_subject
from animus.storage import BLOB_PREFIX, STAGING_PREFIX
from contracts.streams import dataset_stream, run_stream
from gateway.services import GatewayServices

PROBLEM = "application/problem+json"


def assert_problem(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert {"type", "title", "status", "detail", "instance", "request_id"} <= set(
        problem
    )
    assert problem["status"] == status
    return problem


def spec(**fields: Any) -> dict[str, Any]:
    return {"name": "train", "command": ["python", "train.py"], **fields}


class TestRefusalsAppendNothing:
    async def test_malformed_json_is_400(self, client: Client, head: Head) -> None:
        project_id = await create_project(client)
        before = await head()
        answer = await client.post(
            f"/projects/{project_id}/runs",
            content=b'{"command": ["x"',
            headers={**ALICE, "Content-Type": "application/json"},
        )
        assert_problem(answer, 400)
        assert await head() == before

    async def test_an_unknown_field_in_a_spec_is_422(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        before = await head()
        answer = await client.post(
            f"/projects/{project_id}/runs", json=spec(shell=True), headers=ALICE
        )
        problem = assert_problem(answer, 422)
        assert [e["field"] for e in problem["errors"]] == ["shell"]
        assert await head() == before

    @pytest.mark.parametrize("version", [1, 7])
    async def test_an_input_version_that_is_not_committed_is_422(
        self, client: Client, head: Head, version: int
    ) -> None:
        """Documented choice: a missing input is refused content (422), not 404;
        the route itself (the project) exists."""
        project_id = await create_project(client)
        dataset_id = await register_dataset(client, project_id)
        before = await head()
        body = spec(inputs={"train": {"dataset": dataset_id, "version": version}})
        answer = await client.post(
            f"/projects/{project_id}/runs", json=body, headers=ALICE
        )
        problem = assert_problem(answer, 422)
        assert f"no committed version {version}" in problem["detail"]
        assert await head() == before

    async def test_an_unknown_input_dataset_is_422(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        before = await head()
        body = spec(inputs={"train": {"dataset": "nope", "version": 1}})
        answer = await client.post(
            f"/projects/{project_id}/runs", json=body, headers=ALICE
        )
        assert_problem(answer, 422)
        assert await head() == before

    async def test_a_run_in_an_unknown_project_is_404(
        self, client: Client, head: Head
    ) -> None:
        before = await head()
        answer = await client.post("/projects/nope-x/runs", json=spec(), headers=ALICE)
        assert_problem(answer, 404)
        assert await head() == before

    async def test_a_zero_byte_upload_is_422(
        self, client: Client, head: Head, gateway_services: GatewayServices
    ) -> None:
        project_id = await create_project(client)
        dataset_id = await register_dataset(client, project_id)
        before = await head()
        answer = await upload(client, project_id, dataset_id, b"")
        problem = assert_problem(answer, 422)
        assert problem["type"].endswith("empty-upload")
        assert await head() == before
        assert await gateway_services.blobs.list_multipart_uploads() == []

    @pytest.mark.parametrize(
        "project_path", ["a%2F..%2Fb", "A%2FB", "..", "a%00b", "UPPER"]
    )
    async def test_project_ids_with_path_characters_are_refused(
        self, client: Client, head: Head, project_path: str
    ) -> None:
        before = await head()
        answer = await client.post(
            f"/projects/{project_path}/datasets",
            json={"dataset_id": new_id("d"), "name": "D"},
            headers=ALICE,
        )
        assert answer.status_code in (404, 422), answer.text
        assert answer.headers["content-type"] == PROBLEM
        assert await head() == before

    async def test_a_project_id_with_a_slash_in_the_body_is_422(
        self, client: Client, head: Head
    ) -> None:
        before = await head()
        answer = await client.post(
            "/projects", json={"project_id": "a/../b", "name": "P"}, headers=ALICE
        )
        assert_problem(answer, 422)
        assert await head() == before

    async def test_a_ten_megabyte_spec_is_413(self, client: Client, head: Head) -> None:
        project_id = await create_project(client)
        before = await head()
        body = spec(parameters={"blob": "x" * 10_000_000})
        answer = await client.post(
            f"/projects/{project_id}/runs", json=body, headers=ALICE
        )
        assert_problem(answer, 413)
        assert await head() == before

    @pytest.mark.parametrize("name", ["a\u0000b", "\ud800"])
    async def test_nul_or_a_lone_surrogate_in_a_name_is_refused(
        self, client: Client, head: Head, name: str
    ) -> None:
        """NUL is refused by the contracts; a lone surrogate escape is valid
        JSON that the strict decoder refuses, answered the same way: 422
        naming the field. Neither appends."""
        project_id = await create_project(client)
        before = await head()
        raw = (
            '{"dataset_id": "d-c13", "name": "'
            + "".join(f"\\u{ord(ch):04x}" for ch in name)
            + '"}'
        ).encode()
        answer = await client.post(
            f"/projects/{project_id}/datasets",
            content=raw,
            headers={**ALICE, "Content-Type": "application/json"},
        )
        problem = assert_problem(answer, 422)
        assert [error["field"] for error in problem["errors"]] == ["name"]
        assert await head() == before

    @pytest.mark.parametrize(
        ("raw", "field"),
        [
            (
                r'{"command": ["true"], "parameters": {"seed": "\udc00"}}',
                "parameters.seed",
            ),
            (r'{"command": ["true", "\ud800x"]}', "command.1"),
            (
                r'{"command": ["true"], "parameters": {"\ud800": 1}}',
                r"parameters.\ud800",
            ),
        ],
    )
    async def test_a_lone_surrogate_anywhere_in_a_spec_is_422_naming_it(
        self, client: Client, head: Head, raw: str, field: str
    ) -> None:
        project_id = await create_project(client)
        before = await head()
        answer = await client.post(
            f"/projects/{project_id}/runs",
            content=raw.encode(),
            headers={**ALICE, "Content-Type": "application/json"},
        )
        problem = assert_problem(answer, 422)
        assert "lone UTF-16 surrogate" in problem["detail"]
        assert [error["field"] for error in problem["errors"]] == [field]
        assert await head() == before

    @pytest.mark.parametrize("path", ["/projects", "/projects/{project}/runs"])
    async def test_an_empty_body_is_422_saying_a_body_is_required(
        self, client: Client, head: Head, path: str
    ) -> None:
        path = path.format(project=await create_project(client))
        before = await head()
        answer = await client.post(
            path, headers={**ALICE, "Content-Type": "application/json"}
        )
        problem = assert_problem(answer, 422)
        assert problem["detail"] == "a JSON body is required"
        assert problem["errors"] == [
            {"field": "", "message": "a JSON body is required"}
        ]
        assert await head() == before

    @pytest.mark.parametrize(
        ("value", "got"),
        [({"b": 1}, "an object"), ([1], "a list"), (None, "null")],
    )
    async def test_a_parameter_of_another_type_is_named_without_validator_names(
        self, client: Client, head: Head, value: Any, got: str
    ) -> None:
        project_id = await create_project(client)
        before = await head()
        answer = await client.post(
            f"/projects/{project_id}/runs",
            json={"command": ["true"], "parameters": {"a": value}},
            headers=ALICE,
        )
        problem = assert_problem(answer, 422)
        assert problem["errors"] == [
            {
                "field": "parameters.a",
                "message": "Input should be a string, an integer, a number or "
                f"a boolean, not {got}",
            }
        ]
        assert await head() == before

    async def test_a_reason_too_long_is_counted_in_characters(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        submitted = await client.post(
            f"/projects/{project_id}/runs", json=spec(), headers=ALICE
        )
        run_id = submitted.json()["run_id"]
        before = await head()
        answer = await client.post(
            f"/projects/{project_id}/runs/{run_id}/cancel",
            json={"reason": "x" * 500},
            headers=ALICE,
        )
        problem = assert_problem(answer, 422)
        assert problem["errors"] == [
            {"field": "reason", "message": "String should have at most 200 characters"}
        ]
        assert await head() == before

    async def test_a_nul_in_a_run_parameter_is_422(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        before = await head()
        body = spec(parameters={"label": "col\u0000umn"})
        answer = await client.post(
            f"/projects/{project_id}/runs", json=body, headers=ALICE
        )
        problem = assert_problem(answer, 422)
        assert problem["errors"] == [
            {
                "field": "parameters.label",
                "message": "text must not contain NUL or unpaired surrogates",
            }
        ]
        assert await head() == before

    async def test_an_integer_beyond_json_precision_is_422(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        before = await head()
        body = spec(parameters={"seed": 2**60})
        answer = await client.post(
            f"/projects/{project_id}/runs", json=body, headers=ALICE
        )
        assert_problem(answer, 422)
        assert await head() == before

    @pytest.mark.parametrize(
        ("fields", "field", "words"),
        [
            ({"secret_refs": ["x"]}, "secret_refs", "cannot inject secrets"),
            ({"resources": {"gpus": 1}}, "resources.gpus", "no GPUs"),
            ({"image": "python:3.11"}, "image", "not in a container image"),
        ],
    )
    async def test_what_the_local_executor_cannot_give_is_refused_at_submit(
        self,
        client: Client,
        head: Head,
        fields: dict[str, Any],
        field: str,
        words: str,
    ) -> None:
        """Secrets would fail the run at launch and GPUs would be ignored."""
        project_id = await create_project(client)
        before = await head()
        answer = await client.post(
            f"/projects/{project_id}/runs",
            json={"command": ["true"], **fields},
            headers=ALICE,
        )
        problem = assert_problem(answer, 422)
        assert problem["detail"].startswith("the local executor ")
        assert words in problem["detail"]
        assert problem["errors"] == [{"field": field, "message": problem["detail"]}]
        assert await head() == before


class TestIdempotentRuns:
    async def test_same_key_same_body_is_one_answer_and_one_run(
        self, client: Client, head: Head
    ) -> None:
        project_id = await create_project(client)
        headers = {**ALICE, "Idempotency-Key": new_id("k")}
        first = await client.post(
            f"/projects/{project_id}/runs", json=spec(), headers=headers
        )
        assert first.status_code == 201, first.text
        after_first = await head()
        second = await client.post(
            f"/projects/{project_id}/runs", json=spec(), headers=headers
        )
        assert (second.status_code, second.content) == (201, first.content)
        assert await head() == after_first

        other = await client.post(
            f"/projects/{project_id}/runs", json=spec(name="other"), headers=headers
        )
        assert_problem(other, 422)
        assert await head() == after_first


class TestUploads:
    async def test_an_upload_cut_off_halfway_leaves_nothing(
        self,
        app: Litestar,
        client: Client,
        head: Head,
        gateway_services: GatewayServices,
    ) -> None:
        """C08: the client declares 12 MiB, sends 6 MiB, then disconnects."""
        project_id = await create_project(client)
        dataset_id = await register_dataset(client, project_id)
        before = await head()
        path = f"/projects/{project_id}/datasets/{dataset_id}/versions"
        status = await _send_half_then_disconnect(app, path, declared=12 * 2**20)

        assert status == 400
        assert await head() == before
        stream = dataset_stream(project_id, dataset_id)
        types = [e.type for e in await gateway_services.store.read_stream(stream)]
        assert types == ["DatasetRegistered"]
        versions = await client.get(path, headers=ALICE)
        assert versions.json()["items"] == []
        assert await gateway_services.blobs.list_multipart_uploads() == []
        staging = gateway_services.blobs.list_objects(STAGING_PREFIX)
        assert [item.key async for item in staging] == []

    async def test_a_multipart_upload_stores_the_whole_content_sha256(
        self, client: Client, gateway_services: GatewayServices
    ) -> None:
        """C09: 11 MiB in 5 MiB parts is three parts; the digest is sha256sum's."""
        project_id = await create_project(client)
        dataset_id = await register_dataset(client, project_id)
        content = bytes(range(256)) * (11 * 2**20 // 256)
        digest = hashlib.sha256(content).hexdigest()
        answer = await upload(
            client, project_id, dataset_id, content, **{"X-Content-SHA256": digest}
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["sha256"] == digest

        read = await client.get(
            f"/projects/{project_id}/datasets/{dataset_id}/versions/1", headers=ALICE
        )
        assert read.json()["sha256"] == digest
        assert read.json()["size"] == len(content)
        stream = dataset_stream(project_id, dataset_id)
        committed = (await gateway_services.store.read_stream(stream))[-1]
        assert committed.data["sha256"] == digest
        body = await client.get(
            f"/projects/{project_id}/datasets/{dataset_id}/versions/1/content",
            headers=ALICE,
        )
        assert body.status_code == 200, body.text[:300]
        assert len(body.content) == len(content)
        assert hashlib.sha256(body.content).hexdigest() == digest

    async def test_a_declared_digest_that_differs_is_422(
        self, client: Client, head: Head, gateway_services: GatewayServices
    ) -> None:
        project_id = await create_project(client)
        dataset_id = await register_dataset(client, project_id)
        before = await head()
        answer = await upload(
            client, project_id, dataset_id, b"abc", **{"X-Content-SHA256": "0" * 64}
        )
        assert_problem(answer, 422)
        assert await head() == before
        assert await gateway_services.blobs.list_multipart_uploads() == []

    async def test_a_multipart_upload_changed_on_the_way_commits_nothing(
        self, client: Client, head: Head, gateway_services: GatewayServices
    ) -> None:
        """C09 v3: the client declared the sha256 of the file it meant to send;
        part 2 arrived changed. Refused at commit, nothing left behind."""
        project_id = await create_project(client)
        dataset_id = await register_dataset(client, project_id)
        unique = new_id("c09").encode()  # no other test stored these bytes
        meant = unique + bytes(range(256)) * (11 * 2**20 // 256)
        sent = meant[: 6 * 2**20] + b"X" + meant[6 * 2**20 + 1 :]  # in part 2
        before = await head()

        answer = await upload(
            client,
            project_id,
            dataset_id,
            sent,
            **{"X-Content-SHA256": hashlib.sha256(meant).hexdigest()},
        )

        problem = assert_problem(answer, 422)
        assert "sha256" in problem["detail"] or "digest" in problem["detail"]
        assert await head() == before
        blobs = gateway_services.blobs
        assert await blobs.list_multipart_uploads() == []
        assert [o.key async for o in blobs.list_objects(STAGING_PREFIX)] == []
        for digest in (hashlib.sha256(sent), hashlib.sha256(meant)):
            assert not await blobs.exists(BLOB_PREFIX + digest.hexdigest())


class TestRuns:
    async def test_the_same_spec_over_the_same_versions_hashes_the_same(
        self, client: Client
    ) -> None:
        project_id = await create_project(client)
        dataset_id = await register_dataset(client, project_id)
        answer = await upload(client, project_id, dataset_id, b"a,b\n1,2\n")
        assert answer.status_code == 201, answer.text
        body = spec(
            inputs={"train": {"dataset": dataset_id, "version": 1}},
            parameters={"lr": 0.01, "epochs": 3},
        )
        first = await client.post(
            f"/projects/{project_id}/runs", json=body, headers=ALICE
        )
        second = await client.post(
            f"/projects/{project_id}/runs",
            json=dict(reversed(list(body.items()))),
            headers=ALICE,
        )
        assert first.status_code == second.status_code == 201, second.text
        one, two = first.json(), second.json()
        assert one["run_id"] != two["run_id"]
        assert one["spec_hash"] == two["spec_hash"]
        assert one["plan_hash"] == two["plan_hash"]
        assert one["status"] == "dispatched"

        run = await client.get(
            f"/projects/{project_id}/runs/{one['run_id']}", headers=ALICE
        )
        plan = run.json()["plan"]
        assert (
            plan["inputs"]["train"]["sha256"]
            == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
        )

    async def test_run_events_carry_actor_request_id_and_client_address(
        self, client: Client, gateway_services: GatewayServices
    ) -> None:
        project_id = await create_project(client)
        request_id = new_id("req")
        answer = await client.post(
            f"/projects/{project_id}/runs",
            json=spec(),
            headers={**ALICE, "X-Request-ID": request_id},
        )
        assert answer.status_code == 201, answer.text
        run_id = answer.json()["run_id"]
        events = await gateway_services.store.read_stream(run_stream(run_id))
        assert [e.type for e in events] == [
            "RunSubmitted",
            "RunPlanned",
            "RunDispatched",
        ]
        assert answer.json()["position"] == events[-1].position
        subjects = gateway_services.subjects
        for event in events:
            actor = event.metadata["actor"]
            assert is_subject(actor["subject"])
            assert await subjects.open(actor["name"], ACTOR_NAME) == "alice"
            assert event.metadata["request_id"] == request_id
            address = event.metadata["client_address"]
            assert address["subject"] == actor["subject"]
            assert await subjects.open(address, CLIENT_ADDRESS) == "192.0.2.10"
            assert event.metadata["command"] == "SubmitRun"
            plain = json.dumps(event.metadata)
            assert "alice" not in plain and "192.0.2.10" not in plain

    async def test_cancel_is_recorded_once(
        self, client: Client, head: Head, gateway_services: GatewayServices
    ) -> None:
        project_id = await create_project(client)
        submitted = await client.post(
            f"/projects/{project_id}/runs", json=spec(), headers=ALICE
        )
        run_id = submitted.json()["run_id"]
        path = f"/projects/{project_id}/runs/{run_id}/cancel"
        first = await client.post(path, json={"reason": "stop"}, headers=ALICE)
        assert first.status_code == 202, first.text
        after = await head()
        again = await client.post(path, json={"reason": "stop"}, headers=ALICE)
        assert again.status_code == 202
        assert again.json()["position"] == first.json()["position"]
        assert await head() == after

        elsewhere = await create_project(client)
        answer = await client.post(
            f"/projects/{elsewhere}/runs/{run_id}/cancel", json={}, headers=ALICE
        )
        assert_problem(answer, 404)


async def _send_half_then_disconnect(app: Litestar, path: str, declared: int) -> int:
    """Call the ASGI app with a body that stops halfway, then a disconnect."""
    chunk = b"x" * 2**20
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": True}
        for _ in range(declared // len(chunk) // 2)
    ]
    messages.append({"type": "http.disconnect"})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if len(messages) > 1:
            return messages.pop(0)
        return messages[0]

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [
        (b"host", b"testserver"),
        (b"authorization", ALICE["Authorization"].encode()),
        (b"content-type", b"text/csv"),
        (b"content-length", str(declared).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("192.0.2.10", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    return int(start["status"])
