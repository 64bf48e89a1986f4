"""Shared by the web tests of both tiers: keys of each scope, a signed-in dashboard client, a
job in any status written straight to the table, and CSRF tokens read off a page."""

import re
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from fpcancel.models.db import utcnow
from fpcancel.models.tables import CancelJob
from fpcancel.web.keys import create_key

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_keys(sessions: sessionmaker[Session]) -> dict[str, str]:
    """One key per scope, named after it: {"enqueue": key, "read": key, "ops": key}."""
    return {
        scope: create_key(sessions, f"{scope}-client", scope, utcnow()).key
        for scope in ("enqueue", "read", "ops")
    }


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def add_job(
    sessions: sessionmaker[Session], order: str, status: str = "dead", **values: Any
) -> int:
    """A job in `status` as a worker would have left it."""
    now = utcnow()
    finished = status not in ("queued", "running", "retrying")
    row = CancelJob(
        order_uuid=order,
        note=values.pop("note", "Out of stock"),
        source=values.pop("source", "test"),
        lane=values.pop("lane", "bulk"),
        status=status,
        attempts=values.pop("attempts", 4 if status == "dead" else 1),
        last_http_status=values.pop("last_http_status", 510 if status == "dead" else 202),
        last_message=values.pop("last_message", "Something Went Wrong"),
        created_at=now - timedelta(minutes=5),
        updated_at=now,
        finished_at=now if finished else None,
        **values,
    )
    with sessions.begin() as session:
        session.add(row)
        session.flush()
        return row.id


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)
