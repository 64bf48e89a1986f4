"""Test doubles that talk like the world: a fake HTTP transport for `requests`, and a runtime
built on SQLite, the in-process limiter and Celery's memory broker."""

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from requests.adapters import BaseAdapter
from sqlalchemy import select

from fpcancel.app import make_celery
from fpcancel.feed import Scheduler
from fpcancel.fleet import LocalFleet
from fpcancel.migrate import upgrade
from fpcancel.models.db import make_engine, make_session_factory, utcnow
from fpcancel.models.tables import CancelJob
from fpcancel.provider import FrontPaymentClient
from fpcancel.ratelimit import LocalLimiter
from fpcancel.runtime import Runtime
from fpcancel.settings import RateLimit, Secret, Settings
from fpcancel.statuses import TERMINAL_STATUSES, WAITING_STATUSES
from fpcancel.tasks import run_job

TOKEN = "test-token-5f1e2d3c"

DOCUMENTED = {
    202: {
        "status_code": 202,
        "status_message": "OK",
        "message": "cancelledOrderSuccessfully",
        "is_data": False,
        "data": None,
    },
    400: {
        "status_code": 400,
        "status_message": "Conflict of Business Logic",
        "message": "orderStatusAlreadyPaid",
        "is_error": False,
        "errors": None,
    },
    404: {
        "status_code": 404,
        "status_message": "Not Found",
        "message": "orderNotFound",
        "is_data": False,
        "data": None,
    },
    417: {
        "status_code": 417,
        "status_message": "Client Error",
        "message": "payloadValidationErrors",
        "is_error": True,
        "errors": {"cancellationNote": ["The cancellation note field is required."]},
    },
    510: {
        "status_code": 510,
        "status_message": "Execution Exception Occurred",
        "message": "Something Went Wrong",
        "is_error": True,
        "errors": "Array",
    },
}


@dataclass
class Reply:
    status: int
    body: Any = None  # dict → JSON; str → sent as text/html
    headers: dict[str, str] = field(default_factory=dict)
    raise_: Exception | None = None


def documented(status: int) -> Reply:
    return Reply(status, DOCUMENTED[status])


class FakeTransport(BaseAdapter):
    """A `requests` adapter that answers from a script per order and records every request."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, list[Reply]] = {}
        self.status_scripts: dict[str, list[Reply]] = {}
        self.requests: list[requests.PreparedRequest] = []
        # Asked first for every request: a Reply to answer with (an outage, say), or None.
        self.intercept: Callable[[requests.PreparedRequest], Reply | None] | None = None
        self._lock = threading.Lock()

    def script(self, order: str, *replies: Reply) -> None:
        self.scripts[order] = list(replies)

    def status_script(self, order: str, *replies: Reply) -> None:
        self.status_scripts[order] = list(replies)

    def calls(
        self, order: str | None = None, kind: str | None = None
    ) -> list[requests.PreparedRequest]:
        return [
            r
            for r in self.requests
            if (order is None or str(r.url).endswith("/" + order))
            and (kind is None or f"/orders/{kind}/" in str(r.url))
        ]

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        with self._lock:
            self.requests.append(request)
            url = str(request.url)
            order = url.rsplit("/", 1)[-1]
            book = self.status_scripts if "/orders/status/" in url else self.scripts
            queue = book.get(order, [])
            reply = self.intercept(request) if self.intercept is not None else None
            if reply is None:
                reply = queue.pop(0) if queue else default_reply(url)
        if reply.raise_ is not None:
            raise reply.raise_
        response = requests.Response()
        response.status_code = reply.status
        if isinstance(reply.body, str):
            response._content = reply.body.encode()
            response.headers["Content-Type"] = "text/html"
        else:
            response._content = json.dumps(reply.body).encode() if reply.body is not None else b""
            response.headers["Content-Type"] = "application/json"
        response.headers.update(reply.headers)
        response._content_consumed = True  # the body is all here; `stream=True` reads it as is
        response.url = url
        response.request = request
        return response

    def close(self) -> None:
        pass


def default_reply(url: str) -> Reply:
    if "/orders/status/" in url:
        return Reply(
            200,
            {
                "status_code": 200,
                "message": "Order Status Retrieved Successfully",
                "is_data": True,
                "data": {"status": "SENT"},
            },
        )
    return documented(202)


def fake_client(transport: FakeTransport, timeout: float = 1.0) -> FrontPaymentClient:
    def session() -> requests.Session:
        s = requests.Session()
        s.mount("http://", transport)
        s.mount("https://", transport)
        return s

    return FrontPaymentClient(
        "https://provider.test/api/v1",
        TOKEN,
        connect_timeout=timeout,
        read_timeout=timeout,
        session_factory=session,
    )


def test_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        base_url="https://provider.test/api/v1",
        token=Secret(TOKEN),
        database_url=database_url,
        broker_url="memory://",
        max_attempts=4,
        retry_base_seconds=0.2,
        retry_max_seconds=2.0,
        http_timeout_seconds=1.0,
        rate_limit=RateLimit(1000, 1.0),
        scheduler_interval_seconds=0.1,
        dispatch_lease_seconds=5.0,
    )
    values.update(overrides)
    return Settings(**values)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        from datetime import timedelta

        self.now += timedelta(seconds=seconds)


def sqlite_runtime(
    tmp_path: Path,
    transport: FakeTransport,
    clock: Callable[[], datetime] | None = None,
    **overrides: Any,
) -> Runtime:
    url = f"sqlite:///{tmp_path / 'fpcancel.db'}"
    clock = clock or utcnow
    settings = test_settings(url, **overrides)
    engine = make_engine(url)
    upgrade(engine)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        # The hand clock stands still unless a test moves it: no pace, or nothing would pass.
        limiter=LocalLimiter(settings.rate_limit, clock=lambda: clock().timestamp(), paced=False),
        fleet=LocalFleet(),
        app=make_celery(settings),
        client=fake_client(transport),
        clock=clock,
        rng=lambda: 1.0,
    )


def pending(rt: Runtime) -> list[tuple[int, str]]:
    """Jobs the feed has sent (a message is out) and no worker has claimed yet."""
    with rt.sessions() as s:
        rows = s.execute(
            select(CancelJob.id, CancelJob.dispatch_token).where(
                CancelJob.dispatch_token.is_not(None),
                CancelJob.status.in_([status.value for status in WAITING_STATUSES]),
            )
        ).all()
    return [(r.id, r.dispatch_token) for r in rows]


def all_terminal(rt: Runtime) -> bool:
    with rt.sessions() as s:
        return all(status in TERMINAL_STATUSES for status in s.scalars(select(CancelJob.status)))


def drive(rt: Runtime, clock: Clock, rounds: int = 200, step: float = 0.5) -> None:
    """Be the fleet by hand: run every message the feed sent, move the clock, run a feed round;
    until every job is terminal."""
    scheduler = Scheduler(rt, member="test")
    for _ in range(rounds):
        for job_id, token in pending(rt):
            run_job(rt, job_id, token)
        if all_terminal(rt):
            return
        clock.advance(step)
        scheduler.round()
    raise AssertionError("jobs did not finish")
