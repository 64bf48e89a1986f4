"""What every command shares: settings read once, a database opened at most once and closed when
the command ends, fpcancel's errors turned into the SPEC's exit codes in one place, and the
output helpers (`say` to stderr, `emit_json` to stdout). rq's `CliConfig` and `pass_cli_config`
are the model.

Exit codes: 0 success; 2 bad input (a bad argument or setting, an unknown job, a job in the wrong
state), with a one-line reason; 1 any other failure (database or broker unreachable).
"""

import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property, update_wrapper
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import click
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from fpcancel.errors import BadInput, FpcancelError
from fpcancel.settings import VARIABLES, Settings, load_settings
from fpcancel.statuses import LANES, RETRYABLE_BY_OPS, JobStatus
from fpcancel.textsafe import printable

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from fpcancel.producer import Producer

P = ParamSpec("P")
R = TypeVar("R")

# Ids and offsets are BIGINT in the tables: a larger number is bad input, not a database failure.
BIGINT_MAX = 2**63 - 1
JOB_ID = click.IntRange(1, BIGINT_MAX)
STATUS_CHOICE = click.Choice([status.value for status in JobStatus])
RETRYABLE_CHOICE = click.Choice([status.value for status in RETRYABLE_BY_OPS])
LANE_CHOICE = click.Choice(LANES)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout."
)


class BadInputError(click.ClickException):
    """Exit 2: bad input, with a one-line reason."""

    exit_code = 2


def fail(message: str, code: int) -> click.ClickException:
    """A one-line reason and the SPEC's exit code (2 bad input, 1 anything else). Whatever the
    reason quotes (a value, a database's error) is shown escaped: it cannot drive the terminal or
    forge a line."""
    shown = "\n".join(printable(line) for line in message.split("\n"))
    return BadInputError(shown) if code == 2 else click.ClickException(shown)


def _first_line(exc: DBAPIError) -> str:
    lines = str(exc.orig).strip().splitlines() if exc.orig else []
    return lines[0] if lines else type(exc).__name__


def as_click_error(exc: Exception) -> click.ClickException | None:
    """fpcancel's errors and the database's, as the exit code and reason a user sees."""
    if isinstance(exc, BadInput):
        return fail(str(exc), 2)
    if isinstance(exc, DataError):
        # The validators should have refused the value first; if one slipped through, it is
        # still the input's fault, and the transaction wrote nothing.
        return fail(f"the database refused a value: {_first_line(exc)}", 2)
    if isinstance(exc, OperationalError | DBAPIError):
        return fail(f"database unreachable or failing: {_first_line(exc)}", 1)
    if isinstance(exc, FpcancelError):
        return fail(str(exc), exc.exit_code)
    return None


class FpcancelGroup(click.Group):
    """The top-level group: every command's errors are mapped here, once."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:
            error = as_click_error(exc)
            if error is None:
                raise
            raise error from None


class CliContext:
    """One per command run: settings and the database, made when first asked for."""

    def __init__(self, ctx: click.Context) -> None:
        self._ctx = ctx

    @cached_property
    def settings(self) -> Settings:
        return load_settings()

    @cached_property
    def engine(self) -> "Engine":
        from fpcancel.models.db import make_engine

        engine = make_engine(self.settings.database_url)
        self._ctx.call_on_close(engine.dispose)
        return engine

    @cached_property
    def sessions(self) -> "sessionmaker[Session]":
        from fpcancel.models.db import make_session_factory

        return make_session_factory(self.engine)

    @cached_property
    def producer(self) -> "Producer":
        """The producer Python code uses, on this command's database and broker."""
        from fpcancel.app import make_celery
        from fpcancel.producer import Producer

        return Producer(self.sessions, make_celery(self.settings))


def pass_cli(func: Callable[Concatenate[CliContext, P], R]) -> Callable[P, R]:
    """Hand the command its `CliContext` as the first argument."""

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ctx = click.get_current_context()
        cli = ctx.find_object(CliContext)
        if cli is None:  # a command run on its own, without the `fpcancel` group
            cli = ctx.obj = CliContext(ctx)
        return func(cli, *args, **kwargs)

    return update_wrapper(wrapper, func)


# Every long-running command logs as text or as one JSON object per line.
log_format_option = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line.",
)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def say(message: str) -> None:
    """Human text: to stderr, so stdout stays for what scripts read."""
    click.echo(message, err=True)


def parse_time(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time as an aware UTC datetime; no zone means UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise fail(
            f"{name}: {value[:40]!r} is not an ISO 8601 time (e.g. 2026-11-27T08:00:00Z)", 2
        ) from None


def settings_help() -> str:
    """The variables and their defaults, for `fpcancel --help` (read from `Settings`)."""
    parts = []
    for variable in VARIABLES:
        default = variable.default
        parts.append(f"{variable.name}" + (f" ({default})" if default is not None else ""))
    return ", ".join(parts)
