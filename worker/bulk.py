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

from sqlalchemy.orm import Session, sessionmaker

from fpcancel import jobstore
from fpcancel.errors import BadInput, ValidationError
from fpcancel.validation import clean_note, clean_order_uuid

BATCH_ROWS = 5000
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
    restart, a full disk, a bug), none: one transaction (`fpcancel.jobstore.insert_staged`). An
    order with an active or succeeded job is counted as `already_active`, an order repeated in
    the input once."""
    with sessions.begin() as session:
        total, distinct, created = jobstore.insert_staged(
            session,
            ((row[0], row[1]) for row in rows),
            source=source,
            lane=lane,
            now=now(),
            batch_rows=batch_rows,
            progress=progress,
        )
    return BulkResult(
        created=created, already_active=distinct - created, duplicates=total - distinct
    )
