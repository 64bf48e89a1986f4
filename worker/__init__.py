"""fpcancel: cancel orders at Front Payment reliably and in bulk.

The one import name a shop's code needs (SPEC.md, "Python API"):

    import fpcancel

    job_id = fpcancel.enqueue_cancel("ODR123456789", "Customer asked to cancel", source="shop")
    result = fpcancel.enqueue_bulk([("ODR1", "Out of stock")], source="stockout")
    job = fpcancel.get_job(job_id)
    events = fpcancel.read_events(after=0, limit=100)

The functions are loaded on first use (`fpcancel.api`), so importing one of fpcancel's modules
does not pull in the database and broker libraries.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BulkInputError",
    "ValidationError",
    "__version__",
    "enqueue_bulk",
    "enqueue_cancel",
    "get_job",
    "read_events",
]

if TYPE_CHECKING:
    from fpcancel.api import enqueue_bulk, enqueue_cancel, get_job, read_events
    from fpcancel.bulk import BulkInputError
    from fpcancel.errors import ValidationError

_LAZY = {
    "enqueue_cancel": "fpcancel.api",
    "enqueue_bulk": "fpcancel.api",
    "get_job": "fpcancel.api",
    "read_events": "fpcancel.api",
    "BulkInputError": "fpcancel.bulk",
    "ValidationError": "fpcancel.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fpcancel' has no attribute {name!r}")
