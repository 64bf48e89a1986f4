"""`fpcancel enqueue` and `fpcancel enqueue-bulk`: the producers' functions, from a shell."""

from typing import Any

import click

from fpcancel.cli.context import (
    LANE_CHOICE,
    CliContext,
    emit_json,
    fail,
    json_option,
    pass_cli,
    say,
)
from fpcancel.statuses import Lane


@click.command()
@click.argument("order_uuid")
@click.option(
    "--note", required=True, help="Cancellation note sent to Front Payment (1-1,000 characters)."
)
@click.option(
    "--source",
    default=None,
    help="A label for where the job came from (1-64 of A-Z a-z 0-9 _ - . :).",
)
@click.option(
    "--lane",
    type=LANE_CHOICE,
    default=Lane.LIVE.value,
    show_default=True,
    help="live jobs (customers) go ahead of bulk ones under the one rate limit.",
)
@json_option
@pass_cli
def enqueue(
    cli: CliContext, order_uuid: str, note: str, source: str | None, lane: str, as_json: bool
) -> None:
    """Enqueue one cancellation of ORDER_UUID (e.g. ODR123456789) and print the job's id.

    If the order already has a job that is queued, running, retrying or succeeded, no new job is
    made and that job's id is printed (with --json, "created": false). Every value is checked
    before the database is touched.
    """
    job = cli.producer.enqueue(order_uuid, note, source, lane)
    if job.created and lane == Lane.LIVE and not job.published:
        say(
            f"warning: broker unreachable; job {job.id} is saved and a worker's scheduler "
            "will send it"
        )
    if as_json:
        emit_json(
            {
                "id": job.id,
                "order_uuid": job.order_uuid,
                "status": job.status,
                "created": job.created,
            }
        )
        return
    if not job.created:
        say(f"order {job.order_uuid} already has job {job.id} ({job.status}); no new job")
    click.echo(job.id)


@click.command("enqueue-bulk")
@click.argument("file", type=click.File("rb"))
@click.option("--note", default=None, help="Note for rows whose note column is empty or missing.")
@click.option(
    "--source", default=None, help="A label stored on every job (1-64 of A-Z a-z 0-9 _ - . :)."
)
@click.option("--lane", type=LANE_CHOICE, default=Lane.BULK.value, show_default=True)
@json_option
@pass_cli
def enqueue_bulk(
    cli: CliContext, file: Any, note: str | None, source: str | None, lane: str, as_json: bool
) -> None:
    """Enqueue every order in a CSV FILE (or - for stdin).

    The first line is a header naming order_uuid and optionally note, in any order. Fields are
    trimmed, blank lines skipped; an empty note takes --note. Every line is checked first: if any
    is bad, nothing is enqueued, every bad line is listed (the first 50, then a count) and the
    exit code is 2. Orders repeated in the file count once; orders that already have a queued,
    running, retrying or succeeded job are counted as already active. The file is written all
    or nothing. The jobs wait in the table and workers' schedulers send them as the rate limit
    allows, customers' jobs first.

    Prints the counts: created, already active (--json: {"created", "already_active",
    "invalid", "duplicates"}).
    """
    from fpcancel.bulk import BulkInputError, check_csv
    from fpcancel.progress import progress_bar
    from fpcancel.validation import clean_note, clean_source

    # The options first, named as typed: a bad one must not cost a pass over a big file.
    clean_source(source, "--source")
    if note is not None:
        clean_note(note, "--note")
    producer = cli.producer  # settings are checked before the file is read
    try:
        seekable = file.seekable()
    except (AttributeError, ValueError):
        seekable = False
    try:
        checked = check_csv(file, note, seekable=seekable)
    except BulkInputError as exc:
        if as_json:
            emit_json(
                {
                    "created": 0,
                    "already_active": 0,
                    "invalid": exc.count,
                    "errors": [{"line": line, "reason": reason} for line, reason in exc.problems],
                }
            )
        raise fail(exc.summary(), 2) from None
    with progress_bar("enqueueing", checked.good_rows) as advance:
        result = producer.enqueue_bulk(checked.rows(), source, lane, progress=advance)
    if as_json:
        emit_json(result.as_json())
    else:
        say(
            f"created {result.created}, already active {result.already_active}"
            + (f", repeated in the file {result.duplicates}" if result.duplicates else "")
        )


COMMANDS = [enqueue, enqueue_bulk]
