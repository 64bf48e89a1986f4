"""The fleet-wide rate limit and the customer lane, measured against the sandbox.

    python bench/ratelimit.py [--jobs 300] [--workers 3] [--threads 8]

Part 1, utilisation: the sandbox allows 20 calls per 2 s (a strict sliding window; 429 past
it). 300 bulk jobs, 3 worker processes x 8 threads, all sharing FPCANCEL_RATE_LIMIT=20/2.
Utilisation = the time 300 calls need at exactly the allowed rate (after the first window's
free burst) / the time they took. Then the anchor, in the same run: the same fleet with
Celery's own per-worker `rate_limit` at the full limit (10/s per worker) and no shared limiter.

Part 2, priority: a 600-job bulk at a 10 calls/s limit; 10 customer cancels enqueued one by one
while it runs; each one's time from `enqueue` returning to its POST reaching the sandbox.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REDIS_URL, fresh_database, fresh_redis
from fpcancel.app import make_celery
from fpcancel.bulk import BulkRow
from fpcancel.models.db import make_engine, make_session_factory
from fpcancel.producer import Producer
from fpcancel.sandbox import SandboxServer
from fpcancel.settings import Settings, parse_rate_limit

TOKEN = "bench-token"
FPCANCEL = str(Path(sys.executable).with_name("fpcancel"))
HERE = Path(__file__).resolve().parent


def worker_env(database_url: str, sandbox: SandboxServer, rate: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FPCANCEL_", "FRONTPAYMENT_"))}
    env.update(
        FPCANCEL_DATABASE_URL=database_url,
        FPCANCEL_BROKER_URL=REDIS_URL,
        FRONTPAYMENT_TOKEN=TOKEN,
        FRONTPAYMENT_BASE_URL=sandbox.base_url,
        FPCANCEL_RATE_LIMIT=rate,
        FPCANCEL_SCHEDULER_INTERVAL_SECONDS="0.2",
        FPCANCEL_HTTP_TIMEOUT_SECONDS="5",
        FPCANCEL_RETRY_BASE_SECONDS="0.5",
        FPCANCEL_RETRY_MAX_SECONDS="5",
    )
    return env


class Fleet:
    def __init__(self, commands: list[list[str]], env: dict[str, str], logdir: Path) -> None:
        self.procs = []
        for n, command in enumerate(commands):
            log = open(logdir / f"worker-{n}-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
            self.procs.append(
                subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            )

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def producer_for(database_url: str) -> Producer:
    settings = Settings(database_url=database_url, broker_url=REDIS_URL)
    return Producer(make_session_factory(make_engine(database_url)), make_celery(settings))


def wait_for_posts(sandbox: SandboxServer, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for c in sandbox.calls(kind="cancel") if c["status"] == 202) >= count:
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {count} cancels")


def utilisation(sandbox: SandboxServer, calls: int, per_seconds: float) -> tuple[float, float, int]:
    """(utilisation, achieved calls/s, 429s) from the sandbox's log of accepted calls.

    Under a sliding window, call i + kN can start no sooner than k windows after call i: at
    full use, t[i + kN] - t[i] = kW exactly. Utilisation is kW / (t[i + kN] - t[i]), averaged
    over every i after the first window (a free burst that also holds the workers' start-up),
    with k as large as the run allows. It reads the long-run rate, whatever the shape of the
    burst each window repeats.
    """
    log = sandbox.calls()
    accepted = sorted(c["time"] for c in log if c["status"] != 429)
    refused = sum(1 for c in log if c["status"] == 429)
    k = (len(accepted) - calls - 1) // calls
    spans = [accepted[i + k * calls] - accepted[i] for i in range(calls, len(accepted) - k * calls)]
    used = statistics.fmean(k * per_seconds / span for span in spans)
    return used, used * calls / per_seconds, refused


def run_part1(
    jobs: int, workers: int, threads: int, logdir: Path, anchor: bool
) -> tuple[float, float, int, float]:
    limit, per = 20, 2.0
    fresh_redis()
    with fresh_database() as url, SandboxServer(token=TOKEN, rate_limit=(limit, per)) as sandbox:
        producer = producer_for(url)
        producer.enqueue_bulk(
            [BulkRow(f"ODR8{i:06d}", "Out of stock", i) for i in range(jobs)], source="bench"
        )
        env = worker_env(url, sandbox, f"{limit}/{per:g}")
        if anchor:
            celery_rate = f"{limit / per:g}/s"
            commands = [
                [sys.executable, str(HERE / "_anchor_worker.py"), str(threads), celery_rate]
            ] * workers
        else:
            commands = [[FPCANCEL, "worker", "--concurrency", str(threads)]] * workers
        started = time.monotonic()
        fleet = Fleet(commands, env, logdir)
        try:
            wait_for_posts(sandbox, jobs, timeout=jobs / (limit / per) * 4 + 60)
        finally:
            fleet.stop()
        elapsed = time.monotonic() - started
        used, rate, refused = utilisation(sandbox, limit, per)
        producer.sessions.kw["bind"].dispose()
    return used, rate, refused, elapsed


def run_part2(
    bulk_jobs: int, customers: int, workers: int, threads: int, logdir: Path
) -> list[float]:
    rate = "10/1"
    limit = parse_rate_limit(rate)
    fresh_redis()
    with (
        fresh_database() as url,
        SandboxServer(token=TOKEN, rate_limit=(limit.calls, limit.per_seconds)) as sandbox,
    ):
        producer = producer_for(url)
        producer.enqueue_bulk(
            [BulkRow(f"ODR6{i:06d}", "Out of stock", i) for i in range(bulk_jobs)],
            source="stockout",
        )
        fleet = Fleet(
            [[FPCANCEL, "worker", "--concurrency", str(threads)]] * workers,
            worker_env(url, sandbox, rate),
            logdir,
        )
        enqueued: dict[str, float] = {}
        try:
            wait_for_posts(sandbox, 50, timeout=60)  # the bulk is under way at the limit
            for n in range(customers):
                order = f"ODR5{n:06d}"
                producer.enqueue(order, "Customer asked to cancel")
                enqueued[order] = time.time()
                time.sleep(1.5)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(
                sandbox.calls(o, kind="cancel") for o in enqueued
            ):
                time.sleep(0.2)
        finally:
            fleet.stop()
        latencies = []
        for order, at in enqueued.items():
            posts = sandbox.calls(order, kind="cancel")
            latencies.append(posts[0]["time"] - at if posts else float("inf"))
        producer.sessions.kw["bind"].dispose()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--bulk-jobs", type=int, default=600)
    parser.add_argument("--customers", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        ours = run_part1(args.jobs, args.workers, args.threads, logdir, anchor=False)
        anchor = run_part1(args.jobs, args.workers, args.threads, logdir, anchor=True)
        latencies = run_part2(args.bulk_jobs, args.customers, args.workers, args.threads, logdir)
    print(
        f"part 1: {args.jobs} jobs, {args.workers} workers x {args.threads} threads, sandbox allows 20 calls / 2 s"
    )
    print(
        f"  fpcancel limiter (20/2 shared)      utilisation {ours[0]:.3f}  achieved {ours[1]:.2f} calls/s  429s {ours[2]}  ({ours[3]:.1f} s)"
    )
    print(
        f"  anchor: Celery rate_limit 10/s each  utilisation {anchor[0]:.3f}  achieved {anchor[1]:.2f} calls/s  429s {anchor[2]}  ({anchor[3]:.1f} s)"
    )
    print(
        f"  ours / anchor                       {ours[0] / anchor[0]:.2f}x   (goal: ours >= 0.95 with 0 429s)"
    )
    print(
        f"part 2: {args.customers} customer cancels during a {args.bulk_jobs}-job bulk at 10 calls/s"
    )
    print("  enqueue -> POST (s): " + ", ".join(f"{x:.2f}" for x in latencies))
    p90 = statistics.quantiles(latencies, n=10, method="inclusive")[-1]
    print(
        f"  p50 {statistics.median(latencies):.2f} s   p90 {p90:.2f} s   max {max(latencies):.2f} s   (goal: p90 <= 3 s)"
    )


if __name__ == "__main__":
    main()
