"""The deliverer: threads in each worker process that POST outcome events to the shop's webhook.

They run beside the Celery task threads, never in them: a receiver answering in 10 s, or not at
all, cannot hold up a cancel, and webhooks never touch the provider's rate budget. Each thread
takes a small batch of due events from the outbox (`fpcancel.outbox`), sends each signed
(`fpcancel.webhooks`), and records every try and the event's new state in one transaction.

When tries of several different events fail in a row, the receiver as a whole is away: the
process stops delivering and sends one probe every `PROBE_SECONDS` (a try that does not count);
when a probe is answered with a 2xx, every waiting event goes on. Events wait in the table
meanwhile, so an outage of any length loses nothing and fails nothing.
"""

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from sqlalchemy.orm import Session, sessionmaker

from fpcancel import metrics, outbox
from fpcancel.models.db import utcnow
from fpcancel.outbox import HeldEvent, TryRecord
from fpcancel.redaction import Redactor
from fpcancel.settings import Settings
from fpcancel.webhooks import (
    PROBE_SECONDS,
    TIMEOUT_SECONDS,
    DeliveryPolicy,
    after_try,
    body_of,
    delivered,
    receiver_away,
    signed_headers,
)

log = logging.getLogger("fpcancel.webhooks")
BATCH_EVENTS = 25
IDLE_SECONDS = 0.2
RESPONSE_KEEP_BYTES = 1024


class ReceiverHealth:
    """Whether the receiver as a whole answers, shared by one process's deliverer threads."""

    def __init__(
        self, probe_seconds: float = PROBE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._probe_seconds = probe_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self.failures_in_a_row = 0
        self.away = False
        self._next_probe = 0.0

    def note(self, ok: bool) -> bool:
        """Count one try; returns whether the receiver is (now) away."""
        with self._lock:
            if ok:
                if self.away:
                    log.warning("webhook receiver answers again: deliveries go on")
                self.failures_in_a_row, self.away = 0, False
                return False
            self.failures_in_a_row += 1
            if not self.away and receiver_away(self.failures_in_a_row):
                self.away = True
                self._next_probe = self._clock() + self._probe_seconds
                log.warning(
                    "webhook receiver away (%d tries failed in a row): deliveries pause, "
                    "one probe every %.1f s",
                    self.failures_in_a_row,
                    self._probe_seconds,
                )
            elif self.away:
                self._next_probe = self._clock() + self._probe_seconds
            return self.away

    def turn(self) -> tuple[bool, float]:
        """(may this thread send now, is it a probe); when it may not, how long to wait is
        in `wait_seconds`."""
        with self._lock:
            if not self.away:
                return True, False
            if self._clock() >= self._next_probe:
                self._next_probe = self._clock() + self._probe_seconds  # one probe at a time
                return True, True
            return False, False

    def wait_seconds(self) -> float:
        with self._lock:
            return max(0.0, self._next_probe - self._clock()) if self.away else 0.0


class Deliverer:
    """`threads` delivery threads for one worker process (started by `fpcancel worker`)."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        stop: threading.Event,
        *,
        threads: int = 4,
        clock: Callable[[], datetime] = utcnow,
        rng: Callable[[], float] | None = None,
        http_factory: Callable[[], requests.Session] | None = None,
    ) -> None:
        key = settings.webhook_key
        if settings.webhook_url is None or key is None:
            raise ValueError("a deliverer needs FPCANCEL_WEBHOOK_URL and FPCANCEL_WEBHOOK_SECRET")
        self.url = settings.webhook_url
        self.key = key
        self.sessions = sessions
        self.stop = stop
        self.threads = threads
        self.clock = clock
        self.rng = rng
        self.redactor: Redactor = settings.redactor
        self.policy = DeliveryPolicy(
            settings.webhook_max_attempts,
            settings.webhook_retry_base_seconds,
            settings.webhook_retry_max_seconds,
        )
        self.health = ReceiverHealth(self.policy.probe_seconds)
        self._http_factory = http_factory or _http_session

    def start(self) -> list[threading.Thread]:
        started = []
        for n in range(self.threads):
            thread = threading.Thread(target=self.run, name=f"fpcancel-webhooks-{n}", daemon=True)
            thread.start()
            started.append(thread)
        return started

    def run(self) -> None:
        """Deliver until `stop` is set; outlives database and receiver outages."""
        http = self._http_factory()
        try:
            while not self.stop.is_set():
                try:
                    busy = self.deliver_batch(http)
                except Exception:
                    log.exception("webhook delivery round failed; trying again")
                    busy = False
                if not busy:
                    self.stop.wait(max(IDLE_SECONDS, min(self.health.wait_seconds(), 1.0)))
        finally:
            http.close()

    def deliver_batch(self, http: requests.Session) -> bool:
        """Hold a batch of due events, send each, record the tries; False when nothing was due
        (or the receiver is away and it is not this thread's turn to probe)."""
        may_send, probe = self.health.turn()
        if not may_send:
            return False
        limit = 1 if probe else BATCH_EVENTS
        token = uuid.uuid4().hex
        lease = limit * (TIMEOUT_SECONDS + 5) + 30
        with self.sessions.begin() as session:
            held = outbox.claim_due(session, self.clock(), limit, lease, token)
        if not held:
            return False
        records: list[TryRecord] = []
        untried: list[HeldEvent] = []
        for index, event in enumerate(held):
            if self.stop.is_set():
                untried = held[index:]
                break
            record = self._try(http, event)
            records.append(record)
            if not record.outcome.counted and not delivered(record.http_status):
                untried = held[index + 1 :]  # the receiver is away: the rest wait, unspent
                break
        with self.sessions.begin() as session:
            outbox.record_tries(session, records, token)
            outbox.release(session, untried, token, self.clock())
        return True

    def _try(self, http: requests.Session, event: HeldEvent) -> TryRecord:
        body = body_of(event.payload)
        started = self.clock()
        begun = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            headers = signed_headers(self.key, event.id, int(time.time()), body)
            response = http.post(
                self.url,
                data=body,
                headers=headers,
                timeout=(min(5.0, TIMEOUT_SECONDS), TIMEOUT_SECONDS),
                allow_redirects=False,
                stream=True,
            )
            try:
                status = response.status_code
                # Read (a little of) the body even on a 2xx: a response read to its end gives
                # its keep-alive connection back to the pool instead of closing it.
                text = _read_some(response, RESPONSE_KEEP_BYTES)
                if not delivered(status):
                    gist = " ".join(text.decode("utf-8", errors="replace").split())[:200]
                    error = f"HTTP {status}" + (f": {gist}" if gist else "")
            finally:
                response.close()
        except requests.RequestException as exc:
            error = f"no answer: {type(exc).__name__}"
        duration_ms = int((time.perf_counter() - begun) * 1000)
        ok = delivered(status)
        away = self.health.note(ok)
        outcome = after_try(
            status=status,
            attempts_before=event.attempts,
            receiver_away=away and not ok,
            policy=self.policy,
            now=self.clock(),
            rng=self.rng,
        )
        _observe(event, ok, outcome.counted, duration_ms)
        return TryRecord(
            event,
            started,
            duration_ms,
            status,
            None if error is None else self.redactor.text(error),
            outcome,
        )


def _observe(event: HeldEvent, ok: bool, counted: bool, duration_ms: int) -> None:
    result = "delivered" if ok else ("failed" if counted else "probe")
    metrics.WEBHOOK_TRIES.labels(result).inc()
    metrics.WEBHOOK_SECONDS.observe(duration_ms / 1000)
    if ok:
        created = _parse_time(event.payload.get("timestamp"))
        if created is not None:
            metrics.WEBHOOK_LATENCY.observe(max(0.0, (utcnow() - created).total_seconds()))


def _read_some(response: requests.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=limit):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _http_session() -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # no proxy or netrc from the environment changes where events go
    return session
