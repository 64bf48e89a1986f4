"""Prometheus metrics as a scraper sees them after a worker handled jobs."""

import socket
from pathlib import Path

import requests
from prometheus_client import REGISTRY

from fpcancel import metrics
from fpcancel.feed import Scheduler
from fpcancel.models.tables import CancelJob
from fpcancel.producer import Producer
from fpcancel.tasks import run_job
from tests.fakes import Clock, FakeTransport, documented, sqlite_runtime


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_calls_latency_and_finished_jobs_are_counted_and_served(tmp_path: Path) -> None:
    """A 404 and a 202: calls by outcome, the latency histogram and finished jobs move, and /metrics serves them."""
    transport, clock = FakeTransport(), Clock()
    transport.script("ODR2", documented(404))
    runtime = sqlite_runtime(tmp_path, transport, clock)
    before_ok = sample(
        "fpcancel_provider_calls_total", kind="cancel", outcome="succeeded", http_status="202"
    )
    before_missing = sample("fpcancel_jobs_finished_total", status="not_found")
    before_latency = sample("fpcancel_provider_call_seconds_count", kind="cancel")
    producer = Producer(runtime.sessions, runtime.app, runtime.clock)
    for order in ("ODR1", "ODR2"):
        job = producer.enqueue(order, "n")
        with runtime.sessions() as s:
            token = s.get(CancelJob, job.id).dispatch_token  # type: ignore[union-attr]
        run_job(runtime, job.id, token)
    Scheduler(runtime, member="m").round()
    assert (
        sample(
            "fpcancel_provider_calls_total", kind="cancel", outcome="succeeded", http_status="202"
        )
        == before_ok + 1
    )
    assert sample("fpcancel_jobs_finished_total", status="not_found") == before_missing + 1
    assert sample("fpcancel_provider_call_seconds_count", kind="cancel") == before_latency + 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics.serve(port, host="127.0.0.1")
    body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert (
        'fpcancel_provider_calls_total{http_status="202",kind="cancel",outcome="succeeded"}' in body
    )
    assert "fpcancel_jobs{" in body
    runtime.close()
