"""The fleet-wide rate limit and the provider's signals, with real workers and the sandbox."""

from typing import Any

from fpcancel.sandbox import SandboxServer
from tests.real.conftest import (
    TOKEN,
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
