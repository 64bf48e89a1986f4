"""`enqueue-bulk` and `enqueue_bulk` as a user meets them: all-or-nothing validation, counts, dedup."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from fpcancel.bulk import BulkInputError, validate_rows
from fpcancel.cli import main


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    values = {
        "FPCANCEL_DATABASE_URL": f"sqlite:///{tmp_path / 'bulk.db'}",
        "FPCANCEL_BROKER_URL": "redis://127.0.0.1:1/0",
    }
    assert CliRunner().invoke(main, ["db", "upgrade"], env=values).exit_code == 0
    return values


def jobs(env: dict[str, str]) -> list[tuple[str, str, str, str | None]]:
    engine = create_engine(env["FPCANCEL_DATABASE_URL"])
    with engine.connect() as c:
        rows = c.execute(
            text("SELECT order_uuid, note, lane, source FROM cancel_jobs ORDER BY id")
        ).all()
    engine.dispose()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def run(env: dict[str, str], *args: str, input_: str | None = None) -> Result:
    return CliRunner().invoke(main, ["enqueue-bulk", *args], env=env, input=input_)


def test_one_bad_line_among_ten_thousand_writes_nothing_and_names_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Line 5,002 has a bad id: exit 2, the line named, no job written."""
    path = tmp_path / "orders.csv"
    lines = ["order_uuid,note"] + [f"ODR{i},Out of stock" for i in range(10_000)]
    lines[5001] = "ODR 5000,Out of stock"
    path.write_text("\n".join(lines) + "\n")
    result = run(env, str(path))
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "line 5002: order_uuid" in result.output  # type: ignore[attr-defined]
    assert jobs(env) == []


def test_every_bad_line_is_listed_with_its_reason(env: dict[str, str]) -> None:
    """Bad id, empty note without --note, extra field, malformed quote: all four named by line."""
    csv_text = 'order_uuid,note\nODR1,ok\n../x,n\nODR3,\nODR4,a,b\n\nODR6,"open\n'
    result = run(env, "-", input_=csv_text)
    assert result.exit_code == 2  # type: ignore[attr-defined]
    out = result.output  # type: ignore[attr-defined]
    assert "4 bad lines" in out
    for expected in (
        "line 3: order_uuid",
        "line 4: note",
        "line 5: expected 2 fields",
        "line 7: malformed CSV",
    ):
        assert expected in out, expected
    assert jobs(env) == []


def test_more_than_fifty_bad_lines_are_listed_then_counted(env: dict[str, str]) -> None:
    """The first 50 bad lines are shown, then how many more."""
    csv_text = "order_uuid\n" + "bad id\n" * 80
    result = run(env, "-", input_=csv_text)
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "80 bad lines" in result.output  # type: ignore[attr-defined]
    assert "... and 30 more bad lines" in result.output  # type: ignore[attr-defined]


def test_header_any_order_default_note_dedup_and_counts(env: dict[str, str]) -> None:
    """note before order_uuid, blank lines skipped, --note fills empty notes, repeats count once."""
    csv_text = "note , ORDER_UUID\n  , ODR1 \n\nOwn note,ODR2\nx,ODR1\n"
    result = run(
        env, "-", "--note", "Stock out", "--source", "stockout-42", "--json", input_=csv_text
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert json.loads(result.stdout) == {
        "created": 2,
        "already_active": 0,
        "invalid": 0,
        "duplicates": 1,
    }  # type: ignore[attr-defined]
    assert jobs(env) == [
        ("ODR1", "Stock out", "bulk", "stockout-42"),
        ("ODR2", "Own note", "bulk", "stockout-42"),
    ]
    again = run(env, "-", "--note", "Stock out", "--json", input_=csv_text)
    assert json.loads(again.stdout)["already_active"] == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("order_uuid,price", "unknown column 'price'"),
        ("note", "must name order_uuid"),
        ("", "must name order_uuid"),
    ],
)
def test_a_bad_header_is_refused(env: dict[str, str], header: str, reason: str) -> None:
    """Only order_uuid and note are columns; order_uuid is required."""
    result = run(env, "-", input_=header + "\nODR1\n")
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert reason in result.output  # type: ignore[attr-defined]


def test_an_empty_file_is_refused(env: dict[str, str]) -> None:
    """No header at all: exit 2."""
    result = run(env, "-", input_="")
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "empty" in result.output  # type: ignore[attr-defined]


def test_python_producers_get_every_bad_row(env: dict[str, str]) -> None:
    """validate_rows raises once with every bad row numbered."""
    with pytest.raises(BulkInputError) as caught:
        validate_rows([("ODR1", "ok"), ("bad id", "n"), ("ODR3", "  ")])
    assert caught.value.problems == [
        (2, "order_uuid: 'bad id' may only hold letters, digits, '_' and '-' (e.g. ODR123456789)"),
        (3, "note: is empty"),
    ]


def test_a_bulk_row_and_a_single_enqueue_write_the_same_columns(env: dict[str, str]) -> None:
    """One spelling of a new job: every column but the id, order and lane is the same whether the
    job came from `enqueue` or `enqueue-bulk` (server defaults included)."""
    single = CliRunner().invoke(main, ["enqueue", "ODR1", "--note", "n", "--lane", "bulk"], env=env)
    assert single.exit_code == 0
    assert run(env, "-", "--note", "n", input_="order_uuid\nODR2\n").exit_code == 0
    engine = create_engine(env["FPCANCEL_DATABASE_URL"])
    with engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(text("SELECT * FROM cancel_jobs ORDER BY id"))]
    engine.dispose()
    assert len(rows) == 2
    same = {"id", "order_uuid", "next_attempt_at", "created_at", "updated_at"}
    assert {k: v for k, v in rows[0].items() if k not in same} == {
        k: v for k, v in rows[1].items() if k not in same
    }
