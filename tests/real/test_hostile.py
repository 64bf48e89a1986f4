"""A hostile provider against a real worker, PostgreSQL and Redis: it echoes the request's headers
(the token among them), answers with terminal escape sequences and a 20 MB body. The jobs end as
SPEC.md says, nothing secret is stored or logged, nothing raw is printed."""

import json
import threading
import unicodedata
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from sqlalchemy import select

from fpcancel.models.tables import CancelAttempt, CancelJob
from tests.real.conftest import (
    TOKEN,
    Worker,
    all_terminal,
    base_env,
    cli,
    enqueue_orders,
    statuses,
    wait_until,
)

pytestmark = pytest.mark.real

ESCAPES = "\x1b[2J\x1b]52;c;cm0gLXJmIH4=\x07\x1b]8;;https://evil.example\x07here\x1b]8;;\x07\x9b1m"
FORGED = "\n 999 │ cancel │ FORGED"


class Hostile(BaseHTTPRequestHandler):
    """Per order, a list of answers to cancels; status checks answer per `STATUS`."""

    protocol_version = "HTTP/1.1"
    CANCELS: ClassVar[dict[str, list[str]]] = {}
    STATUS: ClassVar[dict[str, str]] = {}

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _headers_echo(self) -> str:
        return "".join(f"{k}: {v}\n" for k, v in self.headers.items())

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        order = self.path.rsplit("/", 1)[-1]
        script = self.CANCELS.get(order) or ["202"]
        step = script.pop(0) if len(script) > 1 else script[0]
        echo = self._headers_echo()
        if step == "echo-502":
            page = f"<html><title>502 Bad Gateway</title><pre>{echo}</pre>{ESCAPES}{FORGED}</html>"
            self._send(502, page.encode(), "text/html")
        elif step == "escape-510":
            body = {
                "status_code": 510,
                "message": ESCAPES + FORGED,
                "is_error": True,
                "errors": echo,
            }
            self._send(510, json.dumps(body).encode())
        elif step == "huge-200":
            self._send(200, b"<html>" + b"A" * (20 * 1024 * 1024), "text/html")
        elif step == "417":
            body = {
                "status_code": 417,
                "status_message": "Client Error",
                "message": "payloadValidationErrors",
                "is_error": True,
                "errors": {"cancellationNote": [ESCAPES + FORGED, echo]},
            }
            self._send(417, json.dumps(body).encode())
        elif step == "paid":
            body = {"status_code": 400, "message": "orderStatusAlreadyPaid", "errors": echo}
            self._send(400, json.dumps(body).encode())
        else:
            self._send(
                202,
                json.dumps({"status_code": 202, "message": "cancelledOrderSuccessfully"}).encode(),
            )

    def do_GET(self) -> None:
        order = self.path.rsplit("/", 1)[-1]
        status = self.STATUS.get(order, "SENT")
        if status == "MISSING":
            body = {
                "status_code": 404,
                "message": "orderNotFound",
                "padding": ESCAPES * 100,
            }  # 6 KB: still read whole
            self._send(404, json.dumps(body).encode())
            return
        data = {"uuid": order, "status": status, "note": ESCAPES + self._headers_echo()}
        self._send(200, json.dumps({"status_code": 200, "message": "ok", "data": data}).encode())


class HostileServer:
    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/api/v1"


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    Hostile.CANCELS = {
        "ODRECHO": ["echo-502", "202"],  # a proxy page quoting the token; the status check settles
        "ODRESC": ["escape-510", "paid"],
        "ODRHUGE": ["huge-200"],
        "ODR417": ["417"],
    }
    Hostile.STATUS = {"ODRECHO": "CANCELLED", "ODRHUGE": "MISSING"}
    server = HostileServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def raw_controls(text: str) -> list[str]:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]


def test_a_hostile_provider_ends_jobs_as_specified_and_leaks_nothing(
    database_url: str,
    broker_url: str,
    sessions: Any,
    hostile: HostileServer,
    start_worker: Callable[..., Worker],
) -> None:
    """Echoed headers, escape sequences and a 20 MB body: each job ends in the status its answers
    call for; the token is in no row, log or output; `jobs show` prints nothing raw."""
    env = base_env(database_url, broker_url, hostile)  # type: ignore[arg-type]
    worker = start_worker(env)
    enqueue_orders(env, ["ODRECHO", "ODRESC", "ODRHUGE", "ODR417"])
    wait_until(lambda: all_terminal(sessions), 60, "every job to end")
    assert statuses(sessions) == {
        "ODRECHO": "succeeded",  # 502 page → status check says CANCELLED: no second POST
        "ODRESC": "already_paid",  # 510 → status SENT → POST again → paid
        "ODRHUGE": "not_found",  # 20 MB 200 without the API's message → status 404 orderNotFound
        "ODR417": "invalid_payload",  # the refused note's errors kept (redacted)
    }
    with sessions() as s:
        jobs = list(s.scalars(select(CancelJob)))
        calls = list(s.scalars(select(CancelAttempt)))
    stored = [
        str(getattr(row, column.name))
        for row in [*jobs, *calls]
        for column in row.__table__.columns
    ]
    assert any(ESCAPES[:4] in text for text in stored)  # kept exact in the tables (and --json)
    assert not any(TOKEN in text for text in stored)
    assert all(len(call.response_body or "") <= 2000 for call in calls)
    errors = next(j for j in jobs if j.order_uuid == "ODR417").last_errors
    assert errors is not None and "***" in errors
    for job in jobs:
        for extra in ({}, {"FORCE_COLOR": "1", "COLUMNS": "300"}):
            shown = cli({**env, **extra}, "jobs", "show", str(job.id))
            assert shown.returncode == 0, shown.stderr
            assert TOKEN not in shown.stdout + shown.stderr
            assert raw_controls(shown.stdout) == []
            assert not any(line.lstrip().startswith("999") for line in shown.stdout.splitlines())
    listing = cli(env, "jobs", "list")
    assert raw_controls(listing.stdout) == [] and TOKEN not in listing.stdout
    worker.stop()
    assert TOKEN not in worker.log()
