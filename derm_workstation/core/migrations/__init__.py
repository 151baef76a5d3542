"""Alembic migrations of the local database (run by :mod:`derm_workstation.core.db`)."""
