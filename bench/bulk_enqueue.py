"""Bulk enqueue against the machine's PostgreSQL and Redis, next to two baselines in one run.

    python bench/bulk_enqueue.py [--orders 100000] [--naive-sample 3000]

1. bulk: `fpcancel enqueue-bulk`'s path (check every CSV line, then batched INSERT ... ON CONFLICT
   DO NOTHING RETURNING in one transaction per batch). The jobs wait in the table for the
   scheduler, so nothing is pushed to Redis here.
2. naive: `enqueue_cancel` once per order (one transaction and one publish each), on a sample.
3. physical limit: a plain executemany INSERT of the same rows, plus pipelined LPUSH of
   pre-serialised messages of the size Celery sends.

Prints jobs/s for each and the ratios bulk/naive and bulk/limit.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REDIS_URL, fresh_database, fresh_redis
from fpcancel.app import make_celery
from fpcancel.bulk import check_csv
from fpcancel.models.db import make_engine, make_session_factory, utcnow
from fpcancel.models.tables import CancelJob
from fpcancel.producer import Producer
from fpcancel.settings import Settings


def write_csv(path: Path, orders: int, start: int) -> None:
    with path.open("w") as f:
        f.write("order_uuid,note\n")
        for i in range(start, start + orders):
            f.write(f"ODR{i},Out of stock\n")


def truncate(engine: object) -> None:
    with engine.begin() as c:  # type: ignore[attr-defined]
        c.execute(text("TRUNCATE cancel_jobs RESTART IDENTITY CASCADE"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--naive-sample", type=int, default=3000)
    args = parser.parse_args()

    redis = fresh_redis()
    with fresh_database() as url, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=url, broker_url=REDIS_URL)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        app = make_celery(settings, queue_prefix="fpcancel-bench")
        producer = Producer(sessions, app)
        csv_path = Path(tmp) / "orders.csv"
        write_csv(csv_path, args.orders, 100_000_000)

        # 1. bulk, as the CLI does it (minus process start-up).
        started = time.perf_counter()
        with csv_path.open("rb") as f:
            checked = check_csv(f, None)
            result = producer.enqueue_bulk(checked.rows(), source="bench")
        bulk_seconds = time.perf_counter() - started
        assert result.created == args.orders, result
        bulk_rate = args.orders / bulk_seconds

        # 2. naive: one enqueue_cancel per order, live lane (commit + publish each).
        truncate(engine)
        redis.flushdb()
        started = time.perf_counter()
        for i in range(args.naive_sample):
            producer.enqueue(f"ODR{200_000_000 + i}", "Out of stock")
        naive_seconds = time.perf_counter() - started
        naive_rate = args.naive_sample / naive_seconds
        message_bytes = max(len(v) for v in redis.lrange("fpcancel-bench.live", 0, 10))

        # 3. physical limit: executemany INSERT of the same rows + pipelined LPUSH.
        truncate(engine)
        redis.flushdb()
        now = utcnow()
        rows = [
            {
                "order_uuid": f"ODR{100_000_000 + i}",
                "note": "Out of stock",
                "source": "bench",
                "lane": "bulk",
                "status": "queued",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for i in range(args.orders)
        ]
        payload = json.dumps({"pad": "x" * max(0, message_bytes - 12)}).encode()
        messages = [payload for _ in range(args.orders)]
        started = time.perf_counter()
        with sessions.begin() as session:
            session.execute(insert(CancelJob.__table__), rows)
        pipe = redis.pipeline(transaction=False)
        for i in range(0, len(messages), 5000):
            pipe.lpush("bench.limit", *messages[i : i + 5000])
        pipe.execute()
        limit_seconds = time.perf_counter() - started
        limit_rate = args.orders / limit_seconds

        engine.dispose()
    redis.flushdb()
    print(
        f"orders: {args.orders:,} (naive sample {args.naive_sample:,}); message {message_bytes} B"
    )
    print(f"bulk enqueue      {bulk_rate:>10,.0f} jobs/s  ({bulk_seconds:.2f} s)")
    print(f"naive enqueue     {naive_rate:>10,.0f} jobs/s  ({naive_seconds:.2f} s)")
    print(f"physical limit    {limit_rate:>10,.0f} jobs/s  ({limit_seconds:.2f} s)")
    print(f"bulk / naive      {bulk_rate / naive_rate:>10.1f}x   (goal >= 20)")
    print(f"bulk / limit      {bulk_rate / limit_rate:>10.2f}x   (goal >= 0.5)")


if __name__ == "__main__":
    main()
