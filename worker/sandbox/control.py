"""The `/_sandbox/` control endpoints (no auth, no rate limit) and `SandboxControl`, their client,
to script a sandbox running in another process."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final

from fpcancel.sandbox.bodies import JSON, Reply, json_bytes
from fpcancel.sandbox.state import API_PREFIX, OrderScript, SandboxState, order_from_json

CONTROL_PREFIX: Final = "/_sandbox"
WEBHOOK_PATH: Final = CONTROL_PREFIX + "/webhook"


def control_call(state: SandboxState, method: str, path: str, query: str, raw: bytes) -> Reply:
    """Serve ``/_sandbox/...``; bad input is a 400 with ``{"error": ...}``."""
    parts = path.removeprefix(CONTROL_PREFIX).strip("/").split("/")
    route = parts[0] if parts else ""
    allowed: tuple[str, ...]
    try:
        if route == "orders" and len(parts) == 2:
            allowed = ("GET", "PUT")
            order_id = urllib.parse.unquote(parts[1])
            if method == "PUT":
                spec = order_from_json(_control_json(raw))
                state.set_order(order_id, spec.status, spec.script, spec.status_script)
                return _control_answer(200, {"order": order_id, **spec.to_json()})
            if method == "GET":
                entry = state.order(order_id)
                if entry is None:
                    return _control_answer(404, {"error": f"no order {order_id!r}"})
                return _control_answer(200, {"order": order_id, **entry.to_json()})
        elif route == "calls" and len(parts) == 1:
            allowed = ("GET", "DELETE")
            if method == "GET":
                params = urllib.parse.parse_qs(query)
                order = params.get("order", [None])[-1]
                kind = params.get("kind", [None])[-1]
                return _control_answer(200, {"calls": state.calls_matching(order, kind)})
            if method == "DELETE":
                return _control_answer(200, {"cleared": state.clear_calls()})
        elif route == "config" and len(parts) == 1:
            allowed = ("PUT",)
            if method == "PUT":
                config = _control_json(raw)
                if not isinstance(config, dict):
                    raise ValueError("config must be a JSON object")
                state.configure(config)
                return _control_answer(200, {"ok": True})
        elif route == "scenario" and len(parts) == 1:
            allowed = ("POST",)
            if method == "POST":
                state.load_scenario(_control_json(raw))
                return _control_answer(200, {"ok": True})
        elif route == "receiver" and len(parts) == 1:
            allowed = ("PUT",)
            if method == "PUT":
                config = _control_json(raw)
                if not isinstance(config, dict):
                    raise ValueError("receiver config must be a JSON object")
                state.receiver.configure(config)
                return _control_answer(200, {"ok": True})
        elif route == "webhooks" and len(parts) == 1:
            allowed = ("GET", "DELETE")
            if method == "GET":
                return _control_answer(200, {"received": state.receiver.received()})
            if method == "DELETE":
                return _control_answer(200, {"cleared": state.receiver.clear()})
        elif route == "stats" and len(parts) == 1:
            allowed = ("GET",)
            if method == "GET":
                return _control_answer(200, state.stats())
        else:
            return _control_answer(404, {"error": f"no control endpoint {path}"})
    except ValueError as error:
        return _control_answer(400, {"error": str(error)})
    return Reply(
        405,
        json_bytes({"error": f"{method} not allowed on {path}"}),
        headers=[("Allow", ", ".join(allowed))],
    )


def _control_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:
        raise ValueError("the body must be JSON") from None


def _control_answer(status: int, data: object) -> Reply:
    return Reply(status, json_bytes(data))


class SandboxControl:
    """Drive a sandbox in another process through its ``/_sandbox/`` endpoints.

    Invalid input raises ValueError with the sandbox's reason, as ``SandboxServer`` does.
    """

    def __init__(self, root_url: str, timeout: float = 10.0) -> None:
        root = root_url.rstrip("/")
        self.root_url = root.removesuffix(API_PREFIX).rstrip("/")
        self.timeout = timeout
        # The sandbox is local: a proxy from the environment would only get in the way.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def set_order(
        self,
        order_id: str,
        status: str = "SENT",
        script: list[str] | None = None,
        status_script: list[str] | None = None,
    ) -> None:
        """Register or replace an order."""
        self._request(
            "PUT",
            f"/orders/{urllib.parse.quote(order_id, safe='')}",
            {"status": status, "script": script or [], "status_script": status_script or []},
        )

    def order(self, order_id: str) -> OrderScript | None:
        """The order's state, or None if the sandbox has no such order."""
        data = self._request(
            "GET", f"/orders/{urllib.parse.quote(order_id, safe='')}", missing_ok=True
        )
        if data is None:
            return None
        return OrderScript(data["status"], list(data["script"]), list(data["status_script"]))

    def calls(self, order_id: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """The logged provider calls, filtered by order and kind."""
        params = {
            name: value
            for name, value in (("order", order_id), ("kind", kind))
            if value is not None
        }
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        calls: list[dict[str, Any]] = self._request("GET", f"/calls{query}")["calls"]
        return calls

    def clear_calls(self) -> None:
        """Forget the call log."""
        self._request("DELETE", "/calls")

    def set_token(self, token: str | None) -> None:
        """Require this bearer token; None accepts any."""
        self._request("PUT", "/config", {"token": token})

    def set_rate_limit(
        self, rate_limit: tuple[int, float] | str | None, mode: str | None = None
    ) -> None:
        """Switch the rate limit (``(20, 2.0)``, ``"20/2"`` or None) and, if given, its mode."""
        if isinstance(rate_limit, tuple):
            rate_limit = f"{rate_limit[0]}/{float(rate_limit[1])!r}"
        config: dict[str, Any] = {"rate_limit": rate_limit}
        if mode is not None:
            config["rate_mode"] = mode
        self._request("PUT", "/config", config)

    def set_answer_delay(self, seconds: float) -> None:
        """Reply every provider call this many seconds after it arrived."""
        self._request("PUT", "/config", {"answer_delay_seconds": seconds})

    def load_scenario(self, data: dict[str, Any]) -> None:
        """Replace all orders and apply the scenario's config."""
        self._request("POST", "/scenario", data)

    @property
    def webhook_url(self) -> str:
        """Where to point FPCANCEL_WEBHOOK_URL to have this sandbox receive the events."""
        return self.root_url + WEBHOOK_PATH

    def configure_receiver(self, **config: Any) -> None:
        """The webhook receiver's `secret`, `fail_next`, `status`, `delay_seconds`."""
        self._request("PUT", "/receiver", config)

    def webhooks(self) -> list[dict[str, Any]]:
        """The deliveries received, oldest first."""
        received: list[dict[str, Any]] = self._request("GET", "/webhooks")["received"]
        return received

    def clear_webhooks(self) -> None:
        self._request("DELETE", "/webhooks")

    def stats(self) -> dict[str, Any]:
        """Call and order counts and the rate accounting, as ``SandboxServer.stats``."""
        stats: dict[str, Any] = self._request("GET", "/stats")
        return stats

    def _request(
        self, method: str, path: str, payload: object = None, *, missing_ok: bool = False
    ) -> Any:
        data = None if payload is None else json_bytes(payload)
        request = urllib.request.Request(
            f"{self.root_url}{CONTROL_PREFIX}{path}",
            data=data,
            method=method,
            headers={"Content-Type": JSON, "Accept": JSON},
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                text = error.read().decode("utf-8", errors="replace")
            if error.code == 404 and missing_ok:
                return None
            try:
                reason = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                reason = text[:200]
            if error.code == 400:
                raise ValueError(reason) from None
            raise RuntimeError(
                f"sandbox control {method} {path}: HTTP {error.code}: {reason}"
            ) from None
