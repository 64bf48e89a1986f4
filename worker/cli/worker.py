"""`fpcancel worker`: the Celery worker and the feed, in one process."""

import click

from fpcancel.cli.context import CliContext, log_format_option, pass_cli


@click.command()
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
@log_format_option
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
@pass_cli
def worker(
    cli: CliContext,
    concurrency: int,
    loglevel: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run a worker until SIGTERM: the Celery worker (threads) plus the scheduler.

    Refuses to start without FRONTPAYMENT_TOKEN, or with a plain-http base URL that is not
    loopback. On SIGTERM it stops taking jobs, lets calls in flight finish and records them;
    jobs waiting for a rate-limit slot go back to the table untouched. Celery task events
    start when a monitor asks for them (Flower does), so Flower works out of the box. One log
    line per provider call (job, order, attempts, outcome, HTTP status, duration); the token
    is redacted from every line.
    """
    from fpcancel.service import run_worker

    current = cli.settings
    current.check_provider()
    current.check_webhook()
    run_worker(
        current,
        concurrency=concurrency,
        loglevel=loglevel.upper(),
        log_json=log_format == "json",
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )


COMMANDS = [worker]
