"""The project aggregate: whether a project exists, and the decision to create it.

State is folded from the project stream (`contracts.streams.project_stream`);
decisions are pure and raise from `animus.errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from animus.errors import AlreadyExistsError, NotFoundError
from animus.eventstore import RecordedEvent
from contracts.commands import CreateProject
from contracts.events import DomainEvent, ProjectCreated, decode_event

STREAM_TYPE = "project"


@dataclass(frozen=True, kw_only=True)
class ProjectState:
    """What the write side knows about one project."""

    project_id: str
    version: int = 0
    name: str | None = None

    @property
    def exists(self) -> bool:
        return self.name is not None


def fold_project(project_id: str, events: Sequence[RecordedEvent]) -> ProjectState:
    """Fold the project stream into its state."""
    state = ProjectState(project_id=project_id)
    for recorded in events:
        state = _evolve(state, recorded)
    return state


def _evolve(state: ProjectState, recorded: RecordedEvent) -> ProjectState:
    event = decode_event(recorded.type, recorded.data)
    state = replace(state, version=recorded.stream_version)
    if isinstance(event, ProjectCreated):
        state = replace(state, name=event.name)
    return state


def decide_create_project(
    state: ProjectState, cmd: CreateProject
) -> list[DomainEvent]:
    """Create the project once.

    Raises:
        AlreadyExistsError: the project exists.
    """
    if state.exists:
        raise AlreadyExistsError(f"project {cmd.project_id} already exists")
    return [
        ProjectCreated(
            project_id=cmd.project_id, name=cmd.name, description=cmd.description
        )
    ]


def check_project_exists(state: ProjectState) -> None:
    """Refuse to act on a project that was never created.

    Raises:
        NotFoundError: the project does not exist.
    """
    if not state.exists:
        raise NotFoundError(f"project {state.project_id} does not exist")
