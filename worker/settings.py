"""Settings: one object read from the environment (and `./.env`) once.

Every variable is in SPEC.md, "Configuration"; the few extra knobs below it are fpcancel's own and
documented in README.md. A malformed value raises `SettingsError` naming the variable.
"""

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from worker.errors import SettingsError

DEMO_BASE_URL = "https://demo-api.frontpayment.no/api/v1"


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
    def rate_limit_wait_seconds(self) -> float:
        """How long a claimed job waits for a rate-limit slot before it goes back untouched."""
        return max(5.0, min(30.0, 4 * self.rate_limit.per_seconds / self.rate_limit.calls))

    @property
    def token_value(self) -> str:
        """The bearer token, for the one place that sends it; SettingsError if unset."""
        if self.token is None or not self.token.reveal():
            raise SettingsError("FRONTPAYMENT_TOKEN: not set; the worker needs the bearer token")
        return self.token.reveal()

    def check_provider(self) -> None:
        """Refuse to call the provider without a token or over plain http to a remote host."""
        _ = self.token_value
        check_base_url(self.base_url)


def check_base_url(url: str, name: str = "FRONTPAYMENT_BASE_URL") -> str:
    """An https URL, or http to a loopback host (the local sandbox)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}: {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise SettingsError(
            f"{name}: plain http is only allowed to a loopback host (the sandbox), "
            f"got {parts.hostname!r}"
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < minimum:
        raise SettingsError(f"{name}: {raw!r} must be a number ≥ {minimum:g}")
    return value


def _whole(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}: {raw!r} must be at least {minimum}")
    return value


def parse_rate_limit(raw: str, name: str = "FPCANCEL_RATE_LIMIT") -> RateLimit:
    """`N/W`: N calls in any W seconds, e.g. `240/60`."""
    calls, sep, seconds = raw.strip().partition("/")
    try:
        limit = RateLimit(int(calls), float(seconds)) if sep else None
    except ValueError:
        limit = None
    if limit is None or limit.calls < 1 or not (0 < limit.per_seconds < math.inf):
        raise SettingsError(f"{name}: {raw!r} must be CALLS/SECONDS, e.g. 240/60")
    return limit


def normalise_database_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here, not SQLAlchemy's default psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def read_environment(
    environ: Mapping[str, str] | None = None, dotenv: Path | None = None
) -> dict[str, str]:
    """The process environment over `./.env` (the environment wins)."""
    env: dict[str, str] = {}
    path = dotenv if dotenv is not None else Path.cwd() / ".env"
    if path.is_file():
        env.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    env.update(os.environ if environ is None else environ)
    return env


def load_settings(environ: Mapping[str, str] | None = None, dotenv: Path | None = None) -> Settings:
    """Read and check every variable; raise `SettingsError` on the first malformed one."""
    env = read_environment(environ, dotenv)
    token = env.get("FRONTPAYMENT_TOKEN", "").strip()
    base_url = env.get("FRONTPAYMENT_BASE_URL", "").strip() or DEMO_BASE_URL
    check_base_url(base_url)
    retry_base = _number(env, "FPCANCEL_RETRY_BASE_SECONDS", 5.0, minimum=0)
    retry_max = _number(env, "FPCANCEL_RETRY_MAX_SECONDS", 900.0, minimum=0)
    if retry_max < retry_base:
        raise SettingsError(
            f"FPCANCEL_RETRY_MAX_SECONDS: {retry_max:g} is below "
            f"FPCANCEL_RETRY_BASE_SECONDS ({retry_base:g})"
        )
    return Settings(
        base_url=base_url.rstrip("/"),
        token=Secret(token) if token else None,
        database_url=normalise_database_url(
            env.get("FPCANCEL_DATABASE_URL", "").strip() or "sqlite:///fpcancel.db"
        ),
        broker_url=env.get("FPCANCEL_BROKER_URL", "").strip() or "redis://localhost:6379/0",
        max_attempts=_whole(env, "FPCANCEL_MAX_ATTEMPTS", 8, minimum=1),
        retry_base_seconds=retry_base,
        retry_max_seconds=retry_max,
        http_timeout_seconds=_number(env, "FPCANCEL_HTTP_TIMEOUT_SECONDS", 15.0, minimum=0.01),
        rate_limit=parse_rate_limit(env.get("FPCANCEL_RATE_LIMIT", "").strip() or "240/60"),
        scheduler_interval_seconds=_number(
            env, "FPCANCEL_SCHEDULER_INTERVAL_SECONDS", 1.0, minimum=0.01
        ),
        dispatch_lease_seconds=_number(env, "FPCANCEL_DISPATCH_LEASE_SECONDS", 60.0, minimum=0.1),
        max_lost_claims=_whole(env, "FPCANCEL_MAX_LOST_CLAIMS", 3, minimum=1),
    )
