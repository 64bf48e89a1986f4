"""Validators for what users and producers hand fpcancel (SPEC.md, "Inputs").

Each returns the clean value or raises `ValidationError` naming the field. They run before
anything touches the database or a URL.
"""

import re

from models.tables import LANES
from worker.errors import ValidationError

ORDER_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
SOURCE_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
NOTE_MAX_CHARS = 1000


def _shown(value: str, limit: int = 40) -> str:
    """The value as quoted in an error message, cut short so a message stays one line."""
    text = value if len(value) <= limit else value[:limit] + "…"
    return repr(text)


def clean_order_uuid(value: object, field: str = "order_uuid") -> str:
    """Front Payment's order id (`ODR123456789`): 1-64 of A-Z a-z 0-9 _ -, nothing else."""
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    if value == "":
        raise ValidationError(field, "is empty")
    if len(value) > 64:
        raise ValidationError(field, f"is {len(value)} characters long, at most 64 allowed")
    if not ORDER_ID_PATTERN.fullmatch(value):
        raise ValidationError(
            field, f"{_shown(value)} may only hold letters, digits, '_' and '-' (e.g. ODR123456789)"
        )
    return value


def clean_note(value: object, field: str = "note") -> str:
    """A cancellation note: trimmed, then 1-1,000 characters."""
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    note = value.strip()
    if not note:
        raise ValidationError(field, "is empty")
    if len(note) > NOTE_MAX_CHARS:
        raise ValidationError(
            field, f"is {len(note)} characters long, at most {NOTE_MAX_CHARS} allowed"
        )
    return note


def clean_source(value: object, field: str = "source") -> str | None:
    """An optional label: None, or 1-64 of A-Z a-z 0-9 _ - . :"""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    if not SOURCE_PATTERN.fullmatch(value):
        raise ValidationError(
            field, f"{_shown(value)} must be 1-64 of letters, digits, '_', '-', '.' and ':'"
        )
    return value


def clean_lane(value: object, field: str = "lane") -> str:
    """The lane a job waits in: `live` (customers, first) or `bulk` (stock-outs)."""
    if value not in LANES:
        raise ValidationError(field, f"{value!r} is not one of {', '.join(LANES)}")
    assert isinstance(value, str)
    return value
