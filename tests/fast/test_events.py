"""Outcome events and signed webhooks (SPEC.md, "Outcome events"): one event for every path that
ends a job, in the payload's shape; signatures the `standardwebhooks` library accepts; delivery,
retries, failure, a receiver that is away, redelivery; the CLI and the Python API."""

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select, update
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from fpcancel import jobstore
from fpcancel.cli import main
from fpcancel.deliverer import Deliverer
from fpcancel.models.tables import CancelEvent, CancelJob, WebhookDelivery
from fpcancel.ops import retry_jobs
from fpcancel.producer import Producer
from fpcancel.runtime import Runtime
from fpcancel.sandbox import SandboxServer
from fpcancel.settings import Secret
from fpcancel.tasks import run_job
from fpcancel.webhooks import body_of, signed_headers
from tests.fakes import (
    Clock,
    FakeTransport,
    Reply,
    documented,
    drive,
    pending,
    sqlite_runtime,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = Webhook(SECRET)._whsecret
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
DATA_KEYS = [
    "job_id",
    "order_uuid",
    "status",
    "source",
    "lane",
    "attempts",
    "last_http_status",
    "last_message",
    "created_at",
    "finished_at",
]


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def clock() -> Clock:
    return Clock()  # now: `events redeliver` makes events due at the real time


@pytest.fixture
def runtime(tmp_path: Path, transport: FakeTransport, clock: Clock) -> Iterator[Runtime]:
    rt = sqlite_runtime(tmp_path, transport, clock)
    yield rt
    rt.close()


def enqueue(rt: Runtime, *orders: str) -> list[int]:
    producer = Producer(rt.sessions, rt.app, rt.clock)
    return [producer.enqueue(order, "Out of stock", source="shop").id for order in orders]


def events_of(rt: Runtime) -> list[CancelEvent]:
    with rt.sessions() as s:
        return list(s.scalars(select(CancelEvent).order_by(CancelEvent.id)))


def job_row(rt: Runtime, job_id: int) -> CancelJob:
    with rt.sessions() as s:
        job = s.get(CancelJob, job_id)
        assert job is not None
        return job


# -- one event for every path that ends a job -------------------------------------------------


def test_every_answer_that_ends_a_job_gives_one_event_matching_the_job(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """202, 400 paid, 404, 417, an unexpected 4xx and attempts running out: one event each, in
    the SPEC's shape, its data equal to the job as the table has it."""
    transport.script("ODR1", documented(202))
    transport.script("ODR2", documented(400))
    transport.script("ODR3", documented(404))
    transport.script("ODR4", documented(417))
    transport.script("ODR5", Reply(422, {"message": "unprocessable"}))
    transport.script("ODR6", *[Reply(503, {"message": "busy"})] * 4)
    transport.status_script("ODR6", *[Reply(200, {"data": {"status": "SENT"}})] * 4)
    ids = enqueue(runtime, "ODR1", "ODR2", "ODR3", "ODR4", "ODR5", "ODR6")
    drive(runtime, clock, step=2)
    events = events_of(runtime)
    assert [e.job_id for e in events] == sorted(ids)  # one each, in the order they ended... or id
    for event in events:
        job = job_row(runtime, event.job_id)
        payload = event.payload
        assert list(payload) == ["id", "type", "timestamp", "data"]
        assert payload["id"] == event.id and payload["type"] == "cancel_job.finished"
        assert sorted(payload["data"]) == sorted(DATA_KEYS)
        assert payload["data"]["job_id"] == job.id
        assert payload["data"]["status"] == job.status
        assert payload["data"]["attempts"] == job.attempts
        assert payload["data"]["last_http_status"] == job.last_http_status
        assert payload["data"]["last_message"] == job.last_message
        assert payload["data"]["finished_at"].endswith("Z")
        assert event.delivery == "waiting" and event.next_delivery_at is not None
    statuses = {job_row(runtime, e.job_id).order_uuid: e.payload["data"]["status"] for e in events}
    assert statuses == {
        "ODR1": "succeeded",
        "ODR2": "already_paid",
        "ODR3": "not_found",
        "ODR4": "invalid_payload",
        "ODR5": "failed",
        "ODR6": "dead",
    }


def test_a_status_check_that_settles_the_order_gives_the_event(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """A 510, then the order found CANCELLED: one `succeeded` event, from the status check."""
    transport.script("ODR1", documented(510))
    transport.status_script("ODR1", Reply(200, {"data": {"status": "CANCELLED"}}))
    (job_id,) = enqueue(runtime, "ODR1")
    drive(runtime, clock, step=2)
    (event,) = events_of(runtime)
    assert event.payload["data"]["status"] == "succeeded" and event.job_id == job_id


def test_retrying_and_paused_jobs_give_no_event(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """Nothing is invented: a job that is still retrying, or paused by a 429, has no event."""
    transport.script("ODR1", documented(510))
    transport.script("ODR2", Reply(429, {"message": "Too Many Attempts."}, {"Retry-After": "9"}))
    enqueue(runtime, "ODR1", "ODR2")
    for job_id, token in pending(runtime):
        run_job(runtime, job_id, token)
    assert events_of(runtime) == []


def test_a_lost_worker_s_job_that_fails_gives_the_event(runtime: Runtime, clock: Clock) -> None:
    """The third lost worker ends the job `failed` (the feed's take-back): one event."""
    (job_id,) = enqueue(runtime, "ODR1")
    with runtime.sessions.begin() as s:
        s.execute(
            update(CancelJob)
            .where(CancelJob.id == job_id)
            .values(status="running", claimed_until=clock.now, lost_claims=2, dispatch_token="t")
        )
    with runtime.sessions.begin() as s:
        later = clock.now + timedelta(seconds=1)
        assert jobstore.take_back_expired(s, later, runtime.policy) == (0, 1)
    (event,) = events_of(runtime)
    assert event.payload["data"]["status"] == "failed"
    assert "lost 3 times" in event.payload["data"]["last_message"]


def test_a_job_sent_round_again_gives_a_new_event_when_it_ends_again(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """dead → `jobs retry` → succeeded: two events, the second saying succeeded."""
    transport.script("ODR1", *[Reply(503, {"message": "busy"})] * 4)
    transport.status_script("ODR1", *[Reply(200, {"data": {"status": "SENT"}})] * 4)
    (job_id,) = enqueue(runtime, "ODR1")
    drive(runtime, clock, step=2)
    retry_jobs(runtime.sessions, [job_id], runtime.clock)
    drive(runtime, clock, step=2)
    events = events_of(runtime)
    assert [e.payload["data"]["status"] for e in events] == ["dead", "succeeded"]


# -- signatures --------------------------------------------------------------------------------


def signed(event_id: int, payload: dict[str, Any], timestamp: int) -> tuple[bytes, dict[str, str]]:
    body = body_of(payload)
    return body, signed_headers(KEY, event_id, timestamp, body)


PAYLOAD = {
    "id": 17,
    "type": "cancel_job.finished",
    "timestamp": "2026-11-28T10:00:00Z",
    "data": {key: None for key in DATA_KEYS} | {"job_id": 4, "status": "already_paid"},
}


def test_the_standardwebhooks_library_accepts_our_signature() -> None:
    """The reference implementation verifies what fpcancel sends."""
    now = int(datetime.now(UTC).timestamp())
    body, headers = signed(17, PAYLOAD, now)
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    assert headers["webhook-id"] == "17" and headers["webhook-timestamp"] == str(now)
    assert headers["webhook-signature"].startswith("v1,")


@pytest.mark.parametrize("change", ["body", "id", "timestamp"])
def test_a_changed_body_id_or_timestamp_is_refused(change: str) -> None:
    """Whatever is changed after signing, the reference implementation refuses it."""
    now = int(datetime.now(UTC).timestamp())
    body, headers = signed(17, PAYLOAD, now)
    if change == "body":
        body = body.replace(b"already_paid", b"succeeded")
    elif change == "id":
        headers["webhook-id"] = "18"
    else:
        headers["webhook-timestamp"] = str(now - 1)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, headers)


@given(st.dictionaries(st.sampled_from(DATA_KEYS), st.text() | st.integers() | st.none()))
def test_any_payload_signs_and_verifies(data: dict[str, Any]) -> None:
    """Unicode, quotes, nulls in the data: always a body the library verifies."""
    payload = {**PAYLOAD, "data": data}
    body, headers = signed(5, payload, int(datetime.now(UTC).timestamp()))
    assert Webhook(SECRET).verify(body, headers)["data"] == {
        k: data[k] for k in DATA_KEYS if k in data
    }


# -- delivery ------------------------------------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def receiver() -> Iterator[SandboxServer]:
    server = SandboxServer(rate_limit=None).start()
    server.configure_receiver(secret=SECRET)
    yield server
    server.stop()


def deliverer(rt: Runtime, url: str, **overrides: Any) -> Deliverer:
    from dataclasses import replace

    values: dict[str, Any] = {
        "webhook_url": url,
        "webhook_secret": Secret(SECRET),
        "webhook_retry_base_seconds": 0.1,
        "webhook_retry_max_seconds": 60.0,
        "webhook_max_attempts": 3,
        **overrides,
    }
    settings = replace(rt.settings, **values)
    return Deliverer(settings, rt.sessions, threading.Event(), clock=rt.clock, rng=lambda: 1.0)


def ended_jobs(
    rt: Runtime, transport: FakeTransport, clock: Clock, n: int, prefix: str = "ODR"
) -> list[int]:
    ids = enqueue(rt, *[f"{prefix}{i}" for i in range(n)])
    drive(rt, clock, step=2)
    return ids


def test_events_are_delivered_signed_and_marked(
    runtime: Runtime, transport: FakeTransport, clock: Clock, receiver: SandboxServer
) -> None:
    """Each event reaches the receiver once with a signature it checks; the event is
    `delivered` with one try on record."""
    ended_jobs(runtime, transport, clock, 3)
    d = deliverer(runtime, receiver.webhook_url)
    http = requests.Session()
    delivered_before = sample("fpcancel_webhook_tries_total", result="delivered")
    latency_before = sample("fpcancel_webhook_delivery_latency_seconds_count")
    assert d.deliver_batch(http) is True
    received = receiver.webhooks()
    assert [r["verified"] for r in received] == [True, True, True]
    events = events_of(runtime)
    assert [r["id"] for r in received] == [str(e.id) for e in events]
    assert [r["payload"] for r in received] == [e.payload for e in events]
    assert all(e.delivery == "delivered" and e.delivered_at is not None for e in events)
    assert d.deliver_batch(http) is False  # nothing more is due
    assert sample("fpcancel_webhook_tries_total", result="delivered") >= delivered_before + 3
    assert sample("fpcancel_webhook_delivery_latency_seconds_count") >= latency_before + 3
    with runtime.sessions() as s:
        assert s.execute(select(func.count()).select_from(WebhookDelivery)).scalar_one() == 3


def test_a_failing_event_is_tried_again_with_the_same_id_then_fails(
    runtime: Runtime, transport: FakeTransport, clock: Clock, receiver: SandboxServer
) -> None:
    """A receiver refusing one event (while taking others): backoff, the same webhook-id each
    try, then `failed` after FPCANCEL_WEBHOOK_MAX_ATTEMPTS; `events redeliver` sends it again."""
    ended_jobs(runtime, transport, clock, 1)
    receiver.configure_receiver(status=400)
    d = deliverer(runtime, receiver.webhook_url)
    http = requests.Session()
    for _ in range(3):
        assert d.deliver_batch(http) is True
        d.health.note(True)  # other events are delivered meanwhile: this one is the problem
        clock.advance(3600)
    (event,) = events_of(runtime)
    assert event.delivery == "failed" and event.delivery_attempts == 3
    ids = {r["id"] for r in receiver.webhooks()}
    assert ids == {str(event.id)} and len(receiver.webhooks()) == 3
    receiver.configure_receiver(status=204)
    env = {
        "FPCANCEL_DATABASE_URL": runtime.settings.database_url,
        "FPCANCEL_BROKER_URL": "memory://",
    }
    result = CliRunner().invoke(main, ["events", "redeliver", "--failed", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"redelivered": 1, "ids": [event.id]}
    assert d.deliver_batch(http) is True
    (event,) = events_of(runtime)
    assert event.delivery == "delivered"
    with runtime.sessions() as s:
        tries = list(s.scalars(select(WebhookDelivery.attempt).order_by(WebhookDelivery.attempt)))
    assert tries == [1, 2, 3, 4]  # the earlier tries stay on record


def test_a_receiver_that_is_away_spends_no_attempt_and_nothing_is_lost(
    runtime: Runtime, transport: FakeTransport, clock: Clock, tmp_path: Path
) -> None:
    """Connection refused for every event: after a few tries the deliverer probes, tries stop
    counting, no event fails however long it lasts; when the receiver answers, all arrive."""
    ended_jobs(runtime, transport, clock, 5)
    server = SandboxServer(rate_limit=None)
    url = server.webhook_url
    server.stop()  # bound, then closed: nothing listens on the port
    d = deliverer(runtime, url, webhook_retry_max_seconds=0.2)
    http = requests.Session()
    for _ in range(20):
        d.deliver_batch(http)
        clock.advance(3600)
        import time

        time.sleep(0.21)  # the probe interval (the backoff cap) passes
    events = events_of(runtime)
    assert all(e.delivery == "waiting" for e in events)
    assert max(e.delivery_attempts for e in events) <= 1
    with runtime.sessions() as s:
        counted = s.execute(
            select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.counted)
        ).scalar_one()
        probes = s.execute(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.counted.is_(False))
        ).scalar_one()
    assert counted <= 2 and probes >= 10


def test_redirects_are_not_followed(
    runtime: Runtime, transport: FakeTransport, clock: Clock, receiver: SandboxServer
) -> None:
    """A 302 is not a delivery, and its Location is never visited."""
    ended_jobs(runtime, transport, clock, 1)
    receiver.configure_receiver(status=302)
    d = deliverer(runtime, receiver.webhook_url)
    d.deliver_batch(requests.Session())
    (event,) = events_of(runtime)
    assert event.delivery == "waiting" and event.delivery_attempts == 1
    assert len(receiver.webhooks()) == 1


def test_the_secret_never_lands_in_a_table(
    runtime: Runtime, transport: FakeTransport, clock: Clock, receiver: SandboxServer
) -> None:
    """A receiver echoing the secret in its error page: the try's error is redacted."""
    ended_jobs(runtime, transport, clock, 1)
    d = deliverer(runtime, receiver.webhook_url)
    d.url = receiver.root_url + "/not-here/" + SECRET  # the sandbox's 404 page quotes the path
    d.deliver_batch(requests.Session())
    with runtime.sessions() as s:
        errors = list(s.scalars(select(WebhookDelivery.error)))
    assert errors and all(SECRET not in (e or "") for e in errors)
    assert all(SECRET.removeprefix("whsec_") not in (e or "") for e in errors)


# -- settings, CLI, Python API -------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, says",
    [
        ({"FPCANCEL_WEBHOOK_URL": "https://shop.example/hooks"}, "FPCANCEL_WEBHOOK_SECRET"),
        (
            {
                "FPCANCEL_WEBHOOK_URL": "http://shop.example/hooks",
                "FPCANCEL_WEBHOOK_SECRET": SECRET,
            },
            "FPCANCEL_WEBHOOK_URL",
        ),
        (
            {
                "FPCANCEL_WEBHOOK_URL": "https://shop.example/hooks",
                "FPCANCEL_WEBHOOK_SECRET": "nope",
            },
            "FPCANCEL_WEBHOOK_SECRET",
        ),
    ],
)
def test_the_worker_refuses_a_webhook_it_cannot_sign_or_send_safely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str
) -> None:
    """A URL without a secret, plain http to another host, a malformed secret: exit 2."""
    monkeypatch.chdir(tmp_path)
    base = {
        "FRONTPAYMENT_TOKEN": "tok-123456",
        "FPCANCEL_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}",
    }
    result = CliRunner().invoke(main, ["worker"], env={**base, **env})
    assert result.exit_code == 2 and says in result.stderr
    assert SECRET not in result.output


def test_events_list_the_python_api_and_jobs_show_agree(
    runtime: Runtime, transport: FakeTransport, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`events list --json` (with --after and --limit), `fpcancel.read_events` and the events
    in `jobs show --json` are the same payloads."""
    import fpcancel
    from fpcancel.api import default_producer

    ended_jobs(runtime, transport, clock, 4)
    env = {
        "FPCANCEL_DATABASE_URL": runtime.settings.database_url,
        "FPCANCEL_BROKER_URL": "memory://",
    }
    listed = json.loads(CliRunner().invoke(main, ["events", "list", "--json"], env=env).stdout)
    assert [p["id"] for p in listed] == [e.id for e in events_of(runtime)]
    page = CliRunner().invoke(
        main, ["events", "list", "--json", "--after", str(listed[0]["id"]), "--limit", "2"], env=env
    )
    assert json.loads(page.stdout) == listed[1:3]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    default_producer.cache_clear()
    try:
        assert fpcancel.read_events() == listed
        assert fpcancel.read_events(after=listed[-1]["id"]) == []
    finally:
        default_producer.cache_clear()
    job_id = listed[0]["data"]["job_id"]
    shown = json.loads(
        CliRunner().invoke(main, ["jobs", "show", str(job_id), "--json"], env=env).stdout
    )
    assert [e["payload"] for e in shown["events"]] == [listed[0]]
    human = CliRunner().invoke(main, ["jobs", "show", str(job_id)], env=env).stdout
    assert f"event {listed[0]['id']}" in human and "waiting" in human
    table = CliRunner().invoke(main, ["events", "list"], env=env).stdout
    assert all(p["data"]["order_uuid"] in table for p in listed)


def test_events_follow_prints_json_lines_until_interrupted(
    runtime: Runtime, transport: FakeTransport, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--follow: the events so far, one JSON line each, then new ones as they come."""
    from fpcancel.cli import events as events_cli

    ended_jobs(runtime, transport, clock, 2)
    polls = {"n": 0}

    def sleep(_: float) -> None:
        polls["n"] += 1
        if polls["n"] == 1:
            ended_jobs(runtime, transport, clock, 1, "ODRNEW")  # a new event while following
            return
        raise KeyboardInterrupt

    monkeypatch.setattr(events_cli.time, "sleep", sleep)
    env = {
        "FPCANCEL_DATABASE_URL": runtime.settings.database_url,
        "FPCANCEL_BROKER_URL": "memory://",
    }
    result = CliRunner().invoke(main, ["events", "list", "--follow"], env=env)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["id"] for p in lines] == [e.id for e in events_of(runtime)]
    assert len(lines) == 3


def test_redeliver_is_all_or_nothing_on_ids(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """An unknown id: exit 2 naming it, nothing changed."""
    ended_jobs(runtime, transport, clock, 1)
    (event,) = events_of(runtime)
    env = {
        "FPCANCEL_DATABASE_URL": runtime.settings.database_url,
        "FPCANCEL_BROKER_URL": "memory://",
    }
    result = CliRunner().invoke(main, ["events", "redeliver", str(event.id), "999"], env=env)
    assert result.exit_code == 2 and "event 999" in result.stderr


def test_stats_count_events_by_delivery(
    runtime: Runtime, transport: FakeTransport, clock: Clock, receiver: SandboxServer
) -> None:
    """`stats --json` gains events {total, waiting, delivered, failed} and delivery latency."""
    ended_jobs(runtime, transport, clock, 3)
    d = deliverer(runtime, receiver.webhook_url)
    with runtime.sessions.begin() as s:
        s.execute(
            update(CancelEvent)
            .where(CancelEvent.id == 3)
            .values(next_delivery_at=clock.now + timedelta(days=1))
        )
    d.deliver_batch(requests.Session())
    env = {
        "FPCANCEL_DATABASE_URL": runtime.settings.database_url,
        "FPCANCEL_BROKER_URL": "memory://",
    }
    data = json.loads(CliRunner().invoke(main, ["stats", "--json"], env=env).stdout)
    assert data["events"] == {"total": 3, "waiting": 1, "delivered": 2, "failed": 0}
    assert set(data["delivery_latency_seconds"]) == {"p50", "p90", "p99"}
    assert data["delivery_latency_seconds"]["p50"] >= 0
    assert data["jobs"]["succeeded"] == 3
