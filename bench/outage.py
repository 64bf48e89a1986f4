"""A provider outage in the middle of a bulk: what the fleet spends on it and how the jobs end.

    python bench/outage.py [--outage-seconds 600] [--jobs 1000] [--threads 4]

`fpcancel sandbox` (Laravel mode, 240/60) runs in its own process; one `fpcancel worker
--concurrency 4` with FPCANCEL_RATE_LIMIT=240/60 and every other setting at its default. Once
the worker is ready the bulk is enqueued; after the first `--before` cancels succeeded the
sandbox is stopped, so its port refuses connections, for `--outage-seconds`, then started again
on the same port. The run ends when every job is terminal (or `--after-timeout` seconds after the
provider returned). `--outage-seconds 60` is a quick run.

Printed, from the job table:
- calls attempted during the outage: `cancel_attempts` rows (cancels and status checks) started
  while the port was closed, in all and per minute (goal <= 20 a minute);
- attempts spent: counted cancel POSTs beyond one per job, over the run and those started in
  the outage (goal 0);
- how every job ended (goal: all `succeeded`);
- how long after the provider returned the last job finished, next to the least the rate limit
  allows for the jobs still waiting at that moment.
"""

import argparse
import math
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    REDIS_URL,
    Fleet,
    SandboxProcess,
    fresh_database,
    fresh_redis,
    wait_until,
    worker_env,
)
from fpcancel.app import make_celery
from fpcancel.bulk import BulkRow
from fpcancel.models.db import make_engine, make_session_factory
from fpcancel.models.tables import CancelAttempt, CancelJob
from fpcancel.producer import Producer
from fpcancel.settings import Settings

TERMINAL = ("succeeded", "already_paid", "not_found", "invalid_payload", "dead", "failed")
RATE = "240/60"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--outage-seconds", type=float, default=600)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--before", type=int, default=20, help="cancels done before the outage")
    parser.add_argument("--after-timeout", type=float, default=1800)
    args = parser.parse_args()
    fresh_redis()
    with tempfile.TemporaryDirectory() as tmp, fresh_database() as url:
        logdir = Path(tmp)
        engine = make_engine(url)
        sandbox = SandboxProcess(logdir, rate_limit=RATE).start()
        fleet = Fleet.of_workers(1, args.threads, worker_env(url, sandbox.base_url, RATE), logdir)
        try:
            fleet.wait_ready()
            producer = Producer(
                make_session_factory(engine),
                make_celery(Settings(database_url=url, broker_url=REDIS_URL)),
            )
            producer.enqueue_bulk(
                [BulkRow(f"ODR4{i:07d}", "Out of stock", i) for i in range(args.jobs)],
                source="bench",
            )
            control = sandbox.control
            wait_until(
                lambda: control.stats()["by_status"].get("202", 0) >= args.before,
                120,
                "the first cancels",
            )
            sandbox.stop()
            down_at = time.time()
            before = _attempts(engine)
            print(f"provider down at +0 s for {args.outage_seconds:.0f} s", flush=True)
            while time.time() < down_at + args.outage_seconds:
                time.sleep(min(60.0, down_at + args.outage_seconds - time.time()))
                print(
                    f"  +{time.time() - down_at:4.0f} s: {_attempts(engine) - before} calls"
                    " since it went down",
                    flush=True,
                )
            sandbox.start()
            up_at = time.time()
            waiting_at_return = _unfinished(engine)
            print(f"provider back; {waiting_at_return} jobs not finished", flush=True)
            try:
                wait_until(
                    lambda: _unfinished(engine) == 0, args.after_timeout, "every job", every=2.0
                )
            except SystemExit as exc:
                print(f"  {exc}", flush=True)
        finally:
            fleet.stop()
            sandbox.stop()
        report(engine, args, down_at, up_at, waiting_at_return)
        engine.dispose()
    fresh_redis()


def _attempts(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(CancelAttempt)).scalar_one())


def _unfinished(engine: Engine) -> int:
    with engine.connect() as c:
        return int(
            c.execute(
                select(func.count()).select_from(CancelJob).where(CancelJob.status.not_in(TERMINAL))
            ).scalar_one()
        )


def report(
    engine: Engine, args: argparse.Namespace, down_at: float, up_at: float, waiting: int
) -> None:
    down, up = (datetime.fromtimestamp(t, UTC) for t in (down_at, up_at))
    with engine.connect() as c:
        attempts = c.execute(
            select(
                CancelAttempt.job_id,
                CancelAttempt.kind,
                CancelAttempt.counted,
                CancelAttempt.started_at,
            )
        ).all()
        statuses = Counter(
            dict(c.execute(select(CancelJob.status, func.count()).group_by(CancelJob.status)).all())
        )
        last_finished = c.execute(select(func.max(CancelJob.finished_at))).scalar_one()
    in_outage = [a for a in attempts if down <= a.started_at < up]
    # Whole minutes of outage (a few ms over a minute make no bucket of their own).
    minutes = max(1, math.ceil((up_at - down_at) / 60 - 0.01))
    per_minute = Counter(int((a.started_at - down).total_seconds() // 60) for a in in_outage)
    counted = Counter(a.job_id for a in attempts if a.kind == "cancel" and a.counted)
    spent = sum(max(0, n - 1) for n in counted.values())
    spent_in_outage = sum(1 for a in in_outage if a.kind == "cancel" and a.counted)
    per_second = int(RATE.split("/")[0]) / float(RATE.split("/")[1])
    print(
        f"outage: {args.jobs} bulk jobs, one worker x {args.threads}, FPCANCEL_RATE_LIMIT={RATE}"
        f" against a Laravel sandbox at {RATE}; provider refusing connections for"
        f" {up_at - down_at:.0f} s after {args.before} cancels"
    )
    print(
        f"  calls attempted during the outage  {len(in_outage)}"
        f"  ({len(in_outage) / ((up_at - down_at) / 60):.1f} a minute; per minute: "
        + ", ".join(str(per_minute.get(m, 0)) for m in range(minutes))
        + ")  (goal <= 20 a minute)"
    )
    print(
        f"  attempts spent (counted cancel POSTs beyond one per job)  {spent}"
        f"  (counted POSTs started in the outage: {spent_in_outage})  (goal 0)"
    )
    print(
        "  jobs ended: "
        + ", ".join(f"{status} {n}" for status, n in statuses.most_common())
        + "  (goal: all succeeded)"
    )
    if last_finished is not None:
        after = (last_finished - up).total_seconds()
        print(
            f"  last job finished {after:.1f} s after the provider returned"
            f" ({waiting} jobs were not finished then; at {RATE} they need at least"
            f" {waiting / per_second:.0f} s)"
        )


if __name__ == "__main__":
    main()
