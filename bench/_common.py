"""Shared by the benchmarks: a fresh PostgreSQL database and a Redis database of their own."""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from sqlalchemy import create_engine, text

from fpcancel.migrate import upgrade
from fpcancel.models.db import make_engine

PG_ADMIN_URL = os.environ.get(
    "FPCANCEL_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("FPCANCEL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


@contextmanager
def fresh_database(prefix: str = "fpcancel_bench") -> Iterator[str]:
    """A migrated PostgreSQL database, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def fresh_redis(url: str = REDIS_URL) -> Redis:
    client = Redis.from_url(url)
    client.flushdb()
    return client
