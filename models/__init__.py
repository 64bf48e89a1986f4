"""fpcancel's tables (SQLAlchemy 2.0) and how to open them."""

from models.db import make_engine, make_session_factory, utcnow
from models.tables import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    AttemptKind,
    Base,
    CancelAttempt,
    CancelJob,
    JobStatus,
)

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "AttemptKind",
    "Base",
    "CancelAttempt",
    "CancelJob",
    "JobStatus",
    "make_engine",
    "make_session_factory",
    "utcnow",
]
