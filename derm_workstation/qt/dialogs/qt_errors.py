"""Showing failures as sentences a clinician understands (ARCHITECTURE rule 5)."""

from __future__ import annotations

import logging

from PySide6.QtWidgets import QMessageBox, QWidget

from derm_workstation.core.errors import DermError

log = logging.getLogger(__name__)

UNEXPECTED = (
    "Something unexpected went wrong. Your data was not changed. "
    "The technical details were written to the workstation's log file."
)


def user_message(exc: BaseException) -> str:
    """The sentence to show for an exception; unexpected ones are logged with traceback."""
    if isinstance(exc, DermError):
        return exc.message
    log.error("unexpected error", exc_info=exc)
    return UNEXPECTED


def show_error(parent: QWidget | None, exc: BaseException, title: str = "Problem") -> None:
    box = QMessageBox(QMessageBox.Icon.Warning, title, user_message(exc),
                      QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("errorDialog")
    box.setAccessibleName("Error message")
    box.open()
