"""Bulk on real parts: concurrent producers on PostgreSQL, and workers draining a stock-out."""

import subprocess
import threading
import time
from typing import Any

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool

from fpcancel.app import make_celery
from fpcancel.bulk import BulkRow
from fpcancel.models.db import make_engine, make_session_factory
from fpcancel.models.tables import CancelJob
from fpcancel.producer import Producer
from fpcancel.sandbox import SandboxServer
from fpcancel.settings import Settings
from tests.real.conftest import (
    FPCANCEL,
    all_terminal,
    cli,
    enqueue_orders,
    statuses,
    wait_until,
)


def test_concurrent_bulk_runs_and_single_enqueues_make_one_job_per_order(
    database_url: str, broker_url: str
) -> None:
    """Two bulk runs over overlapping orders and single enqueues of the same orders, all at once:
    exactly one job per order, and the counts add up."""
    settings = Settings(database_url=database_url, broker_url=broker_url)
    engine = make_engine(database_url, pool_size=8)
    producer = Producer(make_session_factory(engine), make_celery(settings))
    first = [BulkRow(f"ODR{i}", "stock out", i) for i in range(0, 6000)]
    second = [BulkRow(f"ODR{i}", "stock out", i) for i in range(3000, 9000)]
    singles = [f"ODR{i}" for i in range(2900, 3100)]
    results: dict[str, Any] = {}
    barrier = threading.Barrier(3)

    def bulk(name: str, rows: list[BulkRow]) -> None:
        barrier.wait()
        results[name] = producer.enqueue_bulk(rows, source=name)

    def single() -> None:
        barrier.wait()
        results["singles"] = [producer.enqueue(order, "customer").created for order in singles]

    threads = [
        threading.Thread(target=bulk, args=("a", first)),
        threading.Thread(target=bulk, args=("b", second)),
        threading.Thread(target=single),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    with producer.sessions() as s:
        per_order = s.execute(
            select(CancelJob.order_uuid, func.count()).group_by(CancelJob.order_uuid)
        ).all()
    engine.dispose()
    assert len(per_order) == 9000
    assert all(count == 1 for _, count in per_order)
    created = results["a"].created + results["b"].created + sum(results["singles"])
    assert created == 9000
    assert (
        results["a"].already_active + results["b"].already_active + results["singles"].count(False)
        == 6000 + 6000 + 200 - 9000
    )


def test_workers_drain_a_bulk_run_to_terminal_statuses(
    env: dict[str, str], sandbox: SandboxServer, sessions: Any, start_worker: Any
) -> None:
    """300 orders through `enqueue-bulk`, some paid or unknown or flaky: two workers finish every one."""
    orders = [f"ODR7{i:05d}" for i in range(300)]
    for order in orders[:10]:
        sandbox.set_order(order, status="PAID")
    for order in orders[10:20]:
        sandbox.set_order(order, status="MISSING")
    for order in orders[20:30]:
        sandbox.set_order(order, script=["510"])
    assert '"created": 300' in enqueue_orders(env, orders)
    start_worker(env)
    start_worker(env)
    wait_until(lambda: all_terminal(sessions), 120, "every bulk job terminal")
    final = statuses(sessions)
    assert [final[o] for o in orders[:10]] == ["already_paid"] * 10
    assert [final[o] for o in orders[10:20]] == ["not_found"] * 10
    assert all(final[o] == "succeeded" for o in orders[20:])
    posts = sandbox.calls(kind="cancel")
    assert len(posts) == 300 + 10  # one each, plus the ten 510s' second POST


def test_a_nul_after_5001_good_lines_writes_nothing_on_postgresql(
    env: dict[str, str], sessions: Any, tmp_path: Any
) -> None:
    """The value PostgreSQL cannot store is refused by validation, naming its line: exit 2 and
    no job, not exit 1 with the first 5,000 committed."""
    path = tmp_path / "nul.csv"
    rows = [f"ODR{n},Out of stock" for n in range(5001)] + ["ODR9999999,out\x00of stock"]
    path.write_text("order_uuid,note\n" + "\n".join(rows) + "\n")
    done = cli(env, "enqueue-bulk", str(path))
    assert done.returncode == 2, done.stderr
    assert "line 5003" in done.stderr
    with sessions() as s:
        assert s.execute(select(func.count()).select_from(CancelJob)).scalar_one() == 0


def test_a_database_restart_mid_write_leaves_no_job(
    env: dict[str, str], database_url: str, pg_admin: str, sessions: Any, tmp_path: Any
) -> None:
    """The server ends the bulk's connection while it writes (as a restart does): the command
    fails (exit 1) and not one of the file's jobs is in the table."""
    path = tmp_path / "big.csv"
    path.write_text("order_uuid\n" + "".join(f"ODR{n}\n" for n in range(400_000)))
    name = database_url.rsplit("/", 1)[-1]
    proc = subprocess.Popen(
        [FPCANCEL, "enqueue-bulk", str(path), "--note", "Out of stock"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    admin = create_engine(pg_admin, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    killed = 0
    deadline = time.monotonic() + 60
    while not killed and time.monotonic() < deadline and proc.poll() is None:
        with admin.connect() as c:
            killed = c.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :db AND query ILIKE '%fpcancel_bulk_stage%'"
                ),
                {"db": name},
            ).scalar_one()
        time.sleep(0.05)
    admin.dispose()
    _, err = proc.communicate(timeout=60)
    assert killed, "the bulk's write was never seen"
    assert proc.returncode == 1, err
    with sessions() as s:
        assert s.execute(select(func.count()).select_from(CancelJob)).scalar_one() == 0


def test_the_largest_job_id_is_unknown_not_a_database_error(env: dict[str, str]) -> None:
    """The pair: the CLI's id range is PostgreSQL's BIGINT; the largest is simply no job."""
    done = cli(env, "jobs", "show", str(2**63 - 1))
    assert done.returncode == 2 and "no such job" in done.stderr
    past = cli(env, "jobs", "show", str(2**63))
    assert past.returncode == 2 and "unreachable" not in past.stderr
