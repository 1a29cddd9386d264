"""The read side: read models folded from events, the checkpointed projector,
replay, and the queries the gateway serves.

    projector  handlers per event type, `ProjectorService`, checkpoints
    replay     rebuild the read models from the log and compare with `rm`
    pointintime
               the read models as of a past point (`animus replay --until`)
               and what changed between two points (`animus replay --diff`)
    asof       snapshots `rm_asof_<P>` for the gateway's reads `as_of=P`:
               built once on first use, kept up to ANIMUS_AS_OF_SNAPSHOTS
    queries    JSON-ready reads over `rm` (or a snapshot) and the run streams
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
