"""The `animus` command: every process, the one-machine stack, the main job and
the operator's tools.

Process bodies live in their own units and are loaded by dotted name, so the
kernel stays free of imports from the units it launches.

Whatever goes wrong ends in one plain line on stderr: a wrong command line or
setting (exit 2), a service or check that failed (exit 1), and, as a last
resort, an unexpected error, whose traceback goes to `<home>/logs/errors.log`
rather than to the terminal. A reader that stops early (`animus verify | head
-1`) ends the command quietly with 141, as a shell shows a writer stopped by
SIGPIPE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import re
import select
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console

from animus.errors import AnimusError, ConfigurationError, TransientStoreError
from animus.settings import Settings, load_settings

PROCESSES: dict[str, str] = {
    "gateway": "gateway.main:run",
    "relay": "animus.relay:run",
    "projector": "projections.main:run",
    "coordinator": "commands.main:run",
    "executor": "executors.main:run",
    "checkpointer": "animus.evidence.checkpointer:run",
}

# `animus evidence SUBCOMMAND`: each runs "module:function(settings, args) -> int";
# its options are declared in `_evidence_parser`, one block per subcommand.
EVIDENCE_COMMANDS: dict[str, str] = {
    "checkpoint": "animus.evidence.cli:checkpoint_command",
    "key": "animus.evidence.cli:key_command",
    "prove": "animus.evidence.cli:prove_command",
    "consistency": "animus.evidence.cli:consistency_command",
    "export": "animus.evidence.export:export_command",
    "verify": "animus.evidence.offline:verify_command",
}

err = Console(stderr=True, highlight=False)


def _load(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


class _Parser(argparse.ArgumentParser):
    """A wrong command line is one plain line too, not usage and an error."""

    def error(self, message: str) -> NoReturn:
        command = re.match(r"argument COMMAND: invalid choice: '(.*?)'", message)
        if command:
            message = f"unknown command '{command.group(1)}'"
        elif "required: COMMAND" in message:
            message = "a command is required"
        where = self.prog.removeprefix("animus").strip()
        self.refuse(f"{where}: {message}" if where else message)

    def refuse(self, message: str, *, command: str = "") -> NoReturn:
        hint = f"{self.prog} {command}".strip()
        err.print(
            f"animus: {message} (try: {hint} --help)",
            markup=False,
            soft_wrap=True,
        )
        sys.exit(2)


def _parser() -> _Parser:
    parser = _Parser(
        prog="animus", description="Animus Datalab: an ML lab that proves what it ran."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("up", help="run the whole platform on this machine")
    demo = sub.add_parser("demo", help="run the main job end to end")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    verify = sub.add_parser(
        "verify", help="verify the hash chain from genesis and the signed checkpoints"
    )
    verify.add_argument(
        "--checkpoints",
        metavar="FILE",
        help="also check copies of checkpoints kept outside the database "
        "(JSON lines as the API or the bus give them, or signed notes)",
    )
    verify.add_argument(
        "--key", metavar="VKEY", help="the log's public key (animus evidence key)"
    )
    replay = sub.add_parser(
        "replay",
        help="rebuild read models and compare with live; or as of a past point "
        "(--until, --into), or what changed between two points (--diff)",
    )
    replay.add_argument("--json", action="store_true", help="print one JSON object")
    replay.add_argument(
        "--until",
        metavar="POINT",
        help="rebuild as of this position or RFC 3339 instant (needs --into)",
    )
    replay.add_argument("--into", metavar="SCHEMA", help="the schema to create")
    replay.add_argument(
        "--replace",
        action="store_true",
        help="replace the --into schema if an earlier replay made it",
    )
    replay.add_argument(
        "--diff",
        nargs=2,
        metavar=("A", "B"),
        help="what changed in the read models between two points "
        "(positions or instants; B may be head or now)",
    )
    check = sub.add_parser(
        "check-storage", help="check stored objects against the events"
    )
    check.add_argument(
        "--content",
        action="store_true",
        help="also re-hash every object against its recorded sha256 (reads all)",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")
    sub.add_parser("migrate", help="apply database migrations")
    erase = sub.add_parser(
        "erase-subject",
        help="erase a data subject: destroy their key, so their names, emails "
        "and client addresses read as erased everywhere",
    )
    erase.add_argument("subject", metavar="SUBJECT", help="pseudonym: subj_ + 32 hex")
    erase.add_argument(
        "--reason", default="", help="kept in the log for ever: no personal data"
    )
    erase.add_argument("--json", action="store_true", help="print one JSON object")
    _evidence_parser(sub)
    _siem_parser(sub)
    for name in PROCESSES:
        sub.add_parser(name, help=f"run the {name} process alone")
    return parser


def _siem_parser(sub: Any) -> None:
    """`animus siem follow`: the SIEM stream as NDJSON, checked on the way."""
    siem = sub.add_parser("siem", help="the SIEM stream (contracts/siem.md)")
    tools = siem.add_subparsers(dest="siem_command", required=True, metavar="SUB")
    follow = tools.add_parser(
        "follow",
        help="print audit records as NDJSON; a gap or a changed record is "
        "reported on stderr (exit 1)",
    )
    follow.add_argument(
        "--after",
        "--from",  # its first name, which read as "starting at": deprecated
        dest="after",
        type=int,
        default=0,
        metavar="POSITION",
        help="print the records after this position, not including it (a new "
        "consumer only; --from is a deprecated alias)",
    )
    follow.add_argument("--project", help="only this project (_platform: none)")
    follow.add_argument("--type", help="only this event type")
    follow.add_argument(
        "--durable",
        metavar="NAME",
        help="a durable consumer: resumes where it stopped, on the server",
    )
    follow.add_argument(
        "--idle-exit",
        type=float,
        metavar="SECONDS",
        help="stop after this long without a record (default: follow for ever)",
    )


def _evidence_parser(sub: Any) -> None:
    """`animus evidence`: signed checkpoints, proofs, bundles."""
    evidence = sub.add_parser(
        "evidence", help="signed checkpoints, proofs and evidence bundles"
    )
    tools = evidence.add_subparsers(
        dest="evidence_command", required=True, metavar="SUBCOMMAND"
    )

    checkpoint = tools.add_parser("checkpoint", help="show the latest checkpoint")
    checkpoint.add_argument("--json", action="store_true", help="print its JSON")

    tools.add_parser("key", help="print the log's public key (vkey)")

    prove = tools.add_parser("prove", help="inclusion proof of one event")
    prove.add_argument("--position", type=int, required=True, metavar="P")
    prove.add_argument(
        "--tree-size",
        type=int,
        metavar="N",
        help="a checkpoint's tree size (default: the latest checkpoint)",
    )
    prove.add_argument("--output", metavar="FILE", help="write the proof JSON here")

    consistency = tools.add_parser(
        "consistency", help="consistency proof between two tree sizes"
    )
    consistency.add_argument("--first", type=int, required=True, metavar="M")
    consistency.add_argument("--second", type=int, required=True, metavar="N")
    consistency.add_argument(
        "--output", metavar="FILE", help="write the proof JSON here"
    )

    export = tools.add_parser("export", help="write a run's evidence bundle")
    export.add_argument("--run", required=True, metavar="ID", help="the run's id")
    export.add_argument("--output", required=True, metavar="FILE")
    export.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="wait this long for a signed checkpoint that covers the run",
    )
    export.add_argument(
        "--no-artifact-content",
        action="store_true",
        help="leave the artifacts' bytes out (their sha256 stays proven)",
    )

    verify = tools.add_parser(
        "verify",
        help="check a bundle, or checkpoints, proofs and segments, offline",
    )
    verify.add_argument("bundle", nargs="?", metavar="BUNDLE")
    verify.add_argument(
        "--key", metavar="VKEY", help="the log's public key (text or file), pinned"
    )
    verify.add_argument(
        "--trust-bundle-key",
        action="store_true",
        help="without --key, check with the bundle's own key.vkey (proves "
        "nothing unless you compare its key id with the log's)",
    )
    verify.add_argument(
        "--max-bytes",
        type=int,
        metavar="N",
        help="refuse a bundle or file larger than this (default 4 GiB)",
    )
    for option, what in (
        ("--checkpoint", "a signed checkpoint note"),
        ("--proof", "an inclusion proof JSON"),
        ("--segment", "NDJSON chain records"),
        ("--consistency", "a consistency proof JSON"),
    ):
        verify.add_argument(option, action="append", metavar="FILE", help=what)
    verify.add_argument(
        "--sparse",
        action="store_true",
        help="segments may skip positions (filtered records)",
    )


def _run_process(name: str, settings: Settings) -> int:
    from animus.runtime import run_until_signalled
    from animus.telemetry import configure_logging

    configure_logging(level=settings.log_level, fmt=settings.log_format, process=name)
    body: Callable[[Settings, asyncio.Event], Awaitable[None]] = _load(PROCESSES[name])
    asyncio.run(run_until_signalled(name, lambda stop: body(settings, stop)))
    return 0


def _verify(
    settings: Settings, *, checkpoints: str | None = None, key: str | None = None
) -> int:
    from animus.db import app_dsn
    from animus.progress import counting_bar
    from animus.stack import resolve_services
    from animus.verify import verify_chain

    settings = resolve_services(settings)
    dsn = app_dsn(settings)
    vkey = None
    if key is not None:  # a bad --key fails now, not after the chain walk
        vkey = _load("animus.evidence.audit:parse_key_option")(key)
    with counting_bar("verifying") as bar:
        task = bar.add_task("verify", total=None)
        result = verify_chain(dsn, progress=lambda done: bar.advance(task, done))
    if not result.verified:
        brk = result.first_break
        assert brk is not None
        print(f"chain broken at position {brk.position}: {brk.reason}")
        return 1
    print(f"chain verified: {result.events} events, head {result.head_hash.hex()}")
    check: Callable[..., int] = _load("animus.evidence.audit:verify_command")
    return check(settings, dsn, checkpoints=checkpoints, key=vkey)


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    """`animus replay`: compare with live, or `--until --into`, or `--diff`."""
    from animus.stack import resolve_services

    as_json = args.json
    if args.until is not None or args.into is not None or args.diff is not None:
        point_in_time = _load("projections.pointintime:replay_command")
        return int(point_in_time(resolve_services(settings), args))
    if args.replace:
        raise ConfigurationError("replay: --replace goes with --until and --into")
    settings = resolve_services(settings)
    replay = _load("projections.replay:replay_command")
    report: dict[str, Any] = asyncio.run(replay(settings))
    if as_json:
        print(json.dumps(report, sort_keys=True))
    else:
        for table, row in sorted(report["tables"].items()):
            mark = "equal" if row["equal"] else "DIFFERENT"
            print(
                f"{table:<20} live {row['live']:>8}  "
                f"replayed {row['replayed']:>8}  {mark}"
            )
        print("replay equals live" if report["equal"] else "replay DIFFERS from live")
    return 0 if report["equal"] else 1


def _check_storage(settings: Settings, *, content: bool, as_json: bool) -> int:
    from rich.progress import Progress

    from animus.db import app_dsn
    from animus.stack import resolve_services
    from animus.storage import blob_store
    from animus.storecheck import RichProgress, StorageReport, check_storage

    settings = resolve_services(settings)
    dsn = app_dsn(settings)

    async def check(progress: Progress) -> StorageReport:
        async with blob_store(settings, process="check-storage") as blobs:
            return await check_storage(
                blobs=blobs,
                conninfo=dsn,
                older_than=settings.storage_orphan_after_seconds,
                content=content,
                progress=RichProgress(progress),
            )

    with RichProgress.bar(Console(stderr=True)) as progress:
        report = asyncio.run(check(progress))
    if as_json:
        print(json.dumps(report.as_json(), sort_keys=True))
    else:
        print("\n".join(report.lines()))
    return 0 if report.clean else 1


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command in PROCESSES:
        from animus.stack import resolve_services

        return _run_process(args.command, resolve_services(settings))
    if args.command == "up":
        from animus.stack import run_up

        return run_up(settings)
    if args.command == "demo":
        return int(_load("animus.demo:run_demo")(settings, as_json=args.json))
    if args.command == "verify":
        return _verify(settings, checkpoints=args.checkpoints, key=args.key)
    if args.command == "evidence":
        command = EVIDENCE_COMMANDS[args.evidence_command]
        return int(_load(command)(settings, args))
    if args.command == "siem":
        return int(_load("animus.siem.follow:follow_command")(settings, args))
    if args.command == "replay":
        return _replay(settings, args)
    if args.command == "check-storage":
        return _check_storage(settings, content=args.content, as_json=args.json)
    if args.command == "erase-subject":
        return int(_load("commands.erasure:erase_command")(settings, args))
    if args.command == "migrate":
        from animus.db import owner_dsn
        from animus.migrate import migrate
        from animus.stack import resolve_services

        migrate(owner_dsn(resolve_services(settings)))
        print("database migrated")
        return 0
    raise ConfigurationError(f"unknown command {args.command}")


def _database_hint() -> str:
    """Where the database was expected, without credentials."""
    from urllib.parse import urlsplit

    from animus.stack import resolve_services

    with contextlib.suppress(AnimusError, ValueError):
        dsn = resolve_services(load_settings()).database_url
        if dsn:
            parts = urlsplit(dsn)
            return (
                f" (is PostgreSQL running at {parts.hostname}:{parts.port or 5432}? "
                "see ANIMUS_DATABASE_URL)"
            )
    return ""


def _internal_error(exc: BaseException) -> str:
    """Record an unexpected error's traceback off the terminal; say where."""
    path = Path(os.environ.get("ANIMUS_HOME") or ".animus").resolve() / "logs"
    path /= "errors.log"
    record = {
        "event": "internal_error",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": sys.argv[1:2],
        "error": type(exc).__name__,
        "exception": "".join(traceback.format_exception(exc)),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as log:
            log.write(json.dumps(record) + "\n")
    except OSError:
        return "see logs"
    return f"see {path}"


def _platform_error(exc: BaseException) -> AnimusError | None:
    """The error of ours that `exc` is or groups (a task group's failure)."""
    if isinstance(exc, AnimusError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if found := _platform_error(inner):
                return found
    return None


def _closed_stdout(exc: BaseException) -> bool:
    """Whether `exc` is stdout's reader having gone (`animus verify | head
    -1`), not some other pipe or socket: a pipe without readers polls as an
    error (where poll is missing, any broken pipe counts)."""
    if not isinstance(exc, BrokenPipeError):
        if isinstance(exc, BaseExceptionGroup):
            return any(_closed_stdout(inner) for inner in exc.exceptions)
        return False
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (AttributeError, OSError, ValueError):
        return True
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _quiet_stdout() -> int:
    """Python's documented answer to a closed stdout: point it at devnull so
    the flush at exit cannot fail again, and end as a shell shows a writer
    killed by SIGPIPE (128 + 13), with nothing said: the reader chose to stop."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.refuse(
            f"{args.command}: unknown argument{'s' if len(unknown) > 1 else ''} "
            f"{' '.join(unknown)}",
            command=args.command,
        )
    try:
        if args.command == "evidence" and args.evidence_command == "verify":
            # offline by design: no settings, no database, no network
            code = int(_load(EVIDENCE_COMMANDS["verify"])(None, args))
        else:
            settings = load_settings()
            if args.command not in PROCESSES:
                from animus.telemetry import configure_logging

                # operator tools keep stdout for their answer and log only
                # what went wrong, to stderr (`up` and the demo set their own)
                level = "error" if settings.log_level == "error" else "warning"
                configure_logging(level=level, fmt=settings.log_format)
            code = _dispatch(args, settings)
        sys.stdout.flush()  # a closed pipe fails here, not at exit
        return code
    except TransientStoreError as exc:
        err.print(
            f"animus: {exc.detail}{_database_hint()}", markup=False, soft_wrap=True
        )
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last resort: one line
        if _closed_stdout(exc):
            return _quiet_stdout()
        ours = _platform_error(exc)
        if ours is None:
            err.print(
                f"animus: internal error: {type(exc).__name__}; {_internal_error(exc)}",
                markup=False,
                soft_wrap=True,
            )
            return 1
        err.print(f"animus: {ours.detail}", markup=False, soft_wrap=True)
        return 2 if isinstance(ours, ConfigurationError) else 1


if __name__ == "__main__":
    sys.exit(main())
