"""Human output for ops: rich tables, colours on a terminal, plain text in a pipe."""

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

STATUS_STYLE = {
    "queued": "cyan",
    "running": "blue",
    "retrying": "yellow",
    "succeeded": "green",
    "already_paid": "magenta",
    "not_found": "magenta",
    "invalid_payload": "red",
    "dead": "bold red",
    "failed": "red",
}


def _console() -> Console:
    # In a pipe there is no terminal width to honour: keep rows on one line for grep and less.
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 240)


def _status(status: str) -> str:
    style = STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/{style}]" if style else status


def _when(value: Any) -> str:
    return "" if value is None else str(value).replace("T", " ")[:19]


def jobs_table(rows: list[dict[str, Any]]) -> None:
    table = Table(show_edge=False, header_style="bold")
    for column in (
        "id",
        "order_uuid",
        "status",
        "lane",
        "source",
        "attempts",
        "last_http_status",
        "last_message",
        "next_attempt_at",
        "created_at",
    ):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["order_uuid"],
            _status(row["status"]),
            row["lane"],
            row["source"] or "",
            str(row["attempts"]),
            "" if row["last_http_status"] is None else str(row["last_http_status"]),
            (row["last_message"] or "")[:40],
            _when(row["next_attempt_at"]),
            _when(row["created_at"]),
        )
    console = _console()
    console.print(table)
    if not rows:
        console.print("no jobs match", style="dim")


def job_detail(data: dict[str, Any]) -> None:
    console = _console()
    console.print(
        f"[bold]job {data['id']}[/bold]  order {data['order_uuid']}  {_status(data['status'])}"
    )
    for key in (
        "lane",
        "source",
        "note",
        "attempts",
        "next_attempt_at",
        "last_http_status",
        "last_message",
        "last_errors",
        "created_at",
        "updated_at",
        "finished_at",
    ):
        value = data.get(key)
        if value is not None and value != "":
            console.print(f"  {key}: {value}", highlight=False)
    table = Table(title="calls", show_edge=False, header_style="bold")
    for column in ("#", "kind", "started_at", "ms", "http", "outcome", "message", "body"):
        table.add_column(column, overflow="fold")
    for call in data["calls"]:
        table.add_row(
            str(call["number"]),
            call["kind"],
            _when(call["started_at"]),
            str(call["duration_ms"]),
            "" if call["http_status"] is None else str(call["http_status"]),
            call["outcome"],
            (call["message"] or "")[:40],
            (call["response_body"] or "")[:60].replace("\n", " "),
        )
    console.print(table)


def stats_table(stats: dict[str, Any], console: Console | None = None) -> None:
    console = console or _console()
    table = Table(
        title="fpcancel stats" + (f" since {stats['since']}" if stats["since"] else ""),
        show_edge=False,
        show_header=False,
    )
    table.add_column("what", style="bold")
    table.add_column("value")
    jobs = ", ".join(f"{_status(k)} {v}" for k, v in stats["jobs"].items() if v)
    table.add_row("jobs", f"{stats['jobs_total']} ({jobs})" if jobs else "0")
    sources = ", ".join(f"{k or '(none)'} {v}" for k, v in stats["jobs_by_source"].items())
    table.add_row("by source", sources or "-")
    calls = stats["calls"]
    table.add_row(
        "calls",
        f"{calls['total']} ({calls['cancel']} cancel, {calls['status_check']} status checks; "
        f"{calls['cancel_per_job'] or 0} cancels per job)",
    )
    rate = stats["success_rate"]
    table.add_row("success rate", "-" if rate is None else f"{rate:.1%} of finished jobs succeeded")
    latency = stats["latency_ms"]
    table.add_row(
        "latency",
        ", ".join(f"{k} {'-' if v is None else f'{v:.0f} ms'}" for k, v in latency.items()),
    )
    waits = stats["rate_limit"]
    table.add_row(
        "rate limit",
        f"{waits['provider_429s']} 429s; {waits['calls_that_waited']} calls waited for a slot, "
        f"{waits['wait_seconds']:.1f} s in all",
    )
    age = stats["oldest_queued_age_seconds"]
    table.add_row("oldest queued", "-" if age is None else f"{age:.0f} s")
    console.print(table)
