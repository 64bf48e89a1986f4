"""fpcancel: cancel orders at Front Payment reliably and in bulk."""

__version__ = "0.1.0"
