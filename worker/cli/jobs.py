"""`fpcancel jobs list|show|retry`: read and steer the job table."""

from typing import TYPE_CHECKING

import click

from fpcancel.cli.context import (
    BIGINT_MAX,
    JOB_ID,
    RETRYABLE_CHOICE,
    STATUS_CHOICE,
    CliContext,
    emit_json,
    fail,
    json_option,
    parse_time,
    pass_cli,
    say,
)

if TYPE_CHECKING:
    from fpcancel.ops import RetryResult


@click.group()
def jobs() -> None:
    """Read and steer the job table."""


@jobs.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=STATUS_CHOICE,
    help="Only these statuses (repeatable).",
)
@click.option("--order", "order_uuid", default=None, help="Only this order's jobs.")
@click.option("--source", default=None, help="Only jobs with this source.")
@click.option(
    "--since", default=None, help="Created at or after this ISO 8601 time (UTC if no zone)."
)
@click.option("--until", default=None, help="Created before this ISO 8601 time.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option(
    "--offset",
    type=click.IntRange(0, BIGINT_MAX),
    default=0,
    show_default=True,
    help="Skip this many first.",
)
@json_option
@click.option(
    "--csv", "as_csv", is_flag=True, help="Print CSV on stdout (a header of the JSON keys)."
)
@pass_cli
def jobs_list(
    cli: CliContext,
    statuses: tuple[str, ...],
    order_uuid: str | None,
    source: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    offset: int,
    as_json: bool,
    as_csv: bool,
) -> None:
    """List jobs, newest first (by id); 50 by default, --offset pages on.

    --json prints a list of job objects (the cancel_jobs column names as keys), --csv the same
    fields as CSV with a header; on a terminal the table is coloured by status.
    """
    from fpcancel.queries import list_jobs
    from fpcancel.validation import clean_order_uuid, clean_source

    if as_json and as_csv:
        raise fail("--json and --csv: choose one", 2)
    if order_uuid is not None:
        clean_order_uuid(order_uuid, "--order")
    clean_source(source, "--source")
    since_at, until_at = parse_time(since, "--since"), parse_time(until, "--until")
    with cli.sessions() as session:
        rows = list_jobs(
            session,
            statuses=statuses,
            order_uuid=order_uuid,
            source=source,
            since=since_at,
            until=until_at,
            limit=limit,
            offset=offset,
        )
    if as_json:
        emit_json(rows)
        return
    if as_csv:
        from fpcancel.render import jobs_csv

        click.echo(jobs_csv(rows), nl=False)
        return
    from fpcancel.render import jobs_table

    jobs_table(rows)


@jobs.command("show")
@click.argument("job_id", type=JOB_ID)
@json_option
@pass_cli
def jobs_show(cli: CliContext, job_id: int, as_json: bool) -> None:
    """One job with every call it made to the provider, oldest first."""
    from fpcancel.queries import job_with_calls

    with cli.sessions() as session:
        data = job_with_calls(session, job_id)
    if as_json:
        emit_json(data)
        return
    from fpcancel.render import job_detail

    job_detail(data)


@jobs.command("retry")
@click.argument("job_ids", nargs=-1, type=JOB_ID)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=RETRYABLE_CHOICE,
    help="Every job in this status instead of JOB_IDs (repeatable).",
)
@click.option("--source", default=None, help="With --status: only jobs with this source.")
@click.option(
    "--since",
    default=None,
    help="With --status: only jobs created at or after this ISO 8601 time (as `jobs list`).",
)
@click.option(
    "--dry-run", is_flag=True, help="List the jobs that would go round again; change nothing."
)
@json_option
@pass_cli
def jobs_retry(
    cli: CliContext,
    job_ids: tuple[int, ...],
    statuses: tuple[str, ...],
    source: str | None,
    since: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Send finished-but-failed jobs (dead, failed) round again: JOB_IDs, or every job --status.

    Each keeps its calls and its attempts and gets FPCANCEL_MAX_ATTEMPTS more cancel POSTs; it
    turns queued and the workers' scheduler sends it. JOB_IDs are all or nothing: an unknown id
    or a job that is not dead or failed exits 2 and changes nothing. A job whose order has
    meanwhile got another queued, running, retrying or succeeded job is skipped, with the reason.

    --json prints {"retried": n, "skipped": [{"id", "reason"}], "ids": [...], "dry_run": bool}.
    """
    from fpcancel import ops
    from fpcancel.models.db import utcnow
    from fpcancel.validation import clean_source

    if job_ids and statuses:
        raise click.UsageError("give JOB_IDs or --status, not both")
    if not job_ids and not statuses:
        raise click.UsageError("give the JOB_IDs to retry, or --status dead|failed")
    if job_ids and (source is not None or since is not None):
        raise click.UsageError("--source and --since narrow --status; JOB_IDs need neither")
    clean_source(source, "--source")
    since_at = parse_time(since, "--since")
    sessions = cli.sessions
    if job_ids:
        result = ops.retry_jobs(sessions, job_ids, utcnow, dry_run=dry_run)
    else:
        from fpcancel.progress import progress_bar

        selection = ops.RetrySelection(tuple(dict.fromkeys(statuses)), source, since_at)
        with sessions() as session:
            total = ops.count_matching(session, selection)
        label = "checking" if dry_run else "sending round again"
        with progress_bar(label, total) as advance:
            result = ops.retry_matching(
                sessions, selection, utcnow, dry_run=dry_run, progress=advance
            )
    if as_json:
        emit_json(result.as_json())
    if dry_run and not as_json:
        from fpcancel.render import retry_candidates_table

        retry_candidates_table(result)
    say(retry_summary(result))


def retry_summary(result: "RetryResult", shown: int = 5) -> str:
    """One line: how many went (or would go) round again, and why the others did not."""
    n = len(result.ids)
    head = (
        f"would send {n} job{'s' if n != 1 else ''} round again"
        if result.dry_run
        else f"sent {n} job{'s' if n != 1 else ''} round again"
    )
    if not result.skipped:
        return head
    reasons = "; ".join(f"job {s.id}: {s.reason}" for s in result.skipped[:shown])
    more = len(result.skipped) - shown
    if more > 0:
        reasons += f"; and {more} more (--json lists them)"
    return f"{head} ({len(result.skipped)} skipped: {reasons})"


COMMANDS = [jobs]
