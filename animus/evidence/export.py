"""Export a run's evidence bundle from the event store, the tree and S3.

The exporter gathers every event about the run (its whole stream) and the
commit events of the dataset versions its plan used, waits until one signed
checkpoint covers them all, takes an inclusion proof of each against that
checkpoint, reads the artifacts' bytes, and writes the archive with
`animus.evidence.offline.assemble_bundle`. Before handing the bytes out it
verifies them as an auditor would, so a bundle that would not verify is
never written. The layout is in animus/evidence/bundle.py and
contracts/evidence.md.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from animus import merkle
from animus.chain import format_timestamp
from animus.errors import ChainError, ConflictError, NotFoundError, StorageError
from animus.evidence import tree
from animus.evidence.checkpoints import StoredCheckpoint, checkpoint_covering
from animus.evidence.offline import (
    INCLUSION_FORMAT,
    BundleReport,
    VerificationFailure,
    assemble_bundle,
    load_key,
    verify_bundle,
)
from contracts.streams import dataset_stream, run_stream

if TYPE_CHECKING:
    import argparse

    from psycopg import AsyncConnection

    from animus.settings import Settings
    from animus.storage import BlobStore

__all__ = [
    "CheckpointPending",
    "ExportedBundle",
    "export_bundle",
    "export_command",
    "run_records",
    "write_bundle",
]

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.5

_RECORD_COLUMNS = (
    "position, event_id::text, stream_type, stream_id, stream_version, "
    "project_id, type, recorded_at, prev_hash, hash, canonical"
)


class CheckpointPending(ConflictError):
    """No signed checkpoint covers the run's events yet."""

    title = "No checkpoint yet"


@dataclass(frozen=True, slots=True)
class ExportedBundle:
    data: bytes
    report: BundleReport


def _chain_record(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "position": row[0],
        "event_id": row[1],
        "stream_type": row[2],
        "stream_id": row[3],
        "stream_version": row[4],
        "project_id": row[5],
        "type": row[6],
        "recorded_at": format_timestamp(row[7]),
        "prev_hash": bytes(row[8]).hex(),
        "hash": bytes(row[9]).hex(),
        "canonical": row[10],
    }


async def _select(
    conn: AsyncConnection[Any], where: str, params: tuple[Any, ...]
) -> list[dict[str, Any]]:
    cur = await conn.execute(
        f"SELECT {_RECORD_COLUMNS} FROM events WHERE {where} ORDER BY position",
        params,
    )
    return [_chain_record(row) for row in await cur.fetchall()]


async def run_records(
    conn: AsyncConnection[Any], run_id: str, *, project_id: str | None = None
) -> list[dict[str, Any]]:
    """Chain records of the run's stream and of its inputs' commits.

    Raises:
        NotFoundError: the run does not exist (in `project_id`, if given).
    """
    records = await _select(conn, "stream_id = %s", (run_stream(run_id),))
    if not records or (
        project_id is not None and records[0]["project_id"] != project_id
    ):
        raise NotFoundError(f"run {run_id} not found")
    project = records[0]["project_id"]

    planned = next((r for r in records if r["type"] == "RunPlanned"), None)
    inputs: dict[str, Any] = {}
    if planned is not None:
        inputs = json.loads(planned["canonical"])["data"]["plan"].get("inputs", {})
    for name in sorted(inputs):
        wanted = inputs[name]
        committed = await _select(
            conn,
            "stream_id = %s AND type = 'DatasetVersionCommitted' "
            "AND data ->> 'version' = %s",
            (dataset_stream(project, wanted["dataset"]), str(wanted["version"])),
        )
        if not committed:
            raise NotFoundError(
                f"input {name}: dataset {wanted['dataset']} version "
                f"{wanted['version']} has no commit event"
            )
        records.extend(committed)
    unique = {r["position"]: r for r in records}
    return [unique[p] for p in sorted(unique)]


async def _covering_checkpoint(
    conn: AsyncConnection[Any],
    position: int,
    *,
    wait_seconds: float,
    on_wait: Callable[[], None] | None,
) -> StoredCheckpoint:
    deadline = time.monotonic() + wait_seconds
    while True:
        checkpoint = await checkpoint_covering(conn, position)
        if checkpoint is not None:
            return checkpoint
        if time.monotonic() >= deadline:
            waited = f" after waiting {wait_seconds:g} s" if wait_seconds else ""
            raise CheckpointPending(
                f"no signed checkpoint covers position {position} yet{waited}; "
                "the checkpointer signs one every few events or seconds, "
                "try again shortly"
            )
        if on_wait is not None:
            on_wait()
        await asyncio.sleep(POLL_SECONDS)


async def _proof(
    conn: AsyncConnection[Any], record: dict[str, Any], checkpoint: StoredCheckpoint
) -> dict[str, Any]:
    position = record["position"]
    path = await tree.inclusion_proof(conn, position - 1, checkpoint.tree_size)
    return {
        "format": INCLUSION_FORMAT,
        "position": position,
        "leaf_index": position - 1,
        "tree_size": checkpoint.tree_size,
        "leaf_hash": merkle.leaf_hash(record["canonical"].encode("utf-8")).hex(),
        "root_hash": checkpoint.root_hash.hex(),
        "path": [node.hex() for node in path],
    }


async def _artifact_bytes(
    blobs: BlobStore, records: list[dict[str, Any]]
) -> dict[str, bytes]:
    contents: dict[str, bytes] = {}
    for record in records:
        if record["type"] != "ArtifactRecorded":
            continue
        artifact = json.loads(record["canonical"])["data"]["artifact"]
        if artifact["sha256"] in contents:
            continue
        chunks = [chunk async for chunk in blobs.iter_object(artifact["object_key"])]
        content = b"".join(chunks)
        if hashlib.sha256(content).hexdigest() != artifact["sha256"]:
            raise StorageError(
                f"artifact {artifact['name']}: the stored bytes differ from the "
                "recorded sha256; run `animus check-storage --content`"
            )
        contents[artifact["sha256"]] = content
    return contents


async def export_bundle(
    conn: AsyncConnection[Any],
    blobs: BlobStore | None,
    *,
    run_id: str,
    vkey: str,
    project_id: str | None = None,
    wait_seconds: float = 0.0,
    on_wait: Callable[[], None] | None = None,
) -> ExportedBundle:
    """Write the evidence bundle of one run; without `blobs`, no artifact bytes.

    `conn` should be in autocommit mode, so that waiting sees new checkpoints.

    Raises:
        NotFoundError: the run does not exist.
        CheckpointPending: no checkpoint covers its events within the wait.
        StorageError: an artifact's bytes are missing or changed.
        ChainError: the bundle would not verify (the database no longer
            matches its signed checkpoints, or the key is not the signer's).
    """
    records = await run_records(conn, run_id, project_id=project_id)
    checkpoint = await _covering_checkpoint(
        conn, records[-1]["position"], wait_seconds=wait_seconds, on_wait=on_wait
    )
    proofs = [await _proof(conn, record, checkpoint) for record in records]
    artifacts = await _artifact_bytes(blobs, records) if blobs is not None else {}
    try:
        data = assemble_bundle(
            run_id=run_id,
            records=records,
            proofs=proofs,
            note=checkpoint.note,
            vkey=vkey,
            artifacts=artifacts,
        )
        report = verify_bundle(data, key=load_key(vkey))
    except VerificationFailure as failure:
        raise ChainError(
            f"the bundle does not verify, so none was written: {failure}"
        ) from None
    log.info(
        "evidence_bundle_exported",
        run_id=run_id,
        events=report.events,
        tree_size=checkpoint.tree_size,
        size=len(data),
    )
    return ExportedBundle(data=data, report=report)


def export_command(settings: Settings, args: argparse.Namespace) -> int:
    """`animus evidence export --run ID --output FILE`: write one bundle.

    Raises:
        ConfigurationError: no checkpoint signing key exists yet.
        NotFoundError, CheckpointPending, StorageError: as `export_bundle`.
    """
    from rich.console import Console

    from animus.db import app_dsn
    from animus.errors import ConfigurationError
    from animus.evidence.keys import verifier
    from animus.stack import resolve_services

    output = Path(args.output)
    if output.is_dir() or args.output.endswith("/"):  # fail before the work
        raise ConfigurationError(
            f"--output: cannot write {args.output}: "
            + os.strerror(errno.EISDIR if output.is_dir() else errno.ENOENT)
        )
    settings = resolve_services(settings)
    verifying = verifier(settings)
    if verifying is None:
        raise ConfigurationError(
            "no checkpoint signing key yet: start the platform (animus up) so "
            "the checkpointer makes one and signs checkpoints"
        )
    vkey = str(verifying)
    console = Console(stderr=True)
    started = time.monotonic()
    with console.status(f"exporting the evidence of run {args.run}") as status:

        def waiting() -> None:
            status.update(
                "waiting for a signed checkpoint that covers the run "
                f"({time.monotonic() - started:.0f} s of {args.wait:g} s)"
            )

        exported = asyncio.run(
            _export(settings, app_dsn(settings), args, vkey=vkey, on_wait=waiting)
        )
    write_bundle(output, exported.data, shown=args.output)
    report = exported.report
    print(
        f"bundle written: {args.output} ({len(exported.data)} bytes), run "
        f"{report.run_id} ({report.status}), {report.events} events proven "
        f"against checkpoint {report.checkpoint.tree_size} signed by key "
        f"{report.checkpoint.key_id}, {report.artifacts} artifacts"
        + ("" if args.no_artifact_content else " with their bytes")
    )
    return 0


async def _export(
    settings: Settings,
    dsn: str,
    args: argparse.Namespace,
    *,
    vkey: str,
    on_wait: Callable[[], None],
) -> ExportedBundle:
    import psycopg

    from animus.db import translate_db_errors
    from animus.storage import blob_store

    with translate_db_errors():
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with conn:
        if args.no_artifact_content:
            blobs = None
        else:
            blobs = blob_store(settings, process="evidence export")
        with translate_db_errors():
            if blobs is None:
                return await export_bundle(
                    conn,
                    None,
                    run_id=args.run,
                    vkey=vkey,
                    wait_seconds=args.wait,
                    on_wait=on_wait,
                )
            async with blobs:
                return await export_bundle(
                    conn,
                    blobs,
                    run_id=args.run,
                    vkey=vkey,
                    wait_seconds=args.wait,
                    on_wait=on_wait,
                )


def write_bundle(path: Path, data: bytes, *, shown: str | None = None) -> None:
    """Write `data` to `path` atomically: a scratch file in the same folder,
    flushed to disk, then renamed over `path`. A failure leaves `path` as it
    was and no scratch file behind.

    Raises:
        ConfigurationError: `path` cannot be written (one line, naming it).
    """
    from animus.errors import ConfigurationError

    scratch = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(scratch, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(scratch, path)
    except OSError as exc:
        raise ConfigurationError(
            f"--output: cannot write {shown or path}: {exc.strerror or exc}"
        ) from None
    finally:
        scratch.unlink(missing_ok=True)
