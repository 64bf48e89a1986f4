"""`fpcancel`: the command line (SPEC.md, "Command line").

Exit codes: 0 success; 2 bad input (a bad argument or setting, an unknown job, a job in the wrong
state), with a one-line reason; 1 any other failure (database or broker unreachable).
`--json` prints machine-readable output on stdout; human text and progress go to stderr.
"""

import json
import logging
import sys
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from worker import __version__
from worker.errors import BadInput, FpcancelError, ServiceError
from worker.settings import Settings, load_settings

if TYPE_CHECKING:
    from worker.ops import RetryResult

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("fpcancel")


class BadInputError(click.ClickException):
    """Exit 2: bad input, with a one-line reason."""

    exit_code = 2


def fail(message: str, code: int) -> click.ClickException:
    """A one-line reason and the SPEC's exit code (2 bad input, 1 anything else). Whatever the
    reason quotes (a value, a database's error) is shown escaped: it cannot drive the terminal or
    forge a line."""
    from worker.textsafe import printable

    shown = "\n".join(printable(line) for line in message.split("\n"))
    return BadInputError(shown) if code == 2 else click.ClickException(shown)


def handle_errors(func: F) -> F:
    """Turn fpcancel's errors into the SPEC's exit codes with a one-line reason."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except BadInput as exc:
            raise fail(str(exc), 2) from None
        except DataError as exc:
            # The validators should have refused the value first; if one slipped through, it is
            # still the input's fault, and the transaction wrote nothing.
            raise fail(f"the database refused a value: {_first_line(exc)}", 2) from None
        except (OperationalError, DBAPIError) as exc:
            raise fail(f"database unreachable or failing: {_first_line(exc)}", 1) from None
        except (FpcancelError, ServiceError) as exc:
            raise fail(str(exc), exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _first_line(exc: DBAPIError) -> str:
    lines = str(exc.orig).strip().splitlines() if exc.orig else []
    return lines[0] if lines else type(exc).__name__


def settings() -> Settings:
    return load_settings()


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def say(message: str) -> None:
    """Human text: to stderr, so stdout stays for what scripts read."""
    click.echo(message, err=True)


# Ids and offsets are BIGINT in the tables: a larger number is bad input, not a database failure.
BIGINT_MAX = 2**63 - 1
JOB_ID = click.IntRange(1, BIGINT_MAX)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fpcancel")
def main() -> None:
    """Cancel orders at Front Payment reliably and in bulk.

    Settings come from the environment (and ./.env): FRONTPAYMENT_TOKEN, FRONTPAYMENT_BASE_URL,
    FPCANCEL_DATABASE_URL (default sqlite:///fpcancel.db), FPCANCEL_BROKER_URL (default
    redis://localhost:6379/0), FPCANCEL_MAX_ATTEMPTS, FPCANCEL_RETRY_BASE_SECONDS,
    FPCANCEL_RETRY_MAX_SECONDS, FPCANCEL_HTTP_TIMEOUT_SECONDS, FPCANCEL_RATE_LIMIT. See README.md.

    Exit codes: 0 success, 2 bad input (nothing written), 1 any other failure.
    """


# -- db ----------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@handle_errors
def db_upgrade() -> None:
    """Migrate the database to the newest schema (Alembic)."""
    from models.db import make_engine
    from worker.migrate import current_revision, upgrade

    engine = make_engine(settings().database_url)
    upgrade(engine)
    say(f"database at revision {current_revision(engine)}")
    engine.dispose()


# -- enqueue -----------------------------------------------------------------------------------


@main.command()
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
    type=click.Choice(["live", "bulk"]),
    default="live",
    show_default=True,
    help="live jobs (customers) go ahead of bulk ones under the one rate limit.",
)
@json_option
@handle_errors
def enqueue(order_uuid: str, note: str, source: str | None, lane: str, as_json: bool) -> None:
    """Enqueue one cancellation of ORDER_UUID (e.g. ODR123456789) and print the job's id.

    If the order already has a job that is queued, running, retrying or succeeded, no new job is
    made and that job's id is printed (with --json, "created": false).
    """
    from worker.producer import Producer
    from worker.validation import clean_lane, clean_note, clean_order_uuid, clean_source

    # Check everything before the database is even opened.
    clean_order_uuid(order_uuid)
    clean_note(note)
    clean_source(source)
    clean_lane(lane)
    job = Producer.from_settings(settings()).enqueue(order_uuid, note, source, lane)
    if job.created and lane == "live" and not job.published:
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
    else:
        if not job.created:
            say(f"order {job.order_uuid} already has job {job.id} ({job.status}); no new job")
        click.echo(job.id)


@main.command("enqueue-bulk")
@click.argument("file", type=click.File("rb"))
@click.option("--note", default=None, help="Note for rows whose note column is empty or missing.")
@click.option(
    "--source", default=None, help="A label stored on every job (1-64 of A-Z a-z 0-9 _ - . :)."
)
@click.option("--lane", type=click.Choice(["live", "bulk"]), default="bulk", show_default=True)
@json_option
@handle_errors
def enqueue_bulk_command(
    file: Any, note: str | None, source: str | None, lane: str, as_json: bool
) -> None:
    """Enqueue every order in a CSV FILE (or - for stdin).

    The first line is a header naming order_uuid and optionally note, in any order. Fields are
    trimmed, blank lines skipped; an empty note takes --note. Every line is checked first: if any
    is bad, nothing is enqueued, every bad line is listed (the first 50, then a count) and the
    exit code is 2. Orders repeated in the file count once; orders that already have a queued,
    running, retrying or succeeded job are counted as already active. The jobs wait in the table
    and workers' schedulers send them as the rate limit allows, customers' jobs first.

    Prints the counts: created, already active (--json: {"created", "already_active",
    "invalid", "duplicates"}).
    """
    from worker.bulk import BulkInputError, check_csv
    from worker.producer import Producer
    from worker.progress import progress_bar
    from worker.validation import clean_lane, clean_note, clean_source

    clean_source(source, "--source")
    clean_lane(lane, "--lane")
    if note is not None:
        clean_note(note, "--note")
    current = settings()
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
    producer = Producer.from_settings(current)
    with progress_bar("enqueueing", checked.good_rows) as advance:
        result = producer.enqueue_bulk(checked.rows(), source, lane, progress=advance)
    if as_json:
        emit_json(result.as_json())
    else:
        say(
            f"created {result.created}, already active {result.already_active}"
            + (f", repeated in the file {result.duplicates}" if result.duplicates else "")
        )


# -- worker ------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Task threads in this worker.",
)
@click.option(
    "--loglevel",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (/metrics).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics listen on; 0.0.0.0 to let other hosts (Prometheus) reach them.",
)
@handle_errors
def worker(
    concurrency: int,
    loglevel: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run a worker until SIGTERM: the Celery worker (threads) plus the scheduler.

    Refuses to start without FRONTPAYMENT_TOKEN, or with a plain-http base URL that is not
    loopback. On SIGTERM it stops taking jobs, lets calls in flight finish and records them;
    jobs waiting for a rate-limit slot go back to the table untouched. Celery task events are
    on, so Flower works out of the box. One log line per provider call (job, order, attempts,
    outcome, HTTP status, duration); the token is redacted from every line.
    """
    from worker.service import run_worker

    current = settings()
    current.check_provider()
    run_worker(
        current,
        concurrency=concurrency,
        loglevel=loglevel.upper(),
        log_json=log_format == "json",
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )


# -- jobs ----------------------------------------------------------------------------------------


@main.group()
def jobs() -> None:
    """Read and steer the job table."""


STATUS_CHOICE = click.Choice(
    [
        "queued",
        "running",
        "retrying",
        "succeeded",
        "already_paid",
        "not_found",
        "invalid_payload",
        "dead",
        "failed",
    ]
)


def parse_time(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time as an aware UTC datetime; no zone means UTC."""
    if value is None:
        return None
    from datetime import UTC

    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise fail(
            f"{name}: {value[:40]!r} is not an ISO 8601 time (e.g. 2026-11-27T08:00:00Z)", 2
        ) from None


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
@handle_errors
def jobs_list(
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
    from models.db import make_engine, make_session_factory
    from worker.queries import list_jobs
    from worker.validation import clean_order_uuid, clean_source

    if as_json and as_csv:
        raise fail("--json and --csv: choose one", 2)
    if order_uuid is not None:
        clean_order_uuid(order_uuid, "--order")
    clean_source(source, "--source")
    since_at, until_at = parse_time(since, "--since"), parse_time(until, "--until")
    engine = make_engine(settings().database_url)
    with make_session_factory(engine)() as session:
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
    engine.dispose()
    if as_json:
        emit_json(rows)
        return
    if as_csv:
        from worker.render import jobs_csv

        click.echo(jobs_csv(rows), nl=False)
        return
    from worker.render import jobs_table

    jobs_table(rows)


@jobs.command("show")
@click.argument("job_id", type=JOB_ID)
@json_option
@handle_errors
def jobs_show(job_id: int, as_json: bool) -> None:
    """One job with every call it made to the provider, oldest first."""
    from models.db import make_engine, make_session_factory
    from worker.queries import job_with_calls

    engine = make_engine(settings().database_url)
    with make_session_factory(engine)() as session:
        data = job_with_calls(session, job_id)
    engine.dispose()
    if as_json:
        emit_json(data)
        return
    from worker.render import job_detail

    job_detail(data)


@jobs.command("retry")
@click.argument("job_ids", nargs=-1, type=JOB_ID)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["dead", "failed"]),
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
@handle_errors
def jobs_retry(
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
    from models.db import make_engine, make_session_factory, utcnow
    from worker import ops
    from worker.validation import clean_source

    if job_ids and statuses:
        raise click.UsageError("give JOB_IDs or --status, not both")
    if not job_ids and not statuses:
        raise click.UsageError("give the JOB_IDs to retry, or --status dead|failed")
    if job_ids and (source is not None or since is not None):
        raise click.UsageError("--source and --since narrow --status; JOB_IDs need neither")
    clean_source(source, "--source")
    since_at = parse_time(since, "--since")
    engine = make_engine(settings().database_url)
    sessions = make_session_factory(engine)
    try:
        if job_ids:
            result = ops.retry_jobs(sessions, job_ids, utcnow, dry_run=dry_run)
        else:
            from worker.progress import progress_bar

            selection = ops.RetrySelection(tuple(dict.fromkeys(statuses)), source, since_at)
            with sessions() as session:
                total = ops.count_matching(session, selection)
            label = "checking" if dry_run else "sending round again"
            with progress_bar(label, total) as advance:
                result = ops.retry_matching(
                    sessions, selection, utcnow, dry_run=dry_run, progress=advance
                )
    finally:
        engine.dispose()
    if as_json:
        emit_json(result.as_json())
    if dry_run and not as_json:
        from worker.render import retry_candidates_table

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


@main.command()
@click.option(
    "--since",
    default=None,
    help="Only jobs created (and calls made) at or after this ISO 8601 time.",
)
@json_option
@handle_errors
def stats(since: str | None, as_json: bool) -> None:
    """Jobs per status and source, calls, success rate, latency, rate-limit waits.

    --json prints one object: since, jobs_total, jobs {status: n}, jobs_by_source {source: n},
    calls {total, cancel, status_check, cancel_per_job}, success_rate (succeeded / terminal
    jobs, null when none finished), latency_ms {p50, p95, p99} of provider calls,
    rate_limit {provider_429s, calls_that_waited, wait_seconds}, oldest_queued_age_seconds (how
    long the longest-waiting queued job has been due; null when none is queued).
    """
    from models.db import make_engine, make_session_factory, utcnow
    from worker.stats import collect_stats

    since_at = parse_time(since, "--since")
    engine = make_engine(settings().database_url)
    with make_session_factory(engine)() as session:
        data = collect_stats(session, since_at, utcnow())
    engine.dispose()
    if as_json:
        emit_json(data)
        return
    from worker.render import stats_table

    stats_table(data)


@main.command()
@handle_errors
def demo() -> None:
    """Run the whole pipeline end to end on this machine, no services needed.

    A SQLite file (./fpcancel-demo.db, made anew), Celery's in-memory broker (or the Redis at
    FPCANCEL_BROKER_URL if one answers), the sandbox on a free port and a worker in this process
    cancel a customer's order and a small stock-out with paid, unknown and flaky orders.
    """
    from rich.console import Console

    from worker.demo import run_demo

    code = run_demo(settings(), Console(stderr=True))
    if code:
        raise fail("the demo did not finish as expected (see above)", 1)


# -- sandbox -----------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="0 picks a free port.",
)
@click.option(
    "--token",
    envvar="SANDBOX_TOKEN",
    default=None,
    help="Accept only this bearer token (default: any). Env: SANDBOX_TOKEN.",
)
@click.option(
    "--rate-limit",
    default="240/60",
    show_default=True,
    help="CALLS/SECONDS per token before answering 429, or 'off'.",
)
@click.option(
    "--rate-mode",
    type=click.Choice(["laravel", "sliding"]),
    default="laravel",
    show_default=True,
    help="How calls are counted. laravel: as the provider does, a fixed window per token that "
    "opens at the first call after the last one expired, x-ratelimit-remaining counting down, "
    "429 with Retry-After and X-RateLimit-Reset in whole seconds. sliding: at most CALLS in any "
    "SECONDS.",
)
@click.option(
    "--answer-delay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="S",
    help="Answer every API call S seconds after it arrived (counted at arrival), e.g. 0.03.",
)
@click.option(
    "--scenario",
    type=click.File("r"),
    default=None,
    help='JSON: {"orders": {"ODR1": {"status": "PAID", "script": ["510"]}}}.',
)
@click.option(
    "--unknown-orders",
    type=click.Choice(["open", "missing"]),
    default="open",
    show_default=True,
    help="Orders not in the scenario: open (cancellable) or missing (404).",
)
@click.option("--verbose", is_flag=True, help="Log every request.")
@handle_errors
def sandbox(
    host: str,
    port: int,
    token: str | None,
    rate_limit: str,
    rate_mode: str,
    answer_delay: float,
    scenario: Any,
    unknown_orders: str,
    verbose: bool,
) -> None:
    """A local stand-in for Front Payment's API, for demos, tests and your own integration work.

    Serves POST /api/v1/connect/orders/cancel/{id} and GET /api/v1/connect/orders/status/{id}
    with every documented answer, checks the token and the payload, counts calls against the
    rate limit the way the provider's Laravel does (or with a sliding window), sends its headers
    and 429s, and misbehaves on request per order (script steps: 510, 417, 503:retry-after=2,
    502-html, slow:S, late:S, drop, 401, 429, ...). Control endpoints live under /_sandbox/;
    GET /_sandbox/stats counts admitted calls, 429s and the most admitted in any window.
    Point workers at it with FRONTPAYMENT_BASE_URL=http://127.0.0.1:PORT/api/v1.
    """
    from worker import sandbox as sb

    try:
        limit = (
            None
            if rate_limit.strip().lower() in ("off", "none", "0")
            else sb.parse_rate_limit(rate_limit)
        )
    except ValueError as exc:
        raise fail(f"--rate-limit: {exc}", 2) from None
    try:
        server = sb.SandboxServer(
            host,
            port,
            token=token,
            rate_limit=limit,
            rate_mode=rate_mode,
            answer_delay_seconds=answer_delay,
            unknown_orders=unknown_orders,
            verbose=verbose,
        )
    except ValueError as exc:
        raise fail(f"--token: {exc}", 2) from None
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 1) from None
    if scenario is not None:
        try:
            server.load_scenario(json.load(scenario))
        except (ValueError, TypeError, KeyError) as exc:
            raise fail(f"--scenario: {exc}", 2) from None
    say(f"sandbox listening: FRONTPAYMENT_BASE_URL={server.base_url}")
    from worker.settings import is_loopback_host

    if not is_loopback_host(host):
        say(
            f"WARNING: the sandbox listens on {host}, beyond this machine: its /_sandbox/ control "
            "endpoints have no authentication, so anyone who reaches it can rewrite its orders "
            "and read its call log. Bind it to 127.0.0.1 unless that is what you want."
        )
    server.serve_forever()


def run() -> None:
    main(prog_name="fpcancel")


if __name__ == "__main__":
    sys.exit(main())
