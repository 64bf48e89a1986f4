"""How much of the provider's budget fleets of every shape use, against a sandbox that counts the
way the provider's Laravel does; and how long customers wait behind a bulk.

    python bench/ratelimit.py [--quick] [--only NAME ...] [--worker-env KEY=VALUE ...]

Each run: a fresh database and Redis database, `fpcancel sandbox --rate-mode laravel` in its own
process at the limit N/W, and a fleet of `fpcancel worker` processes (workers x `--concurrency`)
with FPCANCEL_RATE_LIMIT=N/W and every other setting at its default. The fleet is started and
ready before the bulk is enqueued (process start-up is not the fleet's pace); the bulk holds more
jobs than the span can use at the full rate, so the fleet never runs dry.

Runs (names for `--only`), spans in brackets for the default run / `--quick`:
  tight-1x1, tight-1x2, tight-3x8     10/1 s                        [300 s / 30 s]
  minute-1x1, minute-1x2, minute-3x8  240/60 s                      [300 s / 120 s]
                                      (each run lasts its span plus one W)
  slow-1x1, slow-1x2                  4/1 s, answers 30 ms late     [120 s / 20 s]
  anchor-3x8                          10/1 s, Celery's own `rate_limit` on each worker at its
                                      share (N/W/3 per s) and no fleet-wide limiter: a baseline,
                                      not fpcancel (its scheduler still feeds the workers)
                                                                    [120 s / 20 s]
  customers                           20 customer cancels enqueued one by one, 1.5 s apart,
                                      while a 600-job bulk runs at 10/1 s on 3 x 8: from
                                      `enqueue` returning to the customer's POST reaching the
                                      sandbox, p50 / p90 / max (goal p90 <= 1 s)

What is printed per run, from the sandbox's log of arrival times:
- used: the share of the budget the fleet used, over whole window cycles. The admitted calls
  regroup into Laravel's windows as the sandbox opened them: the first call (at t1) opens one,
  and each later window opens at the first call after the previous one ended. A cycle is a window
  and the idle time after it, until the next window opens (or the run ends). Over the windows
  that opened within the span [t1, t1 + span), used = (their calls / N) / (the time from t1 to
  the end of their last cycle / W): calls per W, divided by N. A window admits at most N calls
  and the next opens no sooner than W later, so used <= 1, and it is 1 only if every window holds
  N calls and opens the instant the previous one ends. The first window is charged like every
  other (a burst of N at the start is worth one window, not a high rate between the first and
  last calls); a fleet that starts slow is charged for its thin first windows; and the run goes on
  one W past the span, so the last window's cycle is charged whole.
- 429s: calls the sandbox's limit refused, over the whole run (and when the first ones came).
- worst: the most admitted calls arriving within any W seconds (a sliding scan); the promise is
  worst <= N. Laravel's fixed windows admit up to 2N across a window's end, so a fleet can be
  over N here without a single 429.
- windows: the windows in the span: their count, their mean fill (calls / N) and the mean idle
  gap between one window's end and the next one's first call (the two parts of `used`).
- busy: the fleet's threads' share of the span spent waiting for a rate-limit slot or in a call
  (sum of rate_wait_ms + duration_ms of the span's attempts / (threads x span)); the rest is
  threads idle, or in the database and Celery.
- lag: for each job's first cancel POST, its arrival at the sandbox minus the moment its worker
  had its rate-limit slot (`started_at`), p50 / p99 / max: what the limiter's margin (0.2 % of W
  + 10 ms) must cover, or a window opens late at the provider.
- load: the machine's mean 1-minute load average over the span (the fleet's own included), to
  tell a run disturbed by other work.
"""

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    REDIS_URL,
    Fleet,
    SandboxProcess,
    fresh_database,
    fresh_redis,
    percentile,
    wait_until,
    worker_env,
)
from fpcancel.app import make_celery
from fpcancel.bulk import BulkRow
from fpcancel.models.db import make_engine, make_session_factory
from fpcancel.models.tables import CancelAttempt, CancelJob
from fpcancel.producer import Producer
from fpcancel.sandbox import admitted_arrivals, fixed_windows, max_calls_in_window
from fpcancel.settings import Settings

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Shape:
    name: str
    workers: int
    threads: int
    calls: int
    per_seconds: float
    seconds: float
    quick_seconds: float
    answer_delay: float = 0.0
    anchor: bool = False

    @property
    def rate(self) -> str:
        return f"{self.calls}/{self.per_seconds:g}"


SHAPES = [
    Shape("tight-1x1", 1, 1, 10, 1.0, 300, 30),
    Shape("tight-1x2", 1, 2, 10, 1.0, 300, 30),
    Shape("tight-3x8", 3, 8, 10, 1.0, 300, 30),
    Shape("minute-1x1", 1, 1, 240, 60.0, 300, 120),
    Shape("minute-1x2", 1, 2, 240, 60.0, 300, 120),
    Shape("minute-3x8", 3, 8, 240, 60.0, 300, 120),
    Shape("slow-1x1", 1, 1, 4, 1.0, 120, 20, answer_delay=0.03),
    Shape("slow-1x2", 1, 2, 4, 1.0, 120, 20, answer_delay=0.03),
    Shape("anchor-3x8", 3, 8, 10, 1.0, 120, 20, anchor=True),
]


@dataclass(frozen=True)
class Result:
    shape: Shape
    span: float
    used: float
    refused: int
    first_429s: list[float]
    worst: int
    windows: int
    fill: float
    gap: float
    busy: float
    lag_ms: tuple[float, ...]
    load: float


def producer_for(database_url: str) -> Producer:
    settings = Settings(database_url=database_url, broker_url=REDIS_URL)
    return Producer(make_session_factory(make_engine(database_url)), make_celery(settings))


def fleet_for(shape: Shape, env: dict[str, str], logdir: Path) -> Fleet:
    if not shape.anchor:
        return Fleet.of_workers(shape.workers, shape.threads, env, logdir)
    share = shape.calls / shape.per_seconds / shape.workers
    command = [sys.executable, str(HERE / "_anchor_worker.py"), str(shape.threads), f"{share}/s"]
    return Fleet([command] * shape.workers, env, logdir)


def from_the_table(
    database_url: str, start: float, end: float, threads: int, calls: list[dict[str, Any]]
) -> tuple[float, list[float]]:
    """(busy share, send lags in seconds): thread time spent waiting for a slot or in a call
    over the span, per thread; and for each job's first cancel, its arrival at the sandbox minus
    the moment the worker had its slot (`started_at`)."""
    engine = make_engine(database_url)
    since, until = (datetime.fromtimestamp(t, UTC) for t in (start, end))
    with engine.connect() as c:
        rows = c.execute(
            select(CancelAttempt.rate_wait_ms, CancelAttempt.duration_ms).where(
                CancelAttempt.started_at >= since, CancelAttempt.started_at < until
            )
        ).all()
        first_cancels = c.execute(
            select(CancelJob.order_uuid, func.min(CancelAttempt.started_at))
            .join(CancelJob, CancelJob.id == CancelAttempt.job_id)
            .where(CancelAttempt.kind == "cancel")
            .group_by(CancelJob.order_uuid)
        ).all()
    engine.dispose()
    busy = sum(w + d for w, d in rows) / 1000 / (threads * (end - start))
    arrived: dict[str, float] = {}
    for call in calls:
        if call["kind"] == "cancel":
            arrived.setdefault(call["order"], call["time"])
    lags = [arrived[o] - at.timestamp() for o, at in first_cancels if o in arrived]
    return busy, lags


def sample_load(until: float) -> float:
    """Sleep until `until` (epoch seconds); the mean 1-minute load average meanwhile."""
    samples = [os.getloadavg()[0]]
    while (left := until - time.time()) > 0:
        time.sleep(min(5.0, left))
        samples.append(os.getloadavg()[0])
    return statistics.fmean(samples)


def run_shape(shape: Shape, logdir: Path, quick: bool, extra_env: dict[str, str]) -> Result:
    span = shape.quick_seconds if quick else shape.seconds
    per = shape.per_seconds
    jobs = math.ceil(shape.calls / per * (span + per) * 1.1) + 2 * shape.calls
    fresh_redis()
    with (
        fresh_database() as url,
        SandboxProcess(logdir, rate_limit=shape.rate, answer_delay=shape.answer_delay) as sandbox,
    ):
        fleet = fleet_for(shape, worker_env(url, sandbox.base_url, shape.rate, **extra_env), logdir)
        try:
            fleet.wait_ready()
            producer = producer_for(url)
            producer.enqueue_bulk(
                [BulkRow(f"ODR7{i:07d}", "Out of stock", i) for i in range(jobs)], source="bench"
            )
            control = sandbox.control
            wait_until(lambda: control.stats()["rate"]["admitted"] > 0, 120, "the first call")
            first = admitted_arrivals(control.calls())[0]
            # One W past the span charges the last window's cycle whole.
            load = sample_load(until=first + span + per + 0.5)
            ended = time.time()
        finally:
            fleet.stop()
        calls = control.calls()
        producer.sessions.kw["bind"].dispose()
        busy, lags = from_the_table(url, first, first + span, shape.workers * shape.threads, calls)
    arrivals = [t for t in admitted_arrivals(calls) if t < ended]
    used, windows, fill, gap = budget_use(arrivals, span, ended, shape.calls, per)
    refused = sorted(c["time"] - first for c in calls if c["throttled"])
    return Result(
        shape=shape,
        span=span,
        used=used,
        refused=len(refused),
        first_429s=refused[:5],
        worst=max_calls_in_window(arrivals, per),
        windows=windows,
        fill=fill,
        gap=gap,
        busy=busy,
        lag_ms=tuple(percentile(lags, q) * 1000 for q in (0.5, 0.99, 1.0)),
        load=load,
    )


def budget_use(
    arrivals: list[float], span: float, ended: float, calls: int, per: float
) -> tuple[float, int, float, float]:
    """(used, windows, mean fill, mean gap in seconds) over the windows that opened within
    `span` of the first arrival, each charged its whole cycle (see the module docstring)."""
    windows = fixed_windows(arrivals, per)
    measured = [w for w in windows if w[0] < arrivals[0] + span]
    cycle_ends = [opened for opened, _ in windows[1 : len(measured) + 1]]
    cycle_ends += [ended] * (len(measured) - len(cycle_ends))
    used = sum(n for _, n in measured) / calls / ((cycle_ends[-1] - arrivals[0]) / per)
    fill = statistics.fmean(n for _, n in measured) / calls
    gaps = [end - (opened + per) for (opened, _), end in zip(measured, cycle_ends, strict=True)]
    return used, len(measured), fill, statistics.fmean(gaps)


def run_customers(
    bulk_jobs: int, customers: int, logdir: Path, extra_env: dict[str, str]
) -> list[float]:
    """Seconds from `enqueue` returning to each customer's first POST reaching the sandbox."""
    rate = "10/1"
    fresh_redis()
    with fresh_database() as url, SandboxProcess(logdir, rate_limit=rate) as sandbox:
        fleet = Fleet.of_workers(3, 8, worker_env(url, sandbox.base_url, rate, **extra_env), logdir)
        enqueued: dict[str, float] = {}
        control = sandbox.control
        try:
            fleet.wait_ready()
            producer = producer_for(url)
            producer.enqueue_bulk(
                [BulkRow(f"ODR6{i:06d}", "Out of stock", i) for i in range(bulk_jobs)],
                source="stockout",
            )
            # The bulk is under way at the limit before the first customer comes.
            wait_until(lambda: control.stats()["rate"]["admitted"] >= 50, 120, "the bulk")
            for n in range(customers):
                order = f"ODR5{n:06d}"
                producer.enqueue(order, "Customer asked to cancel")
                enqueued[order] = time.time()
                time.sleep(1.5)

            def all_posted() -> bool:
                posted = {c["order"] for c in control.calls(kind="cancel")}
                return set(enqueued) <= posted

            wait_until(all_posted, 120, "every customer's POST")
        finally:
            fleet.stop()
        first_post: dict[str, float] = {}
        for call in control.calls(kind="cancel"):
            if call["order"] in enqueued:
                first_post.setdefault(call["order"], call["time"])
        producer.sessions.kw["bind"].dispose()
    return [first_post[order] - at for order, at in enqueued.items()]


def print_result(r: Result) -> None:
    s = r.shape
    answers = f"{s.answer_delay * 1000:.0f} ms" if s.answer_delay else "at once"
    when = ", ".join(f"+{t:.1f}s" for t in r.first_429s)
    print(
        f"{s.name:<11} {s.workers}x{s.threads:<2} {s.rate:>6}  {answers:>7}  {r.span:5.0f} s"
        f"  used {r.used:5.3f}  429s {r.refused:3d}  worst {r.worst:3d}/{s.calls:<3d}"
        f"  windows {r.windows:3d} fill {r.fill:4.2f} gap {r.gap:6.3f} s"
        f"  busy {r.busy:4.2f}  lag {'/'.join(f'{x:.0f}' for x in r.lag_ms)} ms"
        f"  load {r.load:3.1f}" + (f"  (429 at {when})" if when else ""),
        flush=True,
    )


def main() -> None:
    names = [s.name for s in SHAPES] + ["customers"]
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Definitions: see the module docstring.",
    )
    parser.add_argument("--quick", action="store_true", help="shorter spans (see the docstring)")
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=" ".join(names))
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra setting for every worker, e.g. FPCANCEL_SCHEDULER_INTERVAL_SECONDS=0.2",
    )
    parser.add_argument("--bulk-jobs", type=int, default=600)
    parser.add_argument("--customers", type=int, default=20)
    args = parser.parse_args()
    chosen = set(args.only or names)
    extra_env = dict(item.split("=", 1) for item in args.worker_env)
    print(
        "sandbox: Laravel fixed windows; fleets: workers x threads, every setting at its default"
        + (f" but {extra_env}" if extra_env else ""),
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        for shape in SHAPES:
            if shape.name in chosen:
                print_result(run_shape(shape, logdir, args.quick, extra_env))
        if "customers" in chosen:
            latencies = run_customers(args.bulk_jobs, args.customers, logdir, extra_env)
            print(
                f"customers: {len(latencies)} enqueued 1.5 s apart behind a {args.bulk_jobs}-job"
                " bulk at 10/1 s, 3 x 8: enqueue -> POST"
                f"  p50 {percentile(latencies, 0.5):.2f} s  p90 {percentile(latencies, 0.9):.2f} s"
                f"  max {max(latencies):.2f} s  (goal: p90 <= 1 s)",
                flush=True,
            )
            print("  each (s): " + ", ".join(f"{x:.2f}" for x in latencies), flush=True)


if __name__ == "__main__":
    main()
