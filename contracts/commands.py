"""Commands: what a caller asks the platform to do (imperative names).

Request bodies of the HTTP API are these models; unknown fields are refused.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from contracts._text import Identifier, LongText, ShortText


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CreateProject(Command):
    project_id: Identifier
    name: ShortText
    description: LongText = ""


class RegisterDataset(Command):
    dataset_id: Identifier
    name: ShortText
    description: LongText = ""


class CancelRun(Command):
    reason: ShortText = "requested by user"


class EraseSubject(Command):
    """Destroy a data subject's key; the reason is kept in the log for ever,
    so it must not contain personal data."""

    reason: ShortText = ""
