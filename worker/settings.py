"""Settings: one object read from the environment (and `./.env`) once.

Every variable is in SPEC.md, "Configuration"; the few extra knobs below it are fpcancel's own and
documented in README.md. A malformed value raises `SettingsError` naming the variable.
"""

import io
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

from fpcancel.errors import SettingsError
from fpcancel.redaction import Redactor

DEMO_BASE_URL = "https://demo-api.frontpayment.no/api/v1"
DAY_SECONDS = 86_400
MAX_RATE_CALLS = 1_000_000


class Secret:
    """A value that never shows itself in a repr, a log line or an exception."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class RateLimit:
    """At most `calls` provider calls start in any `per_seconds` seconds."""

    calls: int
    per_seconds: float

    @property
    def per_second(self) -> float:
        return self.calls / self.per_seconds

    def __str__(self) -> str:
        return f"{self.calls}/{self.per_seconds:g}"


@dataclass(frozen=True)
class Settings:
    base_url: str = DEMO_BASE_URL
    token: Secret | None = field(default=None, repr=False)
    database_url: str = "sqlite:///fpcancel.db"
    broker_url: str = "redis://localhost:6379/0"
    max_attempts: int = 8
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 900.0
    http_timeout_seconds: float = 15.0
    rate_limit: RateLimit = RateLimit(240, 60.0)
    # fpcancel's own knobs (README.md, "More settings").
    scheduler_interval_seconds: float = 1.0
    dispatch_lease_seconds: float = 60.0
    max_lost_claims: int = 3
    # Outcome events pushed to the shop (SPEC.md, "Outcome events").
    webhook_url: str | None = None
    webhook_secret: Secret | None = field(default=None, repr=False)
    webhook_retry_base_seconds: float = 5.0
    webhook_retry_max_seconds: float = 3600.0
    webhook_max_attempts: int = 12
    # `fpcancel serve` signs its dashboard session cookies with this; unset, each process makes
    # a random one at start (sessions end when it restarts; README.md, "HTTP service").
    web_secret: Secret | None = field(default=None, repr=False)

    @property
    def connect_timeout_seconds(self) -> float:
        """Connecting is quick or broken: a third of the read timeout, at most 5 s."""
        return min(5.0, self.http_timeout_seconds / 3)

    @property
    def claim_lease_seconds(self) -> float:
        """How long a worker may hold a job before the scheduler takes it back.

        Covers a wait for a rate-limit slot, a status check and a cancel, each at most one
        connect plus read timeout, and the database writes around them.
        """
        call = self.connect_timeout_seconds + self.http_timeout_seconds
        return self.rate_limit_wait_seconds + 2 * call + 30.0

    @property
    def call_budget_seconds(self) -> float:
        """The most one more job of a batch can add to its run: a wait for a slot and a call."""
        return (
            self.rate_limit_wait_seconds + self.connect_timeout_seconds + self.http_timeout_seconds
        )

    @property
    def rate_limit_wait_seconds(self) -> float:
        """How long a claimed job waits for a rate-limit slot before it goes back untouched."""
        return max(5.0, min(30.0, 4 * self.rate_limit.per_seconds / self.rate_limit.calls))

    @property
    def token_value(self) -> str:
        """The bearer token, for the one place that sends it; SettingsError if unset."""
        if self.token is None or not self.token.reveal():
            raise SettingsError("FRONTPAYMENT_TOKEN: not set; the worker needs the bearer token")
        return self.token.reveal()

    @property
    def redactor(self) -> Redactor:
        """Blanks every secret setting out of a text (`fpcancel.redaction`)."""
        secrets = [self.token.reveal() if self.token else None]
        if self.web_secret is not None:
            secrets.append(self.web_secret.reveal())
        if self.webhook_secret is not None:
            whole = self.webhook_secret.reveal()
            secrets += [whole, whole.removeprefix("whsec_")]
        return Redactor(secrets)

    @property
    def webhook_key(self) -> bytes | None:
        """The HMAC key webhooks are signed with, when a webhook is configured."""
        if self.webhook_url is None or self.webhook_secret is None:
            return None
        from fpcancel.webhooks import secret_key

        return secret_key(self.webhook_secret.reveal())

    def check_webhook(self) -> None:
        """A webhook URL needs its secret (SPEC.md: required with the URL)."""
        if self.webhook_url is not None and self.webhook_secret is None:
            raise SettingsError(
                "FPCANCEL_WEBHOOK_SECRET: not set; FPCANCEL_WEBHOOK_URL needs it to sign "
                "every event (whsec_ followed by base64)"
            )

    def check_provider(self) -> None:
        """Refuse to call the provider without a token or over plain http to a remote host."""
        _ = self.token_value
        check_base_url(self.base_url)


# The API root's path: what real base URLs hold (`/api/v1`), nothing a parser could read twice.
_URL_PATH = re.compile(r"[A-Za-z0-9._~/-]*")
# RFC 6750's bearer token is visible ASCII; Laravel Sanctum's adds `|`. No space, no line break:
# either would break the Authorization header or smuggle another one into the request.
_TOKEN = re.compile(r"[\x21-\x7e]+")
# ASCII digits only: Python's int() and float() also take full-width digits and "1_5".
_DECIMAL = re.compile(r"\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_WHOLE = re.compile(r"\+?[0-9]+")


def check_base_url(url: str, name: str = "FRONTPAYMENT_BASE_URL") -> str:
    """An https URL, or http to a loopback host (the local sandbox); returns it rebuilt from the
    parts that were checked, so what is sent is what was checked.

    The URL is parsed by urllib3, the parser `requests` sends with, and must read the same to the
    standard library's; credentials, a query, a fragment, a port outside 1-65535 and anything but
    plain path characters are refused.
    """
    from urllib3.exceptions import LocationParseError
    from urllib3.util import parse_url

    shown = _shown_url(url)
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise SettingsError(
            f"{name}: {shown} holds white space, control or non-ASCII characters "
            "(write a host name in its xn-- form)"
        )
    try:
        parts = parse_url(url)
        std = urlsplit(url)
        std_port = std.port
    except (LocationParseError, ValueError):
        raise SettingsError(f"{name}: {shown} is not a valid URL (a bad host or port?)") from None
    scheme = (parts.scheme or "").lower()
    host = (parts.host or "").lower()
    if scheme not in ("http", "https") or not host:
        raise SettingsError(f"{name}: {shown} is not an http(s) URL")
    if parts.auth is not None or "@" in url:
        raise SettingsError(f"{name}: credentials in the URL are refused (the token is the one)")
    if parts.query is not None or parts.fragment is not None or "?" in url or "#" in url:
        raise SettingsError(f"{name}: {shown} has a query or fragment; give the API root only")
    if parts.port is not None and not 1 <= parts.port <= 65535:
        raise SettingsError(f"{name}: port {parts.port} is outside 1-65535")
    path = parts.path or ""
    if not _URL_PATH.fullmatch(path):
        raise SettingsError(
            f"{name}: the path {path!r} may only hold letters, digits, '/', '-', '.', '_', '~'"
        )
    if (std.hostname or "") != host.strip("[]") or std_port != parts.port:
        raise SettingsError(f"{name}: {shown} reads differently to different URL parsers")
    if scheme == "http" and not is_loopback_host(host):
        raise SettingsError(
            f"{name}: plain http is only allowed to a loopback host (the sandbox), got {host!r}"
        )
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{scheme}://{host}{port}{path}".rstrip("/")


def _shown_url(url: str) -> str:
    """The URL as quoted in an error: credentials masked, control characters escaped."""
    _, at, tail = url.rpartition("@")
    return repr(("***@" + tail) if at else url)[:120]


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback address (`127.0.0.1`, `[::1]`)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_rate_limit(raw: str, name: str = "FPCANCEL_RATE_LIMIT") -> RateLimit:
    """`N/W`: N calls in any W seconds, e.g. `240/60` (N at most 1,000,000, W at most a day)."""
    calls, sep, seconds = raw.strip().partition("/")
    if not (sep and _WHOLE.fullmatch(calls.strip()) and _DECIMAL.fullmatch(seconds.strip())):
        raise SettingsError(f"{name}: {raw[:40]!r} must be CALLS/SECONDS, e.g. 240/60")
    limit = RateLimit(int(calls), float(seconds))
    if not 1 <= limit.calls <= MAX_RATE_CALLS or not 0.001 <= limit.per_seconds <= DAY_SECONDS:
        raise SettingsError(
            f"{name}: {raw!r} must be 1-{MAX_RATE_CALLS:,} calls per 0.001-{DAY_SECONDS:,} seconds"
        )
    return limit


def check_token(raw: str, name: str = "FRONTPAYMENT_TOKEN") -> Secret | None:
    """The bearer token, or None when unset; never quoted in an error."""
    token = raw.strip()
    if not token:
        return None
    if not _TOKEN.fullmatch(token):
        raise SettingsError(
            f"{name}: holds a space, a line break or a character outside printable ASCII, "
            "which no bearer token has (check how it was copied)"
        )
    return Secret(token)


WEB_SECRET_MIN_CHARS = 32


def check_web_secret(raw: str, name: str = "FPCANCEL_WEB_SECRET") -> Secret | None:
    """The dashboard's signing secret: 32 or more printable ASCII characters, never quoted in an
    error (`python -c 'import secrets; print(secrets.token_urlsafe(32))'` makes one)."""
    secret = check_token(raw, name)
    if secret is not None and len(secret.reveal()) < WEB_SECRET_MIN_CHARS:
        raise SettingsError(
            f"{name}: too short, at least {WEB_SECRET_MIN_CHARS} characters "
            "(e.g. the output of: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return secret


def check_webhook_secret(raw: str, name: str = "FPCANCEL_WEBHOOK_SECRET") -> Secret:
    """`whsec_<base64>`, as the Standard Webhooks specification writes a secret; never quoted."""
    from fpcancel.webhooks import secret_key

    try:
        secret_key(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None
    return Secret(raw)


def check_webhook_url(raw: str, name: str = "FPCANCEL_WEBHOOK_URL") -> str:
    """Where outcome events are POSTed: the provider URL's rules (https, or plain http only to
    loopback; no credentials, query or fragment)."""
    return check_base_url(raw, name)


SUPPORTED_DATABASES = ("postgresql", "sqlite")
SUPPORTED_BROKERS = ("redis", "rediss", "memory")


def check_database_url(raw: str, name: str = "FPCANCEL_DATABASE_URL") -> str:
    """A SQLAlchemy URL for PostgreSQL (psycopg 3) or SQLite that SQLAlchemy can open."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    url_text = normalise_database_url(raw)
    try:
        url = make_url(url_text)
    except (ArgumentError, ValueError):
        raise SettingsError(
            f"{name}: not a database URL (e.g. postgresql://user:pass@host/db, sqlite:///file.db)"
        ) from None
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() not in SUPPORTED_DATABASES:
        raise SettingsError(f"{name}: {shown!r}: fpcancel runs on PostgreSQL or SQLite")
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise SettingsError(f"{name}: {shown!r}: no such database driver installed") from None
    if url.port is not None and not 1 <= url.port <= 65535:
        raise SettingsError(f"{name}: port {url.port} is outside 1-65535")
    return url_text


def check_broker_url(raw: str, name: str = "FPCANCEL_BROKER_URL") -> str:
    """A Redis URL (`redis://host:port/db`), or `memory://` for a single process (the demo)."""
    shown = _shown_url(raw)
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise SettingsError(f"{name}: {shown} has a bad port (1-65535)") from None
    if parts.scheme not in SUPPORTED_BROKERS:
        raise SettingsError(
            f"{name}: {shown}: the broker is Redis (redis:// or rediss://; memory:// for one "
            "process only)"
        )
    if parts.scheme != "memory":
        if not parts.hostname:
            raise SettingsError(f"{name}: {shown} names no host")
        if port is not None and not 1 <= port <= 65535:
            raise SettingsError(f"{name}: port {port} is outside 1-65535")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise SettingsError(f"{name}: {shown}: the database after '/' must be a number")
    return raw


def normalise_database_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here, not SQLAlchemy's default psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def read_environment(
    environ: Mapping[str, str] | None = None, dotenv: Path | None = None
) -> dict[str, str]:
    """The process environment over `./.env` (the environment wins). A `.env` that is not UTF-8
    or has a line that cannot be parsed is an error naming the file and line, not ignored."""
    env: dict[str, str] = {}
    path = dotenv if dotenv is not None else Path.cwd() / ".env"
    if path.is_file():
        env.update(_read_dotenv(path))
    env.update(os.environ if environ is None else environ)
    return env


def _read_dotenv(path: Path) -> dict[str, str]:
    from dotenv.parser import parse_stream

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SettingsError(f"{path}: line {line} is not valid UTF-8") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise SettingsError(
                f"{path}: line {binding.original.line} cannot be parsed (expected NAME=value)"
            )
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


def _seconds(minimum: float, maximum: float) -> Callable[[str, str], float]:
    def parse(raw: str, name: str) -> float:
        if not _DECIMAL.fullmatch(raw):
            raise SettingsError(f"{name}: {raw[:40]!r} is not a number of seconds")
        value = float(raw)
        if not minimum <= value <= maximum:
            raise SettingsError(
                f"{name}: {raw!r} must be between {minimum:g} and {maximum:g} seconds"
            )
        return value

    return parse


def _count(minimum: int, maximum: int) -> Callable[[str, str], int]:
    def parse(raw: str, name: str) -> int:
        if not _WHOLE.fullmatch(raw):
            raise SettingsError(f"{name}: {raw[:40]!r} is not a whole number")
        value = int(raw)
        if not minimum <= value <= maximum:
            raise SettingsError(f"{name}: {raw!r} must be between {minimum} and {maximum}")
        return value

    return parse


@dataclass(frozen=True)
class Variable:
    """One environment variable: the `Settings` field it sets and how its text is checked. The
    default is the field's default in `Settings`, and nowhere else."""

    name: str
    field: str
    parse: Callable[[str, str], Any]

    @property
    def default(self) -> Any:
        return Settings.__dataclass_fields__[self.field].default


VARIABLES = (
    Variable("FRONTPAYMENT_BASE_URL", "base_url", check_base_url),
    Variable("FRONTPAYMENT_TOKEN", "token", check_token),
    Variable("FPCANCEL_DATABASE_URL", "database_url", check_database_url),
    Variable("FPCANCEL_BROKER_URL", "broker_url", check_broker_url),
    Variable("FPCANCEL_MAX_ATTEMPTS", "max_attempts", _count(1, 1000)),
    Variable("FPCANCEL_RETRY_BASE_SECONDS", "retry_base_seconds", _seconds(0, DAY_SECONDS)),
    Variable("FPCANCEL_RETRY_MAX_SECONDS", "retry_max_seconds", _seconds(0, 7 * DAY_SECONDS)),
    Variable("FPCANCEL_HTTP_TIMEOUT_SECONDS", "http_timeout_seconds", _seconds(0.01, 600)),
    Variable("FPCANCEL_RATE_LIMIT", "rate_limit", parse_rate_limit),
    Variable(
        "FPCANCEL_SCHEDULER_INTERVAL_SECONDS", "scheduler_interval_seconds", _seconds(0.01, 60)
    ),
    Variable(
        "FPCANCEL_DISPATCH_LEASE_SECONDS", "dispatch_lease_seconds", _seconds(0.1, DAY_SECONDS)
    ),
    Variable("FPCANCEL_MAX_LOST_CLAIMS", "max_lost_claims", _count(1, 100)),
    Variable("FPCANCEL_WEBHOOK_URL", "webhook_url", check_webhook_url),
    Variable("FPCANCEL_WEBHOOK_SECRET", "webhook_secret", check_webhook_secret),
    Variable(
        "FPCANCEL_WEBHOOK_RETRY_BASE_SECONDS",
        "webhook_retry_base_seconds",
        _seconds(0, DAY_SECONDS),
    ),
    Variable(
        "FPCANCEL_WEBHOOK_RETRY_MAX_SECONDS",
        "webhook_retry_max_seconds",
        _seconds(0, 7 * DAY_SECONDS),
    ),
    Variable("FPCANCEL_WEBHOOK_MAX_ATTEMPTS", "webhook_max_attempts", _count(1, 1000)),
    Variable("FPCANCEL_WEB_SECRET", "web_secret", check_web_secret),
)


def load_settings(environ: Mapping[str, str] | None = None, dotenv: Path | None = None) -> Settings:
    """Read and check every variable; raise `SettingsError` on the first malformed one. A
    variable that is unset or blank takes its default."""
    env = read_environment(environ, dotenv)
    values: dict[str, Any] = {}
    for variable in VARIABLES:
        raw = env.get(variable.name, "").strip()
        if raw:
            values[variable.field] = variable.parse(raw, variable.name)
    settings = Settings(**values)
    for base, cap in (
        ("FPCANCEL_RETRY_BASE_SECONDS", "FPCANCEL_RETRY_MAX_SECONDS"),
        ("FPCANCEL_WEBHOOK_RETRY_BASE_SECONDS", "FPCANCEL_WEBHOOK_RETRY_MAX_SECONDS"),
    ):
        low = getattr(settings, _field_of(base))
        high = getattr(settings, _field_of(cap))
        if high < low:
            raise SettingsError(f"{cap}: {high:g} is below {base} ({low:g})")
    return settings


def _field_of(name: str) -> str:
    return next(variable.field for variable in VARIABLES if variable.name == name)
