"""Human output for ops: rich tables, colours on a terminal, plain text in a pipe.

Every value from outside (notes, provider messages and bodies, sources) goes through
`fpcancel.textsafe.printable` on its way to a cell or line, and is never read as rich markup: on a
terminal or in a pipe, control characters show as escapes. `jobs_csv` neutralises formulas.
"""

import csv
import io
import json
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fpcancel.queries import JOB_FIELDS
from fpcancel.textsafe import csv_cell, printable
from fpcancel.times import iso

if TYPE_CHECKING:
    from fpcancel.ops import RetryResult

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
FLEXIBLE_MIN_WIDTH = 12
OUTCOME_STYLE = {
    "succeeded": "green",
    "order_cancelled": "green",
    "ambiguous": "yellow",
    "retryable": "yellow",
    "rate_limited": "yellow",
    "failed": "red",
    "unauthorized": "red",
    "misrouted": "red",
}


def _console(stderr: bool = False) -> Console:
    # In a pipe there is no terminal width to honour: a wide page keeps rows whole for grep.
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, soft_wrap=False, width=None if stream.isatty() else 240)


def _status(status: str) -> str:
    """Markup for a status in its colour (for text fpcancel writes itself)."""
    style = STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/{style}]" if style else status


def _cell(value: Any, style: str = "") -> Text:
    """A one-line cell: data is never read as markup, control characters and line breaks show as
    escapes, and what does not fit ends in an ellipsis."""
    return Text(printable(value), style=style, no_wrap=True, overflow="ellipsis")


def _status_cell(status: str) -> Text:
    return _cell(status, STATUS_STYLE.get(status, ""))


def _when(value: Any, digits: int = 19) -> str:
    """`2026-11-27T08:00:00.123456Z` as `2026-11-27 08:00:00` (or with milliseconds: 23)."""
    return "" if value is None else str(value).rstrip("Z").replace("T", " ")[:digits]


def _one_line_table(
    console: Console,
    names: tuple[str, ...],
    rows: list[list[Text]],
    flexible: tuple[str, ...],
    drop_first: tuple[str, ...] = (),
    title: str = "",
) -> Table:
    """Every row stays one line. Fixed columns keep their full width; the `flexible` ones (free
    text) share what is left of the terminal, cut with an ellipsis but no narrower than 12. On a
    terminal too narrow for that, whole columns go, in `drop_first` order (a caption says so)."""
    widest = {
        name: max([len(name), *(row[i].cell_len for row in rows)]) for i, name in enumerate(names)
    }

    def needed(shown: list[str]) -> int:
        chrome = 3 * len(shown) - 1  # a space either side of each cell, a rule between columns
        return chrome + sum(
            min(widest[n], FLEXIBLE_MIN_WIDTH) if n in flexible else widest[n] for n in shown
        )

    shown = list(names)
    for name in drop_first:
        if needed(shown) <= console.width:
            break
        shown.remove(name)
    hidden = len(names) - len(shown)
    table = Table(
        show_edge=False,
        header_style="bold",
        title=title or None,
        caption=f"{hidden} column{'s' * (hidden > 1)} hidden: widen the terminal or use --json"
        if hidden
        else None,
    )
    fixed = sum(widest[n] for n in shown if n not in flexible)
    share = (console.width - fixed - (3 * len(shown) - 1)) // max(
        1, sum(n in flexible for n in shown)
    )
    for name in shown:
        width = widest[name]
        if name in flexible:
            width = min(width, max(FLEXIBLE_MIN_WIDTH, share))
        table.add_column(name, no_wrap=True, overflow="ellipsis", width=width)
    for row in rows:
        table.add_row(*(cell for name, cell in zip(names, row, strict=True) if name in shown))
    return table


def jobs_table(rows: list[dict[str, Any]]) -> None:
    cells = [
        [
            _cell(row["id"]),
            _cell(row["order_uuid"]),
            _status_cell(row["status"]),
            _cell(row["lane"]),
            _cell(row["source"]),
            _cell(row["attempts"]),
            _cell(row["last_http_status"]),
            _cell((row["last_message"] or "")[:80]),
            _cell(_when(row["next_attempt_at"])),
            _cell(_when(row["created_at"])),
        ]
        for row in rows
    ]
    names = (
        "id",
        "order_uuid",
        "status",
        "lane",
        "source",
        "attempts",
        "http",
        "last_message",
        "next_attempt_at",
        "created_at",
    )
    console = _console()
    table = _one_line_table(
        console,
        names,
        cells,
        flexible=("source", "last_message"),
        drop_first=("next_attempt_at", "lane", "http", "source", "created_at", "last_message"),
    )
    console.print(table)
    if not rows:
        console.print("no jobs match", style="dim")


def jobs_csv(rows: list[dict[str, Any]]) -> str:
    """`jobs list --csv`: the JSON keys as the header, one job a line; JSON values (a 417's
    errors) as JSON text, empty for null. A cell starting with `=`, `+`, `-`, `@`, a tab or a
    carriage return gets a leading `'` so a spreadsheet shows it instead of running it. Text is
    always quoted (a bare carriage return inside a value would otherwise split the row)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow(JOB_FIELDS)
    for row in rows:
        writer.writerow([csv_cell(_csv_value(row[name])) for name in JOB_FIELDS])
    return out.getvalue()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def job_detail(data: dict[str, Any]) -> None:
    """`jobs show`: the job, then every call it made, one line each, oldest first."""
    console = _console()
    head = Text.assemble(
        (f"job {data['id']}", "bold"),
        f"  order {printable(data['order_uuid'])}  ",
        (printable(data["status"]), STATUS_STYLE.get(data["status"], "")),
    )
    console.print(head)
    for key in JOB_FIELDS:
        if key in ("id", "order_uuid", "status"):
            continue  # on the heading line
        value = data.get(key)
        if value is not None and value != "":
            shown = (
                json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
            )
            console.print(Text(f"  {key}: {printable(shown)}"), highlight=False)
    calls = data["calls"]
    cells = [
        [
            _cell(call["number"]),
            _cell(call["kind"]),
            _cell(_when(call["started_at"], 23)),
            _cell(call["duration_ms"]),
            _cell(call["http_status"]),
            _cell(call["outcome"], OUTCOME_STYLE.get(call["outcome"], "")),
            _cell("yes" if call.get("counted") else ""),
            _cell((call["message"] or "")[:120]),
            _cell((call["response_body"] or "")[:200]),
        ]
        for call in calls
    ]
    names = ("#", "kind", "started_at", "ms", "http", "outcome", "counted", "message", "body")
    table = _one_line_table(
        console,
        names,
        cells,
        flexible=("message", "body"),
        drop_first=("counted", "body", "kind", "http", "message"),
        title=f"calls ({len(calls)})",
    )
    console.print(table)
    if not calls:
        console.print("no calls yet", style="dim")
    for event in data.get("events", []):
        _event_detail(console, event)


DELIVERY_STYLE = {"waiting": "yellow", "delivered": "green", "failed": "bold red"}


def _event_detail(console: Console, event: dict[str, Any]) -> None:
    """One outcome event of `jobs show`: its delivery state, then every try, one line each."""
    delivery = event["delivery"]
    head = Text.assemble(
        (f"event {event['id']}", "bold"),
        f"  {printable(event['type'])}  ",
        (printable(delivery), DELIVERY_STYLE.get(delivery, "")),
        f"  created {_when(event['created_at'], 23)}",
        f"  delivered {_when(event['delivered_at'], 23)}" if event["delivered_at"] else "",
        f"  next try {_when(event['next_delivery_at'], 23)}"
        if delivery == "waiting" and event["next_delivery_at"]
        else "",
    )
    console.print(head)
    tries = event["deliveries"]
    if not tries:
        return
    cells = [
        [
            _cell(t["attempt"]),
            _cell(_when(t["started_at"], 23)),
            _cell(t["duration_ms"]),
            _cell(t["http_status"]),
            _cell("yes" if t["counted"] else "probe"),
            _cell(t["error"] or ""),
        ]
        for t in tries
    ]
    names = ("#", "started_at", "ms", "http", "counted", "error")
    console.print(
        _one_line_table(
            console,
            names,
            cells,
            flexible=("error",),
            drop_first=("counted", "ms"),
            title=f"webhook tries ({len(tries)})",
        )
    )


def events_table(payloads: list[dict[str, Any]]) -> None:
    """`events list`: one line per event, oldest first."""
    cells = [
        [
            _cell(p["id"]),
            _cell(_when(p["timestamp"])),
            _cell(p["data"].get("job_id")),
            _cell(p["data"].get("order_uuid")),
            _status_cell(str(p["data"].get("status"))),
            _cell(p["data"].get("source")),
            _cell(p["data"].get("attempts")),
            _cell((p["data"].get("last_message") or "")[:80]),
        ]
        for p in payloads
    ]
    names = ("id", "timestamp", "job", "order_uuid", "status", "source", "attempts", "last_message")
    console = _console()
    console.print(
        _one_line_table(
            console,
            names,
            cells,
            flexible=("source", "last_message"),
            drop_first=("source", "attempts", "timestamp", "last_message"),
        )
    )
    if not payloads:
        console.print("no events", style="dim")


def retry_candidates_table(result: "RetryResult") -> None:
    """`jobs retry --dry-run`: the jobs that would go round again (the first 100), on stderr."""
    console = _console(stderr=True)
    cells = [
        [
            _cell(job.id),
            _cell(job.order_uuid),
            _status_cell(job.status),
            _cell(job.source),
            _cell(job.attempts),
            _cell((job.last_message or "")[:80]),
            _cell(_when(iso(job.finished_at))),
        ]
        for job in result.shown
    ]
    names = ("id", "order_uuid", "status", "source", "attempts", "last_message", "finished_at")
    table = _one_line_table(
        console,
        names,
        cells,
        flexible=("source", "last_message"),
        drop_first=("finished_at", "source", "last_message"),
        title="would go round again",
    )
    console.print(table)
    more = len(result.ids) - len(result.shown)
    if more > 0:
        console.print(f"... and {more} more (--json lists every id)", style="dim")


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
    sources = ", ".join(
        f"{printable(k) or '(none)'} {v}" for k, v in stats["jobs_by_source"].items()
    )
    table.add_row("by source", Text(sources or "-"))
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
    events = stats["events"]
    table.add_row(
        "events",
        f"{events['total']} ({events['waiting']} waiting, {events['delivered']} delivered, "
        f"{events['failed']} failed)",
    )
    latency_s = stats["delivery_latency_seconds"]
    table.add_row(
        "delivery latency",
        ", ".join(f"{k} {'-' if v is None else f'{v:.1f} s'}" for k, v in latency_s.items()),
    )
    console.print(table)


def keys_table(rows: list[dict[str, Any]]) -> None:
    """`keys list`: one key a line; never the key, only its first characters."""
    console = _console()
    names = ("id", "name", "scope", "prefix", "created_at", "last_used_at", "revoked_at")
    cells = [
        [
            _cell(row["id"]),
            _cell(row["name"]),
            _cell(row["scope"]),
            _cell(row["prefix"] + "…"),
            _cell(_when(row["created_at"])),
            _cell(_when(row["last_used_at"])),
            _cell(_when(row["revoked_at"])),
        ]
        for row in rows
    ]
    table = _one_line_table(
        console, names, cells, flexible=("name",), drop_first=("last_used_at", "created_at")
    )
    console.print(table)
    if not rows:
        console.print(
            "no keys: make one with `fpcancel keys create --name N --scope S`", style="dim"
        )
