"""The real tier: Redis, PostgreSQL, the sandbox over HTTP and `fpcancel worker` subprocesses."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from fpcancel.migrate import upgrade
from fpcancel.models.db import make_engine, make_session_factory
from fpcancel.models.tables import CancelAttempt, CancelJob
from fpcancel.sandbox import SandboxServer
from fpcancel.sandbox.control import SandboxControl
from fpcancel.statuses import TERMINAL_STATUSES
from tests.conftest import need

REDIS_URL = os.environ.get("FPCANCEL_TEST_REDIS_URL", "redis://127.0.0.1:6379")
PG_ADMIN_URL = os.environ.get(
    "FPCANCEL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TOKEN = "real-tier-token-7d41c9e0a2"
FPCANCEL = str(Path(sys.executable).with_name("fpcancel"))
TERMINAL = {status.value for status in TERMINAL_STATUSES}


def _redis_ok() -> bool:
    try:
        return bool(Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except Exception:
        return False


def _pg_ok() -> bool:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_base() -> str:
    need(_redis_ok(), f"Redis is not reachable at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def broker_url(redis_base: str) -> Iterator[str]:
    """A Redis database of its own for each test (DB 13), emptied before and after."""
    url = f"{redis_base}/13"
    client = Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture(scope="session")
def pg_admin() -> str:
    need(_pg_ok(), f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    return PG_ADMIN_URL


@pytest.fixture
def database_url(pg_admin: str) -> Iterator[str]:
    """A fresh PostgreSQL database per test, migrated with `fpcancel db upgrade`'s code."""
    name = f"fpcancel_test_{uuid.uuid4().hex[:10]}"
    # No pool: a test may restart PostgreSQL, and the teardown must not reuse a dead connection.
    admin = create_engine(pg_admin, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = pg_admin.rsplit("/", 1)[0] + "/" + name
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sessions(database_url: str) -> Iterator[Any]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    server = SandboxServer(token=TOKEN, rate_limit=None).start()
    yield server
    server.stop()


def base_env(
    database_url: str, broker_url: str, sandbox: "SandboxServer | SandboxCli", **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FPCANCEL_", "FRONTPAYMENT_"))}
    env.update(
        FPCANCEL_DATABASE_URL=database_url,
        FPCANCEL_BROKER_URL=broker_url,
        FRONTPAYMENT_TOKEN=TOKEN,
        FRONTPAYMENT_BASE_URL=sandbox.base_url,
        FPCANCEL_MAX_ATTEMPTS="4",
        FPCANCEL_RETRY_BASE_SECONDS="0.2",
        FPCANCEL_RETRY_MAX_SECONDS="1",
        FPCANCEL_HTTP_TIMEOUT_SECONDS="1",
        FPCANCEL_SCHEDULER_INTERVAL_SECONDS="0.2",
        FPCANCEL_DISPATCH_LEASE_SECONDS="5",
        FPCANCEL_RATE_LIMIT="1000/1",
    )
    env.update(extra)
    return env


@pytest.fixture
def env(database_url: str, broker_url: str, sandbox: SandboxServer) -> dict[str, str]:
    return base_env(database_url, broker_url, sandbox)


class CliProcess:
    """An `fpcancel ...` subprocess in its own session, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [FPCANCEL, *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class SandboxCli(CliProcess):
    """`fpcancel sandbox` in its own process, as the provider is: its arrival clock shares no
    interpreter with the test. (An in-process sandbox's handler threads wait for pytest's GIL,
    and a window that opens 10 ms late there is a lag no worker can see.)"""

    def __init__(self, log_path: Path, *args: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/api/v1"
        self.control = SandboxControl(self.base_url)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("FPCANCEL_", "FRONTPAYMENT_"))
        }
        env["SANDBOX_TOKEN"] = TOKEN
        super().__init__(["sandbox", "--port", str(self.port), *args], env, log_path)

    def wait_ready(self, timeout: float = 30) -> "SandboxCli":
        def answers() -> bool:
            if self.proc.poll() is not None:
                return True
            try:
                self.control.calls()
                return True
            except OSError:
                return False

        wait_until(answers, timeout, "fpcancel sandbox to answer")
        assert self.proc.poll() is None, self.log()
        return self


class Worker(CliProcess):
    """A `fpcancel worker` subprocess with its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 4) -> None:
        super().__init__(["worker", "--concurrency", str(concurrency)], env, log_path)

    def wait_ready(self, timeout: float = 30) -> "Worker":
        wait_until(
            lambda: "ready:" in self.log() or self.proc.poll() is not None, timeout, "worker start"
        )
        assert self.proc.poll() is None, self.log()
        return self


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(env: dict[str, str], concurrency: int = 4) -> Worker:
        worker = Worker(env, tmp_path / f"worker-{len(workers)}.log", concurrency).wait_ready()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(signal.SIGKILL if worker.proc.poll() is None else signal.SIGTERM, timeout=5)


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def cli(
    env: dict[str, str], *args: str, input_: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FPCANCEL, *args], env=env, capture_output=True, text=True, input=input_, timeout=timeout
    )


def enqueue_orders(env: dict[str, str], orders: list[str], note: str = "Out of stock") -> str:
    """`fpcancel enqueue-bulk -` with these orders; returns its stdout."""
    done = cli(
        env,
        "enqueue-bulk",
        "-",
        "--note",
        note,
        "--json",
        input_="order_uuid\n" + "\n".join(orders) + "\n",
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def statuses(sessions: Any) -> dict[str, str]:
    with sessions() as s:
        return {
            row.order_uuid: row.status
            for row in s.execute(select(CancelJob.order_uuid, CancelJob.status))
        }


def all_terminal(sessions: Any) -> bool:
    values = statuses(sessions).values()
    return bool(values) and all(v in TERMINAL for v in values)


def attempts_of(sessions: Any, order: str) -> list[CancelAttempt]:
    with sessions() as s:
        s: Session
        return list(
            s.scalars(
                select(CancelAttempt)
                .join(CancelJob, CancelJob.id == CancelAttempt.job_id)
                .where(CancelJob.order_uuid == order)
                .order_by(CancelAttempt.job_id, CancelAttempt.number)
            )
        )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server(CliProcess):
    """A `fpcancel serve` subprocess on a free port, its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--port", str(self.port)], env, log_path)

    def wait_ready(self, timeout: float = 30) -> "Server":
        import requests

        def answers() -> bool:
            if self.proc.poll() is not None:
                return True
            try:
                requests.get(self.url + "/healthz", timeout=1)
                return True
            except requests.RequestException:
                return False

        wait_until(answers, timeout, "fpcancel serve to answer")
        assert self.proc.poll() is None, self.log()
        return self


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(env: dict[str, str]) -> Server:
        server = Server(env, tmp_path / f"serve-{len(servers)}.log").wait_ready()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def make_key(env: dict[str, str], name: str, scope: str) -> str:
    """`fpcancel keys create --json`: the key, printed once."""
    import json

    done = cli(env, "keys", "create", "--name", name, "--scope", scope, "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["key"])
