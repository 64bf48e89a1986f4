"""Secrets out of every text fpcancel stores, logs or prints: the one place that knows how.

A `Redactor` holds the process's secrets (the provider's bearer token; any other secret setting)
and replaces each with `***` wherever it appears: as it is, JSON-escaped (a proxy echoing headers
into a JSON body writes `/` as `\\/`) and percent-encoded. The provider client runs every answer
through it before anything else sees the answer; the log formatter runs every line through it.
"""

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

MASK = "***"


class Redactor:
    """Replaces every known secret with `***` in text and in parsed JSON."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            forms.add(secret)
            forms.add(json.dumps(secret)[1:-1])
            forms.add(json.dumps(secret, ensure_ascii=False)[1:-1].replace("/", "\\/"))
            forms.add(quote(secret, safe=""))
        # Longest first, so a secret that contains another is replaced whole.
        self._forms = sorted(forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def text(self, value: str) -> str:
        for form in self._forms:
            if form in value:
                value = value.replace(form, MASK)
        return value

    def data(self, value: Any) -> Any:
        """Parsed JSON with every string (keys too) redacted."""
        if not self._forms:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.data(item) for item in value]
        if isinstance(value, dict):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        return value


NO_SECRETS = Redactor()
