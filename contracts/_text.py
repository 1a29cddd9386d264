"""Text rules for every string that can end up in the event log.

PostgreSQL's jsonb refuses U+0000 and lone UTF-16 surrogates, so such values
are refused at the contract boundary, before any side effect happens.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

_FORBIDDEN = re.compile("[\x00\ud800-\udfff]")


def check_storable(value: str) -> str:
    """Refuse text that the event store cannot keep exactly."""
    if _FORBIDDEN.search(value):
        raise ValueError("text must not contain NUL or unpaired surrogates")
    return value


StorableText = Annotated[str, AfterValidator(check_storable)]
Identifier = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$"),
]
"""A resource id: lowercase letters, digits and dashes, at most 63 characters."""

ParameterName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"),
]
"""A run parameter's name: a letter or underscore, then letters, digits, `_.-`."""

# The length constraint comes before the storability check: a constraint
# after a validator is checked as a generic sequence ("at most 200 items").
ShortText = Annotated[
    str, StringConstraints(max_length=200), AfterValidator(check_storable)
]
"""Storable text of at most 200 characters."""

LongText = Annotated[
    str, StringConstraints(max_length=10_000), AfterValidator(check_storable)
]
"""Storable text of at most 10,000 characters."""
