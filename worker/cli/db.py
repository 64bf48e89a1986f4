"""`fpcancel db upgrade`."""

import click

from fpcancel.cli.context import CliContext, pass_cli, say


@click.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@pass_cli
def db_upgrade(cli: CliContext) -> None:
    """Migrate the database to the newest schema (Alembic)."""
    from fpcancel.migrate import current_revision, upgrade

    upgrade(cli.engine)
    say(f"database at revision {current_revision(cli.engine)}")


COMMANDS = [db]
