"""Shared by the benchmarks: a fresh PostgreSQL database and a Redis database of their own; the
sandbox and `fpcancel worker` fleets as separate processes, so their timing is their own."""

import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from redis import Redis
from sqlalchemy import create_engine, text

from fpcancel.migrate import upgrade
from fpcancel.models.db import make_engine
from fpcancel.sandbox import SandboxControl

PG_ADMIN_URL = os.environ.get(
    "FPCANCEL_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("FPCANCEL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
FPCANCEL = str(Path(sys.executable).with_name("fpcancel"))
TOKEN = "bench-token"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def clean_env() -> dict[str, str]:
    """This process's environment without any fpcancel or provider setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("FPCANCEL_", "FRONTPAYMENT_"))}


class SandboxProcess:
    """`fpcancel sandbox` in its own process on a fixed port, so it can be stopped (the port
    refuses connections) and started again on the same port."""

    def __init__(
        self,
        logdir: Path,
        *,
        rate_limit: str = "off",
        rate_mode: str = "laravel",
        answer_delay: float = 0.0,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/api/v1"
        self.control = SandboxControl(self.base_url)
        self._args = [
            FPCANCEL,
            "sandbox",
            "--port",
            str(self.port),
            "--rate-limit",
            rate_limit,
            "--rate-mode",
            rate_mode,
            "--answer-delay",
            repr(answer_delay),
        ]
        self._logdir = logdir
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> "SandboxProcess":
        self._log = open(self._logdir / f"sandbox-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        env = {**clean_env(), "SANDBOX_TOKEN": TOKEN}
        self._proc = subprocess.Popen(self._args, env=env, stdout=self._log, stderr=self._log)
        wait_until(self._answers, 20, "the sandbox to listen", every=0.05)
        return self

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise SystemExit(f"the sandbox exited with {self._proc.returncode}")
        try:
            self.control.stats()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM: the sandbox closes its port and every open connection."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log is not None:
            self._log.close()
        self._proc = self._log = None

    def __enter__(self) -> "SandboxProcess":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def worker_env(database_url: str, base_url: str, rate: str, **extra: str) -> dict[str, str]:
    """A worker's settings: the production defaults but for the database, broker, provider and
    rate limit (and what `extra` sets)."""
    env = clean_env()
    env.update(
        FPCANCEL_DATABASE_URL=database_url,
        FPCANCEL_BROKER_URL=REDIS_URL,
        FRONTPAYMENT_TOKEN=TOKEN,
        FRONTPAYMENT_BASE_URL=base_url,
        FPCANCEL_RATE_LIMIT=rate,
    )
    env.update(extra)
    return env


class Fleet:
    """Worker processes, each with its log in `logdir`."""

    def __init__(self, commands: list[list[str]], env: dict[str, str], logdir: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        for n, command in enumerate(commands):
            path = logdir / f"worker-{n}-{time.monotonic_ns()}.log"
            self.logs.append(path)
            with path.open("wb") as log:
                self.procs.append(
                    subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                )

    @classmethod
    def of_workers(cls, workers: int, threads: int, env: dict[str, str], logdir: Path) -> "Fleet":
        return cls([[FPCANCEL, "worker", "--concurrency", str(threads)]] * workers, env, logdir)

    def wait_ready(self, marker: str = "ready", timeout: float = 60) -> "Fleet":
        def ready() -> bool:
            for proc, log in zip(self.procs, self.logs, strict=True):
                if proc.poll() is not None:
                    raise SystemExit(f"a worker exited: {log.read_text(errors='replace')[-2000:]}")
            return all(marker in log.read_text(errors="replace") for log in self.logs)

        wait_until(ready, timeout, "every worker to be ready")
        return self

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (0 < fraction <= 1) of `values`."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * fraction)) - 1]
