"""What a worker or producer process talks to the world with, built once from `Settings`.

The task and the scheduler take a `Runtime`; tests build one with fakes (`Runtime(...)`), the
CLI with `build_runtime`.
"""

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from celery import Celery
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fpcancel.app import make_celery
from fpcancel.fleet import Fleet, LocalFleet, RedisFleet
from fpcancel.models.db import make_engine, make_session_factory, utcnow
from fpcancel.provider import FrontPaymentClient
from fpcancel.ratelimit import Limiter, LocalLimiter, RedisLimiter
from fpcancel.settings import Settings
from fpcancel.transitions import Policy

log = logging.getLogger("fpcancel")


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    limiter: Limiter
    fleet: Fleet
    app: Celery
    client: FrontPaymentClient | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], datetime] = utcnow
    rng: Callable[[], float] = random.random

    @property
    def policy(self) -> Policy:
        s = self.settings
        return Policy(
            s.max_attempts,
            s.retry_base_seconds,
            s.retry_max_seconds,
            s.http_timeout_seconds,
            s.max_lost_claims,
        )

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.engine.dispose()


def uses_redis(settings: Settings) -> bool:
    return settings.broker_url.startswith(("redis://", "rediss://", "unix://"))


def build_runtime(
    settings: Settings,
    *,
    concurrency: int = 4,
    with_client: bool = False,
    namespace: str = "fpcancel",
) -> Runtime:
    """Engines, broker, limiter and (for workers) the provider client for these settings.

    `namespace` names the broker queues and the Redis keys: fleets with different namespaces
    share a Redis without sharing work or budget (the demo uses its own).
    """
    engine = make_engine(settings.database_url, pool_size=concurrency + 2)
    limiter: Limiter
    fleet: Fleet
    if uses_redis(settings):
        redis = Redis.from_url(settings.broker_url, socket_connect_timeout=3, socket_timeout=10)
        limiter = RedisLimiter(redis, settings.rate_limit, namespace=namespace)
        fleet = RedisFleet(redis, namespace=namespace)
    else:
        limiter = LocalLimiter(settings.rate_limit)
        fleet = LocalFleet()
    client = None
    if with_client:
        client = FrontPaymentClient(
            settings.base_url,
            settings.token_value,
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.http_timeout_seconds,
            pool_size=concurrency,
            redactor=settings.redactor,
        )
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        limiter=limiter,
        fleet=fleet,
        app=make_celery(settings, queue_prefix=namespace),
        client=client,
    )


_current: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    """Make `runtime` the one this process's tasks use (None uninstalls)."""
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError(
            "no fpcancel runtime installed in this process (start it with `fpcancel worker`)"
        )
    return _current
