"""`fpcancel`: the command line (SPEC.md, "Command line"), one module per group of commands.

context.py   what every command shares: settings, database, exit codes, output
db.py        db upgrade
enqueue.py   enqueue, enqueue-bulk
worker.py    worker
jobs.py      jobs list, jobs show, jobs retry
stats.py     stats
sandbox.py   sandbox
demo.py      demo
keys.py      keys create, keys list, keys revoke
serve.py     serve
"""

import sys

import click

from fpcancel import __version__
from fpcancel.cli import db, demo, enqueue, events, jobs, keys, sandbox, serve, stats, worker
from fpcancel.cli.context import CliContext, FpcancelGroup, settings_help


@click.group(
    cls=FpcancelGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Settings come from the environment (and ./.env), defaults in parentheses: "
    + settings_help()
    + ". See README.md.",
)
@click.version_option(__version__, prog_name="fpcancel")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Cancel orders at Front Payment reliably and in bulk.

    Exit codes: 0 success, 2 bad input (nothing written), 1 any other failure.
    """
    ctx.obj = CliContext(ctx)


for module in (db, enqueue, worker, jobs, events, stats, demo, sandbox, keys, serve):
    for command in module.COMMANDS:
        main.add_command(command)


def run() -> None:
    main(prog_name="fpcancel")


if __name__ == "__main__":
    sys.exit(main())
