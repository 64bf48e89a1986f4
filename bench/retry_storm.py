"""A worker's memory in a retry storm: 100,000 jobs all retrying while the provider is down.

    python bench/retry_storm.py [--jobs 100000] [--seconds 60]

The provider is a closed port (every call fails to connect: retryable). All jobs are due at
once. The worker (8 threads) runs for `--seconds`; its peak RSS (VmHWM) is read from /proc.
Baseline, in the same run: the same worker with an empty job table. Also printed: how many
calls it made and the longest the broker's queues got.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REDIS_URL, fresh_database, fresh_redis
from fpcancel.models.db import make_engine

FPCANCEL = str(Path(sys.executable).with_name("fpcancel"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(database_url: str, jobs: int) -> None:
    engine = make_engine(database_url)
    with engine.begin() as c:
        c.execute(
            text(
                """
                INSERT INTO cancel_jobs (order_uuid, note, source, lane, status, attempts,
                    round_start_attempts, next_attempt_at, created_at, updated_at,
                    last_message)
                SELECT 'ODR' || (400000000 + g), 'Out of stock', 'storm', 'bulk', 'retrying', 1,
                    0, now(), now(), now(), 'cannot connect'
                FROM generate_series(1, :jobs) AS g
                """
            ),
            {"jobs": jobs},
        )
        c.execute(text("ANALYZE cancel_jobs"))
    engine.dispose()


def calls_made(database_url: str) -> int:
    engine = make_engine(database_url)
    with engine.connect() as c:
        count = int(c.execute(text("SELECT count(*) FROM cancel_attempts")).scalar_one())
    engine.dispose()
    return count


def run_worker(database_url: str, seconds: float, logdir: Path) -> tuple[int, int, int]:
    """(peak RSS in kB, calls made, longest broker queue) for one worker run."""
    redis = fresh_redis()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FPCANCEL_", "FRONTPAYMENT_"))}
    env.update(
        FPCANCEL_DATABASE_URL=database_url,
        FPCANCEL_BROKER_URL=REDIS_URL,
        FRONTPAYMENT_TOKEN="storm-token",
        FRONTPAYMENT_BASE_URL=f"http://127.0.0.1:{closed_port()}/api/v1",
        FPCANCEL_RATE_LIMIT="1000/1",
        FPCANCEL_SCHEDULER_INTERVAL_SECONDS="0.2",
        FPCANCEL_RETRY_BASE_SECONDS="0.1",
        FPCANCEL_RETRY_MAX_SECONDS="1",
        FPCANCEL_HTTP_TIMEOUT_SECONDS="1",
        FPCANCEL_MAX_ATTEMPTS="1000",
    )
    with open(logdir / f"worker-{time.monotonic_ns()}.log", "wb") as log:
        proc = subprocess.Popen(
            [FPCANCEL, "worker", "--concurrency", "8", "--loglevel", "WARNING"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        peak_queue = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and proc.poll() is None:
            queued = sum(int(redis.llen(q)) for q in (b"fpcancel.live", b"fpcancel.bulk"))
            peak_queue = max(peak_queue, queued)
            time.sleep(0.5)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak_kb = int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return peak_kb, calls_made(database_url), peak_queue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with fresh_database() as url:
            idle = run_worker(url, args.seconds, Path(tmp))
        with fresh_database() as url:
            fill(url, args.jobs)
            storm = run_worker(url, args.seconds, Path(tmp))
    fresh_redis()
    print(
        f"retry storm: {args.jobs:,} jobs all retrying, provider down, one worker x 8 threads, {args.seconds:.0f} s"
    )
    print(f"  idle worker (empty table)  peak RSS {idle[0] / 1024:7.1f} MB")
    print(
        f"  storm worker               peak RSS {storm[0] / 1024:7.1f} MB   calls {storm[1]:,}   longest broker queue {storm[2]}"
    )
    print(f"  storm / idle               {storm[0] / idle[0]:.2f}x   (goal: storm peak < 200 MB)")


if __name__ == "__main__":
    main()
