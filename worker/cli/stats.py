"""`fpcancel stats`: what the tables say about the last while."""

import click

from fpcancel.cli.context import CliContext, emit_json, json_option, parse_time, pass_cli


@click.command()
@click.option(
    "--since",
    default=None,
    help="Only jobs created (and calls made) at or after this ISO 8601 time.",
)
@json_option
@pass_cli
def stats(cli: CliContext, since: str | None, as_json: bool) -> None:
    """Jobs per status and source, calls, success rate, latency, rate-limit waits.

    --json prints one object: since, jobs_total, jobs {status: n}, jobs_by_source {source: n},
    calls {total, cancel, status_check, cancel_per_job}, success_rate (succeeded / terminal
    jobs, null when none finished), latency_ms {p50, p95, p99} of provider calls,
    rate_limit {provider_429s, calls_that_waited, wait_seconds}, events {total, waiting,
    delivered, failed} (outcome events by webhook delivery state), delivery_latency_seconds
    {p50, p90, p99} (from a job's end to the webhook's 2xx), oldest_queued_age_seconds (how
    long the longest-waiting queued job has been due; null when none is queued).
    """
    from fpcancel.models.db import utcnow
    from fpcancel.stats import collect_stats

    since_at = parse_time(since, "--since")
    with cli.sessions() as session:
        data = collect_stats(session, since_at, utcnow())
    if as_json:
        emit_json(data)
        return
    from fpcancel.render import stats_table

    stats_table(data)


COMMANDS = [stats]
