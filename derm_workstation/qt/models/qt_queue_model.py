"""The case queue as a lazy table model (ARCHITECTURE rule 3).

The model knows how many cases match the current query and holds the pages of
rows (case id + display fields) the view has asked for. A query loads the
count and the first page in one trip to the database lane; further pages are
fetched when the view first needs them (until then a row shows "…"). Sorting
and filtering are SQL (``core.queue``), never Python sorts of loaded rows, so
a queue of 100,000 cases costs the same as one of 100.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont

from derm_workstation.core.views import QueueQuery, QueueRow
from derm_workstation.qt.tasks import QtTaskManager

if TYPE_CHECKING:
    from derm_workstation.core.services import CaseService

PAGE = 200

#: (header, sort key) per column.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("Priority", "priority"),
    ("Waiting", "waiting"),
    ("Patient", "patient"),
    ("Age", "age"),
    ("Sex", "sex"),
    ("Complaint", "complaint"),
    ("Body site", "body_site"),
    ("Photos", "photos"),
    ("Status", "status"),
)
COL_PRIORITY, COL_WAITING, COL_PATIENT, COL_AGE, COL_SEX = range(5)
COL_COMPLAINT, COL_SITE, COL_PHOTOS, COL_STATUS = range(5, 9)

PRIORITY_COLOURS = {
    "stat": QColor("#ff6b6b"),
    "asap": QColor("#ff8f5a"),
    "urgent": QColor("#f2b84b"),
}
SEX_SHORT = {"female": "F", "male": "M", "other": "X", "unknown": "?"}

_Index = QModelIndex | QPersistentModelIndex


def waiting_text(since: datetime, now: datetime | None = None) -> str:
    """'45 min', '3 h 10 min', '2 d 4 h' — how long the patient has waited."""
    now = now or datetime.now(UTC)
    minutes = max(0, int((now - since).total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, mins = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {mins:02d} min"
    days, hrs = divmod(hours, 24)
    return f"{days} d {hrs} h"


class QtQueueModel(QAbstractTableModel):
    """Ordered case ids plus a cache of the rows the view has asked for."""

    #: Emitted after a query's ids have arrived (argument: number of cases).
    loaded = Signal(int)
    #: Emitted when a query failed (argument: the exception).
    failed = Signal(object)

    def __init__(self, tasks: QtTaskManager, service: CaseService | None = None) -> None:
        super().__init__()
        self._service = service
        self._tasks = tasks
        self._count = 0
        self._pages: dict[int, list[QueueRow]] = {}
        self._pages_requested: set[int] = set()
        self._generation = 0
        self._query = QueueQuery()
        self._bold = QFont()
        self._bold.setBold(True)

    # -- querying -------------------------------------------------------------------------
    @property
    def query(self) -> QueueQuery:
        return self._query

    def set_query(self, query: QueueQuery) -> None:
        self._query = query
        self.reload()

    def attach(self, service: CaseService) -> None:
        """Connect to the opened store (the window exists before the store is open)."""
        self._service = service

    def reload(self) -> None:
        service = self._service
        if service is None:
            return
        self._generation += 1
        gen = self._generation
        q = self._query
        self._tasks.run_db(
            lambda: service.queue_first_page(q, PAGE),
            lambda result: self._first_page_loaded(gen, *result),
            self.failed.emit,
        )

    def _first_page_loaded(self, gen: int, total: int, rows: list[QueueRow]) -> None:
        if gen != self._generation:
            return  # a newer query superseded this one
        self.beginResetModel()
        self._count = total
        self._pages = {0: rows}
        self._pages_requested = {0}
        self.endResetModel()
        self.loaded.emit(total)

    def _request_page(self, page: int) -> None:
        service = self._service
        if page in self._pages_requested or service is None:
            return
        self._pages_requested.add(page)
        gen = self._generation
        q = self._query
        self._tasks.run_db(
            lambda: service.queue_page(q, page * PAGE, PAGE),
            lambda rows: self._page_loaded(gen, page, rows),
            self.failed.emit,
        )

    def _page_loaded(self, gen: int, page: int, rows: list[QueueRow]) -> None:
        if gen != self._generation:
            return
        self._pages[page] = rows
        first = page * PAGE
        last = min(self._count, first + PAGE) - 1
        if last >= first:
            self.dataChanged.emit(self.index(first, 0), self.index(last, len(COLUMNS) - 1))

    # -- lookup ---------------------------------------------------------------------------
    def loaded_row(self, row: int) -> QueueRow | None:
        rows = self._pages.get(row // PAGE)
        if rows is None or not 0 <= row < self._count:
            return None
        i = row % PAGE
        return rows[i] if i < len(rows) else None

    def case_id(self, row: int) -> str | None:
        r = self.loaded_row(row)
        return r.id if r else None

    def row_of(self, case_id: str) -> int:
        """Row of a case among the loaded pages, or -1."""
        for page, rows in self._pages.items():
            for i, r in enumerate(rows):
                if r.id == case_id:
                    return page * PAGE + i
        return -1

    # -- Qt model API ---------------------------------------------------------------------
    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else self._count

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section][0]
        return None

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self.loaded_row(index.row())
        if row is None:
            self._request_page(index.row() // PAGE)
            return "…" if role == Qt.ItemDataRole.DisplayRole and index.column() == 2 else None
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(row, col)
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == COL_STATUS and row.incomplete:
                return "The portal sent this case with missing or malformed parts."
            if col == COL_WAITING:
                return f"Submitted {row.submitted_at.astimezone():%d %b %Y %H:%M}"
            if col in (COL_COMPLAINT, COL_SITE, COL_PATIENT):
                return self._display(row, col)
        if role == Qt.ItemDataRole.ForegroundRole and col == COL_PRIORITY:
            colour = PRIORITY_COLOURS.get(row.priority)
            return QBrush(colour) if colour else None
        if role == Qt.ItemDataRole.FontRole and col == COL_PRIORITY and row.priority != "routine":
            return self._bold
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (COL_AGE, COL_PHOTOS, COL_SEX):
            return int(Qt.AlignmentFlag.AlignCenter)
        if role == Qt.ItemDataRole.UserRole:
            return row.id
        return None

    @staticmethod
    def _display(row: QueueRow, col: int) -> str:
        if col == COL_PRIORITY:
            return row.priority_label
        if col == COL_WAITING:
            return waiting_text(row.submitted_at)
        if col == COL_PATIENT:
            return row.patient_name
        if col == COL_AGE:
            return "" if row.age_years is None else str(row.age_years)
        if col == COL_SEX:
            return SEX_SHORT.get(row.sex, "?")
        if col == COL_COMPLAINT:
            return row.chief_complaint
        if col == COL_SITE:
            return row.body_site
        if col == COL_PHOTOS:
            return str(row.photo_count)
        if col == COL_STATUS:
            return ("⚠ " if row.incomplete else "") + row.status_label
        return ""

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        key = COLUMNS[column][1]
        descending = order == Qt.SortOrder.DescendingOrder
        # "Waiting" ascending means the longest wait first: the oldest submission.
        q = self._query
        self._query = QueueQuery(
            statuses=q.statuses, priorities=q.priorities, text=q.text, sort=key,
            descending=descending, patient_id=q.patient_id,
        )
        self.reload()
