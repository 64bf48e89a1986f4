"""Logging for the worker: one line per provider call, text or JSON, the token redacted always."""

import json
import logging
import sys
import time
from datetime import UTC, datetime

from fpcancel.redaction import Redactor


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then blanks every secret out of the line (tracebacks included)."""

    def __init__(self, redactor: Redactor, fmt: str | None = None, as_json: bool = False) -> None:
        super().__init__(fmt)
        self._redactor = redactor
        self._as_json = as_json
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        if self._as_json:
            payload = {
                "time": datetime.fromtimestamp(record.created, UTC)
                .isoformat()
                .replace("+00:00", "Z"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
            payload.update(getattr(record, "fields", {}) or {})
            if record.exc_info:
                payload["exception"] = self.formatException(record.exc_info)
            line = json.dumps(payload, default=str)
        else:
            line = super().format(record)
        return self._redactor.text(line)


def setup_logging(
    level: str = "INFO", *, as_json: bool = False, redactor: Redactor | None = None
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter(
            redactor or Redactor(),
            "%(asctime)sZ %(levelname)s %(name)s: %(message)s",
            as_json=as_json,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin chatter is not ours
