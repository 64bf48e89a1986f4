"""`fpcancel events list|redeliver`: the outcome events a shop hears about."""

import json
import time

import click

from fpcancel.cli.context import (
    BIGINT_MAX,
    CliContext,
    emit_json,
    json_option,
    pass_cli,
    say,
)

EVENT_ID = click.IntRange(1, BIGINT_MAX)
FOLLOW_POLL_SECONDS = 1.0


@click.group()
def events() -> None:
    """Outcome events: one per job that ended, pushed to FPCANCEL_WEBHOOK_URL when it is set."""


@events.command("list")
@click.option(
    "--after", type=click.IntRange(0, BIGINT_MAX), default=0, help="Only events with a larger id."
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option(
    "--follow",
    is_flag=True,
    help="Then print new events as JSON lines, as they come, until interrupted (Ctrl-C).",
)
@json_option
@pass_cli
def events_list(cli: CliContext, after: int, limit: int, follow: bool, as_json: bool) -> None:
    """Outcome events, oldest first: each job that ended gives one (a job sent round again by
    `jobs retry` gives another when it ends again).

    --json prints a list of payloads, the webhook bodies: {"id", "type", "timestamp", "data":
    {"job_id", "order_uuid", "status", "source", "lane", "attempts", "last_http_status",
    "last_message", "created_at", "finished_at"}}. --follow prints one payload per line (JSON
    lines) after the first page, polling every second; --after ID starts after that event.
    """
    from fpcancel.events import read_events

    with cli.sessions() as session:
        page = read_events(session, after, limit)
    if follow:
        _follow(cli, page, after)
        return
    if as_json:
        emit_json(page)
        return
    from fpcancel.render import events_table

    events_table(page)


def _follow(cli: CliContext, first: list[dict[str, object]], after: int) -> None:
    from fpcancel.events import read_events

    last = after
    page = first
    try:
        while True:
            for payload in page:
                click.echo(json.dumps(payload, ensure_ascii=False))
                last = int(str(payload["id"]))
            if not page:
                time.sleep(FOLLOW_POLL_SECONDS)
            with cli.sessions() as session:
                page = read_events(session, last, 1000)
    except KeyboardInterrupt:
        pass


@events.command("redeliver")
@click.argument("event_ids", nargs=-1, type=EVENT_ID)
@click.option("--failed", is_flag=True, help="Every event whose delivery failed.")
@json_option
@pass_cli
def events_redeliver(
    cli: CliContext, event_ids: tuple[int, ...], failed: bool, as_json: bool
) -> None:
    """Send events to the webhook again: EVENT_IDs (all must exist, or nothing changes), or
    every one whose delivery failed (--failed). Each waits again, due now, with
    FPCANCEL_WEBHOOK_MAX_ATTEMPTS fresh tries; its earlier tries stay on record. Workers with
    FPCANCEL_WEBHOOK_URL set deliver them. --json prints {"redelivered": n, "ids": [...]}.
    """
    from fpcancel import outbox
    from fpcancel.models.db import utcnow

    if event_ids and failed:
        raise click.UsageError("give EVENT_IDs or --failed, not both")
    if not event_ids and not failed:
        raise click.UsageError("give the EVENT_IDs to send again, or --failed")
    with cli.sessions.begin() as session:
        ids = outbox.redeliver(session, utcnow(), list(dict.fromkeys(event_ids)), failed=failed)
    if as_json:
        emit_json({"redelivered": len(ids), "ids": ids})
    n = len(ids)
    say(f"{n} event{'s' if n != 1 else ''} will be sent again")


COMMANDS = [events]
