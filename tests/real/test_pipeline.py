"""End to end on real parts: `fpcancel enqueue` → Redis → a `fpcancel worker` process → the
sandbox over HTTP → PostgreSQL, judged by the job table and the calls the sandbox saw."""

import json
from typing import Any

from celery import Celery

from fpcancel.sandbox import SandboxServer
from tests.real.conftest import TOKEN, all_terminal, attempts_of, cli, statuses, wait_until

MIX = {
    "ODR100000001": {"status": "PAID"},
    "ODR100000002": {"status": "MISSING"},
    "ODR100000003": {"script": ["417"]},
    "ODR100000004": {"script": ["510", "510"]},
    "ODR100000005": {"script": ["510"] * 20},
    "ODR100000006": {"script": ["502-html"]},
    "ODR100000007": {"script": ["503:retry-after=1"]},
    "ODR100000008": {},
}
EXPECTED = {
    "ODR100000001": "already_paid",
    "ODR100000002": "not_found",
    "ODR100000003": "invalid_payload",
    "ODR100000004": "succeeded",
    "ODR100000005": "dead",
    "ODR100000006": "succeeded",
    "ODR100000007": "succeeded",
    "ODR100000008": "succeeded",
}


def load(sandbox: SandboxServer, orders: dict[str, dict[str, Any]]) -> None:
    for order, spec in orders.items():
        sandbox.set_order(order, status=spec.get("status", "SENT"), script=spec.get("script", []))


def test_a_mix_of_orders_ends_each_in_its_status(
    env: dict[str, str], sandbox: SandboxServer, sessions: Any, start_worker: Any
) -> None:
    """Paid, unknown, refused note, flaky, always failing, HTML 502, 503+Retry-After: each ends as the SPEC says."""
    load(sandbox, MIX)
    for order in MIX:
        done = cli(env, "enqueue", order, "--note", "Out of stock", "--source", "test")
        assert done.returncode == 0, done.stderr
    start_worker(env)
    wait_until(lambda: all_terminal(sessions), 60, "every job terminal")
    assert statuses(sessions) == EXPECTED

    posts = {order: sandbox.calls(order, kind="cancel") for order in MIX}
    assert len(posts["ODR100000004"]) == 3  # two 510s, then the cancel
    assert len(posts["ODR100000005"]) == 4  # FPCANCEL_MAX_ATTEMPTS
    for order in ("ODR100000001", "ODR100000002", "ODR100000003", "ODR100000008"):
        assert len(posts[order]) == 1, order
    every_call = sandbox.calls()
    assert every_call and all(call["authorized"] for call in every_call)
    assert all(
        call["body"] == {"cancellationNote": "Out of stock"}
        for call in every_call
        if call["kind"] == "cancel"
    )

    flaky = [a for a in attempts_of(sessions, "ODR100000004") if a.kind == "cancel"]
    assert [a.outcome for a in flaky] == ["ambiguous", "ambiguous", "succeeded"]
    # Full jitter under growing ceilings: delay n ≤ min(max, 0.2 * 2^(n-1)), and ambiguous
    # answers wait at least the HTTP timeout (1 s) before the status check.
    assert [a.retry_in_ms for a in flaky[:2]] == [1000, 1000]
    dead = [a for a in attempts_of(sessions, "ODR100000005") if a.kind == "cancel"]
    assert [a.counted for a in dead] == [True] * 4


def test_a_duplicate_delivery_calls_the_provider_once(
    env: dict[str, str], sandbox: SandboxServer, sessions: Any, start_worker: Any
) -> None:
    """The same message published three times: one POST, one attempt row."""
    from sqlalchemy import select

    from fpcancel.models.tables import CancelJob

    env_down = {**env, "FPCANCEL_BROKER_URL": "redis://127.0.0.1:1/0"}
    assert (
        cli(env_down, "enqueue", "ODR200000001", "--note", "n").returncode == 0
    )  # saved, not sent
    with sessions.begin() as s:
        job = s.scalars(select(CancelJob)).one()
        job.dispatch_token = "a" * 32
        job_id = job.id
    app = Celery(broker=env["FPCANCEL_BROKER_URL"])
    for _ in range(3):
        app.send_task("fpcancel.cancel", args=[job_id, "a" * 32], queue="fpcancel.live")
    start_worker(env)
    wait_until(lambda: all_terminal(sessions), 30, "the job to finish")
    assert statuses(sessions) == {"ODR200000001": "succeeded"}
    assert len(sandbox.calls("ODR200000001", kind="cancel")) == 1
    assert len(attempts_of(sessions, "ODR200000001")) == 1


def test_a_refused_token_leaves_jobs_waiting_until_it_works_again(
    env: dict[str, str], sandbox: SandboxServer, sessions: Any, start_worker: Any
) -> None:
    """The provider answers 401: no job turns terminal, no attempt is spent; the token works again: all finish."""
    sandbox.set_token("rotated-elsewhere")
    for i in range(5):
        assert cli(env, "enqueue", f"ODR30000000{i}", "--note", "n").returncode == 0
    worker = start_worker(env)
    wait_until(
        lambda: len([c for c in sandbox.calls() if not c["authorized"]]) >= 2, 30, "refused calls"
    )
    assert not any(
        s in ("already_paid", "not_found", "invalid_payload", "dead", "failed", "succeeded")
        for s in statuses(sessions).values()
    )
    assert "refused the token" in worker.log()
    sandbox.set_token(TOKEN)
    wait_until(lambda: all_terminal(sessions), 60, "every job after the token works")
    assert set(statuses(sessions).values()) == {"succeeded"}
    for i in range(5):
        rows = attempts_of(sessions, f"ODR30000000{i}")
        assert sum(1 for a in rows if a.counted) == 1


def test_an_answer_after_the_client_gave_up_ends_succeeded_with_one_post(
    env: dict[str, str], sandbox: SandboxServer, sessions: Any, start_worker: Any
) -> None:
    """The cancel applies but answers after the 1 s timeout: the status check settles it, no second POST."""
    sandbox.set_order("ODR400000001", script=["late:2.5"])
    assert cli(env, "enqueue", "ODR400000001", "--note", "n").returncode == 0
    start_worker(env)
    wait_until(lambda: all_terminal(sessions), 30, "the job to finish")
    assert statuses(sessions) == {"ODR400000001": "succeeded"}
    assert len(sandbox.calls("ODR400000001", kind="cancel")) == 1
    assert [a.outcome for a in attempts_of(sessions, "ODR400000001")] == [
        "ambiguous",
        "order_cancelled",
    ]


def test_bad_input_exits_2_and_writes_nothing_on_postgresql(
    env: dict[str, str], sessions: Any
) -> None:
    """Bad ids and notes are refused with exit 2; a second enqueue of an active order returns the first id."""
    for order in ["../../etc/passwd", "ODR1 23", "", "A" * 70, "ODR1%2F.."]:
        assert cli(env, "enqueue", order, "--note", "n").returncode == 2, order
    for note in ["", "   ", "x" * 1001]:
        assert cli(env, "enqueue", "ODR500000001", "--note", note).returncode == 2
    assert statuses(sessions) == {}
    first = json.loads(cli(env, "enqueue", "ODR500000001", "--note", "n", "--json").stdout)
    second = json.loads(cli(env, "enqueue", "ODR500000001", "--note", "n", "--json").stdout)
    assert second["id"] == first["id"] and second["created"] is False


def test_jobs_show_lists_every_call(
    env: dict[str, str], sandbox: SandboxServer, sessions: Any, start_worker: Any
) -> None:
    """`jobs show --json` gives one entry per provider call with number, kind, http_status, outcome, message."""
    sandbox.set_order("ODR600000001", script=["510"])
    job_id = json.loads(cli(env, "enqueue", "ODR600000001", "--note", "n", "--json").stdout)["id"]
    start_worker(env)
    wait_until(lambda: all_terminal(sessions), 30, "the job to finish")
    shown = json.loads(cli(env, "jobs", "show", str(job_id), "--json").stdout)
    assert shown["status"] == "succeeded"
    assert [(c["number"], c["kind"], c["http_status"], c["outcome"]) for c in shown["calls"]] == [
        (1, "cancel", 510, "ambiguous"),
        (2, "status_check", 200, "order_open"),
        (3, "cancel", 202, "succeeded"),
    ]
    assert shown["calls"][0]["message"] == "Something Went Wrong"
    listed = json.loads(cli(env, "jobs", "list", "--status", "succeeded", "--json").stdout)
    assert [j["id"] for j in listed] == [job_id]
