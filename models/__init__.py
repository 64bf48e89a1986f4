"""fpcancel's tables (SQLAlchemy 2.0) and how to open them. Statuses and lanes are in
`fpcancel.statuses`."""

from fpcancel.models.db import make_engine, make_session_factory, utcnow
from fpcancel.models.tables import (
    ApiKey,
    Base,
    CancelAttempt,
    CancelEvent,
    CancelJob,
    WebhookDelivery,
)

__all__ = [
    "ApiKey",
    "Base",
    "CancelAttempt",
    "CancelEvent",
    "CancelJob",
    "WebhookDelivery",
    "make_engine",
    "make_session_factory",
    "utcnow",
]
