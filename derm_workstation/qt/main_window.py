"""The main window: filter bar, case queue, open case, status bar.

Everything that touches the disk runs on the task lanes; this class only wires
widgets to the services and the queue model. Window geometry and splitter
positions are kept in QSettings (the only thing stored there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtCore import QByteArray, QItemSelection, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeyEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QMainWindow,
    QProgressBar,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from derm_workstation.core.errors import DermError
from derm_workstation.core.notify import Notification, notifier
from derm_workstation.core.views import CaseDetail, QueueCounts, QueueQuery
from derm_workstation.qt.dialogs.qt_about import QtAboutDialog
from derm_workstation.qt.dialogs.qt_errors import show_error, user_message
from derm_workstation.qt.forms.filter_bar import Ui_FilterBar
from derm_workstation.qt.models.qt_queue_model import (
    COL_AGE,
    COL_PHOTOS,
    COL_PRIORITY,
    COL_SEX,
    COL_WAITING,
    QtQueueModel,
)
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets.qt_case_panel import QtCasePanel
from derm_workstation.qt.widgets.qt_sync_status import (
    QtSyncController,
    QtSyncStatus,
    SyncOutcome,
    SyncSnapshot,
)

if TYPE_CHECKING:
    from derm_workstation.core.services import CaseService
    from derm_workstation.core.workspace import Workspace

log = logging.getLogger(__name__)
#: How long after the window is attached it starts preparing previews of open cases.
PREPARE_PREVIEWS_AFTER_MS = 2000

#: (label, statuses) for the "Show" filter; None = the open cases.
STATUS_FILTERS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("Open cases", None),
    ("New", ("requested",)),
    ("Received", ("received",)),
    ("Accepted", ("accepted",)),
    ("In progress", ("in-progress",)),
    ("Awaiting patient", ("on-hold",)),
    ("Completed", ("completed",)),
    ("Cancelled", ("cancelled",)),
    ("All cases", ("requested", "received", "accepted", "in-progress", "on-hold", "completed",
                   "cancelled")),
)
PRIORITY_FILTERS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("Any", None),
    ("Urgent or higher", ("urgent", "asap", "stat")),
    ("STAT", ("stat",)),
    ("ASAP", ("asap",)),
    ("Urgent", ("urgent",)),
    ("Routine", ("routine",)),
)
SEARCH_DELAY_MS = 250


class QtQueueTable(QTableView):
    """The queue table. Arrow keys and clicks preview a case; Enter (or a double-click,
    through ``doubleClicked``) opens it for review."""

    activated_with_keyboard = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.activated_with_keyboard.emit()
            event.accept()
            return
        super().keyPressEvent(event)


class QtMainWindow(QMainWindow):
    #: The queue is loaded, a case is open and its first photo is on screen.
    ready = Signal()
    #: A case's details were shown (argument: case id).
    case_shown = Signal(str)
    #: Core notifications, re-emitted on the GUI thread.
    _notes = Signal(object)

    def __init__(self, tasks: QtTaskManager, settings: QSettings | None = None, *,
                 remember_geometry: bool = True) -> None:
        """The window opens before the local store: ``attach`` connects it once open."""
        super().__init__()
        self.setObjectName("mainWindow")
        self.setAccessibleName("Derm Review Workstation")
        self.setWindowTitle("Derm Review Workstation")
        self.workspace: Workspace | None = None
        self.service: CaseService | None = None
        self.tasks = tasks
        self.settings = settings or QSettings()
        self._busy_message = ""
        self._ready_emitted = False
        self._hold_ready = False
        self._pending_select: str | None = None
        self._requested_case: str | None = None
        #: The case whose details are being loaded now (None when none is in flight).
        self._loading_case: str | None = None
        #: The next queue load keeps the open case on screen even when it has left the
        #: list (a sync cancelled or completed it elsewhere: its banner must stay visible).
        self._keep_open_case = False

        self.model = QtQueueModel(tasks)
        self.model.loaded.connect(self._on_queue_loaded)
        self.model.failed.connect(self._on_error)

        self.filter_bar = QWidget(self)
        self.filter_ui = Ui_FilterBar()
        self.filter_ui.setupUi(self.filter_bar)
        for label, statuses in STATUS_FILTERS:
            self.filter_ui.statusFilter.addItem(label, statuses)
        for label, prios in PRIORITY_FILTERS:
            self.filter_ui.priorityFilter.addItem(label, prios)
        self.filter_ui.statusFilter.currentIndexChanged.connect(self._apply_filters)
        self.filter_ui.priorityFilter.currentIndexChanged.connect(self._apply_filters)
        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self._apply_filters)
        self.filter_ui.searchEdit.textChanged.connect(lambda _t: self._search_timer.start())
        self.filter_ui.searchEdit.returnPressed.connect(self._search_submitted)
        self.filter_ui.searchEdit.installEventFilter(self)

        self.table = QtQueueTable(self)
        self.table.setObjectName("queueTable")
        self.table.setAccessibleName("Case queue")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setSortingEnabled(True)
        self.table.setWordWrap(False)
        self.table.setShowGrid(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(26)
        self.table.horizontalHeader().setSortIndicator(COL_PRIORITY, Qt.SortOrder.AscendingOrder)
        header = self.table.horizontalHeader()
        header.setObjectName("queueHeader")
        header.setAccessibleName("Queue columns: click to sort")
        self.table.verticalHeader().setObjectName("queueRowHeader")
        self.table.verticalHeader().setAccessibleName("Queue rows")
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        for col, width in ((COL_PRIORITY, 80), (COL_WAITING, 100), (2, 210), (COL_AGE, 50),
                           (COL_SEX, 44), (5, 330), (6, 260), (COL_PHOTOS, 60), (8, 130)):
            self.table.setColumnWidth(col, width)
        header.setSectionResizeMode(5, QHeaderView.ResizeMode.Stretch)
        self.table.selectionModel().selectionChanged.connect(self._on_selection_changed)
        self.table.activated_with_keyboard.connect(self.open_selected_for_review)
        self.table.doubleClicked.connect(lambda _index: self.open_selected_for_review())

        self.case_panel = QtCasePanel(tasks, self)
        self.case_panel.setObjectName("casePanel")
        self.case_panel.photo_shown.connect(self._on_photo_shown)
        self.case_panel.open_case_requested.connect(self.open_case)
        self.case_panel.compare_requested.connect(self.open_compare)
        self.case_panel.compare_photos_requested.connect(self.open_compare_photos)
        self.case_panel.case_changed.connect(self._on_case_changed)
        self.case_panel.claim_requested.connect(self.claim_case)
        self.case_panel.message_queued.connect(self._after_message)
        self.sync = QtSyncController(tasks, self)
        self.sync_status = QtSyncStatus(self)
        self.outbox_dialog: QWidget | None = None
        self.portal_dialog: QWidget | None = None
        #: A case opened for review (Enter, double-click) before its details had loaded:
        #: claimed once they are shown.
        self._claim_when_shown: str | None = None
        self.compare_window: QWidget | None = None

        top = QWidget(self)
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.setSpacing(0)
        top_layout.addWidget(self.filter_bar)
        top_layout.addWidget(self.table)
        self.splitter = QSplitter(Qt.Orientation.Vertical, self)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(top)
        self.splitter.addWidget(self.case_panel)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setChildrenCollapsible(False)
        self.setCentralWidget(self.splitter)

        self._build_menus()
        self._build_status_bar()
        QShortcut(QKeySequence.StandardKey.Find, self, activated=self.focus_search)
        tasks.busy_changed.connect(self._on_busy_changed)
        self._notes.connect(self._on_notification, Qt.ConnectionType.QueuedConnection)
        self._unsubscribe = notifier.subscribe(self._notes.emit)
        self.destroyed.connect(lambda *_: self._unsubscribe())
        self._remember_geometry = remember_geometry
        if remember_geometry:
            self._restore_geometry()
        else:  # e.g. --screenshot: a fixed size, and the user's layout left alone
            self.resize(1500, 940)
            self.splitter.setSizes([300, 640])

    # -- construction -------------------------------------------------------------------------
    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.import_action = QAction("&Import photos…", self, shortcut=QKeySequence("Ctrl+I"))
        self.import_action.setObjectName("importAction")
        self.import_action.setStatusTip("Add photo files (e-mail attachments, a USB stick) to "
                                        "the open case")
        self.import_action.triggered.connect(lambda: self.case_panel.start_import())
        file_menu.addAction(self.import_action)
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit)
        quit_action.setObjectName("quitAction")
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)
        view_menu = self.menuBar().addMenu("&View")
        self.refresh_action = QAction("&Refresh queue", self, shortcut=QKeySequence("F5"))
        self.refresh_action.setObjectName("refreshAction")
        self.refresh_action.triggered.connect(self.refresh)
        view_menu.addAction(self.refresh_action)
        find = QAction("&Find case…", self)
        find.setObjectName("findAction")
        find.setShortcut(QKeySequence.StandardKey.Find)
        find.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)  # the QShortcut handles it
        find.triggered.connect(self.focus_search)
        view_menu.addAction(find)
        fit = QAction("&Fit photo to window", self, shortcut=QKeySequence("Ctrl+0"))
        fit.setObjectName("fitPhotoAction")
        fit.triggered.connect(self.case_panel.ui.photoView.fit)
        view_menu.addAction(fit)
        self.compare_action = QAction("&Compare photos…", self,
                                      shortcut=QKeySequence("Ctrl+Shift+C"))
        self.compare_action.setObjectName("compareAction")
        self.compare_action.triggered.connect(self.open_compare)
        view_menu.addAction(self.compare_action)
        portal_menu = self.menuBar().addMenu("&Portal")
        self.connect_action = QAction("&Connect to portal…", self)
        self.connect_action.setObjectName("connectPortalAction")
        self.connect_action.setStatusTip("The portal's address and how this workstation signs "
                                         "in (token or OAuth2 client credentials)")
        self.connect_action.triggered.connect(self.open_portal_dialog)
        portal_menu.addAction(self.connect_action)
        portal_menu.addSeparator()
        self.sync_action = QAction("&Sync now", self, shortcut=QKeySequence("F9"))
        self.sync_action.setObjectName("syncNowAction")
        self.sync_action.setStatusTip("Fetch new cases from the portal and send waiting changes")
        self.sync_action.triggered.connect(self.sync_now)
        portal_menu.addAction(self.sync_action)
        self.claim_action = QAction("&Claim open case", self)
        self.claim_action.setObjectName("claimAction")
        self.claim_action.setStatusTip("Take the open case: the portal is told with the next sync")
        self.claim_action.triggered.connect(lambda: self.claim_case())
        portal_menu.addAction(self.claim_action)
        self.outbox_action = QAction("&Outbox…", self)
        self.outbox_action.setObjectName("outboxAction")
        self.outbox_action.setStatusTip("Changes waiting for the portal, and ones it refused")
        self.outbox_action.triggered.connect(self.open_outbox)
        portal_menu.addAction(self.outbox_action)
        help_menu = self.menuBar().addMenu("&Help")
        about = QAction("&About", self)
        about.setObjectName("aboutAction")
        about.triggered.connect(self.show_about)
        help_menu.addAction(about)

    def _build_status_bar(self) -> None:
        sb = self.statusBar()
        self.location_label = QLabel("Opening the local store…")
        self.location_label.setObjectName("locationLabel")
        self.location_label.setAccessibleName("Data location")
        self.counts_label = QLabel("")
        self.counts_label.setObjectName("countsLabel")
        self.counts_label.setAccessibleName("Case counts")
        self.progress = QProgressBar()
        self.progress.setObjectName("progressBar")
        self.progress.setAccessibleName("Progress")
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        sb.addWidget(self.location_label, 1)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.counts_label)
        sb.addPermanentWidget(self.sync_status)
        self.sync_status.sync_requested.connect(self.sync_now)
        self.sync_status.outbox_requested.connect(self.open_outbox)
        self.sync.started.connect(lambda: self.sync_status.set_syncing(True))
        self.sync.progressed.connect(self._on_sync_progress)
        self.sync.finished.connect(self._on_sync_finished)
        self.sync.snapshot_changed.connect(self._on_sync_snapshot)
        self.sync.failed.connect(self._on_sync_failed)

    def attach(self, workspace: Workspace, service: CaseService) -> None:
        """Connect the window to the opened store and start loading the queue."""
        from derm_workstation.imaging.thumbnails import ThumbnailCache

        self.workspace = workspace
        self.service = service
        self.model.attach(service)
        self.case_panel.attach(service, ThumbnailCache(workspace.paths.cache / "thumbnails"))
        self.location_label.setText(f"Data: {workspace.location}")
        self.sync.attach(workspace, service.actor)
        # previews of the open cases' photos that arrived while the window was closed
        # (a command-line sync, an import elsewhere), a moment after the queue is shown
        QTimer.singleShot(PREPARE_PREVIEWS_AFTER_MS, self._prepare_open_previews)

    # -- geometry -------------------------------------------------------------------------------
    def _restore_geometry(self) -> None:
        geo = self.settings.value("mainWindow/geometry")
        if isinstance(geo, QByteArray) and not geo.isEmpty():
            self.restoreGeometry(geo)
        else:
            self.resize(1500, 940)
        state = self.settings.value("mainWindow/splitter")
        if isinstance(state, QByteArray) and not state.isEmpty():
            self.splitter.restoreState(state)
        else:
            self.splitter.setSizes([300, 640])

    def save_geometry(self) -> None:
        if not self._remember_geometry:
            return
        self.settings.setValue("mainWindow/geometry", self.saveGeometry())
        self.settings.setValue("mainWindow/splitter", self.splitter.saveState())
        self.settings.sync()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.sync.close()  # cancels a running sync; the lane is joined at shutdown
        self._unsubscribe()
        self.save_geometry()
        super().closeEvent(event)

    # -- queue ------------------------------------------------------------------------------------
    def current_query(self) -> QueueQuery:
        q = self.model.query
        return QueueQuery(
            statuses=self.filter_ui.statusFilter.currentData(),
            priorities=self.filter_ui.priorityFilter.currentData(),
            text=self.filter_ui.searchEdit.text().strip(),
            sort=q.sort,
            descending=q.descending,
        )

    def _apply_filters(self) -> None:
        self._search_timer.stop()
        self.model.set_query(self.current_query())

    def _search_submitted(self) -> None:
        self._apply_filters()
        self.table.setFocus()

    def refresh(self, keep_open_case: bool = False) -> None:
        self._keep_open_case = keep_open_case
        self.model.reload()
        self.refresh_counts()

    def refresh_counts(self) -> None:
        if self.service is not None:
            self.tasks.run_db(self.service.counts, self._on_counts, self._on_error)

    def _on_counts(self, counts: QueueCounts) -> None:
        new = counts.by_status.get("requested", 0)
        self.counts_label.setText(
            f"{counts.open} open  ·  {new} new  ·  {counts.total} on this workstation"
        )

    def _on_queue_loaded(self, n: int) -> None:
        shown = "case" if n == 1 else "cases"
        self.filter_ui.resultCountLabel.setText(f"{n} {shown}")
        # the case being opened (its details may still be loading) wins over the one shown
        target = self._pending_select or self._loading_case or (
            self.case_panel.detail.id if self.case_panel.detail else None)
        self._pending_select = None
        keep, self._keep_open_case = self._keep_open_case, False
        row = self.model.row_of(target) if target else -1
        if row < 0 and keep and self.case_panel.detail is not None:
            self.table.clearSelection()  # the open case stays, with its banner
            return
        if row < 0 and n > 0 and not self.filter_ui.searchEdit.hasFocus():
            row = 0
        if row >= 0:
            self.table.selectRow(row)
            self.table.scrollTo(self.model.index(row, 0))
            d = self.case_panel.detail
            if d is not None and d.id == target and (self.case_panel.shown_photo_id
                                                     or not d.photos):
                self._maybe_ready()
        elif n == 0:
            self.case_panel.clear()
            self._maybe_ready()

    def show_first_case(self) -> None:
        """Reload the queue and open its first (most urgent) case, dropping any case load
        still in flight (e.g. after the demo's first sync)."""
        self._requested_case = None
        self._loading_case = None
        self._pending_select = None
        self.table.clearSelection()
        self.case_panel.clear()
        self.refresh()

    def select_case(self, case_id: str) -> None:
        """Select a case in the queue (after the next load if it is not there yet)."""
        row = self.model.row_of(case_id)
        if row >= 0:
            self.table.selectRow(row)
        else:
            self._pending_select = case_id

    def _on_selection_changed(self, selected: QItemSelection, _deselected: QItemSelection) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return
        case_id = self.model.case_id(rows[0].row())
        shown = self.case_panel.detail.id if self.case_panel.detail is not None else None
        if case_id and case_id != shown and case_id != self._loading_case:
            self.open_case(case_id)  # (a case already being loaded is not asked for twice)

    def open_case(self, case_id: str) -> None:
        """Load a case's details on the database lane and show them."""
        service = self.service
        if service is None:
            return
        self._requested_case = case_id
        self._loading_case = case_id

        def failed(exc: BaseException) -> None:
            if self._loading_case == case_id:
                self._loading_case = None  # selecting it again tries again
            self._on_error(exc)

        self.tasks.run_db(lambda: service.case_detail(case_id), self._show_detail, failed)

    def _show_detail(self, detail: CaseDetail) -> None:
        if detail.id == self._loading_case:
            self._loading_case = None
        if detail.id != self._requested_case:
            return  # the clinician has moved on to another case
        self.case_panel.show_case(detail)
        self.case_shown.emit(detail.id)
        if self._claim_when_shown == detail.id:
            self._claim_when_shown = None
            self._claim_on_open(detail)

    def open_selected_for_review(self) -> None:
        """Enter or a double-click on a queue row: open the case for review. The photos get
        the keyboard focus and the case is claimed when it is still waiting for someone
        (a portal is set up and the role may claim): online the claim is sent at once,
        offline it waits in the outbox. Arrowing or clicking through the queue only
        previews; a case claimed by someone else keeps its banner and is not touched."""
        rows = self.table.selectionModel().selectedRows()
        case_id = self.model.case_id(rows[0].row()) if rows else None
        if not case_id:
            return
        self._open_selected_photos()
        d = self.case_panel.detail
        if d is not None and d.id == case_id:
            self._claim_on_open(d)
        else:  # still loading: claim when it is shown
            self._claim_when_shown = case_id

    def _claim_on_open(self, d: CaseDetail) -> None:
        service = self.service
        if service is None or not service.actor.can("case.edit") or not self.sync.configured:
            return
        if d.portal_owner and d.assignee != service.actor.username \
                and d.status not in ("completed", "cancelled"):
            self.statusBar().showMessage(
                f"Case {d.case_number or d.id[:8]} is claimed by someone else on the portal; "
                "it was opened without claiming it.", 10000)
            return
        if d.claimable:
            self.claim_case(d.id, auto=True)

    # -- portal -------------------------------------------------------------------------------
    def sync_now(self) -> None:
        """Sync with the portal now (F9, Portal > Sync now, the status-bar button)."""
        if self.sync.running:
            self.statusBar().showMessage("A sync is already running.", 5000)
            return
        self.sync.sync_now()

    def _on_sync_progress(self, done: int, total: int) -> None:
        self.sync_status.set_progress(done, total)
        if done == 1 or done % 10 == 0:
            self.refresh(keep_open_case=True)  # cases appear as they are committed

    def _on_sync_snapshot(self, snap: SyncSnapshot) -> None:
        self.sync_status.set_snapshot(snap)
        self.case_panel.claims_enabled = snap.configured
        self.sync_action.setEnabled(snap.configured)
        self.claim_action.setEnabled(snap.configured)

    def _on_sync_failed(self, message: str) -> None:
        self.sync_status.set_syncing(False)
        self.statusBar().showMessage(message, 15000)

    def _on_sync_finished(self, outcome: SyncOutcome) -> None:
        self.sync_status.set_syncing(False)
        s = outcome.summary
        if not outcome.pulled:  # the outbox only (a claim or a message sent at once)
            if not outcome.online:
                text = "Portal unreachable: the change waits in the outbox and is sent " \
                       "with the next sync."
            elif s.errors:
                text = s.errors[0]
            else:
                text = f"{s.outbox_sent} change(s) sent to the portal." if s.outbox_sent \
                    else "Nothing was waiting to be sent."
            self.statusBar().showMessage(text, 15000)
        elif s.completed:
            text = f"Sync finished: {s.cases_new} new, {s.cases_updated} updated case(s)"
            if s.outbox_sent:
                text += f", {s.outbox_sent} change(s) sent"
            self.statusBar().showMessage(text + ".", 10000)
        elif not outcome.online:
            self.statusBar().showMessage(
                "Portal unreachable: everything here can still be used.", 15000)
        else:
            self.statusBar().showMessage(f"Sync incomplete: {s.errors[0]}" if s.errors
                                         else "Sync incomplete.", 15000)
        self.refresh(keep_open_case=True)
        if outcome.pulled:
            self._prepare_previews(list(s.changed_case_ids))
        d = self.case_panel.detail
        if d is not None:
            noticed = {cid for cid, _n in s.notices}
            if d.id in s.changed_case_ids or d.id in noticed or d.claim_state == "pending" \
                    or any(m.delivery_state == "queued" for m in d.messages):
                self.open_case(d.id)

    def _prepare_open_previews(self) -> None:
        service = self.service
        if service is not None:
            self._prepare_previews([], hashes=service.open_photo_hashes)

    def _prepare_previews(self, case_ids: list[str],
                          hashes: Callable[[], list[str]] | None = None) -> None:
        """Make thumbnails and quick previews of newly synced photos (or of the photos
        ``hashes`` names) in the background, so the first time a clinician opens one it
        appears at once (one image-pool task, so photos the clinician clicks are not
        queued behind a whole sync's worth; cached previews cost a file check)."""
        service, thumbs = self.service, self.case_panel.thumbs
        if service is None or thumbs is None or not (case_ids or hashes):
            return
        from derm_workstation.imaging.levels import PREVIEW_SIZE
        from derm_workstation.qt.widgets.qt_case_panel import THUMB_SIZE

        def make_all(hashes: list[str]) -> int:
            made = 0
            for sha in hashes:
                for size in (THUMB_SIZE, PREVIEW_SIZE):
                    if thumbs.path_for(sha, size).exists():
                        continue
                    try:
                        thumbs.get_or_create(sha, size, lambda sha=sha: service.photo_bytes(sha))
                        made += 1
                    except Exception as exc:  # a damaged photo is reported when opened
                        log.info("no preview for a synced photo: %s", exc)
            return made

        self.tasks.run_db(hashes or (lambda: service.photo_hashes(case_ids)),
                          lambda found: self.tasks.run_image(lambda: make_all(found)),
                          lambda exc: log.info("previews not prepared: %s", exc))

    def claim_case(self, case_id: str | None = None, auto: bool = False) -> None:
        """Claim a case (default: the open one): locally now, on the portal via the outbox;
        pushed at once unless the portal was unreachable at the last attempt. ``auto``: the
        claim that comes with opening a case — a refusal shows in the status bar and the
        case's banner instead of an error box."""
        ws, service = self.workspace, self.service
        target = case_id or (self.case_panel.detail.id if self.case_panel.detail else None)
        if ws is None or service is None or target is None:
            return
        from derm_workstation.core.portal_actions import PortalActions

        actions = PortalActions(ws, service.actor)

        def done(result: object) -> None:
            self.statusBar().showMessage(getattr(result, "message", "Claimed."), 10000)
            self.open_case(target)
            self.model.reload()
            self.refresh_counts()
            self.sync.refresh()
            if getattr(result, "state", "") == "queued" and self.sync.snapshot.online \
                    is not False:
                self.sync.push_now()

        def failed(exc: BaseException) -> None:
            if auto and isinstance(exc, DermError):
                self.statusBar().showMessage(user_message(exc), 15000)
                self.open_case(target)
            else:
                self._on_error(exc)

        self.tasks.run_db(lambda: actions.claim(target), done, failed)

    def _after_message(self, case_id: str) -> None:
        """A message was queued (or a failed one put back): show it in the thread at once
        and send it now unless the portal was unreachable at the last attempt."""
        d = self.case_panel.detail
        if d is not None and d.id == case_id:
            self.open_case(case_id)
        self.sync.refresh()
        if self.sync.configured and self.sync.snapshot.online is not False:
            self.sync.push_now()

    def open_portal_dialog(self) -> None:
        """Portal > Connect to portal…: address, token or OAuth2 client credentials, test,
        save (keyring), disconnect."""
        from derm_workstation.qt.dialogs.qt_portal_dialog import QtPortalDialog

        if self.workspace is None:
            self.statusBar().showMessage("The local store is still opening.", 5000)
            return
        if self.portal_dialog is not None:
            self.portal_dialog.raise_()
            self.portal_dialog.activateWindow()
            return
        snap = self.sync.snapshot
        dlg = QtPortalDialog(self.tasks, self.workspace.paths.root,
                             session_portal=snap.portal_url if snap.configured else None,
                             parent=self, workspace=self.workspace,
                             actor=self.service.actor if self.service is not None else None)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.changed.connect(self.sync.portal_saved)
        dlg.destroyed.connect(lambda *_: setattr(self, "portal_dialog", None))
        self.portal_dialog = dlg
        dlg.open()

    def open_outbox(self) -> None:
        """Portal > Outbox…: what waits for the portal, what it refused; Retry."""
        from derm_workstation.qt.dialogs.qt_outbox_dialog import QtOutboxDialog

        if self.workspace is None or self.service is None:
            return
        if self.outbox_dialog is not None:
            self.outbox_dialog.raise_()
            self.outbox_dialog.activateWindow()
            return
        dlg = QtOutboxDialog(self.tasks, self.workspace, self.service.actor, self)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.retried.connect(lambda _id: self._after_retry())
        dlg.destroyed.connect(lambda *_: setattr(self, "outbox_dialog", None))
        self.outbox_dialog = dlg
        dlg.show()

    def _after_retry(self) -> None:
        self.sync.refresh()
        d = self.case_panel.detail
        if d is not None:
            self.open_case(d.id)

    # -- compare and import ---------------------------------------------------------------
    def open_compare(self) -> None:
        """Open the compare window on the open case (photos of earlier visits included)."""
        from derm_workstation.qt.widgets.qt_compare_view import QtCompareWindow

        d, service = self.case_panel.detail, self.service
        if d is None or service is None:
            return
        if not d.photos and not d.earlier_cases:
            self.statusBar().showMessage("This case has no photos to compare.", 8000)
            return
        if self.compare_window is not None:
            self.compare_window.close()
        panel = self.case_panel
        previews = {ph.id: img for ph in d.photos
                    if (img := panel.thumbnail_image(ph.id)) is not None}
        win = QtCompareWindow(self.tasks, service, d, panel.shown_photo_id, previews, self,
                              thumbs=panel.thumbs)
        win.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        win.destroyed.connect(lambda *_: self._compare_closed(win))
        self.compare_window = win
        win.show()

    def open_compare_photos(self, photo_ids: list[str]) -> None:
        """Open the compare window on exactly these photos (a body map pin's photos)."""
        self.open_compare()
        win = self.compare_window
        if win is not None and photo_ids:
            from derm_workstation.qt.widgets.qt_compare_view import QtCompareWindow

            assert isinstance(win, QtCompareWindow)
            win.open_photos(list(photo_ids))

    def _compare_closed(self, win: QWidget) -> None:
        if self.compare_window is win:
            self.compare_window = None

    def _on_case_changed(self, case_id: str) -> None:
        """Photos were imported: show the case again (new thumbnails) and update the queue."""
        self.case_panel.select_last_photo_on_reload()
        self.open_case(case_id)
        self.model.reload()
        self.refresh_counts()

    def _open_selected_photos(self) -> None:
        if self.case_panel.detail is not None:
            self.case_panel.ui.thumbnailList.setFocus()

    def focus_search(self) -> None:
        self.filter_ui.searchEdit.setFocus()
        self.filter_ui.searchEdit.selectAll()

    def eventFilter(self, obj: object, event: object) -> bool:
        if (obj is self.filter_ui.searchEdit and isinstance(event, QKeyEvent)
                and event.type() == QKeyEvent.Type.KeyPress
                and event.key() in (Qt.Key.Key_Down, Qt.Key.Key_Escape)):
            if event.key() == Qt.Key.Key_Escape and self.filter_ui.searchEdit.text():
                self.filter_ui.searchEdit.clear()
            self.table.setFocus()
            return True
        return super().eventFilter(obj, event)  # type: ignore[arg-type]

    # -- readiness, progress, errors -------------------------------------------------------
    def _on_photo_shown(self, _photo_id: str) -> None:
        self._maybe_ready()

    def hold_ready(self, hold: bool) -> None:
        """While held (e.g. demo data still loading), ``ready`` is not emitted."""
        self._hold_ready = hold

    def _maybe_ready(self) -> None:
        if not self._ready_emitted and not self._hold_ready:
            self._ready_emitted = True
            QTimer.singleShot(0, self.ready.emit)

    def _on_busy_changed(self, pending: int) -> None:
        if pending == 0 and not self._busy_message:
            self.progress.setVisible(False)

    def show_progress(self, message: str, done: int, total: int) -> None:
        self._busy_message = message if done < total else ""
        self.progress.setVisible(done < total)
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"{message} %v/%m")
        if done >= total:
            self.statusBar().clearMessage()

    def _on_notification(self, note: Notification) -> None:
        if note.severity == "error":
            self._on_error(DermError(note.message))
        else:
            self.statusBar().showMessage(note.message, 15000)

    def _on_error(self, exc: BaseException) -> None:
        self.statusBar().showMessage(user_message(exc), 10000)
        show_error(self, exc)

    def show_about(self) -> None:
        location = self.workspace.location if self.workspace else "not open yet"
        dlg = QtAboutDialog(location, self)
        dlg.setObjectName("aboutDialog")
        dlg.open()

    def run_in_background(self, fn: Callable[[], object],
                          on_done: Callable[[object], None]) -> None:
        self.tasks.run_db(fn, on_done, self._on_error)

