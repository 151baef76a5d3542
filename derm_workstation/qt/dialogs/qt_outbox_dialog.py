"""Portal > Outbox…: the changes waiting for (or refused by) the portal, with Retry.

Layout from ``ui/outbox_dialog.ui``. Rows come from
:meth:`derm_workstation.core.portal_actions.PortalActions.outbox` on the database lane;
no message text or patient data is shown — kind, case number, state, tries and the
portal's own error message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QDialog, QHeaderView, QTableWidgetItem, QWidget

from derm_workstation.qt.dialogs.qt_errors import show_error
from derm_workstation.qt.forms.outbox_dialog import Ui_OutboxDialog
from derm_workstation.qt.tasks import QtTaskManager

if TYPE_CHECKING:
    from derm_workstation.core.portal_actions import OutboxView

KIND_LABELS = {
    "task.claim": "Claim case",
    "communication": "Message to patient",
    "create": "New resource",
}
STATE_LABELS = {
    "pending": "Waiting to be sent",
    "sent": "Sent",
    "failed": "Failed — needs attention",
}
COLUMNS = ("Created", "What", "Case", "State", "Tries", "Portal's message")


class QtOutboxDialog(QDialog):
    #: An item was put back in the queue (argument: outbox id).
    retried = Signal(str)
    #: The list was (re)loaded (argument: number of rows).
    loaded = Signal(int)

    def __init__(self, tasks: QtTaskManager, workspace: Any, actor: Any,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("outboxDialog")
        self.tasks = tasks
        self.workspace = workspace
        self.actor = actor
        self.items: list[OutboxView] = []
        self.ui = Ui_OutboxDialog()
        self.ui.setupUi(self)
        t = self.ui.outboxTable
        t.setObjectName("outboxTable")
        t.setColumnCount(len(COLUMNS))
        t.setHorizontalHeaderLabels(list(COLUMNS))
        t.verticalHeader().setVisible(False)
        t.horizontalHeader().setObjectName("outboxHeader")
        t.horizontalHeader().setAccessibleName("Outbox columns")
        t.verticalHeader().setObjectName("outboxRowHeader")
        t.verticalHeader().setAccessibleName("Outbox rows")
        for col, width in enumerate((125, 135, 150, 185, 45)):
            t.setColumnWidth(col, width)
        t.horizontalHeader().setSectionResizeMode(len(COLUMNS) - 1,
                                                  QHeaderView.ResizeMode.Stretch)
        t.itemSelectionChanged.connect(self._update_buttons)
        self.ui.retryButton.clicked.connect(self.retry_selected)
        self.ui.refreshButton.clicked.connect(self.reload)
        self.resize(1100, 440)
        self.reload()

    def _actions(self) -> Any:
        from derm_workstation.core.portal_actions import PortalActions

        return PortalActions(self.workspace, self.actor)

    def reload(self) -> None:
        self.tasks.run_db(lambda: self._actions().outbox(), self._fill,
                          lambda exc: show_error(self, exc))

    def _fill(self, items: list[OutboxView]) -> None:
        selected = self.selected_item()
        keep = selected.id if selected is not None else None
        self.items = items
        t = self.ui.outboxTable
        t.setRowCount(len(items))
        failed_colour = QColor("#ff6b6b")
        for row, it in enumerate(items):
            cells = (
                it.created_at.astimezone().strftime("%Y-%m-%d %H:%M"),
                KIND_LABELS.get(it.kind, it.kind),
                it.case_number or (it.case_id or "")[:8],
                STATE_LABELS.get(it.state, it.state),
                str(it.attempts),
                (it.last_error or "") if it.state != "sent" else "",
            )
            for col, text in enumerate(cells):
                cell = QTableWidgetItem(text)
                cell.setData(Qt.ItemDataRole.UserRole, it.id)
                if col == len(cells) - 1 and text:
                    cell.setToolTip(text)
                if it.state == "failed" and col == 3:
                    cell.setForeground(failed_colour)
                t.setItem(row, col, cell)
            if it.id == keep:
                t.selectRow(row)
        n_pending = sum(1 for i in items if i.state == "pending")
        n_failed = sum(1 for i in items if i.state == "failed")
        if not items:
            text = "Nothing has been queued for the portal yet."
        else:
            text = f"{n_pending} waiting to be sent with the next sync · {n_failed} failed."
            if n_failed:
                text += "  A failed item was refused by the portal: read its message, " \
                        "then select it and press Retry."
        self.ui.summaryLabel.setText(text)
        if keep is None and n_failed:
            first = next(r for r, i in enumerate(items) if i.state == "failed")
            t.selectRow(first)
        self._update_buttons()
        self.loaded.emit(len(items))

    def selected_item(self) -> OutboxView | None:
        rows = self.ui.outboxTable.selectionModel().selectedRows()
        if not rows or rows[0].row() >= len(self.items):
            return None
        return self.items[rows[0].row()]

    def _update_buttons(self) -> None:
        it = self.selected_item()
        self.ui.retryButton.setEnabled(it is not None and it.state == "failed")

    def retry_selected(self) -> None:
        it = self.selected_item()
        if it is None or it.state != "failed":
            return
        item_id = it.id
        self.ui.retryButton.setEnabled(False)

        def done(_view: object) -> None:
            self.retried.emit(item_id)
            self.reload()

        self.tasks.run_db(lambda: self._actions().retry(item_id), done,
                          lambda exc: show_error(self, exc))
