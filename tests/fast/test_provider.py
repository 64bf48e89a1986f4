"""The provider client's note of when a call left, which the limiter re-stamps a late call by.

A loopback HTTP server in a thread stands in for the provider: the moment that matters is when
the request's bytes reach the socket, which no fake transport has.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fpcancel.provider import FrontPaymentClient

HELD_UP_SECONDS = 0.05


class _Cancelled(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"status": True, "message": "Order Cancelled Successfully"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def provider_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Cancelled)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1"
    server.shutdown()
    server.server_close()


def test_a_call_held_up_on_its_way_out_is_noted_as_leaving_late(
    provider_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever holds a request up after it was handed to the HTTP library (a garbage
    collection, a thread waiting for the interpreter) is seen: the call is noted as leaving when
    its bytes were written, on a new connection and on a kept-alive one alike."""
    write = http.client.HTTPConnection.send

    def held_up(self: http.client.HTTPConnection, data: Any) -> None:
        time.sleep(HELD_UP_SECONDS)
        write(self, data)

    monkeypatch.setattr(http.client.HTTPConnection, "send", held_up)
    client = FrontPaymentClient(provider_url, "t0ken", connect_timeout=2, read_timeout=2)
    for order in ("ODR1", "ODR2"):  # the second call reuses the connection
        handed_over = time.perf_counter()
        answer = client.cancel_order(order, "note")
        assert answer.status == 200
        assert answer.left_at is not None
        assert answer.left_at - handed_over >= HELD_UP_SECONDS
    client.close()


def test_a_call_not_held_up_is_noted_as_leaving_at_once(provider_url: str) -> None:
    client = FrontPaymentClient(provider_url, "t0ken", connect_timeout=2, read_timeout=2)
    client.cancel_order("ODR1", "note")  # the connection is made
    handed_over = time.perf_counter()
    answer = client.cancel_order("ODR2", "note")
    assert answer.left_at is not None
    assert handed_over <= answer.left_at < handed_over + HELD_UP_SECONDS
    client.close()
