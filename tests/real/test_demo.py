"""`fpcancel demo` as a newcomer runs it: no Redis, no PostgreSQL, no token."""

import os
import socket
import subprocess
from pathlib import Path

from tests.real.conftest import FPCANCEL


def test_the_demo_runs_end_to_end_without_any_service(tmp_path: Path) -> None:
    """Broker at a closed port, no database variable: exit 0, the in-memory broker, the stats table and a hint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FPCANCEL_", "FRONTPAYMENT_"))}
    env["FPCANCEL_BROKER_URL"] = f"redis://127.0.0.1:{closed}/0"
    env["COLUMNS"] = "120"
    done = subprocess.run(
        [FPCANCEL, "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "in-memory broker" in out
    assert "fpcancel stats" in out
    assert "21 (succeeded 17, already_paid 2, not_found 1, invalid_payload 1)" in out
    assert "fpcancel jobs show" in out
    assert "keys create --name me --scope ops" in out and "serve" in out  # the dashboard hint
    assert (tmp_path / "fpcancel-demo.db").exists()
