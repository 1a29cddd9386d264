"""The progress bar of the operator's tools (`verify`, `replay`).

On stderr, so stdout holds only the answer (`--json` stays parseable), and
only on a terminal: elsewhere rich would leave an empty line behind.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn


def counting_bar(verb: str) -> Progress:
    """A transient bar counting positions, labelled with `verb` ("verifying")."""
    console = Console(stderr=True)
    return Progress(
        TextColumn(verb),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
