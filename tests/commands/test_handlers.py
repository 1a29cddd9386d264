"""Pure parts of the command handlers: ids, canonical hashes and plans."""

from __future__ import annotations

import re

import pytest

from animus.errors import ValidationError
from commands.dataset import CommittedVersion
from commands.handlers import (
    CommandContext,
    build_plan,
    canonical_sha256,
    new_run_id,
)
from commands.run import check_executor_supports
from contracts.runs import RunSpec

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"  # gateway.routing


def spec(**fields: object) -> RunSpec:
    return RunSpec.model_validate(
        {
            "command": ["python", "train.py"],
            "inputs": {"train": {"dataset": "d1", "version": 2}},
            **fields,
        }
    )


VERSION = CommittedVersion(version=2, sha256="a" * 64, size=10, object_key="k")


class TestRunIds:
    def test_run_ids_match_the_gateway_pattern_and_are_unique(self) -> None:
        ids = {new_run_id() for _ in range(1000)}
        assert len(ids) == 1000
        assert all(re.match(RUN_ID_PATTERN, run_id) for run_id in ids)
        assert all(re.match(r"^[0-9a-z]{26}$", run_id) for run_id in ids)

    def test_run_ids_sort_by_creation_time(self) -> None:
        first = new_run_id()
        import time

        time.sleep(0.002)
        assert new_run_id()[:10] >= first[:10]


class TestHashes:
    def test_the_spec_hash_ignores_key_order_and_defaults(self) -> None:
        one = spec(parameters={"lr": 0.01, "epochs": 3})
        two = RunSpec.model_validate(
            {
                "parameters": {"epochs": 3, "lr": 0.01},
                "inputs": {"train": {"version": 2, "dataset": "d1"}},
                "command": ["python", "train.py"],
                "timeout_seconds": 3600,
            }
        )
        assert canonical_sha256(one) == canonical_sha256(two)
        assert re.match(r"^[0-9a-f]{64}$", canonical_sha256(one))

    def test_another_parameter_is_another_hash(self) -> None:
        assert canonical_sha256(spec(parameters={"lr": 0.1})) != canonical_sha256(
            spec(parameters={"lr": 0.01})
        )

    def test_the_plan_hash_is_deterministic_and_follows_the_input_digest(
        self,
    ) -> None:
        run_spec = spec()
        spec_hash = canonical_sha256(run_spec)
        plan = build_plan(run_spec, spec_hash, {"train": VERSION})
        again = build_plan(run_spec, spec_hash, {"train": VERSION})
        assert canonical_sha256(plan) == canonical_sha256(again)
        assert plan.inputs["train"].sha256 == "a" * 64

        other = CommittedVersion(version=2, sha256="b" * 64, size=10, object_key="k")
        changed = build_plan(run_spec, spec_hash, {"train": other})
        assert canonical_sha256(changed) != canonical_sha256(plan)

    def test_an_integer_beyond_json_precision_is_a_validation_error(self) -> None:
        with pytest.raises(ValidationError):
            canonical_sha256(spec(parameters={"seed": 2**60}))


class TestContext:
    def test_metadata_names_who_asked_and_leaves_out_unknowns(self) -> None:
        ctx = CommandContext(actor="alice", request_id="r1", client_address=None)
        assert ctx.metadata("SubmitRun") == {
            "actor": "alice",
            "request_id": "r1",
            "command": "SubmitRun",
        }


class TestExecutorCapabilities:
    def test_a_local_run_without_secrets_or_gpus_is_accepted(self) -> None:
        check_executor_supports(spec(resources={"gpus": 0}))

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"secret_refs": ["db-password"]}, "secret_refs"),
            ({"resources": {"gpus": 2}}, "resources.gpus"),
        ],
    )
    def test_secrets_or_gpus_on_the_local_executor_are_refused(
        self, fields: dict[str, object], field: str
    ) -> None:
        with pytest.raises(ValidationError, match="the local executor") as refused:
            check_executor_supports(spec(**fields))
        assert refused.value.field == field
