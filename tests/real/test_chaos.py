"""Faults caused for real, mid-run: a worker SIGKILLed, the broker wiped, PostgreSQL restarted,
a worker SIGTERMed. Each run ends with every job terminal in the right status, and each order that
succeeded was POSTed once, except at most the jobs in flight at the fault."""

import os
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import func, select

from fpcancel.models.tables import CancelAttempt, CancelJob
from fpcancel.sandbox import SandboxServer
from tests.conftest import need
from tests.real.conftest import all_terminal, base_env, cli, enqueue_orders, statuses, wait_until

JOBS = 200
CONCURRENCY = 4
FLAKY = {f"ODR9{i:05d}" for i in range(JOBS) if i % 25 == 11}


def scenario(sandbox: SandboxServer) -> tuple[list[str], dict[str, str]]:
    """200 orders: most cancel (some slowly, so calls are in flight at the fault), a few are
    paid, unknown or flaky. Returns the orders and the status each must end in."""
    orders = [f"ODR9{i:05d}" for i in range(JOBS)]
    expected = {}
    for n, order in enumerate(orders):
        if n % 25 == 3:
            sandbox.set_order(order, status="PAID")
            expected[order] = "already_paid"
        elif n % 25 == 7:
            sandbox.set_order(order, status="MISSING")
            expected[order] = "not_found"
        elif n % 25 == 11:
            sandbox.set_order(order, script=["510"])
            expected[order] = "succeeded"
        else:
            sandbox.set_order(order, script=["slow:0.05"] if n % 3 else [])
            expected[order] = "succeeded"
    return orders, expected


def chaos_env(database_url: str, broker_url: str, sandbox: SandboxServer) -> dict[str, str]:
    return base_env(database_url, broker_url, sandbox, FPCANCEL_RATE_LIMIT="40/1")


def start_run(env: dict[str, str], sandbox: SandboxServer) -> tuple[list[str], dict[str, str]]:
    orders, expected = scenario(sandbox)
    enqueue_orders(env, orders)
    return orders, expected


def done_count(sessions: Any) -> int:
    terminal = {"succeeded", "already_paid", "not_found", "invalid_payload", "dead", "failed"}
    return sum(1 for s in statuses(sessions).values() if s in terminal)


def check_outcome(
    sessions: Any, sandbox: SandboxServer, expected: dict[str, str], in_flight_allowance: int
) -> None:
    wait_until(lambda: all_terminal(sessions), 120, "every job terminal")
    assert statuses(sessions) == expected
    posts = Counter(c["order"] for c in sandbox.calls(kind="cancel"))
    # A flaky order's first answer is a 510, so it is POSTed twice by design.
    twice = [o for o, s in expected.items() if s == "succeeded" and o not in FLAKY and posts[o] > 1]
    assert len(twice) <= in_flight_allowance, twice
    with sessions() as s:
        per_order = s.execute(
            select(CancelJob.order_uuid, func.count()).group_by(CancelJob.order_uuid)
        ).all()
        unfinished_rows = s.scalar(
            select(func.count())
            .select_from(CancelAttempt)
            .where(CancelAttempt.finished_at.is_(None))
        )
    assert all(count == 1 for _, count in per_order)
    assert unfinished_rows == 0


def test_a_worker_killed_mid_run_loses_no_job(
    database_url: str, broker_url: str, sandbox: SandboxServer, sessions: Any, start_worker: Any
) -> None:
    """SIGKILL the worker at ~40 % done, start another: every job ends right."""
    env = chaos_env(database_url, broker_url, sandbox)
    _, expected = start_run(env, sandbox)
    first = start_worker(env, CONCURRENCY)
    wait_until(lambda: done_count(sessions) >= JOBS * 0.4, 60, "40 % of the jobs")
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    start_worker(env, CONCURRENCY)
    check_outcome(sessions, sandbox, expected, in_flight_allowance=CONCURRENCY)


def test_a_wiped_broker_mid_run_loses_no_job(
    database_url: str, broker_url: str, sandbox: SandboxServer, sessions: Any, start_worker: Any
) -> None:
    """FLUSHDB on the broker's Redis at ~40 %: the scheduler sends the lost jobs again."""
    env = chaos_env(database_url, broker_url, sandbox)
    _, expected = start_run(env, sandbox)
    start_worker(env, CONCURRENCY)
    wait_until(lambda: done_count(sessions) >= JOBS * 0.4, 60, "40 % of the jobs")
    Redis.from_url(broker_url).flushdb()
    check_outcome(sessions, sandbox, expected, in_flight_allowance=0)


def _pg_restart_command() -> list[str] | None:
    if (
        shutil.which("pg_ctlcluster") is None
        or not Path("/etc/postgresql").is_dir()
        or os.geteuid() != 0
    ):
        return None
    versions = sorted(os.listdir("/etc/postgresql"))
    return (
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"]
        if versions
        else None
    )


def test_a_postgresql_restart_mid_run_loses_no_answer(
    database_url: str, broker_url: str, sandbox: SandboxServer, sessions: Any, start_worker: Any
) -> None:
    """PostgreSQL restarts at ~40 %: workers reconnect, answers received meanwhile are written."""
    command = _pg_restart_command()
    need(command is not None, "restarting PostgreSQL needs root and pg_ctlcluster on this machine")
    assert command is not None
    env = chaos_env(database_url, broker_url, sandbox)
    _, expected = start_run(env, sandbox)
    worker = start_worker(env, CONCURRENCY)
    wait_until(lambda: done_count(sessions) >= JOBS * 0.4, 60, "40 % of the jobs")
    subprocess.run(command, check=True, timeout=60)
    sessions.kw["bind"].dispose()  # the test's own pool holds dead connections too
    check_outcome(sessions, sandbox, expected, in_flight_allowance=0)
    assert worker.proc.poll() is None, "the worker died with the database"


def test_a_sigterm_finishes_calls_in_flight_and_hands_back_the_rest(
    database_url: str, broker_url: str, sandbox: SandboxServer, sessions: Any, start_worker: Any
) -> None:
    """SIGTERM at ~40 %: the worker exits 0 with no job left running; another worker finishes the rest."""
    env = chaos_env(database_url, broker_url, sandbox)
    _, expected = start_run(env, sandbox)
    first = start_worker(env, CONCURRENCY)
    wait_until(lambda: done_count(sessions) >= JOBS * 0.4, 60, "40 % of the jobs")
    assert first.stop(signal.SIGTERM, timeout=60) == 0, first.log()[-3000:]
    assert "running" not in statuses(sessions).values()
    start_worker(env, CONCURRENCY)
    check_outcome(sessions, sandbox, expected, in_flight_allowance=0)


@pytest.fixture(autouse=True)
def _postgres_back_up() -> Any:
    yield
    wait_until(
        lambda: subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0,
        60,
        "PostgreSQL back",
    )


def test_messages_lost_before_any_worker_took_them_are_sent_again(
    env: dict[str, str], sandbox: SandboxServer, sessions: Any, start_worker: Any
) -> None:
    """Customers' jobs published, then the broker wiped before a worker ran: all still succeed, once each."""
    orders = [f"ODR95{i:04d}" for i in range(20)]
    for order in orders:
        assert cli(env, "enqueue", order, "--note", "n").returncode == 0
    assert Redis.from_url(env["FPCANCEL_BROKER_URL"]).llen("fpcancel.live") == 20
    Redis.from_url(env["FPCANCEL_BROKER_URL"]).flushdb()
    start_worker(env, CONCURRENCY)
    wait_until(lambda: all_terminal(sessions), 60, "every job terminal")
    assert set(statuses(sessions).values()) == {"succeeded"}
    assert Counter(c["order"] for c in sandbox.calls(kind="cancel")) == dict.fromkeys(orders, 1)
