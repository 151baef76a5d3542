"""Undo / Redo actions for a widget with its own command stack.

Ctrl+Z undoes; Ctrl+Shift+Z and the platform's Redo key redo. The shortcuts are scoped
to the widget and its children, so two panes with their own stacks (the annotation
tools, the body map) never take each other's Ctrl+Z.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QAction, QKeySequence


def undo_redo_actions(parent: QObject, name: str, undo: Callable[[], None],
                      redo: Callable[[], None], *, what: str = ""
                      ) -> tuple[QAction, QAction]:
    """(undo, redo) actions named ``<name>Undo`` / ``<name>Redo``, texts "Undo <what>"."""
    suffix = f" {what}" if what else ""
    undo_action = QAction(f"Undo{suffix}", parent)
    undo_action.setObjectName(f"{name}Undo")
    undo_action.setShortcut(QKeySequence.StandardKey.Undo)
    undo_action.triggered.connect(undo)
    redo_action = QAction(f"Redo{suffix}", parent)
    redo_action.setObjectName(f"{name}Redo")
    redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"),
                              QKeySequence(QKeySequence.StandardKey.Redo)])
    redo_action.triggered.connect(redo)
    for act in (undo_action, redo_action):
        act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
    return undo_action, redo_action
