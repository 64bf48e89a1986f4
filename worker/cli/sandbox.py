"""`fpcancel sandbox`: the local stand-in for Front Payment."""

import json
from typing import Any

import click

from fpcancel.cli.context import fail, say


@click.command()
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
    from fpcancel import sandbox as sb

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
    from fpcancel.settings import is_loopback_host

    if not is_loopback_host(host):
        say(
            f"WARNING: the sandbox listens on {host}, beyond this machine: its /_sandbox/ control "
            "endpoints have no authentication, so anyone who reaches it can rewrite its orders "
            "and read its call log. Bind it to 127.0.0.1 unless that is what you want."
        )
    server.serve_forever()


COMMANDS = [sandbox]
