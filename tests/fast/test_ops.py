"""Ops steering the job table on SQLite: `jobs retry`, `jobs list --csv/--since/--until/--offset`,
`jobs show`, as a user sees them (exit codes, output, the rows left in the tables)."""

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from fpcancel import ops
from fpcancel.cli import main
from fpcancel.models.db import make_engine, make_session_factory
from fpcancel.models.tables import CancelAttempt, CancelJob
from fpcancel.queries import JOB_FIELDS
from tests.fakes import Clock, FakeTransport, documented, drive, sqlite_runtime

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in ("FRONTPAYMENT_TOKEN", "FRONTPAYMENT_BASE_URL", "FPCANCEL_MAX_ATTEMPTS"):
        monkeypatch.delenv(key, raising=False)
    values = {
        "FPCANCEL_DATABASE_URL": f"sqlite:///{tmp_path / 'ops.db'}",
        "FPCANCEL_BROKER_URL": "redis://127.0.0.1:1/0",
    }
    result = CliRunner().invoke(main, ["db", "upgrade"], env=values)
    assert result.exit_code == 0, result.output
    return values


@pytest.fixture
def sessions(env: dict[str, str]) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(env["FPCANCEL_DATABASE_URL"])
    yield make_session_factory(engine)
    engine.dispose()


def add_job(
    sessions: sessionmaker[Session],
    order: str,
    status: str = "dead",
    *,
    attempts: int = 8,
    source: str | None = "stockout",
    created_at: datetime = T0,
    calls: int | None = None,
    message: str | None = "Something Went Wrong",
) -> int:
    """A job as a worker leaves it: `attempts` cancel POSTs, each answered 510 (one row each)."""
    finished = status not in ("queued", "running", "retrying")
    with sessions.begin() as s:
        job_id = s.execute(
            insert(CancelJob)
            .values(
                order_uuid=order,
                note="Out of stock",
                source=source,
                lane="bulk",
                status=status,
                attempts=attempts,
                next_attempt_at=None if finished else created_at,
                last_http_status=510 if attempts else None,
                last_message=message,
                created_at=created_at,
                updated_at=created_at,
                finished_at=created_at + timedelta(minutes=5) if finished else None,
                needs_status_check=status == "dead",
                lost_claims=2 if status == "failed" else 0,
            )
            .returning(CancelJob.id)
        ).scalar_one()
        for n in range(1, (attempts if calls is None else calls) + 1):
            s.execute(
                insert(CancelAttempt).values(
                    job_id=job_id,
                    number=n,
                    kind="cancel",
                    started_at=created_at + timedelta(seconds=n),
                    finished_at=created_at + timedelta(seconds=n, milliseconds=120),
                    duration_ms=120 + n,
                    http_status=510,
                    outcome="ambiguous",
                    message=f"Something Went Wrong #{n}",
                    response_body='{"status_code": 510, "message": "Something Went Wrong"}',
                    counted=True,
                )
            )
    return int(job_id)


def row(sessions: sessionmaker[Session], job_id: int) -> CancelJob:
    with sessions() as s:
        job = s.get(CancelJob, job_id)
        assert job is not None
        return job


def status_of(sessions: sessionmaker[Session], *job_ids: int) -> list[str]:
    return [row(sessions, i).status for i in job_ids]


def attempt_rows(sessions: sessionmaker[Session], job_id: int) -> int:
    with sessions() as s:
        return int(
            s.execute(
                select(func.count())
                .select_from(CancelAttempt)
                .where(CancelAttempt.job_id == job_id)
            ).scalar_one()
        )


def fpcancel(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


# -- jobs retry --------------------------------------------------------------------------------


def test_retry_by_id_sends_a_dead_job_round_again_and_keeps_its_calls(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """A dead job with 8 attempts turns queued, due now, its round starting at 8; its 8 rows stay."""
    job_id = add_job(sessions, "ODR1", "dead", attempts=8)
    result = fpcancel(env, "jobs", "retry", str(job_id), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "retried": 1,
        "skipped": [],
        "ids": [job_id],
        "dry_run": False,
    }
    job = row(sessions, job_id)
    assert (job.status, job.attempts, job.round_start_attempts) == ("queued", 8, 8)
    assert job.finished_at is None and job.next_attempt_at is not None
    assert job.needs_status_check is False and job.dispatch_token is None
    assert job.claimed_until is None and job.in_call_since is None and job.lost_claims == 0
    assert attempt_rows(sessions, job_id) == 8


def test_retry_says_what_it_did_on_stderr(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """Human output: one line on stderr, nothing on stdout."""
    ids = [add_job(sessions, f"ODR{i}") for i in range(3)]
    result = fpcancel(env, "jobs", "retry", *map(str, ids))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "sent 3 jobs round again" in result.stderr


def test_a_retried_job_gets_max_attempts_more_posts(tmp_path: Path) -> None:
    """After `jobs retry`, the worker POSTs FPCANCEL_MAX_ATTEMPTS (4) more times; the old calls stay."""
    transport, clock = FakeTransport(), Clock()  # the CLI stamps real time
    rt = sqlite_runtime(tmp_path, transport, clock, max_attempts=4)
    try:
        always_510 = add_job(rt.sessions, "ODR510", "dead", attempts=4)
        then_ok = add_job(rt.sessions, "ODROK", "failed", attempts=4)
        transport.script("ODR510", *[documented(510)] * 20)
        env = {"FPCANCEL_DATABASE_URL": rt.settings.database_url}
        result = fpcancel(env, "jobs", "retry", "--status", "dead", "--status", "failed")
        assert result.exit_code == 0, result.output
        drive(rt, clock)
        dead, ok = row(rt.sessions, always_510), row(rt.sessions, then_ok)
        assert (dead.status, dead.attempts) == ("dead", 8)
        assert len(transport.calls("ODR510", "cancel")) == 4
        assert (ok.status, ok.attempts) == ("succeeded", 5)
        assert len(transport.calls("ODROK", "cancel")) == 1
        with rt.sessions() as s:
            numbers = list(
                s.scalars(
                    select(CancelAttempt.number)
                    .where(CancelAttempt.job_id == then_ok)
                    .order_by(CancelAttempt.number)
                )
            )
        assert numbers == [1, 2, 3, 4, 5]  # the old four, then the new POST
    finally:
        rt.close()


def test_retry_by_status_takes_only_that_status(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """--status dead: dead jobs go round again; failed, succeeded and paid ones stay as they are."""
    dead = [add_job(sessions, f"ODRD{i}", "dead") for i in range(3)]
    failed = add_job(sessions, "ODRF", "failed", attempts=2)
    done = add_job(sessions, "ODRS", "succeeded", attempts=1)
    paid = add_job(sessions, "ODRP", "already_paid", attempts=1)
    result = fpcancel(env, "jobs", "retry", "--status", "dead", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ids"] == dead
    assert status_of(sessions, *dead, failed, done, paid) == [
        "queued",
        "queued",
        "queued",
        "failed",
        "succeeded",
        "already_paid",
    ]


def test_retry_by_status_narrows_by_source_and_since(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """--source and --since (created at or after) narrow --status."""
    old = add_job(sessions, "ODR1", source="stockout", created_at=T0)
    new = add_job(sessions, "ODR2", source="stockout", created_at=T0 + timedelta(days=2))
    other = add_job(sessions, "ODR3", source="shop", created_at=T0 + timedelta(days=2))
    since = (T0 + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    result = fpcancel(
        env, "jobs", "retry", "--status", "dead", "--source", "stockout", "--since", since
    )
    assert result.exit_code == 0, result.output
    assert status_of(sessions, old, new, other) == ["dead", "queued", "dead"]


def test_retry_by_status_goes_in_batches(sessions: sessionmaker[Session]) -> None:
    """Seven jobs in batches of three: three transactions, every job sent, progress told per batch."""
    ids = [add_job(sessions, f"ODR{i}") for i in range(7)]
    told: list[int] = []
    result = ops.retry_matching(
        sessions,
        ops.RetrySelection(("dead",)),
        lambda: T0,
        batch_jobs=3,
        progress=told.append,
    )
    assert result.ids == ids
    assert told == [3, 3, 1]
    assert set(status_of(sessions, *ids)) == {"queued"}


def test_retry_refuses_every_bad_id_and_changes_nothing(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """One unknown id and one succeeded job among good ones: exit 2 naming both; nothing changes."""
    dead = add_job(sessions, "ODR1")
    done = add_job(sessions, "ODR2", "succeeded", attempts=1)
    result = fpcancel(env, "jobs", "retry", str(dead), str(done), "999")
    assert result.exit_code == 2
    assert "job 999: no such job" in result.output
    assert f"job {done}: is succeeded; only dead or failed jobs can be retried" in result.output
    assert status_of(sessions, dead, done) == ["dead", "succeeded"]


@pytest.mark.parametrize("state", ["queued", "running", "retrying", "succeeded", "not_found"])
def test_retry_of_a_job_in_the_wrong_state_exits_2(
    env: dict[str, str], sessions: sessionmaker[Session], state: str
) -> None:
    """Only dead and failed jobs can go round again."""
    job_id = add_job(sessions, "ODR1", state, attempts=1)
    result = fpcancel(env, "jobs", "retry", str(job_id))
    assert result.exit_code == 2
    assert f"job {job_id}: is {state}; only dead or failed jobs can be retried" in result.output
    assert status_of(sessions, job_id) == [state]


def test_retry_answers_help() -> None:
    """`jobs retry --help` explains ids, --status and the all-or-nothing rule."""
    result = CliRunner().invoke(main, ["jobs", "retry", "--help"])
    assert result.exit_code == 0
    assert "--status [dead|failed]" in result.output and "all or nothing" in result.output


def test_retry_of_an_unknown_job_exits_2(env: dict[str, str]) -> None:
    """`jobs retry 42` on an empty table names the job."""
    result = fpcancel(env, "jobs", "retry", "42")
    assert result.exit_code == 2
    assert "job 42: no such job" in result.output


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["1", "--status", "dead"],
        ["--status", "succeeded"],
        ["--status", "queued"],
        ["1", "--source", "shop"],
        ["--status", "dead", "--since", "yesterday"],
        ["--status", "dead", "--source", "bad source!"],
        ["abc"],
    ],
)
def test_retry_needs_ids_or_a_dead_or_failed_status(
    env: dict[str, str], sessions: sessionmaker[Session], args: list[str]
) -> None:
    """Neither, both, another status, a filter without --status, a bad time or id: exit 2, nothing changes."""
    job_id = add_job(sessions, "ODR1")
    result = fpcancel(env, "jobs", "retry", *args)
    assert result.exit_code == 2, result.output
    assert status_of(sessions, job_id) == ["dead"]


def test_dry_run_lists_and_changes_nothing(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """--dry-run: the would-be list (JSON on stdout, a table on stderr); the table is untouched."""
    dead = add_job(sessions, "ODR1")
    failed = add_job(sessions, "ODR2", "failed", attempts=3)
    busy = add_job(sessions, "ODR3")
    add_job(sessions, "ODR3", "queued", attempts=0)
    result = fpcancel(
        env, "jobs", "retry", "--status", "dead", "--status", "failed", "--dry-run", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dry_run"] is True
    assert data["ids"] == [dead, failed] and data["retried"] == 2
    assert [s["id"] for s in data["skipped"]] == [busy]
    assert status_of(sessions, dead, failed, busy) == ["dead", "failed", "dead"]
    human = fpcancel(env, "jobs", "retry", str(dead), str(failed), "--dry-run")
    assert human.exit_code == 0, human.output
    assert human.stdout == ""
    assert "would send 2 jobs round again" in human.stderr
    assert "ODR1" in human.stderr and "ODR2" in human.stderr
    assert status_of(sessions, dead, failed) == ["dead", "failed"]
    assert row(sessions, dead).finished_at is not None


def test_a_job_whose_order_is_active_again_is_skipped(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """The order was enqueued anew after its job died: the dead job is skipped, naming the new one."""
    dead = add_job(sessions, "ODR1")
    fresh = add_job(sessions, "ODR1", "queued", attempts=0)
    other = add_job(sessions, "ODR2")
    result = fpcancel(env, "jobs", "retry", str(dead), str(other), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ids"] == [other] and data["retried"] == 1
    assert data["skipped"] == [
        {"id": dead, "reason": f"order ODR1 already has job {fresh} (queued)"}
    ]
    assert status_of(sessions, dead, fresh, other) == ["dead", "queued", "queued"]
    human = fpcancel(env, "jobs", "retry", str(dead))
    assert human.exit_code == 0
    assert f"sent 0 jobs round again (1 skipped: job {dead}: order ODR1 already has" in human.stderr


def test_two_dead_jobs_of_one_order_go_round_once(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """An order can have one active job: the first of its dead jobs goes, the second is skipped."""
    first = add_job(sessions, "ODR1")
    second = add_job(sessions, "ODR1", "failed")
    result = fpcancel(env, "jobs", "retry", "--status", "dead", "--status", "failed", "--json")
    data = json.loads(result.stdout)
    assert data["ids"] == [first]
    assert [s["id"] for s in data["skipped"]] == [second]
    assert status_of(sessions, first, second) == ["queued", "failed"]


def test_an_enqueue_racing_the_retry_skips_only_its_job(sessions: sessionmaker[Session]) -> None:
    """The unique index refuses one job of the batch (its order got a job after the check): the
    others still go round again, each under its own savepoint."""
    ids = [add_job(sessions, f"ODR{i}") for i in range(3)]
    with sessions() as s:
        candidates = ops.matching_batch(s, ops.RetrySelection(("dead",)), 0)
    racer = add_job(sessions, "ODR1", "queued", attempts=0)  # after the check, before the UPDATE
    with sessions.begin() as s:
        sent, skipped = ops.send_round_again(s, candidates, T0)
    assert sent == [ids[0], ids[2]]
    assert skipped == [ops.Skipped(ids[1], f"order ODR1 already has job {racer} (queued)")]
    assert status_of(sessions, *ids) == ["queued", "dead", "queued"]


def test_a_job_that_changed_meanwhile_is_skipped(sessions: sessionmaker[Session]) -> None:
    """Another operator retried it between the check and the UPDATE: skipped, not sent twice."""
    job_id = add_job(sessions, "ODR1")
    with sessions() as s:
        candidates = ops.check_retryable(s, [job_id])
    with sessions.begin() as s:
        assert ops.send_round_again(s, candidates, T0)[0] == [job_id]
    with sessions.begin() as s:
        sent, skipped = ops.send_round_again(s, candidates, T0)
    assert sent == [] and [x.id for x in skipped] == [job_id]


# -- jobs list ---------------------------------------------------------------------------------


def listed(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    result = fpcancel(env, "jobs", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data


def test_jobs_list_csv_has_the_json_keys_as_header(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """--csv: header = the JSON keys, one job a line, same values as --json (null → empty)."""
    first = add_job(sessions, "ODR1", message='a "quoted", comma message')
    second = add_job(sessions, "ODR2", "queued", attempts=0, source=None, message=None)
    result = fpcancel(env, "jobs", "list", "--csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0].keys()) == list(JOB_FIELDS)
    assert [int(r["id"]) for r in rows] == [second, first]
    as_json = listed(env)
    for got, want in zip(rows, as_json, strict=True):
        assert got == {k: "" if v is None else str(v) for k, v in want.items()}
    assert rows[1]["last_message"] == 'a "quoted", comma message'


def test_jobs_list_csv_and_json_are_exclusive(env: dict[str, str]) -> None:
    """One output format at a time."""
    result = fpcancel(env, "jobs", "list", "--csv", "--json")
    assert result.exit_code == 2


def test_jobs_list_since_and_until_filter_on_creation(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """--since is inclusive, --until exclusive, both on created_at; a zone-less time is UTC."""
    ids = [add_job(sessions, f"ODR{day}", created_at=T0 + timedelta(days=day)) for day in range(5)]
    since, until = T0 + timedelta(days=1), T0 + timedelta(days=3)
    got = listed(env, "--since", since.isoformat(), "--until", until.strftime("%Y-%m-%dT%H:%M:%S"))
    assert [j["id"] for j in got] == [ids[2], ids[1]]
    assert [j["id"] for j in listed(env, "--since", "2026-11-04T08:00:00Z")] == [ids[4], ids[3]]
    bad = fpcancel(env, "jobs", "list", "--until", "tomorrow")
    assert bad.exit_code == 2 and "--until" in bad.output


def test_jobs_list_offset_pages_newest_first(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """--limit 2 with --offset 0, 2, 4 walks five jobs newest first, each once."""
    ids = [add_job(sessions, f"ODR{i}") for i in range(5)]
    pages = [[j["id"] for j in listed(env, "--limit", "2", "--offset", str(o))] for o in (0, 2, 4)]
    assert pages == [[ids[4], ids[3]], [ids[2], ids[1]], [ids[0]]]


def test_jobs_list_table_keeps_rows_on_one_line_in_colour(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """A long message is cut, not wrapped: one line per job; statuses are coloured on a terminal."""
    for i in range(3):
        add_job(sessions, f"ODR{i}", message="x " * 300)
    result = fpcancel({**env, "FORCE_COLOR": "1", "COLUMNS": "100"}, "jobs", "list")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "ODR" in line]
    assert len(lines) == 3
    assert all("\x1b[" in line for line in lines)  # ANSI colour around the status
    assert all("dead" in line for line in lines)


# -- jobs show ---------------------------------------------------------------------------------


def test_jobs_show_lists_every_attempt_one_line_each(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """Sixteen calls: sixteen lines with number, time, duration, http status, outcome, message, body."""
    job_id = add_job(sessions, "ODR1", calls=16)
    with sessions.begin() as s:
        s.execute(
            CancelAttempt.__table__.update()
            .where(CancelAttempt.job_id == job_id, CancelAttempt.number == 16)
            .values(message="[bold]not markup[/bold]", response_body="<html>\n" + "y" * 5000)
        )
    result = fpcancel(env, "jobs", "show", str(job_id))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "ambiguous" in line]
    assert len(lines) == 16
    for n, line in enumerate(lines, start=1):
        assert line.split()[0] == str(n)
        assert f"{120 + n}" in line and "510" in line
        assert (T0 + timedelta(seconds=n)).strftime("%Y-%m-%d %H:%M:%S") in line
    assert "Something Went Wrong #1" in lines[0]
    assert '{"status_code": 510' in lines[0]
    assert "[bold]not markup[/bold]" in lines[15]
    assert len(lines[15]) <= 240 and "<html>\\nyyy" in lines[15]  # the line break shown, not obeyed
    data = json.loads(fpcancel(env, "jobs", "show", str(job_id), "--json").stdout)
    assert [c["number"] for c in data["calls"]] == list(range(1, 17))


# -- stats -------------------------------------------------------------------------------------


def percentile_cont(values: list[int], q: float) -> float:
    """PostgreSQL's percentile_cont, spelled out: interpolate at position q * (n - 1)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return round(ordered[low] + (position - low) * (ordered[high] - ordered[low]), 1)


@given(
    st.lists(st.integers(min_value=0, max_value=20_000), min_size=1, max_size=300),
    st.floats(min_value=0, max_value=1),
)
def test_percentiles_from_a_histogram_match_percentile_cont(values: list[int], q: float) -> None:
    """Any durations, any quantile: the histogram gives what percentile_cont gives over the rows."""
    from collections import Counter

    from fpcancel.stats import percentiles

    got = percentiles(Counter(values), {"q": q})["q"]
    assert got == pytest.approx(percentile_cont(values, q), abs=0.051)


def test_stats_count_jobs_calls_and_waits(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """stats --json: jobs per status and source, calls per kind, 429s, waits, latency, and the
    oldest queued job's wait counted from when it became due (a retried job: from the retry)."""
    dead = add_job(sessions, "ODR1", "dead", attempts=4, source="shop")
    add_job(sessions, "ODR2", "succeeded", attempts=2, source=None)
    with sessions.begin() as s:
        s.execute(
            CancelAttempt.__table__.update()
            .where(CancelAttempt.job_id == dead, CancelAttempt.number == 2)
            .values(kind="status_check", outcome="order_open", duration_ms=300, rate_wait_ms=1500)
        )
        s.execute(
            CancelAttempt.__table__.update()
            .where(CancelAttempt.job_id == dead, CancelAttempt.number == 3)
            .values(outcome="rate_limited", http_status=429)
        )
    assert fpcancel(env, "jobs", "retry", str(dead)).exit_code == 0
    result = fpcancel(env, "stats", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["jobs_total"] == 2
    assert data["jobs"]["queued"] == 1 and data["jobs"]["succeeded"] == 1
    assert data["jobs"]["dead"] == 0
    assert data["jobs_by_source"] == {"": 1, "shop": 1}
    assert data["calls"] == {"total": 6, "cancel": 5, "status_check": 1, "cancel_per_job": 2.5}
    assert data["rate_limit"] == {"provider_429s": 1, "calls_that_waited": 1, "wait_seconds": 1.5}
    durations = [121, 300, 123, 124, 121, 122]
    assert data["latency_ms"] == {
        name: percentile_cont(durations, q)
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
    }
    assert data["success_rate"] == 1.0
    assert 0 <= data["oldest_queued_age_seconds"] < 60  # retried just now, created weeks ago
    human = fpcancel(env, "stats")
    assert human.exit_code == 0 and "success rate" in human.stdout
