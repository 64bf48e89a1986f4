"""`fpcancel serve` as a PHP or Node shop and ops meet it: a real server process over HTTP, on
PostgreSQL and Redis, with `fpcancel worker` against the sandbox where a job must really die."""

import json
import re
import time
from typing import Any

import pytest
import requests

from fpcancel.sandbox import SandboxServer
from tests.real.conftest import all_terminal, cli, free_port, make_key, statuses, wait_until

pytestmark = pytest.mark.real

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
HOSTILE = '<script>alert("pwned")</script>'


@pytest.fixture
def keys(env: dict[str, str]) -> dict[str, str]:
    return {scope: make_key(env, f"{scope}-shop", scope) for scope in ("enqueue", "read", "ops")}


@pytest.fixture
def server(env: dict[str, str], start_server: Any) -> Any:
    return start_server(env)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error_shape(answer: requests.Response) -> bool:
    body = answer.json()
    return isinstance(body.get("error"), str) and isinstance(body.get("details"), list)


def signed_in(base: str, key: str) -> requests.Session:
    browser = requests.Session()
    page = browser.get(base + "/signin")
    token = CSRF.search(page.text)
    assert token, page.text
    done = browser.post(
        base + "/signin", data={"key": key, "csrf_token": token.group(1)}, allow_redirects=False
    )
    assert done.status_code == 303, done.text
    return browser


def test_a_shop_enqueues_with_dedup_and_reads_its_job(
    server: Any, keys: dict[str, str], sessions: Any
) -> None:
    """201 then 200 for the same order, the job object both times; the read key reads it."""
    body = {"order_uuid": "ODR100000001", "note": "Customer asked to cancel", "source": "php-shop"}
    first = requests.post(
        server.url + "/v1/cancellations", json=body, headers=auth(keys["enqueue"]), timeout=10
    )
    assert first.status_code == 201, first.text
    job = first.json()
    assert (job["status"], job["lane"], job["created"]) == ("queued", "live", True)
    second = requests.post(
        server.url + "/v1/cancellations", json=body, headers=auth(keys["enqueue"]), timeout=10
    )
    assert (
        second.status_code == 200
        and second.json()["id"] == job["id"]
        and second.json()["created"] is False
    )
    shown = requests.get(
        f"{server.url}/v1/jobs/{job['id']}", headers=auth(keys["read"]), timeout=10
    )
    assert (
        shown.status_code == 200
        and shown.json()["calls"] == []
        and shown.json()["order_uuid"] == "ODR100000001"
    )
    # The 201 answer is the job as written, not read back: the same as reading it.
    del job["created"]
    assert job == {name: shown.json()[name] for name in job}
    assert statuses(sessions) == {"ODR100000001": "queued"}


def test_every_refusal_answers_json_with_its_status(
    server: Any, keys: dict[str, str], env: dict[str, str], sessions: Any
) -> None:
    """401 (none, unknown, revoked), 403 (each scope), 404, 405, 413, 415, 422: one JSON shape, nothing written."""
    url = server.url
    cases: list[tuple[int, str, str, dict[str, str], Any]] = [
        (401, "GET", "/v1/jobs", {}, None),
        (401, "GET", "/v1/jobs", auth("fpk_" + "Z" * 43), None),
        (403, "POST", "/v1/cancellations", auth(keys["read"]), {"order_uuid": "ODR1", "note": "n"}),
        (403, "POST", "/v1/cancellations/bulk", auth(keys["read"]), {"rows": []}),
        (403, "GET", "/v1/jobs", auth(keys["enqueue"]), None),
        (403, "GET", "/v1/stats", auth(keys["enqueue"]), None),
        (403, "GET", "/v1/events", auth(keys["enqueue"]), None),
        (403, "POST", "/v1/jobs/1/retry", auth(keys["read"]), None),
        (403, "POST", "/v1/jobs/1/retry", auth(keys["enqueue"]), None),
        (404, "GET", "/v1/jobs/424242", auth(keys["read"]), None),
        (404, "GET", "/v1/no-such-thing", auth(keys["read"]), None),
        (405, "PUT", "/v1/cancellations", auth(keys["enqueue"]), None),
        (
            422,
            "POST",
            "/v1/cancellations",
            auth(keys["enqueue"]),
            {"order_uuid": "ODR 1", "note": ""},
        ),
        (422, "GET", "/v1/jobs/92233720368547758070", auth(keys["read"]), None),
        (
            413,
            "POST",
            "/v1/cancellations",
            auth(keys["enqueue"]),
            {"order_uuid": "ODR1", "note": "x" * 70_000},
        ),
    ]
    for status, method, path, headers, body in cases:
        answer = requests.request(method, url + path, json=body, headers=headers, timeout=10)
        assert answer.status_code == status, (method, path, answer.text)
        assert error_shape(answer), (method, path, answer.text)
    bad = requests.post(
        url + "/v1/cancellations",
        json={"order_uuid": "ODR 1", "note": ""},
        headers=auth(keys["enqueue"]),
        timeout=10,
    )
    assert {d["field"] for d in bad.json()["details"]} == {"order_uuid", "note"}
    typed = requests.post(
        url + "/v1/cancellations/bulk",
        data=b"x",
        headers={**auth(keys["enqueue"]), "Content-Type": "text/plain"},
        timeout=10,
    )
    assert typed.status_code == 415 and error_shape(typed)

    listed = json.loads(cli(env, "keys", "list", "--json").stdout)
    read_id = next(k["id"] for k in listed if k["name"] == "read-shop")
    assert cli(env, "keys", "revoke", str(read_id)).returncode == 0
    time.sleep(1.1)  # a live key is believed for a second (KEY_CACHE_SECONDS)
    revoked = requests.get(url + "/v1/jobs", headers=auth(keys["read"]), timeout=10)
    assert revoked.status_code == 401 and error_shape(revoked)
    assert statuses(sessions) == {}


def test_a_big_csv_streams_in_and_is_all_or_nothing(
    server: Any, keys: dict[str, str], sessions: Any
) -> None:
    """20,000 lines with two bad ones: 422 naming lines 5,003 and 20,001, nothing written; fixed, every job is made."""
    lines = ["order_uuid,note"] + [f"ODR{200000000 + i},Out of stock" for i in range(20_000)]
    lines[5002] = "ODR/../x,Out of stock"
    lines[20_000] = "ODR220000000,"
    headers = {**auth(keys["enqueue"]), "Content-Type": "text/csv"}

    def chunks(text: str) -> Any:
        data = text.encode()
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    bad = requests.post(
        server.url + "/v1/cancellations/bulk?source=stockout",
        data=chunks("\n".join(lines) + "\n"),
        headers=headers,
        timeout=60,
    )
    assert bad.status_code == 422, bad.text
    assert bad.json()["count"] == 2
    assert [d["line"] for d in bad.json()["details"]] == [5003, 20001]
    assert statuses(sessions) == {}
    lines[5002] = "ODR205002000,Out of stock"
    lines[20_000] = "ODR220000000,Last one"
    good = requests.post(
        server.url + "/v1/cancellations/bulk?source=stockout",
        data=chunks("\n".join(lines) + "\n"),
        headers=headers,
        timeout=60,
    )
    assert good.status_code == 200, good.text
    assert good.json()["created"] == 20_000
    rows = {
        "rows": [
            {"order_uuid": "ODR200000001", "note": "again"},
            {"order_uuid": "ODR300000001", "note": "new"},
        ]
    }
    again = requests.post(
        server.url + "/v1/cancellations/bulk", json=rows, headers=auth(keys["enqueue"]), timeout=30
    )
    assert again.json() == {"created": 1, "already_active": 1, "invalid": 0, "duplicates": 0}


def test_a_dead_job_is_retried_over_the_api_and_the_dashboard_refuses_without_csrf(
    server: Any,
    keys: dict[str, str],
    env: dict[str, str],
    sandbox: SandboxServer,
    sessions: Any,
    start_worker: Any,
) -> None:
    """The worker kills a job against 510s; a dashboard POST without its CSRF token changes
    nothing (403); the API's retry queues it (200), again is 409; a note with <script> is escaped."""
    sandbox.set_order("ODR400000001", script=["510"] * 50)
    made = requests.post(
        server.url + "/v1/cancellations",
        json={"order_uuid": "ODR400000001", "note": HOSTILE},
        headers=auth(keys["enqueue"]),
        timeout=10,
    )
    job_id = made.json()["id"]
    worker = start_worker(env)
    wait_until(lambda: all_terminal(sessions), 60, "the job to die")
    worker.stop()
    assert statuses(sessions) == {"ODR400000001": "dead"}

    browser = signed_in(server.url, keys["ops"])
    page = browser.get(f"{server.url}/jobs/{job_id}")
    assert page.status_code == 200
    assert (
        "<script>alert" not in page.text
        and "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in page.text
    )
    refused = browser.post(f"{server.url}/jobs/{job_id}/retry", data={}, allow_redirects=False)
    assert refused.status_code == 403 and "CSRF" in refused.text
    assert statuses(sessions) == {"ODR400000001": "dead"}
    cross_site = requests.post(
        f"{server.url}/jobs/{job_id}/retry",
        data={"csrf_token": "x"},
        allow_redirects=False,
        timeout=10,
    )
    assert (
        cross_site.status_code == 303 and "/signin" in cross_site.headers["location"]
    )  # no cookie, no session

    done = requests.post(
        f"{server.url}/v1/jobs/{job_id}/retry", headers=auth(keys["ops"]), timeout=10
    )
    assert done.status_code == 200 and done.json()["status"] == "queued"
    again = requests.post(
        f"{server.url}/v1/jobs/{job_id}/retry", headers=auth(keys["ops"]), timeout=10
    )
    assert again.status_code == 409 and error_shape(again)
    events = requests.get(server.url + "/v1/events", headers=auth(keys["read"]), timeout=10).json()
    assert [(e["data"]["job_id"], e["data"]["status"]) for e in events] == [(job_id, "dead")]


def test_the_log_names_each_request_by_its_keys_name_never_the_key(
    server: Any, keys: dict[str, str]
) -> None:
    requests.get(server.url + "/v1/jobs", headers=auth(keys["read"]), timeout=10)
    requests.get(server.url + "/v1/stats", headers=auth(keys["enqueue"]), timeout=10)
    wait_until(lambda: "GET /v1/stats 403" in server.log(), 5, "the log line")
    log = server.log()
    assert re.search(r"GET /v1/jobs 200 [\d.]+ms key=read-shop", log), log
    assert re.search(r"GET /v1/stats 403 [\d.]+ms key=enqueue-shop", log), log
    for key in keys.values():
        assert key not in log and key[12:] not in log


def test_healthz_is_200_with_its_services_and_503_without_the_broker(
    server: Any, env: dict[str, str], start_server: Any
) -> None:
    assert requests.get(server.url + "/healthz", timeout=10).json() == {
        "status": "ok",
        "database": "ok",
        "broker": "ok",
    }
    away = start_server({**env, "FPCANCEL_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    answer = requests.get(away.url + "/healthz", timeout=10)
    assert (
        answer.status_code == 503
        and answer.json()["broker"] == "unreachable"
        and error_shape(answer)
    )


def test_openapi_and_the_dashboards_assets_come_from_fpcancel(
    server: Any, keys: dict[str, str]
) -> None:
    doc = requests.get(server.url + "/openapi.json", timeout=10).json()
    assert "/v1/cancellations" in doc["paths"] and "bearer" in doc["components"]["securitySchemes"]
    browser = signed_in(server.url, keys["ops"])
    page = browser.get(server.url + "/")
    assert page.status_code == 200
    assert re.findall(r'(?:href|src)="([^"]+)"', page.text) and all(
        link.startswith("/") for link in re.findall(r'(?:href|src)="([^"]+)"', page.text)
    )
    assert browser.get(server.url + "/static/fpcancel.css").status_code == 200
    assert (
        requests.get(server.url + "/docs", timeout=10).status_code == 404
    )  # Swagger would load a CDN


def test_the_overview_shows_the_fleets_pause_and_why(
    server: Any, keys: dict[str, str], broker_url: str
) -> None:
    """A setup pause set the way workers set it (the limiter in Redis) shows with its reason."""
    from redis import Redis

    from fpcancel.ratelimit import RedisLimiter
    from fpcancel.settings import RateLimit
    from fpcancel.statuses import PauseReason

    browser = signed_in(server.url, keys["ops"])
    assert "Running: no pause in force" in browser.get(server.url + "/").text
    limiter = RedisLimiter(Redis.from_url(broker_url), RateLimit(1000, 1))
    limiter.note_failure(PauseReason.UNAUTHORIZED)
    limiter.pause(PauseReason.UNAUTHORIZED, 30)
    page = browser.get(server.url + "/").text
    assert "Paused for" in page and "refused the token" in page and "(unauthorized)" in page
    limiter.pause(PauseReason.RATE_LIMITED, 20)
    assert "the provider's rate limit (429" in browser.get(server.url + "/").text
