"""Helpers shared by the SIEM tests: events to append, the record schema."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import jsonschema

from animus.eventstore import EventStore, NewEvent, RecordedEvent
from contracts.events import DatasetRegistered, ProjectCreated
from contracts.streams import dataset_stream, project_stream

SCHEMA_PATH = (
    Path(__file__).resolve().parents[2] / "contracts" / "siem-record.schema.json"
)
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def check_schema(record: dict[str, Any]) -> None:
    """Fail with every schema error of `record`."""
    errors = [error.message for error in VALIDATOR.iter_errors(record)]
    assert not errors, errors


def new_project_id() -> str:
    return f"p-{secrets.token_hex(4)}"


async def append_projects(store: EventStore, count: int) -> list[RecordedEvent]:
    """`count` new projects, one ProjectCreated each, in one append."""
    events = []
    for _ in range(count):
        project_id = new_project_id()
        events.append(
            NewEvent(
                stream_type="project",
                stream_id=project_stream(project_id),
                project_id=project_id,
                event=ProjectCreated(project_id=project_id, name='P ü "quoted"'),
            )
        )
    return await store.append(events, metadata={"actor": "siem-test"})


async def append_dataset(
    store: EventStore, project_id: str, dataset_id: str | None = None
) -> RecordedEvent:
    dataset_id = dataset_id or f"d-{secrets.token_hex(4)}"
    [event] = await store.append(
        [
            NewEvent(
                stream_type="dataset",
                stream_id=dataset_stream(project_id, dataset_id),
                project_id=project_id,
                event=DatasetRegistered(
                    project_id=project_id, dataset_id=dataset_id, name="D"
                ),
            )
        ]
    )
    return event
