"""Alembic migrations for fpcancel's tables; run them with `fpcancel db upgrade`."""
