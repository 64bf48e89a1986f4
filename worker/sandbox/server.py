"""The sandbox's HTTP server: a threaded HTTP/1.1 server in front of the provider state and
the control endpoints; `SandboxServer` runs it in a thread or in the foreground."""

from __future__ import annotations

import contextlib
import gc
import json
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any

from fpcancel.sandbox.bodies import MAX_BODY_BYTES, SERVER_HEADER, Reply, json_bytes
from fpcancel.sandbox.control import CONTROL_PREFIX, WEBHOOK_PATH, control_call
from fpcancel.sandbox.state import (
    API_PREFIX,
    CANCEL_PREFIX,
    STATUS_PREFIX,
    OrderScript,
    ProviderRequest,
    SandboxState,
)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Benchmarks open many connections at once; the default backlog of 5 would refuse some.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: SandboxState, verbose: bool) -> None:
        self.state = state
        self.verbose = verbose
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut open keep-alive connections, so a stopped sandbox answers nothing more."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # OSError: its handler closed it meanwhile.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host up in DNS (getfqdn), which can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that give up (late steps, timeouts, stop()) are normal here, not errors.
        if self.verbose or not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = SERVER_HEADER
    # A buffered writer sends each answer in one write when the request ends; with Nagle off that
    # avoids the 40 ms delayed-ACK stall that separate header and body writes cause on keep-alive.
    wbufsize = -1
    disable_nagle_algorithm = True
    # Idle keep-alive connections free their thread after this long.
    timeout = 120
    server: _HTTPServer

    def version_string(self) -> str:
        return SERVER_HEADER

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _dispatch(self) -> None:
        arrival = (self.server.state.clock(), time.monotonic())
        raw = self._read_body()
        if raw is None:
            return
        split = urllib.parse.urlsplit(self.path)
        try:
            if split.path == WEBHOOK_PATH and self.command == "POST":
                answer = self.server.state.receiver.receive(dict(self.headers.items()), raw)
            elif split.path == CONTROL_PREFIX or split.path.startswith(CONTROL_PREFIX + "/"):
                answer = control_call(self.server.state, self.command, split.path, split.query, raw)
            else:
                answer = self.server.state.provider_call(
                    self._provider_request(arrival, split.path, raw)
                )
        except Exception:
            # A sandbox bug must not leave the client hanging; the traceback still goes to stderr.
            traceback.print_exc()
            answer = Reply(500, json_bytes({"error": "sandbox internal error"}))
        self._send(answer)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _dispatch

    def _provider_request(
        self, arrival: tuple[float, float], path: str, raw: bytes
    ) -> ProviderRequest:
        kind, order_id = "other", None
        for prefix, method, name in (
            (CANCEL_PREFIX, "POST", "cancel"),
            (STATUS_PREFIX, "GET", "status"),
        ):
            segment = path.removeprefix(prefix)
            if self.command == method and segment != path and segment and "/" not in segment:
                kind, order_id = name, urllib.parse.unquote(segment)
        scheme, _, credentials = (self.headers.get("Authorization") or "").strip().partition(" ")
        bearer = credentials.strip() if scheme.lower() == "bearer" else None
        payload: Any = None
        if raw:
            text = raw.decode("utf-8", errors="replace")
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
        return ProviderRequest(
            *arrival,
            self.command,
            kind,
            order_id,
            bearer or None,
            self.headers.get("Content-Type"),
            payload,
        )

    def _read_body(self) -> bytes | None:
        """The request body (chunked or sized); None after answering a malformed one."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    return self._refuse(400, "malformed chunked body")
                total += size
                if total > MAX_BODY_BYTES:
                    return self._refuse(413, "body too large")
                if size == 0:
                    while self.rfile.readline(1024).strip():
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            return self._refuse(400, "malformed Content-Length")
        if length < 0:
            return self._refuse(400, "malformed Content-Length")
        if length > MAX_BODY_BYTES:
            return self._refuse(413, "body too large")
        return self.rfile.read(length) if length else b""

    def _refuse(self, status: int, reason: str) -> bytes | None:
        """Reply a body that cannot be read and give None; the connection is closed after."""
        self.close_connection = True
        self._send(Reply(status, json_bytes({"error": reason}), headers=[("Connection", "close")]))
        return None

    def _send(self, answer: Reply) -> None:
        if answer.delay_seconds > 0:
            time.sleep(answer.delay_seconds)
        if answer.drop:
            self.close_connection = True
            self.log_message('"%s" dropped without an answer', self.requestline)
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class SandboxServer:
    """A threaded HTTP/1.1 stand-in for Front Payment, in this process.

    ``port=0`` picks a free port (see ``port``/``base_url``); the socket is bound at construction.
    ``token=None`` accepts any non-empty bearer; ``rate_limit=(N, W)`` allows N calls per W seconds
    per token (``None``: unlimited), counted as ``rate_mode`` says (``"laravel"``: fixed windows
    opened by the first call, as the provider counts; ``"sliding"``: a strict sliding window);
    ``answer_delay_seconds`` delays every answer; ``unknown_orders`` is ``"open"`` (unregistered
    orders exist as SENT) or ``"missing"``. ``clock`` gives the time in epoch seconds that calls
    are stamped and counted with (tests inject one). Use as a context manager, or
    ``start()``/``stop()``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        rate_limit: tuple[int, float] | None = (240, 60.0),
        rate_mode: str = "laravel",
        answer_delay_seconds: float = 0.0,
        unknown_orders: str = "open",
        max_note_length: int = 1000,
        verbose: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = SandboxState(
            token,
            rate_limit,
            unknown_orders,
            max_note_length,
            rate_mode=rate_mode,
            answer_delay_seconds=answer_delay_seconds,
            clock=clock,
        )
        self._host = host
        self._httpd = _HTTPServer((host, port), self._state, verbose)
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The API root to give a client, e.g. ``http://127.0.0.1:8765/api/v1``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}{API_PREFIX}"

    @property
    def root_url(self) -> str:
        """The server root, for ``SandboxControl``."""
        return self.base_url.removesuffix(API_PREFIX)

    def start(self) -> SandboxServer:
        """Serve in a daemon thread; return self."""
        if self._closed or self._thread is not None:
            raise RuntimeError("a SandboxServer can be started once")
        # A short poll keeps stop() quick for tests that start a server each; idle polls are cheap.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fp-sandbox",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections; safe to call twice."""
        if self._closed:
            return
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._httpd.server_close()
        self._httpd.close_connections()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Serve in this thread until KeyboardInterrupt or SIGTERM, then close; for the CLI."""
        if self._closed or self._thread is not None:
            raise RuntimeError("a SandboxServer can be started once")
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
        if in_main_thread:
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        # What is loaded by now lives as long as the process: out of the collector's full
        # passes, which would hold every connection's arrival up for milliseconds (a stand-in
        # provider whose clock stops now and then, unlike the provider's).
        gc.freeze()
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            self._close()

    def set_order(
        self,
        order_id: str,
        status: str = "SENT",
        script: list[str] | None = None,
        status_script: list[str] | None = None,
    ) -> None:
        """Register or replace an order; all steps are validated (ValueError) before any change."""
        self._state.set_order(order_id, status, script, status_script)

    def order(self, order_id: str) -> OrderScript | None:
        """A copy of the order's state, or None if it was never registered or auto-created."""
        return self._state.order(order_id)

    def calls(self, order_id: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Copies of the logged provider calls, oldest first, filtered by order and kind."""
        return self._state.calls_matching(order_id, kind)

    def clear_calls(self) -> None:
        """Forget the call log and its counters."""
        self._state.clear_calls()

    def set_token(self, token: str | None) -> None:
        """Require this bearer token from now on; None accepts any non-empty bearer."""
        self._state.configure({"token": token})

    def set_rate_limit(
        self, rate_limit: tuple[int, float] | str | None, mode: str | None = None
    ) -> None:
        """Switch the rate limit (``(20, 2.0)``, ``"20/2"`` or None) and, if given, its mode
        (``"laravel"`` or ``"sliding"``); windows start empty."""
        config: dict[str, Any] = {"rate_limit": rate_limit}
        if mode is not None:
            config["rate_mode"] = mode
        self._state.configure(config)

    def set_answer_delay(self, seconds: float) -> None:
        """Reply every provider call this many seconds after it arrived (0: at once)."""
        self._state.configure({"answer_delay_seconds": seconds})

    def load_scenario(self, data: dict[str, Any]) -> None:
        """Replace all orders with ``data["orders"]`` and apply any of ``token``, ``rate_limit``,
        ``rate_mode``, ``answer_delay_seconds``, ``unknown_orders``, ``max_note_length``; nothing
        changes if anything is invalid.

        Example: ``{"orders": {"ODR1": {"status": "PAID", "script": ["510"]}},
        "rate_limit": "20/2", "rate_mode": "laravel"}``.
        """
        self._state.load_scenario(data)

    @property
    def webhook_url(self) -> str:
        """Where to point FPCANCEL_WEBHOOK_URL to have this sandbox receive the events."""
        return self.root_url + WEBHOOK_PATH

    def configure_receiver(self, **config: Any) -> None:
        """The webhook receiver's `secret`, `fail_next`, `status`, `delay_seconds`."""
        self._state.receiver.configure(config)

    def webhooks(self) -> list[dict[str, Any]]:
        """The deliveries received, oldest first, each with whether its signature checked out."""
        return self._state.receiver.received()

    def stats(self) -> dict[str, Any]:
        """``{"calls": n, "by_status": {"202": n, ...}, "orders": {status: count}, "rate": {...}}``.

        ``rate``: ``mode``, ``limit`` (N), ``window_seconds`` (W), ``admitted`` (calls the limit
        let through), ``refused`` (its 429s) and ``worst_window`` (the most admitted calls within
        any W seconds; None without a limit), over the call log since it was last cleared.
        """
        return self._state.stats()
