"""Outcome-event webhooks, measured against a bare keep-alive loop in the same run.

    python bench/webhooks.py [--events 10000] [--outage-seconds 60] [--latency-jobs 200]

A receiver (`fpcancel sandbox`'s webhook endpoint, checking every signature) runs in its own
process. Three parts:

1. Latency, receiver healthy: one `fpcancel worker` cancels `--latency-jobs` orders against the
   sandbox (provider) and delivers their events; per event, from the job's end (the event's
   `timestamp`) to its arrival at the receiver. Goal: p90 <= 1 s.
2. Throughput: `--events` events waiting in the table, delivered by one `fpcancel worker` (its
   deliverer threads), against the baseline in the same run: a bare `requests` keep-alive loop
   POSTing the same payloads with the same signing. events/s = events / (last arrival - first
   arrival) at the receiver, for both. Goal: ours >= 0.5x the loop.
3. Outage: the same events again; once a third have arrived the receiver is stopped (its port
   refuses connections; it answers 503 for a moment first, so that everything it accepted is on
   record) for `--outage-seconds`, then started again. Printed: events lost (goal
   0), duplicate deliveries (goal <= 1 %), tries during the outage and how many counted, and the
   worker's resident memory at the start, its peak and at the end (goal: flat).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import Engine, func, select, text, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    Fleet,
    SandboxProcess,
    fresh_database,
    fresh_redis,
    wait_until,
    worker_env,
)
from fpcancel.events import finished_payload
from fpcancel.models.db import make_engine, utcnow
from fpcancel.models.tables import CancelEvent, CancelJob, WebhookDelivery
from fpcancel.webhooks import body_of, secret_key, signed_headers

SECRET = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtbm90LWEtc2VjcmV0"


def webhook_env(database_url: str, provider: str, receiver: SandboxProcess) -> dict[str, str]:
    return worker_env(
        database_url,
        provider,
        "600000/60",
        FPCANCEL_WEBHOOK_URL=f"http://127.0.0.1:{receiver.port}/_sandbox/webhook",
        FPCANCEL_WEBHOOK_SECRET=SECRET,
        FPCANCEL_WEBHOOK_RETRY_BASE_SECONDS="1",
        FPCANCEL_WEBHOOK_RETRY_MAX_SECONDS="30",
    )


def seed_events(engine: Engine, count: int) -> None:
    """`count` succeeded jobs, each with its event waiting for delivery."""
    now = utcnow()
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO cancel_jobs (order_uuid, note, source, lane, status, attempts,"
                " created_at, updated_at, finished_at, round_start_attempts,"
                " needs_status_check, lost_claims)"
                " SELECT 'ODR' || g, 'Out of stock', 'bench', 'bulk', 'succeeded', 1,"
                " :now, :now, :now, 0, false, 0 FROM generate_series(1, :n) g"
            ),
            {"now": now, "n": count},
        )
        c.execute(
            text(
                "INSERT INTO cancel_events (job_id, type, created_at, payload, next_delivery_at)"
                " SELECT id, 'cancel_job.finished', :now, '{}'::jsonb, :now FROM cancel_jobs"
            ),
            {"now": now},
        )
        jobs = {row.id: row._mapping for row in c.execute(select(CancelJob.__table__))}
        events = c.execute(select(CancelEvent.id, CancelEvent.job_id)).all()
        c.execute(
            update(CancelEvent.__table__).where(CancelEvent.__table__.c.id == text(":eid")),
            [{"eid": e.id, "payload": finished_payload(e.id, now, jobs[e.job_id])} for e in events],
        )


def reset_events(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("DELETE FROM webhook_deliveries"))
        c.execute(
            text(
                "UPDATE cancel_events SET delivery = 'waiting', delivery_attempts = 0,"
                " next_delivery_at = now(), delivered_at = NULL, claim_token = NULL,"
                " claimed_until = NULL"
            )
        )


def delivered(engine: Engine) -> int:
    with engine.connect() as c:
        return int(
            c.execute(
                select(func.count())
                .select_from(CancelEvent)
                .where(CancelEvent.delivery == "delivered")
            ).scalar_one()
        )


def arrival_rate(received: list[dict[str, Any]]) -> float:
    times = sorted(item["time"] for item in received if 200 <= item["status"] < 300)
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bare_loop(engine: Engine, url: str) -> None:
    """The baseline: one thread, one keep-alive connection, the same payloads and signing."""
    key = secret_key(SECRET)
    with engine.connect() as c:
        payloads = [
            dict(p) for p in c.scalars(select(CancelEvent.payload).order_by(CancelEvent.id))
        ]
    http = requests.Session()
    for payload in payloads:
        body = body_of(payload)
        headers = signed_headers(key, int(payload["id"]), int(time.time()), body)
        http.post(url, data=body, headers=headers, timeout=10).raise_for_status()
    http.close()


def part_latency(jobs: int, logdir: Path) -> list[float]:
    fresh_redis()
    with (
        fresh_database() as url,
        SandboxProcess(logdir) as provider,
        SandboxProcess(logdir) as receiver,
    ):
        receiver.control.configure_receiver(secret=SECRET)
        fleet = Fleet.of_workers(1, 8, webhook_env(url, provider.base_url, receiver), logdir)
        try:
            fleet.wait_ready()
            import subprocess

            from bench._common import FPCANCEL

            orders = "order_uuid\n" + "".join(f"ODRL{i}\n" for i in range(jobs))
            subprocess.run(
                [FPCANCEL, "enqueue-bulk", "-", "--note", "Out of stock"],
                input=orders.encode(),
                env=webhook_env(url, provider.base_url, receiver),
                check=True,
                capture_output=True,
            )
            wait_until(lambda: len(receiver.control.webhooks()) >= jobs, 120, "every event")
        finally:
            fleet.stop()
        from datetime import datetime

        lags = []
        for item in receiver.control.webhooks():
            ended = datetime.fromisoformat(item["payload"]["timestamp"].replace("Z", "+00:00"))
            lags.append(item["time"] - ended.timestamp())
    return lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--outage-seconds", type=float, default=60)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument(
        "--parts", default="1,2,3", help="which parts to run, e.g. 2 (throughput only)"
    )
    args = parser.parse_args()
    parts = {int(p) for p in args.parts.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        if 1 in parts:
            lags = part_latency(args.latency_jobs, logdir)
            print(f"1. latency, {len(lags)} events: job end -> receiver (goal p90 <= 1 s)")
            deciles = statistics.quantiles(lags, n=10)
            print(
                f"   p50 {statistics.median(lags):.3f} s   p90 {deciles[-1]:.3f} s   "
                f"max {max(lags):.3f} s"
            )
        if not parts & {2, 3}:
            return
        fresh_redis()
        with fresh_database() as url, SandboxProcess(logdir) as receiver:
            engine = make_engine(url)
            receiver.control.configure_receiver(secret=SECRET)
            seed_events(engine, args.events)
            hook = f"http://127.0.0.1:{receiver.port}/_sandbox/webhook"

            bare_loop(engine, hook)
            bare = arrival_rate(receiver.control.webhooks())
            receiver.control.clear_webhooks()

            env = webhook_env(url, "http://127.0.0.1:9/api/v1", receiver)
            fleet = Fleet.of_workers(1, 2, env, logdir)
            try:
                fleet.wait_ready()
                wait_until(lambda: delivered(engine) >= args.events, 600, "every delivery")
            finally:
                fleet.stop()
            ours = arrival_rate(receiver.control.webhooks())
            print(f"2. throughput, {args.events:,} events")
            print(f"   bare keep-alive loop   {bare:8.0f} events/s")
            print(f"   fpcancel worker        {ours:8.0f} events/s")
            print(f"   ours / loop            {ours / bare:8.2f}x   (goal >= 0.5)")

            if 3 not in parts:
                engine.dispose()
                return
            reset_events(engine)
            receiver.control.clear_webhooks()
            received: list[dict[str, Any]] = []
            fleet = Fleet.of_workers(1, 2, env, logdir)
            peak = 0
            try:
                fleet.wait_ready()
                pid = fleet.procs[0].pid
                start_rss = rss_kb(pid)
                wait_until(
                    lambda: len(receiver.control.webhooks()) >= args.events // 3, 600, "a third"
                )
                # Refuse first, then read what arrived, then go away: every 2xx is on record.
                receiver.control.configure_receiver(status=503)
                time.sleep(0.5)
                received += receiver.control.webhooks()
                receiver.stop()
                down_at = utcnow()
                deadline = time.monotonic() + args.outage_seconds
                while time.monotonic() < deadline:
                    peak = max(peak, rss_kb(pid))
                    time.sleep(1)
                up_at = utcnow()
                receiver.start()
                receiver.control.configure_receiver(secret=SECRET)

                def all_there() -> bool:
                    nonlocal peak
                    peak = max(peak, rss_kb(pid))
                    return delivered(engine) >= args.events

                wait_until(all_there, 900, "every delivery after the outage", every=1)
                end_rss = rss_kb(pid)
            finally:
                fleet.stop()
            received += receiver.control.webhooks()
            ok = [r for r in received if 200 <= r["status"] < 300]
            ids = {r["id"] for r in ok}
            with engine.connect() as c:
                during = c.execute(
                    select(func.count(), func.count().filter(WebhookDelivery.counted))
                    .select_from(WebhookDelivery)
                    .where(WebhookDelivery.started_at.between(down_at, up_at))
                ).one()
            engine.dispose()
        lost = args.events - len(ids)
        duplicates = len(ok) - len(ids)
        print(f"3. outage: the receiver down {args.outage_seconds:.0f} s in the middle")
        print(f"   lost {lost}   (goal 0)")
        print(
            f"   duplicate deliveries {duplicates} = {duplicates / args.events:.2%}   (goal <= 1 %)"
        )
        print(f"   tries during the outage {during[0]}, of which counted {during[1]}")
        print(
            f"   worker RSS: start {start_rss / 1024:.1f} MB, peak {peak / 1024:.1f} MB, "
            f"end {end_rss / 1024:.1f} MB   (peak / start {peak / start_rss:.2f}x)"
        )


if __name__ == "__main__":
    main()
