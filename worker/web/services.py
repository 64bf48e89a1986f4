"""What the web app talks to, built once from `Settings` by `build_services` (or by a test from
fakes): the database, the producer the CLI and Python producers use, the broker check, the
fleet's pause state, and the dashboard's signing secret."""

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from fpcancel.models.db import utcnow
from fpcancel.producer import Producer
from fpcancel.ratelimit import ActivePause
from fpcancel.settings import Settings

log = logging.getLogger("fpcancel.web")

# Sync routes run in Starlette's thread pool (40 threads); connections beyond the pool wait.
DB_POOL_SIZE = 10


class PauseReader(Protocol):
    def active_pauses(self) -> list[ActivePause]: ...


@dataclass
class WebServices:
    settings: Settings
    sessions: sessionmaker[Session]
    producer: Producer
    broker_ok: Callable[[], bool]
    pauses: PauseReader | None  # None: no Redis, so no fleet to ask (the memory broker)
    secret: bytes = field(repr=False, default_factory=lambda: secrets.token_bytes(32))
    clock: Callable[[], datetime] = utcnow
    close: Callable[[], None] = lambda: None

    def database_ok(self) -> bool:
        try:
            with self.sessions() as session:
                session.execute(text("SELECT 1"))
            return True
        except Exception as exc:
            log.warning("health: database unreachable (%s)", type(exc).__name__)
            return False


def signing_secret(settings: Settings) -> bytes:
    """FPCANCEL_WEB_SECRET, or a random secret for this process's life (sessions then end when
    it restarts, and each of several processes signs its own)."""
    if settings.web_secret is not None:
        return settings.web_secret.reveal().encode()
    return secrets.token_bytes(32)


def build_services(settings: Settings) -> WebServices:
    from redis import Redis

    from fpcancel.app import make_celery
    from fpcancel.models.db import make_engine, make_session_factory
    from fpcancel.ratelimit import RedisLimiter
    from fpcancel.runtime import uses_redis

    engine = make_engine(settings.database_url, pool_size=DB_POOL_SIZE)
    sessions = make_session_factory(engine)
    producer = Producer(sessions, make_celery(settings))
    pauses: PauseReader | None = None
    broker_ok: Callable[[], bool] = lambda: True  # noqa: E731 - the memory broker is in process
    if uses_redis(settings):
        redis = Redis.from_url(settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
        pauses = RedisLimiter(redis, settings.rate_limit)

        def broker_ok() -> bool:
            try:
                return bool(redis.ping())
            except Exception as exc:
                log.warning("health: broker unreachable (%s)", type(exc).__name__)
                return False

    def close() -> None:
        engine.dispose()

    return WebServices(
        settings=settings,
        sessions=sessions,
        producer=producer,
        broker_ok=broker_ok,
        pauses=pauses,
        secret=signing_secret(settings),
        close=close,
    )
