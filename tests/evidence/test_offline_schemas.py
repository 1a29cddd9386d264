"""The published JSON Schemas in contracts/ are the ones the offline verifier
enforces, and a standard JSON Schema validator accepts what we write with
them and refuses what the verifier refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from offlinetest import demo_log, make_bundle

from animus.evidence import offline
from animus.evidence.offline import read_archive, validate

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"
SCHEMAS = {
    "evidence-manifest.schema.json": offline.MANIFEST_SCHEMA,
    "evidence-inclusion-proof.schema.json": offline.INCLUSION_PROOF_SCHEMA,
    "evidence-consistency-proof.schema.json": offline.CONSISTENCY_PROOF_SCHEMA,
    "evidence-chain-record.schema.json": offline.CHAIN_RECORD_SCHEMA,
}
ANNOTATIONS = ("$schema", "$id", "title", "description")


def published(name: str) -> dict[str, Any]:
    return json.loads((CONTRACTS / name).read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def members() -> dict[str, bytes]:
    log, run_id = demo_log()
    return read_archive(make_bundle(log, run_id))


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_published_schema_is_the_enforced_one(name: str) -> None:
    schema = published(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert {k: v for k, v in schema.items() if k not in ANNOTATIONS} == SCHEMAS[name]


def test_a_written_manifest_and_its_proofs_and_records_are_valid(
    members: dict[str, bytes],
) -> None:
    jsonschema.validate(
        json.loads(members["manifest.json"]),
        published("evidence-manifest.schema.json"),
    )
    for line in members["proofs.ndjson"].splitlines():
        jsonschema.validate(
            json.loads(line), published("evidence-inclusion-proof.schema.json")
        )
    for line in members["events.ndjson"].splitlines():
        jsonschema.validate(
            json.loads(line), published("evidence-chain-record.schema.json")
        )


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.pop("run"),
        lambda m: m.update(extra=1),
        lambda m: m["checkpoint"].update(tree_size=0),
        lambda m: m["checkpoint"].update(key_id="XYZ"),
        lambda m: m["events"][0].update(position=True),
        lambda m: m["artifacts"][0].update(member="../etc/passwd"),
        lambda m: m.update(format="animus-evidence-bundle/v2"),
        lambda m: m["members"][0].update(sha256="A" * 64),
    ],
)
def test_both_validators_refuse_the_same_broken_manifests(
    members: dict[str, bytes], change: Any
) -> None:
    manifest = json.loads(members["manifest.json"])
    change(manifest)
    assert validate(manifest, offline.MANIFEST_SCHEMA) is not None
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest, published("evidence-manifest.schema.json"))


def test_the_schemas_ship_as_package_data() -> None:
    import tomllib

    config = tomllib.loads((CONTRACTS.parent / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]["contracts"]
    assert "*.json" in data and "*.md" in data
    assert (CONTRACTS / "evidence.md").exists()
