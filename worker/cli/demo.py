"""`fpcancel demo`: the whole pipeline on this machine, no services needed."""

import click

from fpcancel.cli.context import CliContext, fail, pass_cli


@click.command()
@pass_cli
def demo(cli: CliContext) -> None:
    """Run the whole pipeline end to end on this machine, no services needed.

    A SQLite file (./fpcancel-demo.db, made anew), Celery's in-memory broker (or the Redis at
    FPCANCEL_BROKER_URL if one answers), the sandbox on a free port and a worker in this process
    cancel a customer's order and a small stock-out with paid, unknown and flaky orders.
    """
    from rich.console import Console

    from fpcancel.demo import run_demo

    code = run_demo(cli.settings, Console(stderr=True))
    if code:
        raise fail("the demo did not finish as expected (see above)", 1)


COMMANDS = [demo]
