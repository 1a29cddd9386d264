"""The read side: read models folded from events, the checkpointed projector,
replay, and the queries the gateway serves.

    projector  handlers per event type, `ProjectorService`, checkpoints
    replay     rebuild the read models from the log and compare with `rm`
    queries    JSON-ready reads over `rm` and the run streams
"""

from projections.projector import (
    DEFAULT_CHECKPOINT,
    DEFAULT_SCHEMA,
    HANDLERS,
    READ_MODEL_TABLES,
    BatchOutcome,
    Projector,
    ProjectorService,
    ProjectorState,
    SkippedEvent,
    project_batch,
    read_checkpoint,
    wait_for_position,
)
from projections.queries import (
    get_artifact,
    get_dataset,
    get_dataset_version,
    get_project,
    get_run,
    list_dataset_versions,
    list_datasets,
    list_projects,
    list_runs,
    run_lineage,
    run_timeline,
)
from projections.replay import ReplayReport, TableComparison, replay

__all__ = [
    "BatchOutcome",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_SCHEMA",
    "HANDLERS",
    "Projector",
    "ProjectorService",
    "ProjectorState",
    "READ_MODEL_TABLES",
    "ReplayReport",
    "SkippedEvent",
    "TableComparison",
    "get_artifact",
    "get_dataset",
    "get_dataset_version",
    "get_project",
    "get_run",
    "list_dataset_versions",
    "list_datasets",
    "list_projects",
    "list_runs",
    "project_batch",
    "read_checkpoint",
    "replay",
    "run_lineage",
    "run_timeline",
    "wait_for_position",
]
