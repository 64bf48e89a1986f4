"""The HTTP API as a shop meets it (TestClient, SQLite, the memory broker): every status code,
scope refusals, dedup, bulk all or nothing, size limits and one JSON error shape."""

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from fpcancel.app import make_celery
from fpcancel.migrate import upgrade
from fpcancel.models.db import make_engine, make_session_factory, utcnow
from fpcancel.models.tables import ApiKey, CancelJob
from fpcancel.producer import Producer
from fpcancel.settings import Settings
from fpcancel.web import middleware
from fpcancel.web.app import create_app
from fpcancel.web.keys import revoke_key
from fpcancel.web.services import WebServices
from tests.web_helpers import add_job, bearer, make_keys


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'web.db'}")
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def services(sessions: sessionmaker[Session], tmp_path: Path) -> WebServices:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'web.db'}", broker_url="memory://")
    return WebServices(
        settings=settings,
        sessions=sessions,
        producer=Producer(sessions, make_celery(settings)),
        broker_ok=lambda: True,
        pauses=None,
    )


@pytest.fixture
def client(services: WebServices) -> Iterator[TestClient]:
    with TestClient(create_app(services), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def keys(sessions: sessionmaker[Session]) -> dict[str, str]:
    return make_keys(sessions)


def jobs_in_table(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(s.execute(select(func.count()).select_from(CancelJob)).scalar_one())


def is_error_shape(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and isinstance(body.get("error"), str)
        and isinstance(body.get("details"), list)
    )


ORDER = {"order_uuid": "ODR123456789", "note": "Customer asked to cancel", "source": "php-shop"}


def test_a_new_order_is_201_and_the_same_order_again_is_200_with_the_same_job(
    client: TestClient, keys: dict[str, str]
) -> None:
    """Dedup: the second POST of an active order returns the existing job, not a new one."""
    first = client.post("/v1/cancellations", json=ORDER, headers=bearer(keys["enqueue"]))
    assert first.status_code == 201, first.text
    job = first.json()
    assert (job["order_uuid"], job["status"], job["lane"], job["source"], job["created"]) == (
        "ODR123456789",
        "queued",
        "live",
        "php-shop",
        True,
    )
    assert {"id", "note", "attempts", "created_at", "finished_at"} <= job.keys()
    # The answer is the job as written (not read back): the same as reading it.
    shown = client.get(f"/v1/jobs/{job['id']}", headers=bearer(keys["read"])).json()
    del job["created"]
    assert job == {name: shown[name] for name in job}
    again = client.post("/v1/cancellations", json=ORDER, headers=bearer(keys["enqueue"]))
    assert again.status_code == 200
    assert again.json()["id"] == job["id"] and again.json()["created"] is False


def test_bad_fields_are_422_naming_every_one_and_nothing_is_written(
    client: TestClient, keys: dict[str, str], sessions: Any
) -> None:
    """A bad order id, an empty note and an unknown lane in one request: all three named."""
    answer = client.post(
        "/v1/cancellations",
        json={"order_uuid": "../etc/passwd", "note": "   ", "lane": "fast"},
        headers=bearer(keys["enqueue"]),
    )
    assert answer.status_code == 422
    body = answer.json()
    assert is_error_shape(body)
    assert {d["field"] for d in body["details"]} == {"order_uuid", "note", "lane"}
    assert jobs_in_table(sessions) == 0


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"note": "n"}, "order_uuid"),
        ({"order_uuid": 12345, "note": "n"}, "order_uuid"),
        ({"order_uuid": "ODR1", "note": "n", "nte": "typo"}, "nte"),
        ({"order_uuid": "ODR1", "note": "x" * 1001}, "note"),
        ({"order_uuid": "ODR1", "note": "n", "source": "bad source!"}, "source"),
        ([1, 2], "body"),
    ],
)
def test_each_kind_of_bad_body_names_its_field(
    client: TestClient, keys: dict[str, str], payload: Any, field: str
) -> None:
    """Missing, wrongly typed, unknown, too long: 422 with the field named in our shape."""
    answer = client.post("/v1/cancellations", json=payload, headers=bearer(keys["enqueue"]))
    assert answer.status_code == 422
    assert is_error_shape(answer.json())
    assert field in [d["field"] for d in answer.json()["details"]]


def test_a_body_that_is_not_json_is_422(client: TestClient, keys: dict[str, str]) -> None:
    answer = client.post(
        "/v1/cancellations",
        content=b"{not json",
        headers={**bearer(keys["enqueue"]), "Content-Type": "application/json"},
    )
    assert answer.status_code == 422
    assert answer.json()["details"][0]["reason"] == "is not valid JSON"


@pytest.mark.parametrize(
    "headers, reason",
    [
        ({}, "no API key"),
        ({"Authorization": "Basic b3BzOnB3"}, "must be Bearer"),
        ({"Authorization": "Bearer fpk_" + "A" * 43}, "unknown or revoked"),
        ({"Authorization": "Bearer not-even-a-key"}, "unknown or revoked"),
    ],
)
def test_no_key_or_an_unknown_key_is_401(
    client: TestClient, headers: dict[str, str], reason: str
) -> None:
    answer = client.get("/v1/jobs", headers=headers)
    assert answer.status_code == 401
    assert reason in answer.json()["error"]
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_a_revoked_key_is_401(client: TestClient, keys: dict[str, str], sessions: Any) -> None:
    assert client.get("/v1/jobs", headers=bearer(keys["read"])).status_code == 200
    with sessions() as s:
        key_id = s.execute(select(ApiKey.id).where(ApiKey.name == "read-client")).scalar_one()
    revoke_key(sessions, key_id, utcnow())
    import time

    time.sleep(1.05)  # a live key is believed for a second
    assert client.get("/v1/jobs", headers=bearer(keys["read"])).status_code == 401


@pytest.mark.parametrize(
    "scope, method, path, body",
    [
        ("read", "POST", "/v1/cancellations", ORDER),
        ("read", "POST", "/v1/cancellations/bulk", {"rows": []}),
        ("enqueue", "GET", "/v1/jobs", None),
        ("enqueue", "GET", "/v1/jobs/1", None),
        ("enqueue", "GET", "/v1/stats", None),
        ("enqueue", "GET", "/v1/events", None),
        ("read", "POST", "/v1/jobs/1/retry", None),
        ("enqueue", "POST", "/v1/jobs/1/retry", None),
    ],
)
def test_a_key_without_the_scope_is_403_and_changes_nothing(
    client: TestClient,
    keys: dict[str, str],
    sessions: Any,
    scope: str,
    method: str,
    path: str,
    body: Any,
) -> None:
    """enqueue cannot read, read cannot enqueue, neither can retry."""
    add_job(sessions, "ODR900", "dead")
    answer = client.request(method, path, json=body, headers=bearer(keys[scope]))
    assert answer.status_code == 403, answer.text
    assert is_error_shape(answer.json()) and scope in answer.json()["error"]
    with sessions() as s:
        assert s.execute(select(CancelJob.status)).scalars().all() == ["dead"]


def test_an_ops_key_may_do_everything(client: TestClient, keys: dict[str, str]) -> None:
    ops = bearer(keys["ops"])
    assert client.post("/v1/cancellations", json=ORDER, headers=ops).status_code == 201
    assert client.get("/v1/jobs", headers=ops).status_code == 200
    assert client.get("/v1/stats", headers=ops).status_code == 200


def test_the_csv_bulk_is_all_or_nothing_and_names_the_bad_lines(
    client: TestClient, keys: dict[str, str], sessions: Any
) -> None:
    """Line 3 has a bad id, line 5 no note: 422 naming both, no job; fixed, all are created."""
    bad = "order_uuid,note\nODR1,Out of stock\nODR 2,Out of stock\nODR3,\nODR4,\n"
    answer = client.post(
        "/v1/cancellations/bulk",
        content=bad.encode(),
        headers={**bearer(keys["enqueue"]), "Content-Type": "text/csv"},
    )
    assert answer.status_code == 422
    body = answer.json()
    assert body["count"] == 3
    assert [d["line"] for d in body["details"]] == [3, 4, 5]
    assert "order_uuid" in body["details"][0]["reason"]
    assert jobs_in_table(sessions) == 0

    good = client.post(
        "/v1/cancellations/bulk?note=Out+of+stock&source=stockout",
        content=bad.replace("ODR 2", "ODR2").encode(),
        headers={**bearer(keys["enqueue"]), "Content-Type": "text/csv; charset=utf-8"},
    )
    assert good.status_code == 200, good.text
    assert good.json() == {"created": 4, "already_active": 0, "invalid": 0, "duplicates": 0}
    with sessions() as s:
        assert set(s.execute(select(CancelJob.source, CancelJob.lane)).all()) == {
            ("stockout", "bulk")
        }


def test_the_json_bulk_is_all_or_nothing_and_counts_active_orders(
    client: TestClient, keys: dict[str, str], sessions: Any
) -> None:
    headers = bearer(keys["enqueue"])
    rows = [{"order_uuid": "ODR1", "note": "n"}, {"order_uuid": "ODR2", "note": ""}, "ODR3"]
    answer = client.post("/v1/cancellations/bulk", json={"rows": rows}, headers=headers)
    assert answer.status_code == 422
    assert [d["row"] for d in answer.json()["details"]] == [2, 3]
    assert jobs_in_table(sessions) == 0
    add_job(sessions, "ODR1", "queued")
    ok = client.post(
        "/v1/cancellations/bulk",
        json={
            "rows": [*rows[:1], {"order_uuid": "ODR2", "note": "n"}],
            "source": "s1",
            "lane": "live",
        },
        headers=headers,
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["created"] == 1 and ok.json()["already_active"] == 1


@pytest.mark.parametrize(
    "body, field",
    [
        ({"rows": "ODR1"}, "rows"),
        ({"rows": [], "lane": "x"}, "lane"),
        ({"rows": [], "colour": 1}, "colour"),
    ],
)
def test_a_bad_json_bulk_envelope_is_422_naming_the_field(
    client: TestClient, keys: dict[str, str], body: Any, field: str
) -> None:
    answer = client.post("/v1/cancellations/bulk", json=body, headers=bearer(keys["enqueue"]))
    assert answer.status_code == 422
    assert field in [d["field"] for d in answer.json()["details"]]


def test_a_bulk_in_another_content_type_is_415(client: TestClient, keys: dict[str, str]) -> None:
    answer = client.post(
        "/v1/cancellations/bulk",
        content=b"x",
        headers={**bearer(keys["enqueue"]), "Content-Type": "text/plain"},
    )
    assert answer.status_code == 415 and is_error_shape(answer.json())


def test_a_body_over_the_limit_is_413_by_length_or_while_streaming(
    client: TestClient, keys: dict[str, str], sessions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 KiB for one cancellation; the bulk limit is checked on chunked bodies as they arrive."""
    big = {**ORDER, "note": "x" * (70 * 1024)}
    answer = client.post("/v1/cancellations", json=big, headers=bearer(keys["enqueue"]))
    assert answer.status_code == 413 and is_error_shape(answer.json())

    monkeypatch.setattr(middleware, "BULK_MAX_BYTES", 1000)

    def chunks() -> Iterator[bytes]:
        yield b"order_uuid,note\n"
        for i in range(200):
            yield f"ODR{i},Out of stock\n".encode()

    streamed = client.post(
        "/v1/cancellations/bulk",
        content=chunks(),
        headers={**bearer(keys["enqueue"]), "Content-Type": "text/csv"},
    )
    assert streamed.status_code == 413, streamed.text
    assert is_error_shape(streamed.json())
    assert jobs_in_table(sessions) == 0


def test_unknown_paths_and_methods_answer_json(client: TestClient) -> None:
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and is_error_shape(missing.json())
    wrong = client.delete("/v1/cancellations")
    assert wrong.status_code == 405 and is_error_shape(wrong.json())
    assert "POST" in wrong.headers["allow"]


@pytest.mark.parametrize(
    "job_id", ["abc", "0", "-1", "9223372036854775808", "99999999999999999999999", "１"]
)
def test_a_job_id_that_is_no_bigint_is_422_not_500(
    client: TestClient, keys: dict[str, str], job_id: str
) -> None:
    for method, path in (("GET", f"/v1/jobs/{job_id}"), ("POST", f"/v1/jobs/{job_id}/retry")):
        answer = client.request(method, path, headers=bearer(keys["ops"]))
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["details"][0]["field"] == "id"


def test_an_unknown_job_is_404(client: TestClient, keys: dict[str, str]) -> None:
    answer = client.get("/v1/jobs/9223372036854775807", headers=bearer(keys["read"]))
    assert answer.status_code == 404 and "no such job" in answer.json()["error"]


def test_a_job_reads_as_jobs_show(client: TestClient, keys: dict[str, str], sessions: Any) -> None:
    job_id = add_job(sessions, "ODR77", "dead")
    answer = client.get(f"/v1/jobs/{job_id}", headers=bearer(keys["read"]))
    assert answer.status_code == 200
    assert answer.json()["status"] == "dead" and answer.json()["calls"] == []


def test_retry_sends_a_dead_job_round_again_and_refuses_the_rest(
    client: TestClient, keys: dict[str, str], sessions: Any
) -> None:
    """dead → 200 queued; again → 409 (queued now); unknown → 404."""
    job_id = add_job(sessions, "ODR55", "dead")
    ops = bearer(keys["ops"])
    done = client.post(f"/v1/jobs/{job_id}/retry", headers=ops)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "queued"
    again = client.post(f"/v1/jobs/{job_id}/retry", headers=ops)
    assert again.status_code == 409 and "only dead or failed" in again.json()["error"]
    assert client.post("/v1/jobs/424242/retry", headers=ops).status_code == 404


def test_retry_of_a_job_whose_order_is_active_elsewhere_is_409(
    client: TestClient, keys: dict[str, str], sessions: Any
) -> None:
    dead = add_job(sessions, "ODR56", "dead")
    add_job(sessions, "ODR56", "queued")
    answer = client.post(f"/v1/jobs/{dead}/retry", headers=bearer(keys["ops"]))
    assert answer.status_code == 409 and "already has job" in answer.json()["error"]


def test_jobs_filter_and_page_by_key(
    client: TestClient, keys: dict[str, str], sessions: Any
) -> None:
    """status and source filter as `jobs list`; a full page links to the next by `before`."""
    ids = [
        add_job(sessions, f"ODR{i}", "dead" if i % 2 else "succeeded", source="a") for i in range(7)
    ]
    read = bearer(keys["read"])
    first = client.get("/v1/jobs?status=dead&source=a&limit=2", headers=read)
    assert [j["id"] for j in first.json()] == [ids[5], ids[3]]
    assert 'rel="next"' in first.headers["link"] and f"before={ids[3]}" in first.headers["link"]
    second = client.get(f"/v1/jobs?status=dead&source=a&limit=2&before={ids[3]}", headers=read)
    assert [j["id"] for j in second.json()] == [ids[1]]
    assert "link" not in second.headers
    both = client.get("/v1/jobs?status=dead,succeeded&limit=100", headers=read)
    assert len(both.json()) == 7


@pytest.mark.parametrize(
    "query, field",
    [
        ("status=nope", "status"),
        ("order=ODR%201", "order"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("since=yesterday", "since"),
        ("before=abc", "before"),
    ],
)
def test_bad_job_filters_are_422_naming_them(
    client: TestClient, keys: dict[str, str], query: str, field: str
) -> None:
    answer = client.get(f"/v1/jobs?{query}", headers=bearer(keys["read"]))
    assert answer.status_code == 422
    assert field in [d["field"] for d in answer.json()["details"]]


def test_stats_are_the_cli_object(client: TestClient, keys: dict[str, str], sessions: Any) -> None:
    add_job(sessions, "ODR1", "succeeded")
    stats = client.get("/v1/stats", headers=bearer(keys["read"])).json()
    assert stats["jobs"]["succeeded"] == 1 and stats["success_rate"] == 1.0


def test_an_unexpected_failure_is_500_json_and_logged(
    client: TestClient,
    keys: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fpcancel.web import api

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(api, "collect_stats", broken)
    with caplog.at_level(logging.ERROR, "fpcancel.web"):
        answer = client.get("/v1/stats", headers=bearer(keys["read"]))
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error; it has been logged", "details": []}
    assert "boom" in caplog.text


def test_healthz_needs_no_key_and_says_503_when_the_broker_is_away(
    client: TestClient, services: WebServices
) -> None:
    ok = client.get("/healthz")
    assert ok.status_code == 200 and ok.json()["status"] == "ok"
    services.broker_ok = lambda: False
    down = client.get("/healthz")
    assert down.status_code == 503
    assert down.json()["broker"] == "unreachable" and is_error_shape(down.json())


def test_healthz_says_503_when_the_database_is_away(
    client: TestClient, services: WebServices, tmp_path: Path
) -> None:
    services.sessions = make_session_factory(
        make_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    )
    answer = client.get("/healthz")
    assert answer.status_code == 503 and answer.json()["database"] == "unreachable"


def test_openapi_describes_every_route_and_the_bearer_scheme(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert {
        "/v1/cancellations",
        "/v1/cancellations/bulk",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/retry",
        "/v1/stats",
        "/v1/events",
        "/healthz",
    } <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/v1/jobs"]["get"]["security"] == [{"bearer": []}]
    assert "text/csv" in doc["paths"]["/v1/cancellations/bulk"]["post"]["requestBody"]["content"]
    assert not any(
        p == "/" or p.startswith("/jobs") for p in doc["paths"]
    )  # the dashboard is not API


def test_keys_are_stored_only_as_a_hash(keys: dict[str, str], sessions: Any) -> None:
    with sessions() as s:
        rows = s.execute(text("SELECT * FROM api_keys")).mappings().all()
    dump = json.dumps([dict(r) for r in rows], default=str)
    for key in keys.values():
        assert key not in dump
        assert key[12:20] not in dump  # nothing past the 12-character prefix
        assert hashlib.sha256(key.encode()).hexdigest() in dump


def test_each_request_logs_the_key_name_never_the_key(
    client: TestClient, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "fpcancel.web"):
        client.post("/v1/cancellations", json=ORDER, headers=bearer(keys["enqueue"]))
        client.get("/v1/jobs", headers=bearer(keys["enqueue"]))
    lines = [r.getMessage() for r in caplog.records if r.name == "fpcancel.web"]
    assert any(
        "POST /v1/cancellations 201" in line and "key=enqueue-client" in line for line in lines
    )
    assert any("GET /v1/jobs 403" in line and "key=enqueue-client" in line for line in lines)
    assert keys["enqueue"] not in caplog.text and keys["enqueue"][4:12] not in caplog.text


def test_security_headers_are_on_api_answers_too(client: TestClient) -> None:
    answer = client.get("/healthz")
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_events_are_the_payloads_oldest_first_after_an_id(
    client: TestClient, keys: dict[str, str], sessions: Any
) -> None:
    from fpcancel.models.tables import CancelEvent

    job_id = add_job(sessions, "ODR1", "dead")
    with sessions.begin() as s:
        for n in range(3):
            s.add(
                CancelEvent(
                    job_id=job_id,
                    type="cancel_job.finished",
                    created_at=utcnow(),
                    payload={"id": n + 1, "type": "cancel_job.finished"},
                )
            )
    read = bearer(keys["read"])
    assert [e["id"] for e in client.get("/v1/events", headers=read).json()] == [1, 2, 3]
    assert [e["id"] for e in client.get("/v1/events?after=1&limit=1", headers=read).json()] == [2]
    bad = client.get("/v1/events?after=-1&limit=0", headers=read)
    assert bad.status_code == 422 and {d["field"] for d in bad.json()["details"]} == {
        "after",
        "limit",
    }


def test_the_web_secret_is_checked_never_shown_and_redacted(tmp_path: Path) -> None:
    from fpcancel.errors import SettingsError
    from fpcancel.settings import load_settings

    with pytest.raises(SettingsError, match=r"^FPCANCEL_WEB_SECRET: too short") as caught:
        load_settings(environ={"FPCANCEL_WEB_SECRET": "short-secret"}, dotenv=tmp_path / "none")
    assert "short-secret" not in str(caught.value)
    secret = "s3cr3t-" + "x" * 40
    settings = load_settings(environ={"FPCANCEL_WEB_SECRET": secret}, dotenv=tmp_path / "none")
    assert secret not in repr(settings) and secret not in str(settings)
    assert settings.redactor.text(f"cookie signed with {secret}") == "cookie signed with ***"


def test_without_a_web_secret_each_process_signs_with_a_random_one() -> None:
    from fpcancel.web.services import signing_secret

    first, second = signing_secret(Settings()), signing_secret(Settings())
    assert len(first) == 32 and first != second
