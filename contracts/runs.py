"""Run specifications and plans.

A spec is what the user asked for; a plan is the spec with every reference
resolved to an immutable id and digest. Both hash deterministically.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts._text import Identifier, ParameterName, ShortText, StorableText

ParameterValue = StorableText | int | float | bool

FailureReason = Literal[
    "nonzero_exit",
    "timeout",
    "out_of_memory",
    "exec_failed",
    "input_verification_failed",
    "output_upload_failed",
    "lost",
    "sandbox_unavailable",
    "internal_error",
    "report_rejected",
]
"""Why a run failed. `lost`: nothing was heard from it for the liveness bound;
`report_rejected`: its terminal report could not be read or stored, so it was
dead-lettered and the run ended without trusting its content."""


class DatasetRef(BaseModel):
    """One input: a committed version of a dataset in the same project."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    dataset: Identifier
    version: int = Field(ge=1, description="Ordinal of a committed version")


class Resources(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    cpu: float = Field(default=1.0, gt=0, le=64)
    memory_mb: int = Field(default=1024, ge=16, le=1_048_576)
    gpus: int = Field(
        default=0,
        ge=0,
        le=16,
        description="GPUs to give the workload; the local executor has none "
        "and refuses a spec that asks for any",
    )


class RunSpec(BaseModel):
    """What to run, on which inputs, with which parameters and limits.

    Inputs appear read-only at `/inputs/<name>` inside the workload; files
    written under `/outputs` become artifacts; `/outputs/metrics.json` (an
    object of numbers) becomes the run's metrics.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ShortText = ""
    command: list[StorableText] = Field(
        min_length=1,
        max_length=256,
        description="argv of the workload; `{param}` is not interpolated",
    )
    image: ShortText | None = Field(
        default=None, description="Container image (Kubernetes executor)"
    )
    inputs: dict[Identifier, DatasetRef] = Field(default_factory=dict)
    parameters: dict[ParameterName, ParameterValue] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    timeout_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    secret_refs: list[Identifier] = Field(
        default_factory=list,
        max_length=32,
        description="Secrets to inject at launch; the local executor cannot "
        "inject any and refuses a spec that names some",
    )
    executor: Literal["local"] = "local"

    @field_validator("command")
    @classmethod
    def _check_argv_size(cls, value: list[str]) -> list[str]:
        if sum(len(arg) for arg in value) > 64_000:
            raise ValueError("command is longer than 64,000 characters")
        return value

    @field_validator("parameters")
    @classmethod
    def _check_parameters_size(
        cls, value: dict[str, ParameterValue]
    ) -> dict[str, ParameterValue]:
        if len(value) > 256:
            raise ValueError("at most 256 parameters")
        for item in value.values():
            if isinstance(item, str) and len(item) > 64_000:
                raise ValueError("a parameter value is longer than 64,000 characters")
        return value


class ResolvedInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    dataset: Identifier
    version: int
    sha256: str
    size: int
    object_key: str


class RunPlan(BaseModel):
    """The spec with every input resolved to its content digest."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    spec_hash: str
    command: list[str]
    image: str | None
    inputs: dict[str, ResolvedInput]
    parameters: dict[str, ParameterValue]
    resources: Resources
    timeout_seconds: int
    secret_refs: list[str]
    executor: str


class ArtifactInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(description="Path relative to /outputs, or logs/run.log")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    object_key: str
    kind: Literal["output", "log"] = "output"
