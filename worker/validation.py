"""Validators for what users and producers hand fpcancel (SPEC.md, "Inputs").

Each returns the clean value or raises `ValidationError` naming the field. They run before
anything touches the database or a URL, and they refuse everything either database cannot store
(a NUL, a lone surrogate from invalid UTF-8 on a command line), so a value that passes here is
never refused downstream.
"""

import re

from fpcancel.errors import ValidationError
from fpcancel.statuses import LANES
from fpcancel.textsafe import trim

ORDER_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A label ops read in logs and filters: a job's source, an API key's name.
LABEL_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
NOTE_MAX_CHARS = 1000
# Control characters a note may not hold: C0 but tab and line breaks, DEL and C1. NUL is among
# them (PostgreSQL's text cannot store it); the rest are no part of any cancellation reason.
_NOTE_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


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
    """A cancellation note: trimmed of white space and invisible characters (zero-width space,
    BOM), then 1-1,000 characters, with no control character but tab and line breaks."""
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    if _SURROGATE.search(value):
        raise ValidationError(
            field, "is not valid Unicode (invalid UTF-8 on the command line or in the file?)"
        )
    bad = _NOTE_CONTROL.search(value)
    if bad:
        raise ValidationError(
            field,
            f"holds the control character {bad.group()!r} at position {bad.start() + 1}; "
            "only tab and line breaks are allowed",
        )
    note = trim(value)
    if not note:
        if value.strip():
            raise ValidationError(field, "is empty: it holds only invisible characters")
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
    if not LABEL_PATTERN.fullmatch(value):
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
