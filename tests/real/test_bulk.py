"""Bulk on real parts: concurrent producers on PostgreSQL, and workers draining a stock-out."""

import threading
from typing import Any

from sqlalchemy import func, select

from models.db import make_engine, make_session_factory
from models.tables import CancelJob
from tests.real.conftest import all_terminal, enqueue_orders, statuses, wait_until
from worker.app import make_celery
from worker.bulk import BulkRow
from worker.producer import Producer
from worker.sandbox import SandboxServer
from worker.settings import Settings


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
