"""`fpcancel keys create|list|revoke`: API keys for the HTTP service."""

import click

from fpcancel.cli.context import BIGINT_MAX, CliContext, emit_json, json_option, pass_cli, say
from fpcancel.statuses import API_SCOPES


@click.group()
def keys() -> None:
    """API keys for `fpcancel serve` (Authorization: Bearer KEY).

    Scopes: enqueue (create cancellations), read (jobs, stats, events), ops (everything,
    retry and the dashboard included). Only a SHA-256 of each key is stored.
    """


@keys.command("create")
@click.option(
    "--name",
    required=True,
    help="Who uses it; logged with every request (1-64 of A-Z a-z 0-9 _ - . :).",
)
@click.option("--scope", required=True, type=click.Choice(API_SCOPES), help="What it may do.")
@json_option
@pass_cli
def keys_create(cli: CliContext, name: str, scope: str, as_json: bool) -> None:
    """Make a key and print it, once: it is stored only as a hash and cannot be shown again.

    stdout is the key alone (--json: {"id", "name", "scope", "prefix", "created_at",
    "last_used_at", "revoked_at", "key"}). A name may be used by one key that is not revoked.
    """
    from fpcancel.models.db import utcnow
    from fpcancel.web.keys import clean_key_name, create_key

    clean_key_name(name)
    made = create_key(cli.sessions, name, scope, utcnow())
    if as_json:
        emit_json({**made.info.as_json(), "key": made.key})
        return
    say(
        f"key {made.info.id} ({made.info.name}, scope {made.info.scope}) made; it is shown "
        "this once, keep it somewhere safe:"
    )
    click.echo(made.key)


@keys.command("list")
@json_option
@pass_cli
def keys_list(cli: CliContext, as_json: bool) -> None:
    """Every key, oldest first: id, name, scope, its first characters, when it was made, last
    used (updated at most once a minute) and revoked. Never the key."""
    from fpcancel.web.keys import list_keys

    with cli.sessions() as session:
        found = list_keys(session)
    if as_json:
        emit_json([info.as_json() for info in found])
        return
    from fpcancel.render import keys_table

    keys_table([info.as_json() for info in found])


@keys.command("revoke")
@click.argument("key_id", type=click.IntRange(1, BIGINT_MAX))
@json_option
@pass_cli
def keys_revoke(cli: CliContext, key_id: int, as_json: bool) -> None:
    """Revoke key KEY_ID: its requests get 401 from now on and dashboard sessions signed in
    with it end. An unknown or already revoked key exits 2."""
    from fpcancel.models.db import utcnow
    from fpcancel.web.keys import revoke_key

    info = revoke_key(cli.sessions, key_id, utcnow())
    if as_json:
        emit_json(info.as_json())
        return
    say(f"key {info.id} ({info.name}) revoked")


COMMANDS = [keys]
