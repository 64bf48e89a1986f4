"""fpcancel's own errors, as the command line maps them to exit codes.

    FpcancelError
    ├── BadInput          exit 2: a bad argument, setting, id or state, with a one-line reason
    │   ├── SettingsError     a malformed or missing environment variable
    │   ├── ValidationError   an order id, note, source or CSV line that breaks the contract
    │   ├── UnknownJobError   no job has that id
    │   ├── UnknownEventError no event has that id
    │   └── JobStateError     the job is in the wrong state for the command
    └── ServiceError      exit 1: the database or broker cannot be reached

Provider (HTTP) errors live in `fpcancel.answers`; they never reach a user as an exception.
"""


class FpcancelError(Exception):
    """Base of fpcancel's own errors."""

    exit_code = 1


class BadInput(FpcancelError):
    """The user gave something fpcancel refuses; nothing was written."""

    exit_code = 2


class SettingsError(BadInput):
    """An environment variable is missing or malformed."""


class ValidationError(BadInput):
    """A value breaks the contract in SPEC.md (`field: reason`)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class UnknownJobError(BadInput):
    """No job has the id the user gave."""


class UnknownEventError(BadInput):
    """No outcome event has the id the user gave."""


class JobStateError(BadInput):
    """The job is in a state the command cannot act on."""


class ServiceError(FpcancelError):
    """A service (database, broker) could not be reached or failed."""
