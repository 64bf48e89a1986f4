"""Hostile input, odd settings and a hostile provider (issue 10): refused clearly with exit 2 and
nothing written, never raw on a terminal, the token nowhere."""

import io
import json
import re
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from fpcancel import jobstore, render
from fpcancel.bulk import BulkInputError, validate_rows, write_bulk
from fpcancel.cli import main
from fpcancel.errors import ValidationError
from fpcancel.models.db import make_engine, make_session_factory
from fpcancel.models.tables import CancelAttempt, CancelJob
from fpcancel.ops import Candidate, RetryResult
from fpcancel.producer import Producer
from fpcancel.runtime import Runtime
from fpcancel.tasks import run_job
from tests.fakes import TOKEN, Clock, FakeTransport, Reply, drive, fake_client, sqlite_runtime

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
# What a hostile answer or note carries: clear screen, an OSC 8 hyperlink, an OSC 52 clipboard
# write, a C1 CSI, a bidi override, and a line break that would forge a line of output.
HOSTILE = (
    "\x1b[2J\x1b]8;;https://evil.example\x07click\x1b]8;;\x07"
    "\x1b]52;c;cm0gLXJmIH4=\x07\x9b31m\u202egnp.exe\nFORGED 999 succeeded"
)
RAW_SEQUENCES = ("\x1b[2J", "\x1b]8;;", "\x1b]52;", "\x9b31m", "\u202e", "\nFORGED")
SGR = re.compile(r"\x1b\[[0-9;]*m")  # the colours rich itself writes on a terminal


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in ("FRONTPAYMENT_TOKEN", "FRONTPAYMENT_BASE_URL", "FPCANCEL_MAX_ATTEMPTS"):
        monkeypatch.delenv(key, raising=False)
    values = {
        "FPCANCEL_DATABASE_URL": f"sqlite:///{tmp_path / 'hostile.db'}",
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


def fpcancel(env: dict[str, str], *args: str, input_: str | bytes | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, input=input_)


def job_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(s.execute(select(func.count()).select_from(CancelJob)).scalar_one())


def raw_controls(output: str) -> list[str]:
    """Characters a terminal would act on, left after rich's own colour codes are removed."""
    text = SGR.sub("", output)
    return [
        c
        for c in text
        if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Cn", "Zl", "Zp")
    ]


def add_hostile_job(
    sessions: sessionmaker[Session], order: str = "ODR1", status: str = "dead"
) -> int:
    with sessions.begin() as s:
        job_id = s.execute(
            insert(CancelJob)
            .values(
                order_uuid=order,
                note="Out of stock",
                source="stockout",
                lane="bulk",
                status=status,
                attempts=1,
                last_http_status=510,
                last_message=HOSTILE,
                created_at=T0,
                updated_at=T0,
                finished_at=T0 + timedelta(minutes=1),
            )
            .returning(CancelJob.id)
        ).scalar_one()
        s.execute(
            insert(CancelAttempt).values(
                job_id=job_id,
                number=1,
                kind="cancel",
                started_at=T0,
                finished_at=T0,
                duration_ms=12,
                http_status=510,
                outcome="ambiguous",
                message=HOSTILE,
                response_body="<html>" + HOSTILE,
                counted=True,
            )
        )
    return int(job_id)


# -- 1. bulk and enqueue: nothing either database cannot store; all or nothing ------------------


def test_a_nul_after_5001_good_lines_names_its_line_and_writes_nothing(
    env: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """PostgreSQL cannot store a NUL: validation refuses it first, naming the line, exit 2, and
    the 5,001 good lines before it are not written either."""
    path = tmp_path / "stockout.csv"
    lines = ["order_uuid,note"] + [f"ODR{n},Out of stock" for n in range(5001)]
    lines.append("ODR9999999,out\x00of stock")
    path.write_text("\n".join(lines) + "\n")
    result = fpcancel(env, "enqueue-bulk", str(path))
    assert result.exit_code == 2, result.output
    assert "line 5003" in result.stderr and "\\x00" in result.stderr
    assert job_count(sessions) == 0


@pytest.mark.parametrize(
    "note", ["out\x00of stock", "\udcff\udcfe", "\x1b[2Jcancel", "\u200b\ufeff"]
)
def test_the_python_api_refuses_what_cannot_be_stored_with_validation_error(
    sessions: sessionmaker[Session], note: str
) -> None:
    """NUL, lone surrogates, escape sequences and invisible-only notes: `ValidationError` from
    `enqueue`, `BulkInputError` from the bulk validator; never `DataError` or
    `UnicodeEncodeError`, and nothing written."""
    from fpcancel.app import make_celery
    from fpcancel.settings import Settings

    producer = Producer(sessions, make_celery(Settings(broker_url="memory://")))
    with pytest.raises(ValidationError) as caught:
        producer.enqueue("ODR1", note)
    assert caught.value.field == "note"
    with pytest.raises(BulkInputError) as bulk_caught:
        validate_rows([("ODR2", "fine"), ("ODR3", note)])
    assert [line for line, _ in bulk_caught.value.problems] == [2]
    assert job_count(sessions) == 0


def test_invalid_utf8_on_the_command_line_exits_2(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates: exit 2 naming the field."""
    for args in (
        ["enqueue", "ODR1", "--note", "caf\udce9"],
        ["enqueue", "ODR\udcff", "--note", "ok"],
        ["enqueue", "ODR1", "--note", "ok", "--source", "sh\udcffop"],
        ["jobs", "list", "--order", "\udcff"],
    ):
        result = fpcancel(env, *args)
        assert result.exit_code == 2, (args, result.output)
        assert isinstance(result.exception, SystemExit)
    assert job_count(sessions) == 0


def test_a_csv_that_is_not_utf8_names_the_line(
    env: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """A Latin-1 note in a bulk file is a bad line, not a traceback."""
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"order_uuid,note\nODR1,fine\nODR2,caf\xe9\n")
    result = fpcancel(env, "enqueue-bulk", str(path))
    assert result.exit_code == 2 and "line 3" in result.stderr
    assert job_count(sessions) == 0


def test_a_write_that_fails_midway_leaves_no_job(sessions: sessionmaker[Session]) -> None:
    """A failure after some batches were staged (a bug, a full disk) rolls the whole file back."""

    def rows() -> Iterator[tuple[str, str]]:
        for n in range(7):
            yield f"ODR{n}", "out of stock"
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_bulk(sessions, rows(), source="s", lane="bulk", now=lambda: T0, batch_rows=2)
    assert job_count(sessions) == 0
    # The staging table left nothing behind: the next run on the same pool works.
    result = write_bulk(
        sessions,
        [("ODR1", "a"), ("ODR1", "b"), ("ODR2", "c")],
        source=None,
        lane="bulk",
        now=lambda: T0,
    )
    assert (result.created, result.duplicates, result.already_active) == (2, 1, 0)


def test_a_failure_in_the_final_move_leaves_no_job(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even the last step failing (the database going away) writes nothing."""
    from sqlalchemy.exc import OperationalError

    def broken(*_: Any) -> int:
        raise OperationalError("INSERT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(jobstore, "_move_staged", broken)
    with pytest.raises(OperationalError):
        write_bulk(sessions, [("ODR1", "a")] * 1, source=None, lane="bulk", now=lambda: T0)
    assert job_count(sessions) == 0


# -- 2. terminals and spreadsheets ---------------------------------------------------------------


@pytest.mark.parametrize("colour", [False, True], ids=["piped", "terminal"])
def test_jobs_show_and_list_never_print_raw_control_characters(
    env: dict[str, str], sessions: sessionmaker[Session], colour: bool
) -> None:
    """Escape sequences and line breaks from a provider's answer are shown escaped, on a terminal
    and in a pipe; `--json` keeps them exact."""
    job_id = add_hostile_job(sessions)
    run_env = {**env, "FORCE_COLOR": "1", "COLUMNS": "400"} if colour else env
    for args in (["jobs", "show", str(job_id)], ["jobs", "list"]):
        result = fpcancel(run_env, *args)
        assert result.exit_code == 0, result.output
        assert raw_controls(result.stdout) == [], args
        assert not any(seq in result.stdout for seq in RAW_SEQUENCES)
        assert not any(line.startswith("FORGED") for line in result.stdout.splitlines())
    shown = fpcancel(run_env, "jobs", "show", str(job_id)).stdout
    assert "\\x1b[2J" in shown and "\\nFORGED" in shown and "\\u202e" in shown
    data = json.loads(fpcancel(env, "jobs", "show", str(job_id), "--json").stdout)
    assert data["last_message"] == HOSTILE and data["calls"][0]["message"] == HOSTILE


def test_jobs_retry_dry_run_never_prints_raw_control_characters(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """The dry run's table quotes last messages escaped too."""
    add_hostile_job(sessions)
    result = fpcancel({**env, "FORCE_COLOR": "1"}, "jobs", "retry", "--status", "dead", "--dry-run")
    assert result.exit_code == 0, result.output
    assert raw_controls(result.stderr) == []
    assert "\\x1b[2J" in result.stderr


def test_jobs_list_csv_neutralises_formulas(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """OWASP: a cell starting with = + - @ tab or CR gets a leading quote; other cells are exact."""
    with sessions.begin() as s:
        for n, message in enumerate(
            ['=HYPERLINK("http://x")', "+1", "@SUM(A1)", "\tx", "\rx", "ok"]
        ):
            s.execute(
                insert(CancelJob).values(
                    order_uuid=f"-ODR{n}" if n == 0 else f"ODR{n}",
                    note="Out of stock",
                    status="dead",
                    lane="bulk",
                    last_message=message,
                    created_at=T0,
                    updated_at=T0,
                )
            )
    result = fpcancel(env, "jobs", "list", "--csv")
    assert result.exit_code == 0
    import csv

    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    messages = sorted(r["last_message"] for r in rows.values())
    assert messages == sorted(
        ['\'=HYPERLINK("http://x")', "'+1", "'@SUM(A1)", "'\tx", "'\rx", "ok"]
    )
    assert "'-ODR0" in {r["order_uuid"] for r in rows.values()}


text_from_outside = st.one_of(
    st.text(max_size=300),
    st.text(
        alphabet=st.sampled_from(
            list("ab \n\r\t\x00\x07\x1b\x9b[]();\u200b\u202e\u2028\ufeff\udcff")
        ),
        max_size=60,
    ),
)


def _render(func: Any, *args: Any) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, soft_wrap=False)
    original = render._console
    render._console = lambda stderr=False: console  # type: ignore[assignment]
    try:
        func(*args)
    finally:
        render._console = original  # type: ignore[assignment]
    return out.getvalue()


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(note=text_from_outside, message=text_from_outside, body=text_from_outside)
def test_every_human_renderer_escapes_any_text(note: str, message: str, body: str) -> None:
    """Arbitrary text in every field a person reads: the tables keep one line per row and no raw
    control character reaches the terminal."""
    job = {
        "id": 1,
        "order_uuid": "ODR1",
        "note": note,
        "source": "s",
        "lane": "bulk",
        "status": "dead",
        "attempts": 1,
        "next_attempt_at": None,
        "last_http_status": 510,
        "last_message": message,
        "last_errors": {"note": [body]},
        "created_at": "2026-11-01T08:00:00Z",
        "updated_at": "2026-11-01T08:00:00Z",
        "finished_at": None,
    }
    call = {
        "id": 1,
        "job_id": 1,
        "number": 1,
        "kind": "cancel",
        "started_at": "2026-11-01T08:00:00Z",
        "finished_at": "2026-11-01T08:00:00Z",
        "duration_ms": 5,
        "http_status": 510,
        "outcome": "ambiguous",
        "message": message,
        "response_body": body,
        "counted": True,
        "retry_in_ms": None,
    }
    candidate = Candidate(1, "ODR1", "dead", "s", 1, message, T0)
    outputs = [
        _render(render.jobs_table, [job, job]),
        _render(render.job_detail, {**job, "calls": [call, call]}),
        _render(render.retry_candidates_table, RetryResult(True, [1], [], [candidate])),
    ]
    for output in outputs:
        assert raw_controls(output) == []
    table_lines = [line for line in SGR.sub("", outputs[0]).splitlines() if "ODR1" in line]
    assert len(table_lines) == 2
    assert render.jobs_csv([job]).count("\n") >= 2  # CSV quotes embedded breaks, never crashes


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=text_from_outside, note=text_from_outside, source=st.none() | text_from_outside)
def test_enqueue_takes_any_text_without_a_traceback_or_a_partial_write(
    env: dict[str, str], sessions: sessionmaker[Session], order: str, note: str, source: str | None
) -> None:
    """Whatever arrives on the command line: exit 0 with one job, or exit 2 with none written and
    a one-line reason with no raw control character."""
    before = job_count(sessions)
    args = ["enqueue", order, "--note", note] + ([] if source is None else ["--source", source])
    result = fpcancel(env, *args)
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert result.exit_code in (0, 2), result.output
    assert raw_controls(result.stderr.rstrip("\n")) == []
    if result.exit_code == 2:
        assert job_count(sessions) == before
        assert len(result.stderr.strip().splitlines()) == 1


@settings(max_examples=80)
@given(rows=st.lists(st.tuples(text_from_outside, text_from_outside), max_size=5))
def test_the_bulk_validator_takes_any_text(rows: list[tuple[str, str]]) -> None:
    """Every row is clean (and storable) or named in `BulkInputError`; nothing else is raised."""
    try:
        clean = validate_rows(rows)
    except BulkInputError as exc:
        assert exc.count >= 1
        assert raw_controls(exc.summary()) == []
    else:
        for row in clean:
            (row.order_uuid + row.note).encode("utf-8")
            assert "\x00" not in row.note


# -- 3 and 4. the token goes only to the provider, and is never stored -------------------------


def runtime_with(
    tmp_path: Path, transport: FakeTransport, clock: Clock, **overrides: Any
) -> Runtime:
    return sqlite_runtime(tmp_path, transport, clock, **overrides)


def test_a_proxy_echoing_the_token_stores_and_prints_it_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 502 page and a JSON 510 that echo the request's headers (the token raw, JSON-escaped and
    percent-encoded) leave no trace of the token in the attempt rows, the job, or `jobs show`."""
    transport, clock = FakeTransport(), Clock(T0)
    echoed = f"Authorization: Bearer {TOKEN}"
    transport.script(
        "ODR1",
        Reply(502, f"<html><title>{echoed}</title>{TOKEN}</html>"),
        Reply(
            510,
            {
                "message": echoed,
                "errors": {"headers": [json.dumps(TOKEN), TOKEN.replace("-", "%2D")]},
            },
        ),
    )
    rt = runtime_with(tmp_path, transport, clock)
    Producer(rt.sessions, rt.app, rt.clock).enqueue("ODR1", "note")
    drive(rt, clock, step=2)
    with rt.sessions() as s:
        texts = [
            str(v) for a in s.scalars(select(CancelAttempt)) for v in (a.message, a.response_body)
        ] + [str(j.last_message) + str(j.last_errors) for j in s.scalars(select(CancelJob))]
    assert len(texts) >= 3 and any("***" in t for t in texts)
    assert not any(TOKEN in t for t in texts)
    env = {"FPCANCEL_DATABASE_URL": rt.settings.database_url, "FPCANCEL_BROKER_URL": "memory://"}
    monkeypatch.chdir(tmp_path)
    for args in (["jobs", "show", "1"], ["jobs", "show", "1", "--json"], ["jobs", "list"]):
        assert TOKEN not in fpcancel(env, *args).output
    rt.close()


def test_a_request_that_cannot_be_built_spends_no_attempt(tmp_path: Path) -> None:
    """A token `requests` refuses to send (a line break in it) leaves the job waiting with its
    attempts untouched, one `not_sent` row saying so, and nothing on the wire."""
    transport, clock = FakeTransport(), Clock(T0)
    rt = runtime_with(tmp_path, transport, clock)
    client = fake_client(transport)
    rt.client = type(client)(
        "https://provider.test/api/v1",
        "bad\ntoken",
        connect_timeout=1,
        read_timeout=1,
        session_factory=client._session_factory,
    )
    job_id = Producer(rt.sessions, rt.app, rt.clock).enqueue("ODR1", "note").id
    with rt.sessions() as s:
        token = s.get(CancelJob, job_id).dispatch_token  # type: ignore[union-attr]
    assert run_job(rt, job_id, token) == "retrying"
    with rt.sessions() as s:
        job = s.get(CancelJob, job_id)
        rows = list(s.scalars(select(CancelAttempt)))
    assert job is not None and job.attempts == 0 and job.status in ("queued", "retrying")
    assert [(r.outcome, r.counted, r.http_status) for r in rows] == [("not_sent", False, None)]
    assert transport.requests == []
    assert rt.limiter.paused_for() > 0  # every worker stops until the setup is fixed
    rt.close()


def test_a_huge_answer_is_read_only_so_far(tmp_path: Path) -> None:
    """A provider sending megabytes gets its first 64 KiB read and 2,000 characters kept."""
    from fpcancel.provider import BODY_READ_BYTES, FrontPaymentClient

    class Counting(io.BytesIO):
        taken = 0

        def read(self, size: int | None = -1) -> bytes:
            data = super().read(size)
            Counting.taken += len(data)
            return data

    class Endless(requests.adapters.BaseAdapter):
        def send(self, request: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            response = requests.Response()
            response.status_code = 200
            response.raw = Counting(b"x" * (50 * 1024 * 1024))
            response.headers["Content-Type"] = "text/html"
            return response

        def close(self) -> None:
            pass

    adapter = Endless()

    def session() -> requests.Session:
        s = requests.Session()
        s.mount("https://", adapter)
        return s

    client = FrontPaymentClient(
        "https://p.test/api/v1", TOKEN, connect_timeout=1, read_timeout=1, session_factory=session
    )
    answer = client.cancel_order("ODR1", "note")
    assert answer.body is None and len(answer.text) == 2000
    assert Counting.taken <= BODY_READ_BYTES + 16 * 1024


def test_json_nested_past_the_parsers_depth_is_text_not_a_crash() -> None:
    """A body of 100,000 `[` is not JSON to us; the answer is kept as text."""
    from fpcancel.provider import parse_answer

    answer = parse_answer(510, b"[" * 100_000, {"Content-Type": "application/json"})
    assert answer.body is None and answer.text.startswith("[[[")


# -- 6. exit codes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "show", "99999999999999999999"],
        ["jobs", "show", "0"],
        ["jobs", "list", "--offset", "99999999999999999999"],
        ["jobs", "retry", "99999999999999999999"],
        ["jobs", "list", "--since", "0001-01-01T00:00:00+23:59"],
        ["stats", "--since", "9999-12-31T23:59:59-23:59"],
    ],
)
def test_numbers_and_times_past_what_the_database_holds_are_bad_input(
    env: dict[str, str], args: list[str]
) -> None:
    """Ids and offsets past BIGINT, times past the calendar: exit 2 naming the argument."""
    result = fpcancel(env, *args)
    assert result.exit_code == 2, result.output
    assert "unreachable" not in result.output


def test_the_largest_job_id_is_simply_unknown(env: dict[str, str]) -> None:
    """2^63-1 is a valid id that no job has: exit 2, "no such job"."""
    result = fpcancel(env, "jobs", "show", str(2**63 - 1))
    assert result.exit_code == 2 and "no such job" in result.output


# -- 7. listening sockets -------------------------------------------------------------------------


def test_metrics_listen_on_loopback_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--metrics-port` alone binds 127.0.0.1; `--metrics-host` chooses."""
    from fpcancel import metrics

    bound: list[tuple[int, str]] = []
    monkeypatch.setattr(metrics, "start_http_server", lambda port, addr: bound.append((port, addr)))
    metrics.serve(9100)
    assert bound == [(9100, "127.0.0.1")]
    help_text = CliRunner().invoke(main, ["worker", "--help"]).output
    assert "--metrics-host" in help_text and "127.0.0.1" in help_text


@pytest.mark.parametrize("host, loud", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_the_sandbox_says_loudly_when_it_listens_beyond_loopback(
    monkeypatch: pytest.MonkeyPatch, host: str, loud: bool
) -> None:
    """Its control endpoints have no authentication: fine on loopback, a warning elsewhere."""
    from fpcancel import sandbox

    monkeypatch.setattr(sandbox.SandboxServer, "serve_forever", lambda self: self.stop())
    result = CliRunner().invoke(main, ["sandbox", "--host", host, "--port", "0"])
    assert result.exit_code == 0, result.output
    assert ("WARNING" in result.stderr) is loud


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["--token", "a b"], 2, "--token"),
        (["--host", "no.such.host.invalid"], 1, "cannot listen"),
    ],
)
def test_the_sandbox_refuses_bad_options_in_one_line(args: list[str], code: int, says: str) -> None:
    """A token with a blank or a host it cannot bind: one line and the SPEC's exit code."""
    result = CliRunner().invoke(main, ["sandbox", "--port", "0", *args])
    assert result.exit_code == code and says in result.stderr
    assert isinstance(result.exception, SystemExit)
