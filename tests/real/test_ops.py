"""Ops on real parts: a job dies against the sandbox, `fpcancel jobs retry` sends it round again,
a `fpcancel worker` process finishes it, and `jobs list/show` and `stats` tell the story."""

import json
from typing import Any

from fpcancel.sandbox import SandboxServer
from tests.real.conftest import all_terminal, cli, statuses, wait_until

ORDER = "ODR900000001"
STATS_KEYS = {
    "since",
    "jobs_total",
    "jobs",
    "jobs_by_source",
    "calls",
    "success_rate",
    "latency_ms",
    "rate_limit",
    "oldest_queued_age_seconds",
    "events",
    "delivery_latency_seconds",
}


def run_json(env: dict[str, str], *args: str) -> Any:
    done = cli(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_dead_job_retried_by_status_goes_round_again_and_succeeds(
    env: dict[str, str], sandbox: SandboxServer, sessions: Any, start_worker: Any
) -> None:
    """Always 510: dead after FPCANCEL_MAX_ATTEMPTS (4) POSTs; made cancellable and retried with
    --status dead, the worker POSTs once more and it succeeds; its old calls are all kept."""
    sandbox.set_order(ORDER, script=["510"] * 50)
    done = cli(env, "enqueue", ORDER, "--note", "Out of stock", "--source", "ops-test")
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout)
    start_worker(env)
    wait_until(lambda: all_terminal(sessions), 60, "the job to end")
    assert statuses(sessions) == {ORDER: "dead"}
    assert len(sandbox.calls(ORDER, kind="cancel")) == 4

    dead = run_json(env, "jobs", "list", "--status", "dead")
    assert [(j["id"], j["order_uuid"], j["status"], j["attempts"]) for j in dead] == [
        (job_id, ORDER, "dead", 4)
    ]
    before = run_json(env, "jobs", "show", str(job_id))["calls"]

    sandbox.set_order(ORDER, script=[])  # the provider is fixed: the order can be cancelled now
    dry = run_json(env, "jobs", "retry", "--status", "dead", "--dry-run")
    assert dry == {"retried": 1, "skipped": [], "ids": [job_id], "dry_run": True}
    assert statuses(sessions) == {ORDER: "dead"}
    retried = run_json(env, "jobs", "retry", "--status", "dead")
    assert retried == {"retried": 1, "skipped": [], "ids": [job_id], "dry_run": False}

    wait_until(lambda: statuses(sessions) == {ORDER: "succeeded"}, 60, "the retried job")
    assert len(sandbox.calls(ORDER, kind="cancel")) == 5

    shown = run_json(env, "jobs", "show", str(job_id))
    assert (shown["status"], shown["attempts"]) == ("succeeded", 5)
    calls = shown["calls"]
    assert calls[: len(before)] == before  # the first round's rows, untouched
    assert [c["number"] for c in calls] == list(range(1, len(calls) + 1))
    cancels = [c for c in calls if c["kind"] == "cancel"]
    assert [(c["http_status"], c["outcome"]) for c in cancels] == [(510, "ambiguous")] * 4 + [
        (202, "succeeded")
    ]
    assert cancels[-1]["message"] == "cancelledOrderSuccessfully"
    assert cancels[0]["message"]
    for call in calls:
        assert {"number", "kind", "http_status", "outcome", "message"} <= call.keys()
        assert call["kind"] in ("cancel", "status_check")

    again = cli(env, "jobs", "retry", str(job_id))
    assert again.returncode == 2
    assert f"job {job_id}: is succeeded; only dead or failed jobs can be retried" in again.stderr

    stats = run_json(env, "stats")
    assert set(stats) == STATS_KEYS
    assert stats["jobs_total"] == 1 and stats["jobs"]["succeeded"] == 1
    assert stats["calls"]["cancel"] == 5 and stats["calls"]["total"] == len(calls)
    assert stats["success_rate"] == 1.0
    assert set(stats["latency_ms"]) == {"p50", "p95", "p99"}
    assert all(isinstance(v, float) for v in stats["latency_ms"].values())
    assert set(stats["rate_limit"]) == {"provider_429s", "calls_that_waited", "wait_seconds"}


def test_stats_latency_is_postgresqls_percentile_cont(sessions: Any) -> None:
    """The latency percentiles stats computes from its one-scan histogram equal what
    PostgreSQL's percentile_cont says over the same rows, with and without --since."""
    import random
    from datetime import timedelta

    from sqlalchemy import func, insert, select

    from fpcancel.models.db import utcnow
    from fpcancel.models.tables import CancelAttempt, CancelJob
    from fpcancel.stats import PERCENTILES, collect_stats

    rng = random.Random(7)
    now = utcnow()
    with sessions.begin() as s:
        job_id = s.execute(
            insert(CancelJob)
            .values(
                order_uuid="ODR1",
                note="n",
                lane="bulk",
                status="dead",
                attempts=500,
                created_at=now,
                updated_at=now,
            )
            .returning(CancelJob.id)
        ).scalar_one()
        s.execute(
            insert(CancelAttempt),
            [
                {
                    "job_id": job_id,
                    "number": n,
                    "kind": "cancel",
                    "started_at": now - timedelta(minutes=n),
                    "finished_at": now,
                    "duration_ms": int(rng.paretovariate(1.5) * 80),
                    "outcome": "ambiguous",
                }
                for n in range(1, 501)
            ],
        )
    since = now - timedelta(minutes=100, seconds=30)
    for start in (None, since):
        where = [] if start is None else [CancelAttempt.started_at >= start]
        with sessions() as s:
            got = collect_stats(s, start, now)["latency_ms"]
            want = s.execute(
                select(
                    *(
                        func.percentile_cont(q).within_group(CancelAttempt.duration_ms)
                        for q in PERCENTILES.values()
                    )
                ).where(*where)
            ).one()
        assert got == {
            name: round(float(value), 1) for name, value in zip(PERCENTILES, want, strict=True)
        }
