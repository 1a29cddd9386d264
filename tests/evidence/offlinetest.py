"""A synthetic log for the offline verifier's tests: chain records, proofs,
checkpoints and a bundle, made in memory the way the platform makes them, so
the verifier is tested with no database at all."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from animus import merkle
from animus.chain import (
    GENESIS_HASH,
    canonical_envelope,
    canonical_text,
    format_timestamp,
    link_hash,
)
from animus.evidence.note import sign_checkpoint, vkey_of
from animus.evidence.offline import assemble_bundle

ORIGIN = "animus.test/log"
KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"test key").digest())
VKEY = vkey_of(KEY.public_key(), ORIGIN)
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def sha(value: Any) -> str:
    return hashlib.sha256(canonical_text(value).encode()).hexdigest()


@dataclass
class Log:
    """An append-only list of chain records with their leaves."""

    records: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)

    def append(
        self,
        stream_type: str,
        stream_id: str,
        event_type: str,
        data: dict[str, Any],
        project_id: str | None = "p1",
    ) -> dict[str, Any]:
        position = len(self.records) + 1
        version = self.versions.get(stream_id, 0) + 1
        self.versions[stream_id] = version
        recorded_at = EPOCH + timedelta(seconds=position)
        event_id = str(uuid.UUID(int=position))
        canonical = canonical_envelope(
            position=position,
            event_id=event_id,
            stream_type=stream_type,
            stream_id=stream_id,
            stream_version=version,
            project_id=project_id,
            event_type=event_type,
            schema_version=1,
            data=data,
            metadata={"actor": "test"},
            recorded_at=recorded_at,
        )
        prev = bytes.fromhex(self.records[-1]["hash"]) if self.records else GENESIS_HASH
        record = {
            "position": position,
            "event_id": event_id,
            "stream_type": stream_type,
            "stream_id": stream_id,
            "stream_version": version,
            "project_id": project_id,
            "type": event_type,
            "recorded_at": format_timestamp(recorded_at),
            "prev_hash": prev.hex(),
            "hash": link_hash(prev, canonical).hex(),
            "canonical": canonical.decode(),
        }
        self.records.append(record)
        return record

    def leaves(self, size: int | None = None) -> list[bytes]:
        chosen = self.records[: len(self.records) if size is None else size]
        return [merkle.leaf_hash(r["canonical"].encode()) for r in chosen]

    def checkpoint(self, size: int | None = None, key: Any = KEY) -> str:
        size = len(self.records) if size is None else size
        return sign_checkpoint(
            key,
            ORIGIN,
            size,
            merkle.root(self.leaves(size)),
            self.records[size - 1]["hash"],
        )

    def inclusion(self, position: int, size: int | None = None) -> dict[str, Any]:
        leaves = self.leaves(size)
        return {
            "format": "animus-inclusion-proof/v1",
            "position": position,
            "leaf_index": position - 1,
            "tree_size": len(leaves),
            "leaf_hash": leaves[position - 1].hex(),
            "root_hash": merkle.root(leaves).hex(),
            "path": [n.hex() for n in merkle.inclusion_proof(position - 1, leaves)],
        }

    def consistency(self, first: int, second: int) -> dict[str, Any]:
        leaves = self.leaves(second)
        return {
            "format": "animus-consistency-proof/v1",
            "first": first,
            "second": second,
            "first_root": merkle.root(leaves[:first]).hex(),
            "second_root": merkle.root(leaves).hex(),
            "path": [n.hex() for n in merkle.consistency_proof(first, leaves)],
        }


ARTIFACT = b"model bytes " * 100
LOG_BYTES = b"training...\ndone\n"


def demo_log(noise: int = 5) -> tuple[Log, str]:
    """A project, a dataset version, noise, and one finished run."""
    log = Log()
    log.append("project", "project-p1", "ProjectCreated", {"project_id": "p1"})
    dataset = {
        "project_id": "p1",
        "dataset_id": "wine",
        "version": 1,
        "sha256": "a" * 64,
        "size": 1234,
        "object_key": "datasets/wine/1",
    }
    log.append("dataset", "dataset-p1-wine", "DatasetVersionCommitted", dataset)
    for index in range(noise):
        log.append("project", f"project-n{index}", "ProjectCreated", {"n": index})
    run_id = "r-0001"
    spec = {"command": ["python", "train.py"], "inputs": {"data": {"dataset": "wine"}}}
    plan = {
        "spec_hash": sha(spec),
        "command": spec["command"],
        "inputs": {
            "data": {
                "dataset": "wine",
                "version": 1,
                "sha256": "a" * 64,
                "size": 1234,
                "object_key": "datasets/wine/1",
            }
        },
    }
    stream = f"run-{run_id}"
    base = {"project_id": "p1", "run_id": run_id}
    log.append(
        "run", stream, "RunSubmitted", {**base, "spec": spec, "spec_hash": sha(spec)}
    )
    log.append(
        "run", stream, "RunPlanned", {**base, "plan": plan, "plan_hash": sha(plan)}
    )
    log.append(
        "run", stream, "RunDispatched", {**base, "attempt": 1, "executor": "local"}
    )
    log.append("project", "project-n99", "ProjectCreated", {"n": 99})
    for name, content, kind in (
        ("model.pkl", ARTIFACT, "output"),
        ("logs/run.log", LOG_BYTES, "log"),
    ):
        artifact = {
            "name": name,
            "sha256": hashlib.sha256(content).hexdigest(),
            "size": len(content),
            "object_key": f"runs/{run_id}/{name}",
            "kind": kind,
        }
        log.append(
            "run",
            stream,
            "ArtifactRecorded",
            {**base, "attempt": 1, "artifact": artifact},
        )
    log.append("run", stream, "RunSucceeded", {**base, "attempt": 1})
    log.append("project", "project-n100", "ProjectCreated", {"n": 100})
    return log, run_id


def make_bundle(log: Log, run_id: str, *, content: bool = True) -> bytes:
    """A bundle of the run's events the way the exporter writes one."""
    chosen = [
        r for r in log.records if r["stream_id"] in (f"run-{run_id}", "dataset-p1-wine")
    ]
    artifacts = {}
    if content:
        for blob in (ARTIFACT, LOG_BYTES):
            artifacts[hashlib.sha256(blob).hexdigest()] = blob
    return assemble_bundle(
        run_id=run_id,
        records=chosen,
        proofs=[log.inclusion(r["position"]) for r in chosen],
        note=log.checkpoint(),
        vkey=VKEY,
        artifacts=artifacts,
    )
