"""Opening the main window in a GUI test, the way the app does after start-up."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from PySide6.QtCore import QSettings

from derm_workstation.core.services import CaseService
from derm_workstation.core.users import Actor, local_actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.client import RetryPolicy
from derm_workstation.qt.app import apply_theme
from derm_workstation.qt.main_window import QtMainWindow
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets.qt_sync_status import SyncOutcome

TIMEOUT = 20_000


def open_main_window(qtbot, qapp, ws: Workspace, actor: Actor | None = None, *,
                     retry: RetryPolicy | None = None) -> QtMainWindow:
    """A shown main window attached to ``ws``, its queue loaded (``ready``)."""
    apply_theme(qapp)
    win = QtMainWindow(QtTaskManager(), QSettings())
    qtbot.addWidget(win)
    if retry is not None:
        win.sync.retry = retry
    with qtbot.waitSignal(win.ready, timeout=TIMEOUT):
        win.show()
        win.attach(ws, CaseService(ws, actor or local_actor()))
        win.refresh()
    return win


def close_main_window(win: QtMainWindow) -> None:
    if win.compare_window is not None:
        win.compare_window.close()
    win.close()
    win.tasks.shutdown()


@contextmanager
def main_window(qtbot, qapp, ws: Workspace, actor: Actor | None = None, *,
                retry: RetryPolicy | None = None) -> Iterator[QtMainWindow]:
    """:func:`open_main_window` for the length of a ``with`` block (a fixture's body)."""
    win = open_main_window(qtbot, qapp, ws, actor, retry=retry)
    try:
        yield win
    finally:
        close_main_window(win)


def use_portal(qtbot, win: QtMainWindow, url: str, token: str) -> SyncOutcome:
    """Point the window at a portal for this session (the token is not stored, as in
    the demo); the first sync starts by itself. Returns its outcome."""
    with qtbot.waitSignal(win.sync.finished, timeout=TIMEOUT) as blocker:
        win.sync.use_portal(url, token)
    outcome: SyncOutcome = blocker.args[0]
    return outcome
