"""`animus evidence` subcommands of the database side: the latest checkpoint,
the public key, and inclusion and consistency proofs.

Each is `function(settings, args) -> exit code`, named in
animus/cli.py's EVIDENCE_COMMANDS. They read the database of the running
`animus up` (or ANIMUS_DATABASE_URL) as `animus verify` does, print the
answer on stdout, and let errors reach the CLI's one-line handler.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from animus.errors import ConfigurationError, NotFoundError

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from animus.settings import Settings

__all__ = ["checkpoint_command", "consistency_command", "key_command", "prove_command"]

T = TypeVar("T")


def _read(
    settings: Settings, query: Callable[[AsyncConnection[Any]], Awaitable[T]]
) -> T:
    """Run one read against the platform's database."""
    from psycopg import AsyncConnection

    from animus.db import app_dsn, translate_db_errors
    from animus.stack import resolve_services

    dsn = app_dsn(resolve_services(settings))

    async def run() -> T:
        with translate_db_errors():
            async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
                return await query(conn)

    return asyncio.run(run())


def _emit(document: dict[str, Any], output: str | None) -> None:
    text = json.dumps(document, indent=2) + "\n"
    if output is None:
        print(text, end="")
        return
    try:
        Path(output).write_text(text)
    except OSError as exc:
        raise ConfigurationError(
            f"--output: cannot write {output}: {exc.strerror}"
        ) from None


def checkpoint_command(settings: Settings, args: argparse.Namespace) -> int:
    """Print the latest signed checkpoint."""
    from animus.evidence.checkpoints import latest_checkpoint

    checkpoint = _read(settings, latest_checkpoint)
    if checkpoint is None:
        raise NotFoundError("no checkpoint is signed yet")
    if args.json:
        print(json.dumps(checkpoint.as_json(), sort_keys=True))
        return 0
    print(
        f"checkpoint at tree size {checkpoint.tree_size}, signed "
        f"{checkpoint.as_json()['signed_at']} by key {checkpoint.key_id}\n"
        f"root hash  {checkpoint.root_hash.hex()}\n"
        f"chain head {checkpoint.chain_head.hex()}\n"
    )
    print(checkpoint.note, end="")
    return 0


def key_command(settings: Settings, args: argparse.Namespace) -> int:
    """Print the public key (vkey) that verifies this log's checkpoints."""
    from animus.evidence.keys import dev_key_path, verifier
    from animus.stack import resolve_services

    settings = resolve_services(settings)
    vkey = verifier(settings)
    if vkey is None:
        raise NotFoundError(
            "no signing key: ANIMUS_CHECKPOINT_SIGNING_KEY is unset and no key "
            f"was generated at {dev_key_path(settings)} (start `animus up` first)"
        )
    print(vkey)
    return 0


def prove_command(settings: Settings, args: argparse.Namespace) -> int:
    """Write the inclusion proof of one event under a checkpoint."""
    from animus.evidence.proofs import inclusion_proof_json

    proof = _read(
        settings, lambda conn: inclusion_proof_json(conn, args.position, args.tree_size)
    )
    _emit(proof, args.output)
    return 0


def consistency_command(settings: Settings, args: argparse.Namespace) -> int:
    """Write the consistency proof between two checkpoints."""
    from animus.evidence.proofs import consistency_proof_json

    proof = _read(
        settings, lambda conn: consistency_proof_json(conn, args.first, args.second)
    )
    _emit(proof, args.output)
    return 0
