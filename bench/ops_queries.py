"""Ops commands on a big job table: each command's wall time next to its queries' floor.

    python bench/ops_queries.py [--jobs 1000000] [--runs 3]

Builds, in a fresh PostgreSQL database, 1,000,000 jobs and 3,000,000 attempts server-side
(INSERT ... SELECT generate_series; a mix of statuses, sources and call histories over 30 days;
secondary indexes built after the load, then VACUUM ANALYZE, as autovacuum leaves a table that
has settled). Then, for each command, prints:

- wall: `fpcancel ...` as a subprocess, best of --runs;
- start-up: the same command, measured the same way, on a 1,000-job copy of the tables built
  the same way: everything a command process does that does not grow with the table
  (the interpreter, imports, connecting, compiling its statements, printing 50 rows);
- query: EXPLAIN (ANALYZE, TIMING OFF) execution time of the very statements the command runs
  (captured from the same function, in process; for `stats` the sum of its queries), best of
  --runs;
Goal printed beside it: wall <= start-up + 3 x query, and query < 0.5 s. Sub-millisecond queries
sit below the run-to-run noise of starting a process, so the check allows the start-up runs'
spread (max - min), printed beside it.
"""

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import fresh_database
from fpcancel.models.db import make_engine, make_session_factory, utcnow
from fpcancel.queries import job_with_calls, list_jobs
from fpcancel.stats import collect_stats

FPCANCEL = str(Path(sys.executable).with_name("fpcancel"))
CALLS_PER_JOB = 3

# Per 1,000 jobs (by id % 1000): (how many, status, calls each). 3,000 calls in all: dead jobs
# spent 8 POSTs and 8 status checks; succeeded ones took 1 to 7 calls.
MIX = [
    (40, "queued", 0),
    (15, "retrying", 4),
    (5, "running", 1),
    (60, "already_paid", 1),
    (30, "not_found", 1),
    (10, "invalid_payload", 1),
    (50, "dead", 16),
    (10, "failed", 3),
    (408, "succeeded", 1),
    (1, "succeeded", 2),  # ambiguous POST, then the status check found it CANCELLED
    (200, "succeeded", 3),
    (101, "succeeded", 5),
    (70, "succeeded", 7),
]
assert sum(n for n, _, _ in MIX) == 1000
assert sum(n * calls for n, _, calls in MIX) == 1000 * CALLS_PER_JOB

JOBS_SQL = """
INSERT INTO cancel_jobs (id, order_uuid, note, source, lane, status, attempts, next_attempt_at,
    last_http_status, last_message, created_at, updated_at, finished_at, round_start_attempts,
    needs_status_check, lost_claims)
SELECT g,
       'ODR' || (100000000 + g),
       'Out of stock',
       CASE WHEN g % 10 < 3 THEN 'shop'
            WHEN g % 10 < 9 THEN 'stockout-' || (g * 12 / CAST(:jobs AS bigint))
            END,
       CASE WHEN g % 10 < 3 THEN 'live' ELSE 'bulk' END,
       m.status,
       (m.calls + 1) / 2,
       CASE WHEN m.status IN ('queued', 'retrying') THEN t.created + interval '1 minute' END,
       CASE m.status WHEN 'succeeded' THEN 202 WHEN 'already_paid' THEN 400
            WHEN 'not_found' THEN 404 WHEN 'invalid_payload' THEN 417 WHEN 'failed' THEN 422
            WHEN 'queued' THEN NULL ELSE 510 END,
       CASE m.status WHEN 'succeeded' THEN 'cancelledOrderSuccessfully'
            WHEN 'already_paid' THEN 'orderStatusAlreadyPaid'
            WHEN 'not_found' THEN 'orderNotFound'
            WHEN 'invalid_payload' THEN 'payloadValidationErrors'
            WHEN 'queued' THEN NULL ELSE 'Something Went Wrong' END,
       t.created,
       t.created + m.calls * interval '7 seconds',
       CASE WHEN m.status NOT IN ('queued', 'retrying', 'running')
            THEN t.created + m.calls * interval '7 seconds' END,
       0, false, 0
FROM generate_series(1, CAST(:jobs AS bigint)) AS g
JOIN bench_mix m ON m.r = g % 1000
CROSS JOIN LATERAL (
    SELECT now() - interval '30 days' + (g::float8 / CAST(:jobs AS bigint)) * interval '30 days'
           AS created
) AS t
"""

ATTEMPTS_SQL = """
INSERT INTO cancel_attempts (job_id, number, kind, started_at, finished_at, duration_ms,
    http_status, outcome, message, response_body, counted, retry_in_ms, rate_wait_ms)
SELECT j.id, n, a.kind,
       j.created_at + n * interval '7 seconds',
       j.created_at + n * interval '7 seconds' + a.ms * interval '1 millisecond',
       a.ms, a.http, a.outcome, a.message,
       format('{"status_code": %s, "status_message": "%s", "message": "%s", "is_data": false}',
              a.http, a.outcome, a.message),
       a.kind = 'cancel' AND a.outcome <> 'rate_limited',
       CASE WHEN n < m.calls THEN 1000 END,
       CASE WHEN random() < 0.1 THEN (random() * 2000)::int ELSE 0 END
FROM cancel_jobs j
JOIN bench_mix m ON m.r = j.id % 1000
CROSS JOIN LATERAL generate_series(1, m.calls) AS n
CROSS JOIN LATERAL (
    SELECT k.kind, d.ms, f.http, f.outcome, f.message
    FROM (SELECT CASE WHEN n % 2 = 1 THEN 'cancel' ELSE 'status_check' END AS kind) AS k
    -- a long tail: most calls take 60-460 ms, one in a hundred up to 15 s (`n` in it makes
    -- the subquery correlated, so random() is drawn per row rather than once)
    CROSS JOIN LATERAL (SELECT (60 + 400 * random() ^ 4 + 0 * n + 0 * j.id
                                + CASE WHEN random() < 0.01 THEN 15000 * random() ELSE 0 END
                               )::int AS ms) AS d
    CROSS JOIN LATERAL (
        SELECT * FROM (VALUES
            (n = m.calls AND k.kind = 'cancel' AND m.status = 'succeeded',
             202, 'succeeded', 'cancelledOrderSuccessfully'),
            (n = m.calls AND k.kind = 'status_check' AND m.status = 'succeeded',
             200, 'order_cancelled', 'Order Status Retrieved Successfully'),
            (n = m.calls AND m.status = 'already_paid', 400, 'already_paid',
             'orderStatusAlreadyPaid'),
            (n = m.calls AND m.status = 'not_found', 404, 'not_found', 'orderNotFound'),
            (n = m.calls AND m.status = 'invalid_payload', 417, 'invalid_payload',
             'payloadValidationErrors'),
            (n = m.calls AND m.status = 'failed', 422, 'failed', 'Unprocessable'),
            (k.kind = 'status_check', 200, 'order_open', 'Order Status Retrieved Successfully'),
            (random() < 0.02, 429, 'rate_limited', 'Too Many Attempts.'),
            (true, 510, 'ambiguous', 'Something Went Wrong')
        ) AS c(hit, http, outcome, message)
        WHERE c.hit
        LIMIT 1
    ) AS f
) AS a
ORDER BY j.id, n  -- as workers write them: in time order
"""


def build(engine: Engine, jobs: int) -> dict[str, float]:
    """Load the tables server-side; returns seconds per step."""
    took: dict[str, float] = {}

    def step(name: str, sql: str, **params: Any) -> None:
        started = time.perf_counter()
        with engine.connect() as c:
            c.exec_driver_sql("SET maintenance_work_mem = '256MB'")
            c.exec_driver_sql("SET session_replication_role = replica")  # no FK trigger
            # Memoize would cache the random draws of a lateral subquery per `n`.
            c.exec_driver_sql("SET enable_memoize = off")
            c.execute(text(sql), params)
            c.commit()
        took[name] = took.get(name, 0.0) + time.perf_counter() - started

    with engine.connect() as c:
        # Secondary indexes are built after the load (much faster than row by row); the
        # primary keys stay, the foreign key's trigger is off for the load only.
        indexes = c.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE tablename IN ('cancel_jobs', 'cancel_attempts') "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            )
        ).all()
        for name, _ in indexes:
            c.exec_driver_sql(f'DROP INDEX "{name}"')
        c.exec_driver_sql("CREATE TABLE bench_mix (r int PRIMARY KEY, status text, calls int)")
        r = 0
        for count, status, calls in MIX:
            c.execute(
                text(
                    "INSERT INTO bench_mix SELECT g, :s, :c "
                    "FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g"
                ),
                {"s": status, "c": calls, "lo": r, "hi": r + count - 1},
            )
            r += count
        c.commit()
    step("jobs", JOBS_SQL, jobs=jobs)
    step(
        "jobs",
        "SELECT setval(pg_get_serial_sequence('cancel_jobs', 'id'), CAST(:jobs AS bigint))",
        jobs=jobs,
    )
    step("attempts", ATTEMPTS_SQL)
    for _name, definition in indexes:
        step("indexes", definition)
    step("indexes", "DROP TABLE bench_mix")
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql("VACUUM ANALYZE cancel_jobs")
        c.exec_driver_sql("VACUUM ANALYZE cancel_attempts")
    took["vacuum analyze"] = time.perf_counter() - started
    return took


def wall_seconds(args: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """(best, spread) of `runs` runs of `fpcancel args` as a subprocess."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([FPCANCEL, *args], env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"fpcancel {' '.join(args)} failed: {done.stderr}")
    return min(times), max(times) - min(times)


def captured_statements(engine: Engine, run: Callable[[Session], object]) -> list[tuple[str, Any]]:
    """The SQL `run` sends (after one warm-up call, so connection set-up is not counted)."""
    sessions = make_session_factory(engine)
    with sessions() as session:
        run(session)
    seen: list[tuple[str, Any]] = []

    def record(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with sessions() as session:
            run(session)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def explain_ms(engine: Engine, statements: list[tuple[str, Any]], runs: int) -> float:
    """EXPLAIN (ANALYZE) execution time of all `statements`, summed; best of `runs`."""
    best = float("inf")
    for _ in range(runs):
        total = 0.0
        with engine.connect() as c:
            for statement, parameters in statements:
                # TIMING OFF: per-node clock reads over millions of rows would inflate the floor
                # (the execution time itself is still measured).
                plan = c.exec_driver_sql(
                    "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + statement, parameters
                ).scalar_one()
                plan = json.loads(plan) if isinstance(plan, str) else plan
                total += plan[0]["Execution Time"]
        best = min(best, total)
    return best


Command = tuple[list[str], Callable[[Session], object]]


def commands_for(engine: Engine) -> list[Command]:
    """The commands ops run, with ids and orders that exist in this database."""
    with engine.connect() as c:
        dead_id = c.execute(
            text("SELECT max(id) FROM cancel_jobs WHERE status = 'dead'")
        ).scalar_one()
        count = c.execute(text("SELECT count(*) FROM cancel_jobs")).scalar_one()
        order = c.execute(
            text("SELECT order_uuid FROM cancel_jobs WHERE id = :id"), {"id": count // 2}
        ).scalar_one()
    now = utcnow()
    return [
        (
            ["jobs", "list", "--status", "dead", "--limit", "50", "--json"],
            lambda s: list_jobs(s, statuses=("dead",), limit=50),
        ),
        (["stats", "--json"], lambda s: collect_stats(s, None, now)),
        (["jobs", "list", "--limit", "50"], lambda s: list_jobs(s, limit=50)),
        (
            ["jobs", "list", "--order", order, "--json"],
            lambda s: list_jobs(s, order_uuid=order, limit=50),
        ),
        (["jobs", "show", str(dead_id)], lambda s: job_with_calls(s, dead_id)),
    ]


def measure(url: str, runs: int, with_queries: bool) -> list[tuple[str, float, float, float, int]]:
    """Per command: (name, best wall, spread, EXPLAIN ANALYZE seconds, statements)."""
    engine = make_engine(url)
    env = {"FPCANCEL_DATABASE_URL": url, "PATH": "/usr/bin:/bin", "HOME": "/tmp", "COLUMNS": "200"}
    results = []
    for argv, run in commands_for(engine):
        query, count = 0.0, 0
        if with_queries:
            statements = captured_statements(engine, run)
            query, count = explain_ms(engine, statements, runs) / 1000, len(statements)
        wall, spread = wall_seconds(argv, env, runs)
        name = " ".join("ID" if a.isdigit() and argv[1] == "show" else a for a in argv)
        results.append((name, wall, spread, query, count))
    engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--small-jobs", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with fresh_database("fpcancel_bench_ops_small") as url:
        build(make_engine(url), args.small_jobs)
        small = measure(url, args.runs, with_queries=False)
    with fresh_database("fpcancel_bench_ops") as url:
        engine = make_engine(url)
        started = time.perf_counter()
        took = build(engine, args.jobs)
        build_seconds = time.perf_counter() - started
        with engine.connect() as c:
            sizes = c.execute(
                text(
                    "SELECT (SELECT count(*) FROM cancel_jobs), (SELECT count(*) FROM cancel_attempts), "
                    "pg_size_pretty(pg_total_relation_size('cancel_jobs')), "
                    "pg_size_pretty(pg_total_relation_size('cancel_attempts'))"
                )
            ).one()
        engine.dispose()
        big = measure(url, args.runs, with_queries=True)

    steps = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in took.items())
    print(
        f"table: {sizes[0]:,} jobs ({sizes[2]}), {sizes[1]:,} attempts ({sizes[3]}); build {build_seconds:.1f} s ({steps})"
    )
    print(
        f"start-up: the same command on a {args.small_jobs:,}-job copy of the tables (interpreter, "
        f"imports, connection, statement compile, output), best of {args.runs}"
    )
    print(
        f"{'command':<44} {'wall':>7} {'start-up':>9} {'query':>9}  goal: wall <= start-up + 3 x query (+ noise), query < 0.5 s"
    )
    for (name, wall, _, query, count), (_, floor, spread, _, _) in zip(big, small, strict=True):
        over = wall - floor
        ok = over <= 3 * query + spread and query < 0.5
        print(
            f"{name:<44} {wall * 1000:>5.0f}ms {floor * 1000:>7.0f}ms {query * 1000:>7.1f}ms  "
            f"{'met' if ok else 'MISSED'}: {over * 1000:+.1f} ms over start-up, budget "
            f"{3 * query * 1000:.1f} ms + noise {spread * 1000:.1f} ms ({count} quer{'y' if count == 1 else 'ies'})"
        )


if __name__ == "__main__":
    main()
