"""`fpcancel demo`: the real pipeline end to end with nothing installed but Python.

The same task, scheduler, limiter and tables production uses, on embedded parts: a SQLite file,
Celery's in-memory broker (or the Redis at FPCANCEL_BROKER_URL when one answers), the sandbox on
a free port, and a worker in this process.
"""

import os
import shutil
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from celery.worker import WorkController
from celery.worker import state as worker_state
from redis import Redis
from rich.console import Console
from rich.live import Live
from rich.table import Table

from fpcancel.bulk import BulkRow
from fpcancel.deliverer import Deliverer
from fpcancel.feed import Scheduler
from fpcancel.migrate import upgrade
from fpcancel.models.db import make_engine
from fpcancel.models.tables import CancelJob
from fpcancel.producer import Producer
from fpcancel.render import STATUS_STYLE, stats_table
from fpcancel.runtime import build_runtime, install
from fpcancel.sandbox import SandboxServer
from fpcancel.settings import RateLimit, Secret, Settings
from fpcancel.stats import collect_stats
from fpcancel.statuses import TERMINAL_STATUSES, JobStatus

DEMO_TOKEN = "demo-token-not-a-secret"
# The shop's webhook secret in the demo (the sandbox plays the shop and checks every signature).
DEMO_WEBHOOK_SECRET = "whsec_ZGVtby13ZWJob29rLXNlY3JldC1ub3QtYS1zZWNyZXQ="
DEMO_DB = "fpcancel-demo.db"
NAMESPACE = "fpcancel-demo"
CUSTOMER_ORDER = "ODR900000001"
# A small stock-out: most orders cancel, some cannot, some need patience.
BULK: dict[str, dict[str, Any]] = {
    **{f"ODR9100000{i:02d}": {} for i in range(1, 13)},
    "ODR910000013": {"status": "PAID"},
    "ODR910000014": {"status": "PAID"},
    "ODR910000015": {"status": "MISSING"},
    "ODR910000016": {"script": ["510", "510"]},
    "ODR910000017": {"script": ["502-html"]},
    "ODR910000018": {"script": ["503:retry-after=1"]},
    "ODR910000019": {"script": ["late:1.5"]},
    "ODR910000020": {"script": ["417"]},
}
EXPECTED = {
    "ODR910000013": "already_paid",
    "ODR910000014": "already_paid",
    "ODR910000015": "not_found",
    "ODR910000020": "invalid_payload",
}


def redis_answers(url: str) -> bool:
    if not url.startswith(("redis://", "rediss://")):
        return False
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except Exception:
        return False


def demo_settings(
    base: Settings, sandbox: SandboxServer, broker_url: str, database_url: str
) -> Settings:
    return replace(
        base,
        base_url=sandbox.base_url,
        webhook_url=sandbox.webhook_url,
        webhook_secret=Secret(DEMO_WEBHOOK_SECRET),
        webhook_retry_base_seconds=0.2,
        webhook_retry_max_seconds=1.0,
        token=Secret(DEMO_TOKEN),
        database_url=database_url,
        broker_url=broker_url,
        max_attempts=4,
        retry_base_seconds=0.3,
        retry_max_seconds=2.0,
        http_timeout_seconds=1.0,
        rate_limit=RateLimit(20, 1.0),
        scheduler_interval_seconds=0.2,
        dispatch_lease_seconds=10.0,
    )


def run_demo(base: Settings, console: Console, timeout: float = 50.0) -> int:
    """Run the demo; returns the exit code."""
    started = time.monotonic()
    Path(DEMO_DB).unlink(missing_ok=True)
    database_url = f"sqlite:///{DEMO_DB}"
    if redis_answers(base.broker_url):
        broker_url = base.broker_url
        console.print(
            f"broker: Redis at {base.broker_url} answered, using it (queues {NAMESPACE}.*)"
        )
    else:
        broker_url = "memory://"
        console.print("broker: no Redis answered, using Celery's in-memory broker")
    sandbox = SandboxServer(token=DEMO_TOKEN, rate_limit=(20, 1.0)).start()
    for order, spec in BULK.items():
        sandbox.set_order(order, status=spec.get("status", "SENT"), script=spec.get("script", []))
    sandbox.configure_receiver(secret=DEMO_WEBHOOK_SECRET, fail_next=2)
    settings = demo_settings(base, sandbox, broker_url, database_url)
    console.print(
        f"database: {database_url}; provider: the sandbox at {sandbox.base_url}; "
        f"rate limit {settings.rate_limit.calls} calls per {settings.rate_limit.per_seconds:g} s"
    )
    console.print(
        f"the shop's webhook: {settings.webhook_url} (the sandbox again, checking signatures; "
        "it fails its first two deliveries)"
    )

    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    runtime = build_runtime(settings, concurrency=4, with_client=True, namespace=NAMESPACE)
    install(runtime)
    app = runtime.app
    app.finalize()
    app.set_current()
    worker = WorkController(
        app=app,
        hostname="fpcancel-demo@localhost",
        pool="threads",
        concurrency=4,
        loglevel="ERROR",
        queues=list(app.conf.fpcancel_queues.values()),
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    thread = threading.Thread(target=worker.start, name="fpcancel-demo-worker", daemon=True)
    thread.start()
    Scheduler(runtime, member="demo", threads=4).start()
    Deliverer(settings, runtime.sessions, runtime.stop, threads=2).start()

    producer = Producer(runtime.sessions, app)
    customer = producer.enqueue(CUSTOMER_ORDER, "Customer asked to cancel", source="demo-shop")
    console.print(f"enqueued customer cancel {CUSTOMER_ORDER} as job {customer.id} (lane live)")
    rows = [BulkRow(order, "Out of stock", n) for n, order in enumerate(BULK, start=1)]
    bulk = producer.enqueue_bulk(rows, source="demo-stockout")
    console.print(
        f"enqueued a stock-out of {bulk.created} orders (lane bulk): "
        "paid, unknown and flaky ones among them"
    )

    code = 1
    try:
        with Live(console=console, refresh_per_second=8, transient=False) as live:
            while time.monotonic() - started < timeout:
                counts = _counts(runtime)
                told = _told(sandbox)
                live.update(_progress(counts, told, time.monotonic() - started))
                ended = sum(counts.get(s.value, 0) for s in TERMINAL_STATUSES)
                if ended == len(BULK) + 1 and sum(told.values()) == ended:
                    code = 0
                    break
                time.sleep(0.25)
    finally:
        runtime.stop.set()
        worker_state.should_terminate = 0
        thread.join(10)
        worker_state.should_terminate = None
        told = _told(sandbox)
        checked = all(item["verified"] for item in sandbox.webhooks())
        sandbox.stop()
    with runtime.sessions() as session:
        stats = collect_stats(session)
        finals = dict(session.query(CancelJob.order_uuid, CancelJob.status).all())
        flaky_id = (
            session.query(CancelJob.id).filter(CancelJob.order_uuid == "ODR910000016").scalar()
        )
    runtime.close()
    install(None)
    console.print()
    stats_table(stats, console)
    console.print(
        f"the shop was told: {sum(told.values())} events received, every signature "
        f"{'checked' if checked else '[red]NOT checked[/red]'}: "
        + ", ".join(f"{status} {n}" for status, n in sorted(told.items()))
    )
    wrong = {o: s for o, s in finals.items() if s != EXPECTED.get(o, "succeeded")}
    if code or wrong or not checked:
        console.print(f"[red]demo did not finish as expected[/red]: {wrong or 'timed out'}")
        return 1
    console.print(
        f"[green]done in {time.monotonic() - started:.1f} s.[/green] "
        "Look at a flaky order's calls:\n"
        f"  FPCANCEL_DATABASE_URL={database_url} {_command_name()} jobs show {flaky_id}\n"
        "Or in the browser: make an ops key (printed once), serve, open the page and paste it:\n"
        f"  export FPCANCEL_DATABASE_URL={database_url}\n"
        f"  {_command_name()} keys create --name me --scope ops\n"
        f"  {_command_name()} serve     # then http://127.0.0.1:8000/ and sign in with the key"
    )
    return 0


def _command_name() -> str:
    """`fpcancel` if that is what the shell finds, else the path the user ran (.venv/bin/...)."""
    invoked = sys.argv[0] if sys.argv and sys.argv[0] else "fpcancel"
    found = shutil.which("fpcancel")
    if found and Path(found).resolve() == Path(invoked).resolve():
        return "fpcancel"
    return invoked if os.sep in invoked else "fpcancel"


def _counts(runtime: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    with runtime.sessions() as session:
        return dict(
            session.execute(select(CancelJob.status, func.count()).group_by(CancelJob.status)).all()
        )


def _told(sandbox: SandboxServer) -> dict[str, int]:
    """Outcome events the shop (the sandbox's receiver) accepted, by the job's status; a retried
    delivery of the same event counts once."""
    accepted: dict[str, str] = {}
    for item in sandbox.webhooks():
        if 200 <= item["status"] < 300 and isinstance(item["payload"], dict):
            accepted[item["id"]] = str(item["payload"]["data"]["status"])
    counts: dict[str, int] = {}
    for status in accepted.values():
        counts[status] = counts.get(status, 0) + 1
    return counts


def _progress(counts: dict[str, int], told: dict[str, int], elapsed: float) -> Table:
    title = f"jobs after {elapsed:4.1f} s; the shop has been told of {sum(told.values())}"
    table = Table(title=title, show_edge=False)
    for status in JobStatus:
        style = STATUS_STYLE.get(status.value, "")
        table.add_column(status.value, justify="right", style=style)
    table.add_row(*[str(counts.get(s.value, 0)) for s in JobStatus])
    return table
