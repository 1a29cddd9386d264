"""Reads the gateway serves: projects, datasets, runs, timelines and lineage.

Every function takes the application role's pool and returns plain,
JSON-ready values (timestamps as ISO 8601 strings, no bytes). Functions that
fetch one resource raise `NotFoundError` when it does not exist.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from animus.db import translate_db_errors
from animus.errors import NotFoundError, ValidationError
from contracts.streams import RUN_STATUSES, run_stream
from projections.projector import DEFAULT_SCHEMA

Row = dict[str, Any]

_RUN_SUMMARY = (
    "run_id, project_id, name, status, attempt, spec_hash, plan_hash, executor, "
    "submitted_by, submitted_at, started_at, finished_at, recorded_finished_at, "
    "finished_at_source, failure_reason, failure_message, cancel_requested, "
    "exit_code, rejected_reports, last_position"
)
_RUN_DETAIL = _RUN_SUMMARY + ", spec, plan, metrics_error"
_ARTIFACT = "name, sha256, size, object_key, kind"
_DATASET_VERSION = (
    "project_id, dataset_id, version, sha256, size, object_key, filename, "
    "content_type, committed_at, committed_by"
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


@lru_cache(maxsize=256)
def _compose(query: str, schema: str) -> sql.Composed:
    """`query` with `{rm}` naming the read-model schema (`rm`, or a snapshot)."""
    return sql.SQL(query).format(rm=sql.Identifier(schema))


async def _fetch_all(
    pool: AsyncConnectionPool,
    query: str,
    params: Mapping[str, Any],
    schema: str = DEFAULT_SCHEMA,
) -> list[Row]:
    with translate_db_errors():
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_compose(query, schema), params)
            rows = await cur.fetchall()
    return [_jsonable(row) for row in rows]


async def _fetch_one(
    pool: AsyncConnectionPool,
    query: str,
    params: Mapping[str, Any],
    missing: str,
    schema: str = DEFAULT_SCHEMA,
) -> Row:
    rows = await _fetch_all(pool, query, params, schema)
    if not rows:
        raise NotFoundError(missing)
    return rows[0]


async def list_projects(
    pool: AsyncConnectionPool,
    *,
    limit: int = 50,
    offset: int = 0,
    schema: str = DEFAULT_SCHEMA,
) -> list[Row]:
    """Projects in the order they were created."""
    return await _fetch_all(
        pool,
        "SELECT project_id, name, description, created_at, created_by, position "
        "FROM {rm}.projects ORDER BY position LIMIT %(limit)s OFFSET %(offset)s",
        {"limit": limit, "offset": offset},
        schema=schema,
    )


async def get_project(
    pool: AsyncConnectionPool, project_id: str, *, schema: str = DEFAULT_SCHEMA
) -> Row:
    """One project.

    Raises:
        NotFoundError: no project has this id.
    """
    return await _fetch_one(
        pool,
        "SELECT project_id, name, description, created_at, created_by, position "
        "FROM {rm}.projects WHERE project_id = %(project_id)s",
        {"project_id": project_id},
        f"project {project_id} does not exist",
        schema=schema,
    )


async def list_datasets(
    pool: AsyncConnectionPool, project_id: str, *, schema: str = DEFAULT_SCHEMA
) -> list[Row]:
    """The datasets of a project, by id."""
    return await _fetch_all(
        pool,
        "SELECT project_id, dataset_id, name, description, created_at, created_by, "
        "latest_version FROM {rm}.datasets WHERE project_id = %(project_id)s "
        "ORDER BY dataset_id",
        {"project_id": project_id},
        schema=schema,
    )


async def get_dataset(
    pool: AsyncConnectionPool,
    project_id: str,
    dataset_id: str,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> Row:
    """One dataset with its latest committed version number (0 for none yet).

    Raises:
        NotFoundError: the project has no dataset with this id.
    """
    return await _fetch_one(
        pool,
        "SELECT project_id, dataset_id, name, description, created_at, created_by, "
        "latest_version FROM {rm}.datasets "
        "WHERE project_id = %(project_id)s AND dataset_id = %(dataset_id)s",
        {"project_id": project_id, "dataset_id": dataset_id},
        f"dataset {dataset_id} does not exist in project {project_id}",
        schema=schema,
    )


async def list_dataset_versions(
    pool: AsyncConnectionPool,
    project_id: str,
    dataset_id: str,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> list[Row]:
    """The committed versions of a dataset, oldest first."""
    return await _fetch_all(
        pool,
        f"SELECT {_DATASET_VERSION} FROM {{rm}}.dataset_versions "
        "WHERE project_id = %(project_id)s AND dataset_id = %(dataset_id)s "
        "ORDER BY version",
        {"project_id": project_id, "dataset_id": dataset_id},
        schema=schema,
    )


async def get_dataset_version(
    pool: AsyncConnectionPool,
    project_id: str,
    dataset_id: str,
    version: int,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> Row:
    """One committed dataset version with its sha256 and object key.

    Raises:
        NotFoundError: the dataset has no such committed version.
    """
    return await _fetch_one(
        pool,
        f"SELECT {_DATASET_VERSION} FROM {{rm}}.dataset_versions "
        "WHERE project_id = %(project_id)s AND dataset_id = %(dataset_id)s "
        "AND version = %(version)s",
        {"project_id": project_id, "dataset_id": dataset_id, "version": version},
        f"dataset {dataset_id} of project {project_id} has no version {version}",
        schema=schema,
    )


async def list_runs(
    pool: AsyncConnectionPool,
    project_id: str,
    *,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
    schema: str = DEFAULT_SCHEMA,
) -> list[Row]:
    """Runs of a project, newest first, optionally of one status.

    Raises:
        ValidationError: `status` is not a run status.
    """
    if status is not None and status not in RUN_STATUSES:
        raise ValidationError(f"unknown run status {status!r}")
    return await _fetch_all(
        pool,
        f"SELECT {_RUN_SUMMARY} FROM {{rm}}.runs WHERE project_id = %(project_id)s "
        "AND (%(status)s::text IS NULL OR status = %(status)s) "
        "ORDER BY submitted_at DESC, run_id LIMIT %(limit)s OFFSET %(offset)s",
        {"project_id": project_id, "status": status, "limit": limit, "offset": offset},
        schema=schema,
    )


async def get_run(
    pool: AsyncConnectionPool,
    project_id: str,
    run_id: str,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> Row:
    """One run with its spec, plan, metrics (name -> value) and artifacts.

    Raises:
        NotFoundError: the project has no run with this id.
    """
    run = await _run_row(pool, project_id, run_id, _RUN_DETAIL, schema)
    metrics = await _fetch_all(
        pool,
        "SELECT name, value FROM {rm}.run_metrics WHERE run_id = %(run_id)s "
        "ORDER BY name",
        {"run_id": run_id},
        schema,
    )
    run["metrics"] = {row["name"]: row["value"] for row in metrics}
    run["artifacts"] = await _artifacts(pool, run_id, schema)
    return run


async def _run_row(
    pool: AsyncConnectionPool, project_id: str, run_id: str, columns: str, schema: str
) -> Row:
    return await _fetch_one(
        pool,
        f"SELECT {columns} FROM {{rm}}.runs "
        "WHERE project_id = %(project_id)s AND run_id = %(run_id)s",
        {"project_id": project_id, "run_id": run_id},
        f"run {run_id} does not exist in project {project_id}",
        schema=schema,
    )


async def _artifacts(pool: AsyncConnectionPool, run_id: str, schema: str) -> list[Row]:
    return await _fetch_all(
        pool,
        f"SELECT {_ARTIFACT} FROM {{rm}}.run_artifacts WHERE run_id = %(run_id)s "
        "ORDER BY name",
        {"run_id": run_id},
        schema=schema,
    )


async def run_timeline(
    pool: AsyncConnectionPool,
    project_id: str,
    run_id: str,
    *,
    as_of: int | None = None,
) -> list[Row]:
    """Every event of a run's stream, in stream order, straight from the log;
    with `as_of`, only the events up to that position.

    Raises:
        NotFoundError: the project has no run with this id.
    """
    events = await _fetch_all(
        pool,
        "SELECT position, stream_version, type, recorded_at, data, "
        "metadata -> 'actor' AS actor FROM events "
        "WHERE stream_id = %(stream_id)s AND project_id = %(project_id)s "
        "AND (%(as_of)s::bigint IS NULL OR position <= %(as_of)s) "
        "ORDER BY stream_version",
        {"stream_id": run_stream(run_id), "project_id": project_id, "as_of": as_of},
    )
    if not events:
        raise NotFoundError(f"run {run_id} does not exist in project {project_id}")
    return events


async def run_lineage(
    pool: AsyncConnectionPool,
    project_id: str,
    run_id: str,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> Row:
    """What a run consumed and produced, with digests, and the edges between.

    Raises:
        NotFoundError: the project has no run with this id.
    """
    await _run_row(pool, project_id, run_id, "run_id", schema)
    params = {"project_id": project_id, "run_id": run_id}
    inputs = await _fetch_all(
        pool,
        "SELECT e.source_id AS id, v.dataset_id, v.version, v.sha256, v.size, "
        "v.object_key FROM {rm}.lineage_edges AS e "
        "JOIN {rm}.dataset_versions AS v ON v.project_id = e.project_id "
        "AND v.dataset_id = split_part(e.source_id, '@', 1) "
        "AND v.version = split_part(e.source_id, '@', 2)::integer "
        "WHERE e.project_id = %(project_id)s AND e.target_kind = 'run' "
        "AND e.target_id = %(run_id)s AND e.relation = 'input_of' "
        "ORDER BY e.source_id",
        params,
        schema=schema,
    )
    outputs = await _fetch_all(
        pool,
        "SELECT e.target_id AS id, a.name, a.sha256, a.size, a.object_key, a.kind "
        "FROM {rm}.lineage_edges AS e JOIN {rm}.run_artifacts AS a "
        "ON a.run_id = e.source_id AND e.target_id = a.run_id || '/' || a.name "
        "WHERE e.project_id = %(project_id)s AND e.source_kind = 'run' "
        "AND e.source_id = %(run_id)s AND e.relation = 'produced' "
        "ORDER BY a.name",
        params,
        schema=schema,
    )
    edges = await _fetch_all(
        pool,
        "SELECT source_kind, source_id, target_kind, target_id, relation "
        "FROM {rm}.lineage_edges WHERE project_id = %(project_id)s "
        "AND ((target_kind = 'run' AND target_id = %(run_id)s) "
        "OR (source_kind = 'run' AND source_id = %(run_id)s)) "
        "ORDER BY relation, source_id, target_id",
        params,
        schema=schema,
    )
    return {
        "project_id": project_id,
        "run_id": run_id,
        "inputs": inputs,
        "outputs": outputs,
        "edges": edges,
    }


async def get_artifact(
    pool: AsyncConnectionPool,
    project_id: str,
    run_id: str,
    name: str,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> Row:
    """One artifact of a run, with its sha256 and object key.

    Raises:
        NotFoundError: the run does not exist or has no artifact of this name.
    """
    return await _fetch_one(
        pool,
        "SELECT a.run_id, a.name, a.sha256, a.size, a.object_key, a.kind "
        "FROM {rm}.run_artifacts AS a JOIN {rm}.runs AS r USING (run_id) "
        "WHERE r.project_id = %(project_id)s AND a.run_id = %(run_id)s "
        "AND a.name = %(name)s",
        {"project_id": project_id, "run_id": run_id, "name": name},
        f"run {run_id} of project {project_id} has no artifact {name}",
        schema=schema,
    )
