"""Alembic migrations of the local database (run by :mod:`derm_workstation.core.db`).

``REVISIONS`` lists every revision in order, newest last. The app reads it to
decide whether a database needs migrating without importing Alembic (which
costs a tenth of a second at start-up); a test keeps it equal to the scripts.
"""

REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005")
HEAD: str = REVISIONS[-1]
