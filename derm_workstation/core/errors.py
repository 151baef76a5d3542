"""Errors a clinician or an operator can understand.

Every expected failure is a :class:`DermError` with a plain-language ``message``.
The CLI prints it as one ``error:`` line and exits with ``exit_code``
(2 = the input you gave is wrong, 1 = the workstation could not do it);
the GUI shows the same sentence in a dialog. Tracebacks go to the log file only.
"""

from __future__ import annotations


class DermError(Exception):
    """Base class of every expected, explainable failure."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(DermError):
    """The user's input (an argument, an id, a file) is wrong. Exit code 2."""

    exit_code = 2


class NotFoundError(InputError):
    """A case, patient or photo with the given id does not exist."""


class StorageError(DermError):
    """The local store cannot be used (permissions, disk, damaged files)."""


class DataDirError(StorageError):
    """The data directory cannot be created or written."""


class DatabaseError(StorageError):
    """The database file is damaged or is not a database at all."""


class SchemaTooNewError(StorageError):
    """The database was written by a newer version of the workstation."""


class ImageCorruptError(StorageError):
    """A stored photo no longer matches its checksum or is missing."""

    def __init__(self, message: str, sha256: str) -> None:
        super().__init__(message)
        self.sha256 = sha256


class PermissionDeniedError(DermError):
    """The acting user may not do this."""
