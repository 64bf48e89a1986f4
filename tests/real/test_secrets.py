"""The bearer token never reaches a log, a CLI output, the tables or Redis, after a full run
with DEBUG logs, refused tokens and failures (grepped for, the way an auditor would)."""

import shutil
import subprocess
from typing import Any

from redis import Redis

from fpcancel.sandbox import SandboxServer
from tests.real.conftest import FPCANCEL, TOKEN, all_terminal, cli, wait_until


def test_the_token_appears_nowhere_after_a_full_run(
    env: dict[str, str], sandbox: SandboxServer, sessions: Any, tmp_path: Any, start_worker: Any
) -> None:
    """Worker logs (text and JSON, DEBUG), every command's output, a pg_dump and Redis: no token."""
    sandbox.set_order("ODR990000001", status="PAID")
    sandbox.set_order("ODR990000002", script=["401", "510", "502-html"])
    sandbox.set_order("ODR990000003", script=["late:1.5"])
    outputs = []
    for order in ("ODR990000001", "ODR990000002", "ODR990000003", "ODR990000004"):
        outputs.append(cli(env, "enqueue", order, "--note", "n", "--json"))
    outputs.append(cli(env, "enqueue", "bad id", "--note", "n"))
    w1 = start_worker({**env})
    wait_until(lambda: all_terminal(sessions), 60, "every job terminal")
    w1.stop()
    outputs += [
        cli(env, "jobs", "list", "--json"),
        cli(env, "jobs", "show", "2", "--json"),
        cli(env, "jobs", "show", "2"),
        cli(env, "stats", "--json"),
        cli(env, "stats"),
        cli({**env, "FRONTPAYMENT_BASE_URL": "http://example.com/api/v1"}, "worker"),
    ]
    json_log = tmp_path / "json-worker.log"
    with json_log.open("wb") as log:
        proc = subprocess.Popen(
            [FPCANCEL, "worker", "--log-format", "json", "--loglevel", "DEBUG"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(30)
    haystacks = {"worker log": w1.log(), "json worker log": json_log.read_text(errors="replace")}
    for n, done in enumerate(outputs):
        haystacks[f"output {n}"] = done.stdout + done.stderr
    if shutil.which("pg_dump"):
        url = env["FPCANCEL_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        dump = subprocess.run(["pg_dump", url], capture_output=True, text=True, check=True)
        haystacks["pg_dump"] = dump.stdout
        assert "ODR990000002" in dump.stdout  # the dump did read the tables
    redis = Redis.from_url(env["FPCANCEL_BROKER_URL"])
    haystacks["redis"] = " ".join(repr(redis.dump(key)) for key in redis.scan_iter())
    assert (
        '"level": "debug"' in haystacks["json worker log"]
        or '"level": "info"' in haystacks["json worker log"]
    )
    leaked = [name for name, text in haystacks.items() if TOKEN in text]
    assert leaked == []
