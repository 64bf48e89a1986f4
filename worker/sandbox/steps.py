"""The sandbox's step language: what a scripted order does on its next call (`510`,
`502-html`, `late:S`, ...), parsed and checked. The table is in `fpcancel.sandbox`'s docstring."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

_STEP_CODE_RE: Final = re.compile(r"(\d{3})(-html)?")


@dataclass(frozen=True)
class Step:
    """One parsed script step; ``action`` is real, answer, html, slow, late, drop or apply-510."""

    text: str
    action: str
    code: int = 0
    message: str | None = None
    retry_after: int | None = None
    seconds: float = 0.0


REAL_STEP: Final = Step("real", "real")


def parse_step(text: object) -> Step:
    """Parse one step of the step language; ValueError names the step and what was expected."""
    if not isinstance(text, str):
        raise ValueError(f"script step must be a string; got {text!r}")
    if text in ("ok", "drop", "apply-510"):
        return Step(text, "real" if text == "ok" else text)
    head, sep, rest = text.partition(":")
    if head in ("slow", "late"):
        try:
            seconds = float(rest)
        except ValueError:
            seconds = -1.0
        if not sep or not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"step {text!r}: {head} needs seconds, e.g. '{head}:0.5'")
        return Step(text, head, seconds=seconds)
    match = _STEP_CODE_RE.fullmatch(head)
    if match is None:
        raise ValueError(
            f"unknown script step {text!r}; expected ok, drop, apply-510, slow:S, late:S, "
            "NNN, NNN:message, NNN:retry-after=S or NNN-html"
        )
    code = int(match.group(1))
    # 1xx, 204 and 304 answers cannot carry the body every step sends.
    if not 200 <= code <= 599 or code in (204, 304):
        raise ValueError(f"step {text!r}: status must be 200-599 and not 204 or 304")
    html = match.group(2) is not None
    message: str | None = None
    retry_text: str | None = None
    if sep:
        if rest.startswith("retry-after="):
            retry_text = rest.removeprefix("retry-after=")
        else:
            message, marker, tail = rest.rpartition(":retry-after=")
            if marker:
                retry_text = tail
            else:
                message = rest
            if not message:
                raise ValueError(f"step {text!r}: the message after ':' is empty")
            if html:
                raise ValueError(f"step {text!r}: an HTML page takes no message")
    retry_after: int | None = None
    if retry_text is not None:
        if not retry_text.isdigit():
            raise ValueError(
                f"step {text!r}: retry-after needs whole seconds, e.g. 'retry-after=2'"
            )
        retry_after = int(retry_text)
    return Step(text, "html" if html else "answer", code, message, retry_after)


def check_script(script: object, name: str) -> list[str]:
    if script is None:
        return []
    if not isinstance(script, (list, tuple)):
        raise ValueError(f"{name} must be a list of steps; got {script!r}")
    for step in script:
        parse_step(step)
    return list(script)
