"""Point-in-time read models: the read models as they stood at a past point,
and what changed between two points.

A *point* names a prefix of the log. A position P means events 1..P. An
instant T (RFC 3339 / ISO 8601 with a zone) means the longest prefix whose
events were all recorded at or before T: P = (first position recorded after
T) - 1, or the head when none was. Positions are the order the chain and the
Merkle tree are built in, so a point is always a prefix, even if two
appenders' clocks disagreed; every answer says which position an instant
resolved to. A point before the first event, beyond the head, or an instant
in the future is refused.

Every state here is folded by `Projector(schema)`, the handlers the live
projector runs (projections/projector.py), into a schema holding empty copies
of the `rm` tables (`replay._create_schema`). Events are read on the folding
connection itself, in batches, so a fold needs one connection.

- `replay_into` (`animus replay --until P --into S`) folds up to P into a
  fresh schema `rm_replay_<hex>`, then renames it to S in one transaction:
  S appears complete or not at all, and `--replace` swaps an old replay for
  the new one atomically. S must be a plain lower-case identifier and not a
  schema of the platform (`rm`, `public`, `pg_*`, `information_schema`, or
  the prefixes `rm_asof_`, `rm_replay_`, `rm_diff_`); `--replace` replaces
  only a schema an earlier `animus replay --into` made (its comment says so).
- `diff` (`animus replay --diff A B`) builds both states by replay, into
  scratch schemas `rm_diff_<hex>_a` and `_b` that are dropped in a `finally`
  whatever happens (an error, or Ctrl-C: `asyncio.run` cancels the task and
  the `finally` still runs; only a second Ctrl-C during the drop, or a
  killed process, can leave them, recognisable by their prefix). The later
  state starts as a copy of the earlier one's rows and folds only the events
  between, so a diff folds max(A, B) events, not A + B. The two schemas are
  then compared in SQL by each table's primary key (a full join on the key,
  rows compared as JSON), giving rows added, removed, and changed with their
  changed columns. Folding in memory instead would need a second
  implementation of every handler; replaying keeps one fold. The differing
  rows are held in memory, so a diff over a very long stretch of history is
  as large as what changed.

All of this runs as the owner role: it creates and drops schemas.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from animus.db import open_pool, translate_db_errors
from animus.errors import ValidationError
from animus.eventstore import _SELECT, RecordedEvent, _row_to_event
from projections.projector import (
    DEFAULT_SCHEMA,
    READ_MODEL_TABLES,
    Projector,
    SkippedEvent,
)
from projections.replay import _create_schema, _drop_schema

log = structlog.get_logger(__name__)

Progress = Callable[[int, int], None]
"""Called after each batch with (events folded, events to fold)."""

HEAD_WORDS = frozenset({"head", "now"})
RESERVED_SCHEMAS = frozenset({DEFAULT_SCHEMA, "public", "information_schema"})
RESERVED_PREFIXES = ("pg_", "rm_asof_", "rm_replay_", "rm_diff_")
REPLAY_COMMENT = "animus replay"
"""How a schema made by `replay_into` is marked (its COMMENT starts so)."""
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PointError(ValidationError):
    """A point (position or instant) that names no prefix of the log.

    `malformed` is true when the text is neither a position nor an instant
    (a gateway answers 400), false when it is well-formed but out of range:
    before the first event, beyond the head, or in the future (422).
    """

    def __init__(self, detail: str, *, malformed: bool, field: str | None) -> None:
        super().__init__(detail, field=field)
        self.malformed = malformed


class SchemaRefused(ValidationError):
    """`--into` names a schema that replay must not create or replace."""


@dataclass(frozen=True, kw_only=True)
class Point:
    """A resolved point: the prefix 1..position of the log."""

    position: int
    requested: str
    instant: datetime | None
    head: int

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "position": self.position,
            "requested": self.requested,
        }
        if self.instant is not None:
            answer["instant"] = self.instant.isoformat()
        return answer

    def describe(self) -> str:
        if self.instant is None:
            return f"position {self.position}"
        return f"position {self.position} ({self.instant.isoformat()})"


def parse_point(
    text: str, *, what: str, head_words: bool = False
) -> int | datetime | None:
    """A position, an instant with a zone, or (with `head_words`) None for head.

    A position is returned as written, even negative: `resolve_point` refuses
    it as out of range. (Head is None, not a number such as -1, so that no
    position a caller writes can stand for the head.)

    Raises:
        PointError: malformed text (`malformed` is true).
    """
    value = text.strip()
    if head_words and value.lower() in HEAD_WORDS:
        return None
    if re.fullmatch(r"[+-]?[0-9]+", value):
        return int(value)
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise PointError(
            f"{what}: {text!r} is neither a position nor an RFC 3339 timestamp "
            "(e.g. 42 or 2025-01-31T12:00:00Z)",
            malformed=True,
            field=what,
        ) from None
    if instant.tzinfo is None:
        raise PointError(
            f"{what}: {text!r} has no time zone; add Z or an offset such as +02:00",
            malformed=True,
            field=what,
        )
    return instant


_RESOLVE = (
    "SELECT (SELECT coalesce(max(position), 0) FROM events), clock_timestamp(), "
    "(SELECT min(position) FROM events WHERE recorded_at > %(instant)s), "
    "(SELECT recorded_at FROM events ORDER BY position LIMIT 1)"
)


async def resolve_point(
    conn: AsyncConnection[Any],
    text: str,
    *,
    what: str,
    head_words: bool = False,
    allow_genesis: bool = False,
) -> Point:
    """Resolve `text` to a prefix of the log (module docstring).

    Args:
        what: how the caller names the value in errors (`as_of`, `--until`).
        head_words: accept `head` and `now` for the head.
        allow_genesis: accept position 0, the empty state before any event.

    Raises:
        PointError: malformed, or out of range.
    """
    parsed = parse_point(text, what=what, head_words=head_words)
    instant = parsed if isinstance(parsed, datetime) else None
    with translate_db_errors():
        cur = await conn.execute(_RESOLVE, {"instant": instant})
        row = await cur.fetchone()
    assert row is not None
    head, now, first_after, genesis_at = int(row[0]), row[1], row[2], row[3]
    lowest = 0 if allow_genesis else 1
    if not isinstance(parsed, datetime):
        position = head if parsed is None else parsed
        if position < 0:
            raise PointError(
                f"{what}: position {position} is negative (positions start at 1)",
                malformed=False,
                field=what,
            )
        if position < lowest:
            raise PointError(
                f"{what}: position {position} is before the first event "
                "(positions start at 1)",
                malformed=False,
                field=what,
            )
        if position > head:
            raise PointError(
                f"{what}: position {position} is beyond the head of the log ({head})",
                malformed=False,
                field=what,
            )
        return Point(position=position, requested=text, instant=None, head=head)
    assert instant is not None
    if instant > now:
        raise PointError(
            f"{what}: {instant.isoformat()} is in the future",
            malformed=False,
            field=what,
        )
    position = head if first_after is None else int(first_after) - 1
    if position < lowest:
        first = f" (recorded at {genesis_at.isoformat()})" if genesis_at else ""
        raise PointError(
            f"{what}: {instant.isoformat()} is before the first event{first}",
            malformed=False,
            field=what,
        )
    return Point(position=position, requested=text, instant=instant, head=head)


async def read_events(
    conn: AsyncConnection[Any], *, after: int, until: int, limit: int
) -> list[RecordedEvent]:
    """Events after `after` up to `until`, at most `limit`, on `conn`."""
    cur = await conn.execute(
        _SELECT + "WHERE position > %s AND position <= %s ORDER BY position LIMIT %s",
        (after, until, limit),
    )
    return [_row_to_event(row) for row in await cur.fetchall()]


@dataclass(kw_only=True)
class FoldResult:
    """How far a fold went."""

    position: int
    events: int = 0
    skipped: list[SkippedEvent] = field(default_factory=list)


async def fold_until(
    conn: AsyncConnection[Any],
    schema: str,
    *,
    after: int,
    until: int,
    batch_size: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> FoldResult:
    """Fold events (after, until] into `schema` with the live projector's code.

    Each batch is its own transaction (a savepoint when the caller holds
    one); `progress` is called with the position reached.
    """
    projector = Projector(schema)
    result = FoldResult(position=after)
    while result.position < until:
        async with conn.transaction():
            events = await read_events(
                conn, after=result.position, until=until, limit=batch_size
            )
            if not events:
                break
            outcome = await projector.apply(conn, events)
        result.position = events[-1].position
        result.events += len(events)
        result.skipped.extend(outcome.skipped)
        if progress is not None:
            progress(result.position)
    return result


async def count_rows(conn: AsyncConnection[Any], schema: str) -> dict[str, int]:
    """Rows per read-model table of `schema`."""
    counts = {}
    for table in READ_MODEL_TABLES:
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        )
        row = await cur.fetchone()
        counts[table] = int(row[0]) if row else 0
    return counts


def check_schema_name(schema: str) -> None:
    """Refuse a name that is not a plain identifier or that the platform uses.

    Raises:
        SchemaRefused: naming why.
    """
    if not _IDENTIFIER.match(schema):
        raise SchemaRefused(
            f"--into: {schema!r} is not a plain identifier (lower-case letters, "
            "digits and _, not starting with a digit, at most 63)"
        )
    if schema in RESERVED_SCHEMAS or schema.startswith(RESERVED_PREFIXES):
        raise SchemaRefused(
            f"--into: {schema} is a schema of the platform; choose another name"
        )


async def _schema_comment(conn: AsyncConnection[Any], schema: str) -> str | None:
    """The schema's comment ('' for none), or None when it does not exist."""
    cur = await conn.execute(
        "SELECT coalesce(obj_description(oid, 'pg_namespace'), '') "
        "FROM pg_namespace WHERE nspname = %s",
        (schema,),
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])


@dataclass(frozen=True, kw_only=True)
class BuiltState:
    """What `replay_into` built."""

    schema: str
    point: Point
    events: int
    rows: Mapping[str, int]
    skipped: tuple[SkippedEvent, ...]
    replaced: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "position": self.point.position,
            "until": self.point.as_json(),
            "head": self.point.head,
            "events": self.events,
            "rows": dict(self.rows),
            "skipped": len(self.skipped),
            "replaced": self.replaced,
        }


async def replay_into(
    owner_dsn: str,
    until: str,
    schema: str,
    *,
    replace: bool = False,
    progress: Progress | None = None,
    batch_size: int = 5000,
) -> BuiltState:
    """Rebuild every read model as it stood at `until` into `schema`.

    Raises:
        SchemaRefused: `schema` is not a plain identifier, is the platform's,
            exists and is not a replay (with or without `replace`), or is a
            replay and `replace` is not set.
        PointError: `until` names no prefix of the log.
        StoreError: the database failed.
    """
    check_schema_name(schema)
    pool = await open_pool(owner_dsn, min_size=1, max_size=2, name="replay-until")
    try:
        with translate_db_errors():
            async with pool.connection() as conn:
                point = await resolve_point(conn, until, what="--until")
                existing = await _schema_comment(conn, schema)
        replaced = existing is not None
        if existing is not None and not existing.startswith(REPLAY_COMMENT):
            raise SchemaRefused(
                f"--into: schema {schema} exists and was not built by animus "
                "replay, so it will not be replaced; choose another name"
            )
        if existing is not None and not replace:
            raise SchemaRefused(
                f"--into: schema {schema} exists; pass --replace to rebuild it"
            )
        return await _build_and_swap(
            pool, point, schema, replaced, progress, batch_size
        )
    finally:
        await pool.close()


async def _build_and_swap(
    pool: AsyncConnectionPool,
    point: Point,
    schema: str,
    replaced: bool,
    progress: Progress | None,
    batch_size: int,
) -> BuiltState:
    scratch = f"{DEFAULT_SCHEMA}_replay_{secrets.token_hex(4)}"
    log.info("replay_until_started", schema=schema, position=point.position)
    try:
        with translate_db_errors():
            await _create_schema(pool, scratch, DEFAULT_SCHEMA)
            async with pool.connection() as conn:
                result = await fold_until(
                    conn,
                    scratch,
                    after=0,
                    until=point.position,
                    batch_size=batch_size,
                    progress=_relay(progress, point.position),
                )
                rows = await count_rows(conn, scratch)
                comment = (
                    f"{REPLAY_COMMENT} until position {point.position} "
                    f"(requested {point.requested})"
                )
                async with conn.transaction():
                    await conn.execute(
                        sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                            sql.Identifier(scratch), sql.Literal(comment)
                        )
                    )
                    if replaced:
                        await conn.execute(
                            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                                sql.Identifier(schema)
                            )
                        )
                    await conn.execute(
                        sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                            sql.Identifier(scratch), sql.Identifier(schema)
                        )
                    )
    finally:
        await _drop_schema(pool, scratch)  # gone already when renamed
    log.info(
        "replay_until_finished",
        schema=schema,
        position=point.position,
        events=result.events,
    )
    return BuiltState(
        schema=schema,
        point=point,
        events=result.events,
        rows=rows,
        skipped=tuple(result.skipped),
        replaced=replaced,
    )


def _relay(progress: Progress | None, total: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    return lambda position: progress(position, total)


# --- diff --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RowChange:
    """One row present at both points with different values."""

    key: dict[str, Any]
    columns: dict[str, tuple[Any, Any]]
    """column -> (old, new)"""


@dataclass(frozen=True, kw_only=True)
class TableDiff:
    """What changed in one read-model table between the two points."""

    table: str
    key: tuple[str, ...]
    added: tuple[dict[str, Any], ...]
    removed: tuple[dict[str, Any], ...]
    changed: tuple[RowChange, ...]

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def key_of(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {column: row[column] for column in self.key}

    def as_json(self) -> dict[str, Any]:
        return {
            "key": list(self.key),
            "added": [{"key": self.key_of(r), "row": r} for r in self.added],
            "removed": [{"key": self.key_of(r), "row": r} for r in self.removed],
            "changed": [
                {
                    "key": change.key,
                    "columns": {
                        name: {"old": old, "new": new}
                        for name, (old, new) in change.columns.items()
                    },
                }
                for change in self.changed
            ],
        }


@dataclass(frozen=True, kw_only=True)
class ReplayDiff:
    """The read models at `first` against the read models at `second`."""

    first: Point
    second: Point
    tables: tuple[TableDiff, ...]
    scratch: tuple[str, str]

    @property
    def unchanged(self) -> bool:
        return all(table.unchanged for table in self.tables)

    def as_json(self) -> dict[str, Any]:
        return {
            "from": self.first.as_json(),
            "to": self.second.as_json(),
            "unchanged": self.unchanged,
            "tables": {table.table: table.as_json() for table in self.tables},
        }


async def diff(
    owner_dsn: str,
    first: str,
    second: str,
    *,
    progress: Progress | None = None,
    batch_size: int = 5000,
) -> ReplayDiff:
    """What changed in every read model between the points `first` and `second`.

    `first` may be 0 (the empty state); `second` may be `head` or `now`.

    Raises:
        PointError: a point names no prefix of the log.
        StoreError: the database failed.
    """
    pool = await open_pool(owner_dsn, min_size=1, max_size=2, name="replay-diff")
    try:
        with translate_db_errors():
            async with pool.connection() as conn:
                a = await resolve_point(
                    conn, first, what="A", head_words=True, allow_genesis=True
                )
                b = await resolve_point(
                    conn, second, what="B", head_words=True, allow_genesis=True
                )
        return await _diff(pool, a, b, progress, batch_size)
    finally:
        await pool.close()


async def _diff(
    pool: AsyncConnectionPool,
    a: Point,
    b: Point,
    progress: Progress | None,
    batch_size: int,
) -> ReplayDiff:
    stem = f"{DEFAULT_SCHEMA}_diff_{secrets.token_hex(4)}"
    schema_a, schema_b = f"{stem}_a", f"{stem}_b"
    early, late = (
        (schema_a, schema_b) if a.position <= b.position else (schema_b, schema_a)
    )
    low, high = sorted((a.position, b.position))
    log.info("replay_diff_started", first=a.position, second=b.position, scratch=stem)
    try:
        with translate_db_errors():
            await _create_schema(pool, early, DEFAULT_SCHEMA)
            await _create_schema(pool, late, DEFAULT_SCHEMA)
            async with pool.connection() as conn:
                await fold_until(
                    conn,
                    early,
                    after=0,
                    until=low,
                    batch_size=batch_size,
                    progress=_relay(progress, high),
                )
                await _copy_rows(conn, early, late)
                await fold_until(
                    conn,
                    late,
                    after=low,
                    until=high,
                    batch_size=batch_size,
                    progress=_relay(progress, high),
                )
                tables = tuple(
                    [
                        await _diff_table(conn, table, schema_a, schema_b)
                        for table in READ_MODEL_TABLES
                    ]
                )
    finally:
        await _drop_schema(pool, schema_a)
        await _drop_schema(pool, schema_b)
    log.info("replay_diff_finished", first=a.position, second=b.position)
    return ReplayDiff(first=a, second=b, tables=tables, scratch=(schema_a, schema_b))


async def _copy_rows(conn: AsyncConnection[Any], source: str, target: str) -> None:
    async with conn.transaction():
        for table in READ_MODEL_TABLES:
            await conn.execute(
                sql.SQL("INSERT INTO {} SELECT * FROM {}").format(
                    sql.Identifier(target, table), sql.Identifier(source, table)
                )
            )


async def primary_key(
    conn: AsyncConnection[Any], schema: str, table: str
) -> tuple[str, ...]:
    """The primary-key columns of `schema.table`, in key order."""
    cur = await conn.execute(
        "SELECT a.attname FROM pg_index AS i JOIN pg_attribute AS a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)",
        (sql.Identifier(schema, table).as_string(conn),),
    )
    return tuple(str(row[0]) for row in await cur.fetchall())


async def _diff_table(
    conn: AsyncConnection[Any], table: str, schema_a: str, schema_b: str
) -> TableDiff:
    key = await primary_key(conn, schema_a, table)
    join = sql.SQL(" AND ").join(
        sql.SQL("a.{k} = b.{k}").format(k=sql.Identifier(column)) for column in key
    )
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        sql.SQL(
            "SELECT to_jsonb(a) AS old, to_jsonb(b) AS new FROM {a} AS a "
            "FULL JOIN {b} AS b ON {join} "
            "WHERE to_jsonb(a) IS DISTINCT FROM to_jsonb(b)"
        ).format(
            a=sql.Identifier(schema_a, table),
            b=sql.Identifier(schema_b, table),
            join=join,
        )
    )
    added, removed, changed = [], [], []
    for row in await cur.fetchall():
        old, new = row["old"], row["new"]
        if old is None:
            added.append(new)
        elif new is None:
            removed.append(old)
        else:
            columns = {
                name: (old.get(name), new.get(name))
                for name in new
                if old.get(name) != new.get(name)
            }
            changed.append(RowChange(key={c: new[c] for c in key}, columns=columns))

    def order(row: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(str(row[c]) for c in key)

    return TableDiff(
        table=table,
        key=key,
        added=tuple(sorted(added, key=order)),
        removed=tuple(sorted(removed, key=order)),
        changed=tuple(sorted(changed, key=lambda c: order(c.key))),
    )


def diff_lines(result: ReplayDiff, *, width: int = 60) -> list[str]:
    """The diff for a person: one line per table, one per row that changed."""
    lines = [
        f"from {result.first.describe()} to {result.second.describe()}: "
        + ("no change" if result.unchanged else "read models changed")
    ]
    for table in result.tables:
        if table.unchanged:
            lines.append(f"{table.table}: no change")
            continue
        lines.append(
            f"{table.table}: {len(table.added)} added, {len(table.removed)} "
            f"removed, {len(table.changed)} changed"
        )
        for row in table.added:
            lines.append(f"  + {_key_text(table.key_of(row))}")
        for row in table.removed:
            lines.append(f"  - {_key_text(table.key_of(row))}")
        for change in table.changed:
            columns = "; ".join(
                f"{name} {_short(old, width)} -> {_short(new, width)}"
                for name, (old, new) in change.columns.items()
            )
            lines.append(f"  ~ {_key_text(change.key)}: {columns}")
    return lines


def _key_text(key: Mapping[str, Any]) -> str:
    return " ".join(f"{name}={value}" for name, value in key.items())


def _short(value: Any, width: int) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def built_lines(state: BuiltState) -> list[str]:
    """What `replay_into` built, for a person."""
    verb = "replaced" if state.replaced else "built"
    lines = [
        f"{verb} schema {state.schema} as of {state.point.describe()} "
        f"({state.events} events; head is {state.point.head})"
    ]
    lines += [f"{table:<20} {count:>8} rows" for table, count in state.rows.items()]
    if state.skipped:
        lines.append(f"{len(state.skipped)} events skipped (see the log)")
    return lines


# --- the command line ---------------------------------------------------------


def replay_command(settings: Any, args: Any) -> int:
    """`animus replay --until P --into S [--replace]` or `--diff A B`.

    Prints what was built or what changed (one JSON object with `--json`);
    a progress bar on stderr, only on a terminal.

    Raises:
        ConfigurationError: a wrong combination of options, a point that
            names no prefix of the log, or a schema replay must not touch
            (the command line answers it with one line, exit 2).
        StoreError: no database, or the database failed.
    """
    import asyncio
    import json

    from animus.db import owner_dsn
    from animus.errors import ConfigurationError
    from animus.progress import counting_bar

    if args.diff is not None and (args.until is not None or args.into is not None):
        raise ConfigurationError("replay: --diff goes without --until and --into")
    if args.diff is None and (args.until is None or args.into is None):
        raise ConfigurationError("replay: --until and --into go together")
    if args.replace and args.diff is not None:
        raise ConfigurationError("replay: --replace goes with --until and --into")
    dsn = owner_dsn(settings)
    with counting_bar("replaying") as bar:
        task = bar.add_task("replay", total=None)

        def advance(position: int, target: int) -> None:
            bar.update(task, completed=position, total=target)

        try:
            if args.diff is not None:
                first, second = args.diff
                changes = asyncio.run(diff(dsn, first, second, progress=advance))
            else:
                built = asyncio.run(
                    replay_into(
                        dsn,
                        args.until,
                        args.into,
                        replace=args.replace,
                        progress=advance,
                    )
                )
        except (PointError, SchemaRefused) as exc:
            raise ConfigurationError(f"replay: {exc.detail}") from exc
    if args.diff is not None:
        answer, lines = changes.as_json(), diff_lines(changes)
    else:
        answer, lines = built.as_json(), built_lines(built)
    if args.json:
        print(json.dumps(answer, sort_keys=True, default=str))
    else:
        print("\n".join(lines))
    return 0
