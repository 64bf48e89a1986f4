"""Ops commands on a big job table: each command's wall time next to its queries' floor.

    python bench/ops_queries.py [--jobs 1000000] [--runs 3]

Builds, in a fresh PostgreSQL database, 1,000,000 jobs and 3,000,000 attempts server-side
(INSERT ... SELECT generate_series; a mix of statuses, sources and call histories over 30 days;
secondary indexes built after the load, then VACUUM ANALYZE, as autovacuum leaves a table that
has settled). Then, for each command, prints:

- wall: `fpcancel ...` as a subprocess, best of --runs;
- start-up: `fpcancel --version` measured the same way (the interpreter, click, the settings);
- query: EXPLAIN (ANALYZE, TIMING OFF) execution time of the very statements the command runs
  (captured from the same function, in process; for `stats` the sum of its queries), best of
  --runs;
- ratio: (wall - start-up) / query.

A second start-up is printed for reference: a process that also imports what every query
command needs (SQLAlchemy's ORM, the models, psycopg), i.e. the fixed cost `--version` skips.

Goal printed beside it: wall <= start-up + 3 x query, and query < 0.5 s.
"""

import argparse
import json
import statistics
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
from models.db import make_engine, make_session_factory, utcnow
from worker.queries import job_with_calls, list_jobs
from worker.stats import collect_stats

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


def wall_seconds(args: list[str], env: dict[str, str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([FPCANCEL, *args], env=env, capture_output=True, text=True)
        best = min(best, time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"fpcancel {' '.join(args)} failed: {done.stderr}")
    return best


def python_seconds(code: str, env: dict[str, str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        best = min(best, time.perf_counter() - started)
    return best


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with fresh_database("fpcancel_bench_ops") as url:
        engine = make_engine(url)
        started = time.perf_counter()
        took = build(engine, args.jobs)
        build_seconds = time.perf_counter() - started
        with engine.connect() as c:
            jobs = c.execute(text("SELECT count(*) FROM cancel_jobs")).scalar_one()
            attempts = c.execute(text("SELECT count(*) FROM cancel_attempts")).scalar_one()
            dead_id = c.execute(
                text("SELECT max(id) FROM cancel_jobs WHERE status = 'dead'")
            ).scalar_one()
            order = c.execute(
                text("SELECT order_uuid FROM cancel_jobs WHERE id = :id"), {"id": args.jobs // 2}
            ).scalar_one()
            sizes = c.execute(
                text(
                    "SELECT pg_size_pretty(pg_total_relation_size('cancel_jobs')), "
                    "pg_size_pretty(pg_total_relation_size('cancel_attempts'))"
                )
            ).one()
        now = utcnow()
        commands: list[tuple[list[str], Callable[[Session], object]]] = [
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
        env = {"FPCANCEL_DATABASE_URL": url, "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
        startup = wall_seconds(["--version"], env, args.runs)
        stack = python_seconds(
            "import worker.cli, worker.queries, worker.stats, models.db, psycopg", env, args.runs
        )
        results = []
        for argv, run in commands:
            statements = captured_statements(engine, run)
            query = explain_ms(engine, statements, args.runs) / 1000
            wall = wall_seconds(argv, env, args.runs)
            results.append((" ".join(argv), wall, query, len(statements)))
        engine.dispose()

    steps = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in took.items())
    print(f"table: {jobs:,} jobs ({sizes[0]}), {attempts:,} attempts ({sizes[1]})")
    print(f"build: {build_seconds:.1f} s ({steps})")
    print(f"start-up (fpcancel --version, best of {args.runs}): {startup * 1000:.0f} ms")
    print(f"  for reference, start-up with the database stack imported: {stack * 1000:.0f} ms")
    print(
        f"{'command':<48} {'wall':>8} {'query':>10} {'ratio':>8}  goal: wall <= start-up + "
        "3 x query, query < 0.5 s"
    )
    for name, wall, query, count in results:
        ratio = (wall - startup) / query if query else float("inf")
        ok = wall <= startup + 3 * query and query < 0.5
        shown = name if len(name) <= 48 else name[:45] + "..."
        print(
            f"{shown:<48} {wall * 1000:>6.0f}ms {query * 1000:>8.1f}ms {ratio:>7.1f}x  "
            f"{'met' if ok else 'MISSED'} ({count} quer{'y' if count == 1 else 'ies'}; "
            f"over start-up {(wall - startup) * 1000:.0f} ms)"
        )
    print(
        "median cost over start-up of a command that queries:",
        f"{statistics.median((w - startup) * 1000 for _, w, _, _ in results):.0f} ms;",
        "over start-up with the database stack:",
        f"{statistics.median((w - stack) * 1000 for _, w, _, _ in results):.0f} ms",
    )


if __name__ == "__main__":
    main()
