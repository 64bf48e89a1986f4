"""The fleet-wide rate limit and the provider's signals, with real workers and the sandbox."""

from pathlib import Path
from typing import Any

from fpcancel.sandbox import SandboxServer
from tests.real.conftest import (
    TOKEN,
    SandboxCli,
    all_terminal,
    attempts_of,
    base_env,
    cli,
    enqueue_orders,
    statuses,
    wait_until,
)

TERMINAL_NOT_SUCCEEDED = {"already_paid", "not_found", "invalid_payload", "dead", "failed"}


def test_two_workers_share_one_budget_and_never_draw_a_429(
    database_url: str, broker_url: str, sessions: Any, start_worker: Any
) -> None:
    """Two workers at FPCANCEL_RATE_LIMIT=10/1 against a sandbox that allows 10/1: no 429, every job done."""
    with SandboxServer(token=TOKEN, rate_limit=(10, 1.0)) as sandbox:
        env = base_env(database_url, broker_url, sandbox, FPCANCEL_RATE_LIMIT="10/1")
        enqueue_orders(env, [f"ODR81{i:04d}" for i in range(60)])
        start_worker(env)
        start_worker(env)
        wait_until(lambda: all_terminal(sessions), 60, "every job terminal")
        assert set(statuses(sessions).values()) == {"succeeded"}
        assert [c for c in sandbox.calls() if c["status"] == 429] == []


def test_a_429_pauses_without_spending_an_attempt(
    env: dict[str, str], sandbox: SandboxServer, sessions: Any, start_worker: Any
) -> None:
    """A 429 with Retry-After: the job waits it out and succeeds with one counted POST."""
    sandbox.set_order("ODR820000001", script=["429"])
    assert cli(env, "enqueue", "ODR820000001", "--note", "n").returncode == 0
    start_worker(env)
    wait_until(lambda: all_terminal(sessions), 30, "the job to finish")
    calls = attempts_of(sessions, "ODR820000001")
    assert [(a.http_status, a.outcome, a.counted) for a in calls] == [
        (429, "rate_limited", False),
        (202, "succeeded", True),
    ]
    assert (calls[1].started_at - calls[0].finished_at).total_seconds() >= 0.9  # Retry-After: 1


def test_a_token_refused_mid_run_ends_no_job_and_all_finish_once_it_works(
    database_url: str, broker_url: str, sessions: Any, start_worker: Any
) -> None:
    """The provider starts answering 401 mid-run: nothing turns terminal, no attempt is spent;
    the token is accepted again: every job finishes."""
    with SandboxServer(token=TOKEN, rate_limit=None) as sandbox:
        env = base_env(database_url, broker_url, sandbox, FPCANCEL_RATE_LIMIT="5/1")
        orders = [f"ODR83{i:04d}" for i in range(40)]
        enqueue_orders(env, orders)
        worker = start_worker(env)
        wait_until(
            lambda: list(statuses(sessions).values()).count("succeeded") >= 8, 30, "a few jobs done"
        )
        sandbox.set_token("rotated-by-someone")
        wait_until(
            lambda: sum(1 for c in sandbox.calls() if not c["authorized"]) >= 3, 30, "refused calls"
        )
        succeeded_before = {o for o, s in statuses(sessions).items() if s == "succeeded"}
        assert not TERMINAL_NOT_SUCCEEDED & set(statuses(sessions).values())
        assert "refused the token" in worker.log()
        sandbox.set_token(TOKEN)
        wait_until(lambda: all_terminal(sessions), 90, "every job after the token works again")
        assert set(statuses(sessions).values()) == {"succeeded"}
        for order in set(orders) - succeeded_before:
            assert sum(1 for a in attempts_of(sessions, order) if a.counted) == 1, order


def test_three_workers_in_laravel_windows_draw_no_429_and_never_pass_the_limit(
    database_url: str, broker_url: str, sessions: Any, start_worker: Any, tmp_path: Path
) -> None:
    """3 workers x 8 threads at 10/1 against a sandbox process that counts as Laravel does (a
    fixed window opened by the first call): no 429, never more than 10 calls in any second."""
    from fpcancel.sandbox import admitted_arrivals, max_calls_in_window

    args = ("--rate-limit", "10/1", "--rate-mode", "laravel")
    sandbox = SandboxCli(tmp_path / "sandbox.log", *args).wait_ready()
    try:
        env = base_env(database_url, broker_url, sandbox, FPCANCEL_RATE_LIMIT="10/1")
        for _ in range(3):
            start_worker(env, concurrency=8)
        enqueue_orders(env, [f"ODR83{i:04d}" for i in range(80)])
        wait_until(lambda: all_terminal(sessions), 90, "every job terminal")
        assert set(statuses(sessions).values()) == {"succeeded"}
        calls = sandbox.control.calls()
    finally:
        sandbox.stop()
    assert [c for c in calls if c["status"] == 429] == []
    assert max_calls_in_window(admitted_arrivals(calls), 1.0) <= 10


def test_one_thread_drains_a_bulk_at_the_limit(
    database_url: str, broker_url: str, sessions: Any, start_worker: Any
) -> None:
    """One worker with one thread, 4 calls a second, answers taking 30 ms: every one of the
    provider's windows but the last is full (4 calls), none has more, no 429."""
    from fpcancel.sandbox import admitted_arrivals, fixed_windows

    with SandboxServer(
        token=TOKEN, rate_limit=(4, 1.0), rate_mode="laravel", answer_delay_seconds=0.03
    ) as sandbox:
        env = base_env(database_url, broker_url, sandbox, FPCANCEL_RATE_LIMIT="4/1")
        start_worker(env, concurrency=1)
        enqueue_orders(env, [f"ODR84{i:04d}" for i in range(40)])
        wait_until(lambda: all_terminal(sessions), 90, "every job terminal")
        assert set(statuses(sessions).values()) == {"succeeded"}
        calls = sandbox.calls(kind="cancel")
        assert [c for c in calls if c["status"] == 429] == []
        windows = [count for _, count in fixed_windows(admitted_arrivals(calls), 1.0)]
        assert max(windows) <= 4
        assert windows[:-1] == [4] * (len(windows) - 1), windows


def test_the_provider_away_mid_run_spends_no_attempt_and_every_job_succeeds(
    database_url: str, broker_url: str, sessions: Any, start_worker: Any
) -> None:
    """The provider's port closes mid-run for 20 s, then it is back on the same port: every job
    ends `succeeded` with exactly one counted POST, and while it was away the fleet only
    probed (one call every 15 s), not every waiting job over and over."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import func, select

    from fpcancel.models.tables import CancelAttempt

    first = SandboxServer(token=TOKEN, rate_limit=None).start()
    port = first.port
    env = base_env(database_url, broker_url, first, FPCANCEL_RATE_LIMIT="20/1")
    start_worker(env, concurrency=4)
    orders = [f"ODR85{i:04d}" for i in range(200)]
    enqueue_orders(env, orders)
    wait_until(lambda: len(first.calls(kind="cancel")) >= 20, 60, "the first cancels")
    first.stop()
    down_at = datetime.now(UTC)
    import time

    time.sleep(20)
    with sessions() as s:
        # Once the fleet has taken the provider as away (3 calls found nobody and none got
        # through for 2 s), only probes: from 5 s into the outage, one every 15 s.
        settled = down_at + timedelta(seconds=5)
        tries_while_away = s.scalar(
            select(func.count())
            .select_from(CancelAttempt)
            .where(CancelAttempt.started_at > settled)
        )
    second = SandboxServer(port=port, token=TOKEN, rate_limit=None).start()
    try:
        wait_until(lambda: all_terminal(sessions), 120, "every job terminal after the outage")
    finally:
        second.stop()
    assert set(statuses(sessions).values()) == {"succeeded"}
    with sessions() as s:
        counted = s.scalar(
            select(func.count()).select_from(CancelAttempt).where(CancelAttempt.counted)
        )
    assert counted == len(orders)  # one POST each: the outage spent none
    assert 1 <= tries_while_away <= 3  # the probes: one every 15 s (one may be a job's retry)
