"""The dashboard as ops meet it (TestClient, SQLite, the memory broker): sign-in with an ops key,
cookie flags, CSRF on every form, the CSP, escaping, the pages and their confirmations."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fpcancel.app import make_celery
from fpcancel.events import JOB_COLUMNS, finished_payload
from fpcancel.migrate import upgrade
from fpcancel.models.db import make_engine, make_session_factory, utcnow
from fpcancel.models.tables import ApiKey, CancelAttempt, CancelEvent, CancelJob, WebhookDelivery
from fpcancel.producer import Producer
from fpcancel.ratelimit import ActivePause
from fpcancel.settings import Settings
from fpcancel.web.app import create_app
from fpcancel.web.keys import revoke_key
from fpcancel.web.services import WebServices
from tests.web_helpers import add_job, csrf_of, make_keys

HOSTILE = '<script>alert("x")</script>'


class Pauses:
    def __init__(self) -> None:
        self.now: list[ActivePause] = []

    def active_pauses(self) -> list[ActivePause]:
        return self.now


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'web.db'}")
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def pauses() -> Pauses:
    return Pauses()


@pytest.fixture
def app_client(
    sessions: sessionmaker[Session], tmp_path: Path, pauses: Pauses
) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'web.db'}", broker_url="memory://")
    services = WebServices(
        settings=settings,
        sessions=sessions,
        producer=Producer(sessions, make_celery(settings)),
        broker_ok=lambda: True,
        pauses=pauses,
    )
    with TestClient(
        create_app(services), raise_server_exceptions=False, follow_redirects=False
    ) as c:
        yield c


@pytest.fixture
def keys(sessions: sessionmaker[Session]) -> dict[str, str]:
    return make_keys(sessions)


def sign_in(client: TestClient, key: str) -> Any:
    page = client.get("/signin")
    return client.post(
        "/signin", data={"key": key, "csrf_token": csrf_of(page.text), "next": "/jobs"}
    )


@pytest.fixture
def ops(app_client: TestClient, keys: dict[str, str]) -> TestClient:
    assert sign_in(app_client, keys["ops"]).status_code == 303
    return app_client


def status_of(sessions: sessionmaker[Session], job_id: int) -> str:
    with sessions() as s:
        return str(s.execute(select(CancelJob.status).where(CancelJob.id == job_id)).scalar_one())


def test_pages_without_a_session_send_the_browser_to_sign_in(app_client: TestClient) -> None:
    for path in ("/", "/jobs?status=dead", "/jobs/1", "/upload", "/events", "/retry"):
        answer = app_client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/signin?next=")


def test_signing_in_with_an_ops_key_sets_a_strict_httponly_cookie(
    app_client: TestClient, keys: dict[str, str]
) -> None:
    answer = sign_in(app_client, keys["ops"])
    assert answer.status_code == 303 and answer.headers["location"] == "/jobs"
    cookie = next(
        v
        for k, v in answer.headers.multi_items()
        if k == "set-cookie" and v.startswith("fpcancel_session=")
    )
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert keys["ops"] not in cookie
    assert app_client.get("/jobs").status_code == 200


@pytest.mark.parametrize("scope, status", [("read", 403), ("enqueue", 403)])
def test_a_key_without_ops_cannot_sign_in(
    app_client: TestClient, keys: dict[str, str], scope: str, status: int
) -> None:
    answer = sign_in(app_client, keys[scope])
    assert answer.status_code == status
    assert "needs an ops key" in answer.text
    assert "fpcancel_session" not in answer.headers.get("set-cookie", "")


def test_a_wrong_key_is_401_on_the_sign_in_page(app_client: TestClient) -> None:
    answer = sign_in(app_client, "fpk_" + "x" * 43)
    assert answer.status_code == 401 and "unknown or revoked" in answer.text


def test_sign_in_without_the_forms_csrf_token_is_refused(
    app_client: TestClient, keys: dict[str, str]
) -> None:
    app_client.get("/signin")
    answer = app_client.post("/signin", data={"key": keys["ops"]}, headers={"Accept": "text/html"})
    assert answer.status_code == 403
    assert "CSRF" in answer.text and "fpcancel_session" not in answer.headers.get("set-cookie", "")


def test_a_forged_or_stale_session_cookie_is_not_a_session(
    app_client: TestClient, keys: dict[str, str], sessions: Any
) -> None:
    app_client.cookies.set("fpcancel_session", "1.99999999999.abc.forged")
    assert app_client.get("/").status_code == 303
    assert sign_in(app_client, keys["ops"]).status_code == 303
    assert app_client.get("/").status_code == 200
    with sessions() as s:
        key_id = s.execute(select(ApiKey.id).where(ApiKey.name == "ops-client")).scalar_one()
    revoke_key(sessions, key_id, utcnow())
    assert app_client.get("/").status_code == 303  # revoking the key ends its sessions


def test_every_page_has_a_csp_without_inline_scripts_and_no_script_at_all(
    ops: TestClient, sessions: Any
) -> None:
    job_id = add_job(sessions, "ODR1", "dead")
    for path in (
        "/",
        "/jobs",
        f"/jobs/{job_id}",
        f"/jobs/{job_id}/retry",
        "/retry?status=dead",
        "/upload",
        "/events",
        "/signin",
    ):
        answer = ops.get(path)
        assert answer.status_code == 200, (path, answer.text[:300])
        csp = answer.headers["content-security-policy"]
        assert (
            "unsafe-inline" not in csp and "default-src 'none'" in csp and "script-src" not in csp
        )
        assert "<script" not in answer.text.lower()
        assert "http://" not in answer.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "https://" not in answer.text
        assert answer.headers["x-frame-options"] == "DENY"


def test_every_post_form_carries_the_csrf_token(ops: TestClient, sessions: Any) -> None:
    job_id = add_job(sessions, "ODR1", "dead")
    for path in ("/", f"/jobs/{job_id}/retry", "/retry?status=dead", "/upload"):
        html = ops.get(path).text
        forms = re.findall(r"<form[^>]*method=\"post\".*?</form>", html, re.S)
        assert forms, path
        assert all('name="csrf_token"' in form for form in forms), path


def test_a_retry_without_the_csrf_token_is_refused_and_changes_nothing(
    ops: TestClient, sessions: Any
) -> None:
    job_id = add_job(sessions, "ODR1", "dead")
    for data in ({}, {"csrf_token": "wrong"}):
        answer = ops.post(f"/jobs/{job_id}/retry", data=data)
        assert answer.status_code == 403
        assert answer.json()["details"] == [{"field": "csrf_token", "reason": "missing or wrong"}]
    assert status_of(sessions, job_id) == "dead"
    assert ops.post("/retry", data={"status": "dead"}).status_code == 403
    assert ops.post("/signout", data={}).status_code == 403
    assert status_of(sessions, job_id) == "dead"


def test_retry_from_the_job_page_confirms_then_queues(ops: TestClient, sessions: Any) -> None:
    job_id = add_job(sessions, "ODR1", "dead")
    page = ops.get(f"/jobs/{job_id}")
    assert f'href="/jobs/{job_id}/retry"' in page.text
    confirm = ops.get(f"/jobs/{job_id}/retry")
    assert "Yes, send it round again" in confirm.text and status_of(sessions, job_id) == "dead"
    done = ops.post(f"/jobs/{job_id}/retry", data={"csrf_token": csrf_of(confirm.text)})
    assert done.status_code == 303 and done.headers["location"] == f"/jobs/{job_id}?done=retried"
    assert status_of(sessions, job_id) == "queued"
    after = ops.get(done.headers["location"])
    assert "Sent round again" in after.text and "st-queued" in after.text
    assert "Retry this job" not in after.text


def test_a_retry_of_a_job_that_is_not_dead_says_why(ops: TestClient, sessions: Any) -> None:
    job_id = add_job(sessions, "ODR1", "succeeded")
    confirm = ops.get(f"/jobs/{job_id}/retry")
    assert confirm.status_code == 409 and "Only dead or failed" in confirm.text
    answer = ops.post(f"/jobs/{job_id}/retry", data={"csrf_token": csrf_of(ops.get("/").text)})
    assert answer.status_code == 409 and "only dead or failed" in answer.text


def test_bulk_retry_by_filter_counts_confirms_and_sends(ops: TestClient, sessions: Any) -> None:
    dead = [add_job(sessions, f"ODR{i}", "dead", source="stock") for i in range(3)]
    other = add_job(sessions, "ODR9", "dead", source="shop")
    confirm = ops.get("/retry?status=dead&source=stock")
    assert "<strong>3</strong> jobs match" in confirm.text
    assert all(status_of(sessions, j) == "dead" for j in dead)
    done = ops.post(
        "/retry",
        data={
            "status": "dead",
            "source": "stock",
            "since": "",
            "csrf_token": csrf_of(confirm.text),
        },
    )
    assert done.status_code == 200 and "Sent 3 jobs round again" in done.text
    assert [status_of(sessions, j) for j in dead] == ["queued"] * 3
    assert status_of(sessions, other) == "dead"


def test_a_note_and_provider_text_with_script_are_shown_escaped(
    ops: TestClient, sessions: Any
) -> None:
    job_id = add_job(sessions, "ODR1", "failed", note=HOSTILE, last_message=HOSTILE, source="shop")
    now = utcnow()
    with sessions.begin() as s:
        s.add(
            CancelAttempt(
                job_id=job_id,
                number=1,
                kind="cancel",
                started_at=now,
                finished_at=now,
                duration_ms=80,
                http_status=422,
                outcome="failed",
                message=HOSTILE,
                response_body='{"message": "' + HOSTILE + '"}',
                counted=True,
            )
        )
        job = s.get(CancelJob, job_id)
        assert job is not None
        event = CancelEvent(job_id=job_id, type="cancel_job.finished", created_at=now, payload={})
        s.add(event)
        s.flush()
        event.payload = finished_payload(
            event.id,
            now,
            {c: getattr(job, c) for c in JOB_COLUMNS},
        )
        s.add(
            WebhookDelivery(
                event_id=event.id,
                attempt=1,
                started_at=now,
                duration_ms=12,
                http_status=500,
                error=HOSTILE,
            )
        )
    for path in (f"/jobs/{job_id}", "/jobs", "/events"):
        html = ops.get(path).text
        assert "<script>" not in html, path
    html = ops.get(f"/jobs/{job_id}").text
    assert "&lt;script&gt;alert(" in html
    assert (
        html.count("&lt;script&gt;") >= 5
    )  # note, last message, call message, body, delivery error


def test_the_jobs_table_filters_and_pages_by_key(ops: TestClient, sessions: Any) -> None:
    ids = [add_job(sessions, f"ODR{i:03d}", "dead" if i % 2 else "succeeded") for i in range(60)]
    page = ops.get("/jobs?status=dead&limit=25")
    shown = [int(i) for i in re.findall(r'<td><a href="/jobs/(\d+)">', page.text)]
    assert shown == sorted([i for n, i in enumerate(ids) if n % 2], reverse=True)[:25]
    older = re.search(r'href="/jobs\?([^"]+)">Older', page.text)
    assert older and f"before={shown[-1]}" in older.group(1)
    second = ops.get("/jobs?" + older.group(1).replace("&amp;", "&"))
    shown2 = [int(i) for i in re.findall(r'<td><a href="/jobs/(\d+)">', second.text)]
    assert shown2 == sorted([i for n, i in enumerate(ids) if n % 2], reverse=True)[25:30]
    newer = re.search(r'href="/jobs\?([^"]+)">‹ Newer', second.text)
    assert newer
    back = ops.get("/jobs?" + newer.group(1).replace("&amp;", "&"))
    assert [int(i) for i in re.findall(r'<td><a href="/jobs/(\d+)">', back.text)] == shown
    assert 'href="/retry?status=dead"' in page.text


def test_a_bad_filter_is_named_on_the_page(ops: TestClient) -> None:
    answer = ops.get("/jobs?order=ODR%201&since=yesterday")
    assert answer.status_code == 422
    assert "order: " in answer.text and "since: not an ISO 8601 time" in answer.text


def test_the_upload_is_all_or_nothing_and_names_the_bad_lines(
    ops: TestClient, sessions: Any
) -> None:
    token = csrf_of(ops.get("/upload").text)
    bad = b"order_uuid,note\nODR1,Out of stock\nODR<2>,Out of stock\nODR3,\n"
    answer = ops.post(
        "/upload",
        data={"csrf_token": token, "note": "", "source": "ops", "lane": "bulk"},
        files={"file": ("stock.csv", bad, "text/csv")},
    )
    assert answer.status_code == 422
    assert (
        "line 3" in answer.text
        and "line 4" in answer.text
        and "nothing was enqueued" in answer.text
    )
    assert "ODR&lt;2&gt;" in answer.text
    with sessions() as s:
        assert s.execute(select(CancelJob.id)).first() is None
    good = ops.post(
        "/upload",
        data={"csrf_token": token, "note": "Out of stock", "source": "ops", "lane": "bulk"},
        files={"file": ("stock.csv", bad.replace(b"ODR<2>", b"ODR2"), "text/csv")},
    )
    assert good.status_code == 200 and "created 3" in good.text
    no_token = ops.post(
        "/upload", data={}, files={"file": ("s.csv", b"order_uuid\nODR7\n", "text/csv")}
    )
    assert no_token.status_code == 403


def test_the_overview_shows_counts_charts_and_the_pause(
    ops: TestClient, sessions: Any, pauses: Pauses
) -> None:
    job_id = add_job(sessions, "ODR1", "succeeded")
    now = utcnow()
    with sessions.begin() as s:
        for n in range(1, 4):
            s.add(
                CancelAttempt(
                    job_id=job_id,
                    number=n,
                    kind="cancel",
                    started_at=now,
                    finished_at=now,
                    duration_ms=100 * n,
                    http_status=202,
                    outcome="succeeded",
                    counted=True,
                )
            )
    page = ops.get("/").text
    assert page.count("<svg") == 3
    assert 'href="/jobs?status=succeeded">1<' in page
    assert "rate limit 240/min" in page
    assert "Running: no pause" in page
    assert "p50 200 ms" in page
    pauses.now = [ActivePause("setup", 12.5, ("unauthorized",))]
    paused = ops.get("/").text
    assert "Paused for 12.5 s" in paused and "refused the token" in paused


def test_events_page_lists_events_with_their_delivery(ops: TestClient, sessions: Any) -> None:
    job_id = add_job(sessions, "ODR1", "dead")
    with sessions.begin() as s:
        s.add(
            CancelEvent(
                job_id=job_id,
                type="cancel_job.finished",
                created_at=utcnow(),
                payload={"data": {"status": "dead", "order_uuid": "ODR1"}},
                delivery="failed",
                delivery_attempts=12,
            )
        )
    html = ops.get("/events").text
    assert "dl-failed" in html and f'href="/jobs/{job_id}"' in html and "ODR1" in html


def test_sign_out_ends_the_session(ops: TestClient) -> None:
    token = csrf_of(ops.get("/").text)
    answer = ops.post("/signout", data={"csrf_token": token})
    assert answer.status_code == 303
    assert (
        'fpcancel_session=""' in answer.headers["set-cookie"]
        or "Max-Age=0" in answer.headers["set-cookie"]
    )
    assert ops.get("/").status_code == 303


def test_a_browser_gets_errors_as_a_page_and_curl_as_json(ops: TestClient) -> None:
    page = ops.get("/nowhere", headers={"Accept": "text/html"})
    assert page.status_code == 404 and "<h1>404</h1>" in page.text
    data = ops.get("/nowhere")
    assert data.status_code == 404 and data.json()["error"] == "no such path: /nowhere"


def test_sign_in_goes_back_only_to_a_path_on_this_site(
    app_client: TestClient, keys: dict[str, str]
) -> None:
    page = app_client.get("/signin")
    answer = app_client.post(
        "/signin",
        data={"key": keys["ops"], "csrf_token": csrf_of(page.text), "next": "//evil.example/x"},
    )
    assert answer.headers["location"] == "/"
