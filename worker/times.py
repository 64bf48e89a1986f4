"""Times as users read them: ISO 8601 in UTC, with a Z (SPEC.md, "Command line")."""

from datetime import UTC, datetime


def iso(moment: datetime | None) -> str | None:
    """`2026-11-28T10:00:00.123456Z`, or None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
