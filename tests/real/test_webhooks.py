"""Outcome events on real parts: a worker process, PostgreSQL, Redis, the sandbox as provider and
another sandbox as the shop's webhook receiver, which fails its first answers and is down for a
while mid-run."""

import socket
import time
from typing import Any

import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook

from fpcancel.models.tables import CancelEvent, CancelJob, WebhookDelivery
from fpcancel.sandbox import SandboxServer
from tests.real.conftest import (
    TERMINAL,
    Worker,
    base_env,
    enqueue_orders,
    statuses,
    wait_until,
)

pytestmark = pytest.mark.real

SECRET = "whsec_cmVhbC10aWVyLXdlYmhvb2stc2VjcmV0LTQyMQ=="
ORDERS = {
    "ODRPAID1": {"status": "PAID"},
    "ODRGONE1": {"status": "MISSING"},
    "ODRNOTE1": {"script": ["417"]},
    "ODRFLAKY": {"script": ["510", "502-html"]},
    "ODRDOWN1": {"script": ["510"] * 10},
    **{f"ODROK{i:03d}": {} for i in range(15)},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def receiver_on(port: int) -> SandboxServer:
    server = SandboxServer(port=port, rate_limit=None).start()
    server.configure_receiver(secret=SECRET)
    return server


def test_every_ended_job_tells_the_shop_once_signed_through_failures_and_an_outage(
    database_url: str,
    broker_url: str,
    sandbox: SandboxServer,
    sessions: Any,
    start_worker: Any,
) -> None:
    """Each terminal job has exactly one event; each event reaches the receiver at least once
    with a signature the standardwebhooks library accepts and a payload equal to the job."""
    for order, spec in ORDERS.items():
        sandbox.set_order(order, status=spec.get("status", "SENT"), script=spec.get("script", []))
    port = free_port()
    receiver = receiver_on(port)
    receiver.configure_receiver(fail_next=3)
    received: list[dict[str, Any]] = []
    env = base_env(
        database_url,
        broker_url,
        sandbox,
        FPCANCEL_WEBHOOK_URL=receiver.webhook_url,
        FPCANCEL_WEBHOOK_SECRET=SECRET,
        FPCANCEL_WEBHOOK_RETRY_BASE_SECONDS="0.2",
        FPCANCEL_WEBHOOK_RETRY_MAX_SECONDS="1",
        FPCANCEL_WEBHOOK_MAX_ATTEMPTS="4",
    )
    worker: Worker = start_worker(env)
    enqueue_orders(env, list(ORDERS))
    try:
        wait_until(lambda: len(receiver.webhooks()) >= 6, 60, "the first deliveries")
        time.sleep(1.5)
        receiver.stop()  # the shop's endpoint goes down mid-run
        # Read what it took only once it is down: deliveries keep arriving until then.
        received += receiver.webhooks()
        time.sleep(4)
        receiver = receiver_on(port)
        wait_until(lambda: _all_delivered(sessions, len(ORDERS)), 120, "every event delivered")
    finally:
        receiver.stop()
    received += receiver.webhooks()
    final = statuses(sessions)
    assert set(final.values()) <= TERMINAL
    assert final["ODRPAID1"] == "already_paid" and final["ODRGONE1"] == "not_found"
    assert final["ODRNOTE1"] == "invalid_payload" and final["ODRDOWN1"] == "dead"
    assert final["ODRFLAKY"] == "succeeded"
    with sessions() as s:
        jobs = {job.id: job for job in s.scalars(select(CancelJob))}
        events = list(s.scalars(select(CancelEvent)))
        probes = s.execute(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.counted.is_(False))
        ).scalar_one()
    assert sorted(e.job_id for e in events) == sorted(jobs)  # exactly one each
    verifier = Webhook(SECRET)
    accepted = {}
    for item in received:
        headers = {
            "webhook-id": item["id"],
            "webhook-timestamp": item["timestamp"],
            "webhook-signature": item["signature"],
        }
        payload = verifier.verify(item["body"], headers)
        assert item["verified"] and payload["id"] == int(item["id"])
        if 200 <= item["status"] < 300:
            accepted[payload["id"]] = payload
    assert sorted(accepted) == sorted(e.id for e in events)  # each delivered at least once
    for event in events:
        job = jobs[event.job_id]
        data = accepted[event.id]["data"]
        assert accepted[event.id] == event.payload
        assert (data["job_id"], data["order_uuid"], data["status"], data["attempts"]) == (
            job.id,
            job.order_uuid,
            job.status,
            job.attempts,
        )
    assert any(item["status"] == 503 for item in received)  # it did fail its first answers
    assert probes >= 1  # and the outage was met by probes, not by spent attempts
    worker.stop()


def _all_delivered(sessions: Any, jobs: int) -> bool:
    with sessions() as s:
        delivered = s.execute(
            select(func.count()).select_from(CancelEvent).where(CancelEvent.delivery == "delivered")
        ).scalar_one()
    return bool(delivered == jobs)
