"""Bulk enqueue in two steps: validate every row into immutable records, then write them.

Reading (`read_csv`) streams: a file of a million lines is checked line by line with nothing but
the bad lines' reasons and the set of order ids kept, then read a second time to write. Standard
input is spooled to a temporary file during the first pass, so it can be read twice too.

Writing (`write_bulk`) is all or nothing: one transaction stages the rows in a temporary table
(COPY on PostgreSQL), batch by batch, then one INSERT ... SELECT ... ON CONFLICT DO NOTHING moves
the first row of each order into `cancel_jobs`. The database's partial unique index decides which
orders already have an active job, so two bulk runs at once cannot both create one. The jobs wait
in the table (`queued`, lane `bulk`); the scheduler sends them as the rate allows.
"""

import csv
import io
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, NamedTuple

from sqlalchemy import bindparam, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models.tables import ACTIVE_SQL
from models.types import UTCDateTime
from worker.errors import BadInput, ValidationError
from worker.validation import clean_note, clean_order_uuid

BATCH_ROWS = 5000
DEADLOCK_RETRIES = 5
SHOWN_PROBLEMS = 50


class BulkRow(NamedTuple):
    order_uuid: str
    note: str
    line: int = 0


@dataclass
class BulkResult:
    created: int = 0
    already_active: int = 0
    duplicates: int = 0  # repeated inside the input: counted once
    invalid: int = 0

    def as_json(self) -> dict[str, int]:
        return {
            "created": self.created,
            "already_active": self.already_active,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
        }


class BulkInputError(BadInput):
    """Some rows are bad; nothing was written. `problems` holds the first 50 (line, reason)."""

    def __init__(self, problems: list[tuple[int, str]], count: int) -> None:
        self.problems = problems
        self.count = count
        super().__init__(self.summary())

    def summary(self) -> str:
        lines = [f"{self.count} bad line{'s' if self.count != 1 else ''}; nothing was enqueued"]
        lines += [f"line {line}: {reason}" for line, reason in self.problems]
        if self.count > len(self.problems):
            lines.append(f"... and {self.count - len(self.problems)} more bad lines")
        return "\n".join(lines)


class _Problems:
    def __init__(self) -> None:
        self.shown: list[tuple[int, str]] = []
        self.count = 0

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self.shown) < SHOWN_PROBLEMS:
            self.shown.append((line, reason))

    def raise_if_any(self) -> None:
        if self.count:
            raise BulkInputError(self.shown, self.count)


def validate_rows(rows: Iterable[BulkRow | tuple[str, str]]) -> list[BulkRow]:
    """Rows from Python producers, all checked before any is written (numbered from 1)."""
    problems = _Problems()
    clean: list[BulkRow] = []
    for number, row in enumerate(rows, start=1):
        try:
            order_uuid, note = row[0], row[1]
            clean.append(BulkRow(clean_order_uuid(order_uuid), clean_note(note), number))
        except ValidationError as exc:
            problems.add(number, str(exc))
        except (TypeError, IndexError):
            problems.add(number, "expected (order_uuid, note)")
    problems.raise_if_any()
    return clean


# -- CSV -------------------------------------------------------------------------------------


def _header(fields: list[str]) -> tuple[int, int | None]:
    names = [name.strip().lstrip("\ufeff").lower() for name in fields]
    unknown = [name for name in names if name not in ("order_uuid", "note")]
    if unknown:
        raise ValidationError(
            "line 1",
            f"unknown column {unknown[0]!r}: the header names order_uuid and optionally note",
        )
    if len(set(names)) != len(names):
        raise ValidationError("line 1", "a column is named twice")
    if "order_uuid" not in names:
        raise ValidationError("line 1", "the header must name order_uuid (and optionally note)")
    return names.index("order_uuid"), names.index("note") if "note" in names else None


def _rows(stream: IO[str], default_note: str | None, problems: _Problems) -> Iterator[BulkRow]:
    """Yield the good rows of a CSV stream, recording the bad ones in `problems`."""
    if default_note is not None:
        default_note = clean_note(default_note, "--note")
    reader = csv.reader(stream, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ValidationError("line 1", f"malformed CSV: {exc}") from None
    if header is None:
        raise ValidationError("line 1", "the file is empty: expected a header naming order_uuid")
    id_at, note_at = _header(header)
    width = len(header)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.add(reader.line_num, f"malformed CSV: {exc}")
            continue
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue  # blank lines are skipped
        if len(fields) != width:
            problems.add(
                line,
                f"expected {width} field{'s' if width > 1 else ''} as the header says, "
                f"got {len(fields)}",
            )
            continue
        text_ = ",".join(fields)
        if "\ufffd" in text_:
            problems.add(line, "not valid UTF-8")
            continue
        try:
            order_uuid = clean_order_uuid(fields[id_at].strip())
            raw_note = fields[note_at].strip() if note_at is not None else ""
            if raw_note:
                note = clean_note(raw_note)
            elif default_note is not None:
                note = default_note
            else:
                raise ValidationError("note", "is empty and no --note was given")
        except ValidationError as exc:
            problems.add(line, str(exc))
            continue
        yield BulkRow(order_uuid, note, line)


@dataclass
class CheckedCsv:
    """A CSV file that passed validation: `rows()` reads it again for writing."""

    path_or_file: IO[bytes]
    default_note: str | None
    good_rows: int

    def rows(self) -> Iterator[BulkRow]:
        self.path_or_file.seek(0)
        stream = io.TextIOWrapper(self.path_or_file, encoding="utf-8", errors="replace", newline="")
        try:
            yield from _rows(stream, self.default_note, _Problems())
        finally:
            stream.detach()


def check_csv(source: IO[bytes], default_note: str | None, seekable: bool = True) -> CheckedCsv:
    """Validate every line; raise `BulkInputError` (every bad line) or return a re-readable file.

    A stream that cannot seek (stdin) is copied to a temporary file first.
    """
    if not seekable:
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the CheckedCsv
        shutil.copyfileobj(source, spool, 1 << 20)
        source = spool
    source.seek(0)
    problems = _Problems()
    stream = io.TextIOWrapper(source, encoding="utf-8", errors="replace", newline="")
    good = 0
    try:
        for _ in _rows(stream, default_note, problems):
            good += 1
    finally:
        stream.detach()
    problems.raise_if_any()
    return CheckedCsv(source, default_note, good)


# -- writing -----------------------------------------------------------------------------------

STAGE = "fpcancel_bulk_stage"


def _create_stage(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        # Dropped at commit or rollback: nothing outlives the transaction.
        ddl = f"CREATE TEMPORARY TABLE {STAGE} (seq bigint, order_uuid text, note text)"
        session.execute(text(ddl + " ON COMMIT DROP"))
        return
    # SQLite keeps temporary tables for the connection's life: one from an earlier run goes first.
    session.execute(text(f"DROP TABLE IF EXISTS temp.{STAGE}"))
    ddl = f"CREATE TEMPORARY TABLE {STAGE} (seq INTEGER PRIMARY KEY, order_uuid TEXT, note TEXT)"
    session.execute(text(ddl))


# The first row of each order, in input order, into the job table; an order that already has an
# active or succeeded job is left alone (the partial unique index decides, also against writers
# running at the same time).
_MOVE = text(
    f"""
    INSERT INTO cancel_jobs (order_uuid, note, source, lane, status, attempts, next_attempt_at,
                             created_at, updated_at, round_start_attempts, needs_status_check,
                             lost_claims)
    SELECT order_uuid, note, :source, :lane, 'queued', 0, :now, :now, :now, 0, false, 0
    FROM {STAGE}
    WHERE seq IN (SELECT min(seq) FROM {STAGE} GROUP BY order_uuid)
    ORDER BY seq
    ON CONFLICT (order_uuid) WHERE {ACTIVE_SQL}
    DO NOTHING
    """
).bindparams(bindparam("now", type_=UTCDateTime()))
_DISTINCT = text(f"SELECT count(DISTINCT order_uuid) FROM {STAGE}")


def _load_batch(session: Session, batch: list[tuple[int, str, str]]) -> None:
    """Append rows to the stage: COPY on PostgreSQL, one executemany on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        driver = session.connection().connection.driver_connection
        with (
            driver.cursor() as cursor,  # type: ignore[union-attr]
            cursor.copy(f"COPY {STAGE} (seq, order_uuid, note) FROM STDIN") as copy,
        ):
            for row in batch:
                copy.write_row(row)
        return
    session.execute(
        text(f"INSERT INTO {STAGE} (seq, order_uuid, note) VALUES (:seq, :order_uuid, :note)"),
        [{"seq": seq, "order_uuid": order, "note": note} for seq, order, note in batch],
    )


def _move_into_jobs(session: Session, source: str | None, lane: str, now: datetime) -> int:
    """Run `_MOVE`; returns the jobs it created. Two bulk runs sharing orders can deadlock on
    the unique index; the loser's statement is retried under a SAVEPOINT (its stage survives)."""
    for attempt in range(DEADLOCK_RETRIES):
        try:
            with session.begin_nested():
                result = session.execute(_MOVE, {"source": source, "lane": lane, "now": now})
                return int(result.rowcount)  # type: ignore[attr-defined]
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != "40P01" or attempt == DEADLOCK_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def write_bulk(
    sessions: sessionmaker[Session],
    rows: Iterable[BulkRow | tuple[str, str]],
    *,
    source: str | None,
    lane: str,
    now: Callable[[], datetime],
    progress: Callable[[int], None] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> BulkResult:
    """Write validated rows as jobs: all of them or, whatever goes wrong midway (a database
    restart, a full disk, a bug), none. One transaction: the rows are staged batch by batch in
    a temporary table, then moved into `cancel_jobs` by one statement. An order with an active
    or succeeded job is counted as `already_active`, an order repeated in the input once."""
    result = BulkResult()
    total = 0
    with sessions.begin() as session:
        _create_stage(session)
        batch: list[tuple[int, str, str]] = []
        for row in rows:
            total += 1
            batch.append((total, row[0], row[1]))
            if len(batch) >= batch_rows:
                _load_batch(session, batch)
                if progress is not None:
                    progress(len(batch))
                batch = []
        if batch:
            _load_batch(session, batch)
            if progress is not None:
                progress(len(batch))
        distinct = int(session.execute(_DISTINCT).scalar_one())
        result.created = _move_into_jobs(session, source, lane, now())
        if session.get_bind().dialect.name == "sqlite":
            session.execute(text(f"DROP TABLE temp.{STAGE}"))
    result.already_active = distinct - result.created
    result.duplicates = total - distinct
    return result
