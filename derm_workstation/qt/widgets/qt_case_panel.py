"""The open case: patient, complaint, description, questionnaire, messages,
earlier visits, thumbnails and the photo viewer with its tools.

Layout comes from ``ui/case_panel.ui`` (compiled into ``qt/forms``). Photos are
read and decoded on the image pool; the GUI thread only receives ready QImages.
Photo files dropped on the panel (or picked with Import…) are added to the case
through :class:`~derm_workstation.qt.dialogs.qt_import_dialog.QtImportDialog`.
"""

from __future__ import annotations

import html
import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QSize, Qt, QUrl, Signal
from PySide6.QtGui import (
    QColor,
    QDragEnterEvent,
    QDropEvent,
    QIcon,
    QImage,
    QKeySequence,
    QPainter,
    QPixmap,
    QShortcut,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QListWidgetItem,
    QSizePolicy,
    QTreeWidgetItem,
    QWidget,
)

from derm_workstation.core.errors import DermError
from derm_workstation.core.views import CaseDetail, PhotoView, QuestionView
from derm_workstation.imaging.levels import PREVIEW_SIZE
from derm_workstation.qt.forms.case_panel import Ui_CasePanel
from derm_workstation.qt.models.qt_queue_model import waiting_text
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets.qt_photo_layer import PhotoSource, to_qimage

if TYPE_CHECKING:
    from derm_workstation.core.services import CaseService
    from derm_workstation.imaging.thumbnails import ThumbnailCache
    from derm_workstation.qt.widgets.qt_analysis_panel import QtAnalysisPanel
    from derm_workstation.qt.widgets.qt_annotation_layer import QtAnnotationLayer
    from derm_workstation.qt.widgets.qt_body_map import QtBodyMap

log = logging.getLogger(__name__)

THUMB_SIZE = 256
PHOTO_FILE_FILTER = ("Photos (*.jpg *.jpeg *.png *.webp *.tif *.tiff *.heic *.heif "
                     "*.JPG *.JPEG *.PNG *.WEBP *.TIF *.TIFF *.HEIC *.HEIF);;All files (*)")
PHOTO_ID_ROLE = Qt.ItemDataRole.UserRole
#: "loading", "ready" or "damaged": the state of a thumbnail item.
THUMB_STATE_ROLE = Qt.ItemDataRole.UserRole + 1
SEX_LABELS = {"female": "Female", "male": "Male", "other": "Other", "unknown": "Sex not stated"}


def thumbnail_qimage(data: bytes) -> QImage:
    """A cached thumbnail's bytes (JPEG or PNG) as a QImage, on a worker thread.

    Decoded by Pillow, never by ``QImage.fromData``: that call keeps Python's GIL while
    Qt probes its image plugins, and the SVG plugin's probe connects a QObject, which
    takes one of Qt's signal-slot locks. The GUI thread disconnecting a signal of a
    Python-made QObject holds such a lock while it waits for the GIL: the two threads
    then wait for each other for ever (seen as a hung test run; reproduced with two
    threads decoding while the GUI thread connects and disconnects). A QImage built
    from raw pixels takes no such lock: the safe decoder and :func:`to_qimage`, as for
    the viewer's quick preview.
    """
    from derm_workstation.imaging.decode import ImageRejected, decode_image

    try:
        return to_qimage(decode_image(data))
    except ImageRejected as exc:
        raise DermError("The thumbnail could not be made.") from exc


def photo_source(ph: PhotoView, service: CaseService,
                 thumbs: ThumbnailCache | None) -> PhotoSource:
    """A photo for the viewer: verified bytes from the store; the cached quick preview (if
    one was made) to show while they decode."""
    sha = ph.sha256
    preview = (lambda: thumbs.get(sha, PREVIEW_SIZE)) if thumbs is not None else None
    return PhotoSource.from_photo(ph, lambda: service.photo_bytes(sha), preview)


def _fmt_dt(dt: datetime | None) -> str:
    return dt.astimezone().strftime("%d %b %Y %H:%M") if dt else "unknown"


def _placeholder_icon(text: str, size: QSize) -> QIcon:
    pm = QPixmap(size)
    pm.fill(QColor("#2a2f36"))
    p = QPainter(pm)
    p.setPen(QColor("#e6b450"))
    p.drawText(pm.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, text)
    p.end()
    return QIcon(pm)


def _delivery_html(state: str, message_id: str = "") -> str:
    """An outbound message's state in the thread: queued, sent, or failed with a retry link
    (for that message only)."""
    if state == "failed":
        href = html.escape(f"retry:{message_id}" if message_id else "retry", quote=True)
        return ("<span style='color:#ff6b6b'><b>failed</b></span> — "
                f"<a href='{href}' style='color:#9cc4ff'>retry</a>")
    if state == "queued":
        return "<span style='color:#e6b450'>queued</span>"
    return html.escape(state)


ALLERGIES_UNKNOWN = "Allergies not checked"


def allergy_line(d: CaseDetail) -> tuple[str, bool]:
    """("Allergies: penicillin (high), latex", severe?) for the case header.

    "No known allergies recorded" when the portal was asked and sent none; "Allergies not
    checked" when it is unknown (a case not from the portal, or the portal's answer was not
    available — ``CaseDetail.allergies_checked`` False).
    """
    checked = d.allergies_checked
    active = [a for a in d.allergies
              if (a.clinical_status or "active") not in ("inactive", "resolved")]
    if active:
        names = []
        for a in active:
            crit = a.criticality if a.criticality and a.criticality != "unable-to-assess" \
                else None
            names.append(f"{a.substance} ({crit})" if crit else a.substance)
        severe = any(a.criticality == "high" for a in active)
        return "Allergies: " + ", ".join(names), severe
    if not checked:
        return ALLERGIES_UNKNOWN, False
    if d.allergies:
        return f"No active allergies recorded ({len(d.allergies)} resolved)", False
    return "No known allergies recorded", False


class QtCasePanel(QWidget):
    """Shows one :class:`CaseDetail`."""

    #: The first photo of the case is on screen (or failed with a message): id of the photo.
    photo_shown = Signal(str)
    #: The clinician asked to open another case (an earlier visit): its id.
    open_case_requested = Signal(str)
    #: The clinician asked to compare photos (Compare… button).
    compare_requested = Signal()
    #: Photos were added to the case (its id): reload it and the queue.
    case_changed = Signal(str)
    #: The clinician clicked "Claim this case" in the banner (case id).
    claim_requested = Signal(str)
    #: Open these photos (ids) in the compare window: a pin of the body map.
    compare_photos_requested = Signal(list)
    #: A message to the patient was queued, or a failed one put back in the outbox (case id).
    message_queued = Signal(str)

    def __init__(self, tasks: QtTaskManager, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ui = Ui_CasePanel()
        self.ui.setupUi(self)
        self._service: CaseService | None = None
        self._thumbs: ThumbnailCache | None = None
        self._tasks = tasks
        self._detail: CaseDetail | None = None
        self._photo_by_id: dict[str, PhotoView] = {}
        self._thumb_images: dict[str, QImage] = {}
        self._file_dialog: QFileDialog | None = None
        self._import_dialog: QWidget | None = None
        self._select_last = False
        self._shown_photo: str | None = None
        self._wanted_photo: str | None = None  # the latest photo asked for
        self._generation = 0
        self._banner_plain: list[str] = []
        ui = self.ui
        ui.patientLabel.setObjectName("patientLabel")
        ui.patientLabel.setProperty("role", "title")
        ui.caseMetaLabel.setProperty("role", "subtitle")
        ui.bannerLabel.setProperty("role", "banner")
        ui.bannerLabel.setVisible(False)
        ui.bannerLabel.setTextFormat(Qt.TextFormat.RichText)
        ui.bannerLabel.setWordWrap(True)
        ui.bannerLabel.linkActivated.connect(self._on_banner_link)
        #: Offer "Claim this case" in the banner (a portal is set up).
        self.claims_enabled = False
        self._setup_compose()
        # Header lines keep their natural height; the photos and details get the rest.
        for label in (ui.patientLabel, ui.caseMetaLabel, ui.allergyLabel, ui.bannerLabel):
            label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        ui.panelLayout.setStretchFactor(ui.panelSplitter, 1)
        ui.panelSplitter.setStretchFactor(0, 2)
        ui.panelSplitter.setStretchFactor(1, 5)
        ui.panelSplitter.setSizes([380, 900])
        ui.questionnaireTree.header().setStretchLastSection(True)
        ui.questionnaireTree.header().setObjectName("questionnaireHeader")
        ui.questionnaireTree.header().setAccessibleName("Questionnaire columns")
        ui.questionnaireTree.setColumnWidth(0, 230)
        # Fixed cells: long titles are elided ("Close-up with co…"), full text in the tooltip.
        ui.thumbnailList.setTextElideMode(Qt.TextElideMode.ElideRight)
        ui.thumbnailList.setGridSize(QSize(124, 104))
        ui.thumbnailList.setUniformItemSizes(True)
        ui.thumbnailList.currentItemChanged.connect(self._on_thumbnail_changed)
        ui.historyList.itemActivated.connect(self._on_history_activated)
        view = ui.photoView
        view.set_tasks(tasks)
        view.image_shown.connect(self._on_view_shown)
        view.load_failed.connect(self._on_view_failed)
        ui.photoToolbar.bind(view)
        ui.photoToolbar.ui.levelsButton.toggled.connect(ui.levelsPanel.setVisible)
        ui.levelsPanel.adjustment_changed.connect(view.set_adjustment)
        ui.photoToolbar.ui.compareButton.clicked.connect(self.compare_requested)
        ui.photoToolbar.ui.importButton.clicked.connect(lambda: self.start_import())
        view.show_message("Select a case to see its photos")
        self.annotations: QtAnnotationLayer | None = None
        self.analysis: QtAnalysisPanel | None = None
        self.body_map: QtBodyMap | None = None
        self.setAcceptDrops(True)
        self.setEnabled(False)

    # -- public -----------------------------------------------------------------------------
    def attach(self, service: CaseService, thumbs: ThumbnailCache) -> None:
        """Connect to the opened store (the window exists before the store is open)."""
        self._service = service
        self._thumbs = thumbs
        if self.annotations is None:
            # Created here, not at start-up: the layer's core module loads SQLAlchemy,
            # which the database lane has imported by the time the store is attached.
            from PySide6.QtWidgets import QHBoxLayout

            from derm_workstation.qt.widgets.qt_analysis_panel import QtAnalysisPanel
            from derm_workstation.qt.widgets.qt_annotation_layer import QtAnnotationLayer

            view = self.ui.photoView
            self.annotations = QtAnnotationLayer(view)
            layout = self.ui.photoLayout
            layout.insertWidget(layout.indexOf(view), self.annotations.toolbar())
            # the Measure panel sits right of the photo, shown by the toolbar's Measure
            row = QWidget(self.ui.photoArea)
            row.setObjectName("photoRow")
            at = layout.indexOf(view)
            layout.takeAt(at)
            hbox = QHBoxLayout(row)
            hbox.setContentsMargins(0, 0, 0, 0)
            hbox.setSpacing(4)
            hbox.addWidget(view, 1)
            self.analysis = QtAnalysisPanel(self.annotations, self._tasks, row)
            self.analysis.setVisible(False)
            hbox.addWidget(self.analysis)
            layout.insertWidget(at, row, 1)
            self.annotations.measure_action.toggled.connect(self.analysis.setVisible)
            self.analysis.calibration_changed.connect(self._on_calibration_changed)
        if self.body_map is None:
            self._add_body_map_tab(service)

    def _add_body_map_tab(self, service: CaseService) -> None:
        """The Body map tab: the patient's photo sites and numbered lesions on an outline."""
        from derm_workstation.core.body_map import BodyMapService
        from derm_workstation.qt.widgets.qt_body_map import QtBodyMap

        self.body_map = QtBodyMap(self._tasks, BodyMapService(service.ws, service.actor))
        self.body_map.compare_requested.connect(self.compare_photos_requested)
        if self.annotations is not None:  # a new lesion marker, a moved outline
            self.annotations.saved.connect(self.body_map.refresh)
        if self.analysis is not None:  # calibration changes a lesion's size in mm
            self.analysis.calibration_changed.connect(lambda *_: self.body_map.refresh()
                                                      if self.body_map else None)
        self.ui.detailTabs.addTab(self.body_map, "Body map")
        # keyboard order: Tab from the tab bar goes into the map (the page is added last,
        # so its widgets would otherwise come after every photo tool)
        prev: QWidget = self.ui.detailTabs.tabBar()
        w = self.body_map.nextInFocusChain()
        chain: list[QWidget] = []
        while w is not self.body_map and self.body_map.isAncestorOf(w):
            if w.focusPolicy() & Qt.FocusPolicy.TabFocus and w not in chain:
                chain.append(w)
            w = w.nextInFocusChain()
        for w in chain:
            QWidget.setTabOrder(prev, w)
            prev = w
        if self._detail is not None:
            self.body_map.set_patient(self._detail.patient.id)

    @property
    def detail(self) -> CaseDetail | None:
        return self._detail

    @property
    def shown_photo_id(self) -> str | None:
        return self._shown_photo

    @property
    def service(self) -> CaseService | None:
        return self._service

    def select_last_photo_on_reload(self) -> None:
        """When the case is shown next, open its last photo (the one just imported)."""
        self._select_last = True

    def thumbnail_image(self, photo_id: str) -> QImage | None:
        """The photo's thumbnail, when it has been loaded (a quick placeholder)."""
        return self._thumb_images.get(photo_id)

    @property
    def thumbs(self) -> ThumbnailCache | None:
        return self._thumbs

    def photo_source(self, ph: PhotoView) -> PhotoSource:
        """How views read this photo: verified bytes from the store, on the image pool,
        and a cached quick preview while they decode."""
        service = self._service
        assert service is not None
        return photo_source(ph, service, self._thumbs)

    def clear(self) -> None:
        self._generation += 1
        self._detail = None
        ui = self.ui
        ui.patientLabel.setText("No case selected")
        ui.caseMetaLabel.setText("Select a case in the queue to see its photos and details.")
        ui.bannerLabel.setVisible(False)
        self._banner_plain = []
        for w in (ui.complaintValue, ui.siteValue, ui.submittedValue, ui.photoInfoLabel):
            w.setText("")
        ui.descriptionView.clear()
        ui.questionnaireTree.clear()
        ui.messagesView.clear()
        ui.allergyLabel.setText("")
        ui.messageEdit.clear()
        ui.messageStatusLabel.setText("")
        ui.historyList.clear()
        ui.thumbnailList.clear()
        self._thumb_images.clear()
        ui.photoView.show_message("Select a case to see its photos")
        if self.annotations is not None:
            self.annotations.close_photo()
        if self.body_map is not None:
            self.body_map.set_patient(None)
        self.setEnabled(False)

    def show_case(self, d: CaseDetail) -> None:
        self._generation += 1
        same_case = self._detail is not None and self._detail.id == d.id
        self._detail = d
        if not same_case:
            self.ui.levelsPanel.reset()
        self._shown_photo = None
        self.setEnabled(True)
        ui = self.ui
        p = d.patient
        age = f"{p.age_years} y" if p.age_years is not None else "age unknown"
        ident = f"  ·  {p.identifier}" if p.identifier else ""
        ui.patientLabel.setText(f"{p.name}  ·  {age}  ·  {SEX_LABELS.get(p.sex, p.sex)}{ident}")
        number = d.case_number or d.id[:8]
        ui.caseMetaLabel.setText(
            f"Case {number}  ·  {d.priority_label}  ·  {d.status_label}  ·  "
            f"waiting {waiting_text(d.submitted_at)}  ·  {len(d.photos)} photo(s)"
        )
        self._show_banner(d)
        self._show_allergies(d)
        ui.complaintValue.setText(d.chief_complaint or "—")
        ui.siteValue.setText(d.body_site or "—")
        ui.submittedValue.setText(_fmt_dt(d.submitted_at))
        ui.descriptionView.setPlainText(d.description or "The patient wrote no description.")
        self._fill_questionnaire(d.questionnaire)
        self._fill_messages(d)
        self._fill_history(d)
        self._fill_thumbnails(d)
        if self.body_map is not None:
            self.body_map.set_patient(d.patient.id)

    # -- filling ----------------------------------------------------------------------------
    def banner_parts(self, d: CaseDetail) -> list[str]:
        """The banner's sentences (plain text), most important first."""
        parts = []
        if d.portal_notice:
            parts.append(f"Portal: {d.portal_notice}")
        if d.claim_label and d.claim_state in ("pending", "elsewhere", "conflict") and not (
                d.portal_notice and d.claim_state != "pending"):  # the notice already says it
            parts.append(d.claim_label)
        elif d.claim_state == "claimed" and d.assignee:
            parts.append(f"Claimed by you ({d.assignee})")
        elif d.portal_owner and not d.portal_notice and d.status not in ("completed", "cancelled") \
                and (self._service is None or d.assignee != self._service.actor.username):
            parts.append(f"Claimed on the portal by {d.assignee or 'someone else'}: "
                         "opening it does not take it over.")
        if d.incomplete_reason:
            parts.append(f"Incomplete from portal: {d.incomplete_reason}")
        if d.priority in ("stat", "asap", "urgent"):
            parts.append(f"{d.priority_label} case: review promptly.")
        return parts

    def banner_text(self) -> str:
        """The banner as plain text ('' when hidden)."""
        if not self.ui.bannerLabel.isVisibleTo(self):
            return ""
        return " · ".join(self._banner_plain)

    def _show_banner(self, d: CaseDetail) -> None:
        parts = self.banner_parts(d)
        self._banner_plain = list(parts)
        html_parts = [html.escape(p) for p in parts]
        if d.portal_notice:
            html_parts[0] = f"<b>{html_parts[0]}</b>"
        if self.claims_enabled and d.claimable:
            html_parts.append("Not claimed yet: <a href='claim' style='color:#9cc4ff'>"
                              "Claim this case</a>")
            self._banner_plain.append("Not claimed yet: Claim this case")
        label = self.ui.bannerLabel
        label.setText("&nbsp;&nbsp;·&nbsp;&nbsp;".join(html_parts))
        label.setVisible(bool(html_parts))

    def _on_banner_link(self, link: str) -> None:
        if link == "claim" and self._detail is not None:
            self.claim_requested.emit(self._detail.id)

    def _fill_questionnaire(self, questions: tuple[QuestionView, ...]) -> None:
        tree = self.ui.questionnaireTree
        tree.clear()

        def add(parent: QTreeWidgetItem | None, q: QuestionView) -> None:
            item = QTreeWidgetItem([q.text or q.link_id, "; ".join(q.answers)])
            item.setToolTip(0, q.text)
            item.setToolTip(1, "; ".join(q.answers))
            if parent is None:
                tree.addTopLevelItem(item)
            else:
                parent.addChild(item)
            for child in q.items:
                add(item, child)

        for q in questions:
            add(None, q)
        if not questions:
            tree.addTopLevelItem(QTreeWidgetItem(["No questionnaire was submitted", ""]))
        tree.expandAll()
        self.ui.detailTabs.setTabText(1, f"Answers ({len(questions)})")

    def _fill_messages(self, d: CaseDetail) -> None:
        parts = []
        for m in d.messages:
            who = "Patient" if m.direction == "inbound" else "Clinic"
            state = ("" if m.direction == "inbound"
                     else f" · {_delivery_html(m.delivery_state, m.id)}")
            cls = "in" if m.direction == "inbound" else "out"
            parts.append(
                f'<div class="{cls}"><p style="color:#8b949e;margin:6px 0 0 0">'
                f"<b>{who}</b> · {_fmt_dt(m.sent_at)}{state}</p>"
                f'<p style="margin:2px 0 8px 0">{html.escape(m.text)}</p></div>'
            )
        if not parts:
            parts.append('<p style="color:#8b949e">No messages yet.</p>')
        self.ui.messagesView.setHtml("".join(parts))
        self.ui.detailTabs.setTabText(2, f"Messages ({len(d.messages)})")
        self._update_compose(d)

    # -- messages to the patient ----------------------------------------------------------
    def _setup_compose(self) -> None:
        ui = self.ui
        ui.messageEdit.setObjectName("messageEdit")
        ui.sendMessageButton.setObjectName("sendMessageButton")
        ui.messageStatusLabel.setObjectName("messageStatusLabel")
        ui.allergyLabel.setObjectName("allergyLabel")
        ui.sendMessageButton.clicked.connect(self.send_message)
        ui.messagesView.anchorClicked.connect(self._on_message_link)
        send = QShortcut(QKeySequence("Ctrl+Return"), ui.messageEdit, self.send_message)
        send.setContext(Qt.ShortcutContext.WidgetShortcut)
        self._send_shortcut = send

    def _update_compose(self, d: CaseDetail) -> None:
        """The compose box is usable for a portal case and a role that may write."""
        service = self._service
        ui = self.ui
        why = ""
        if service is not None and not service.actor.can("case.edit"):
            why = "Your role cannot send messages to patients."
        elif not d.portal_service_request_id or not d.patient.portal_id:
            why = "This case did not come from the portal: there is no one to send a message to."
        ui.messageEdit.setEnabled(not why)
        ui.sendMessageButton.setEnabled(not why)
        ui.messageEdit.setPlaceholderText(why or "Write to the patient…")
        if why:
            ui.messageStatusLabel.setText("")

    def message_thread_text(self) -> str:
        """The thread as plain text (tests, screen readers)."""
        return self.ui.messagesView.toPlainText()

    def send_message(self) -> None:
        """Queue the typed message to the patient in the outbox (works offline)."""
        d, service = self._detail, self._service
        ui = self.ui
        if d is None or service is None or not ui.sendMessageButton.isEnabled():
            return
        text = ui.messageEdit.toPlainText()
        if not text.strip():
            ui.messageStatusLabel.setText("Write a message first: an empty message is not sent.")
            ui.messageStatusLabel.setStyleSheet("color: #ff9f43;")
            ui.messageEdit.setFocus()
            return
        from derm_workstation.core.portal_actions import PortalActions

        actions = PortalActions(service.ws, service.actor)
        case_id = d.id
        ui.sendMessageButton.setEnabled(False)
        ui.messageStatusLabel.setText("Queuing…")
        ui.messageStatusLabel.setStyleSheet("")

        def done(_queued: object) -> None:
            if self._detail is not None and self._detail.id == case_id:
                ui.messageEdit.clear()
                ui.messageStatusLabel.setText("Queued: it is sent to the portal with the next "
                                              "sync.")
                ui.sendMessageButton.setEnabled(True)
            self.message_queued.emit(case_id)

        def failed(exc: BaseException) -> None:
            from derm_workstation.qt.dialogs.qt_errors import user_message

            ui.sendMessageButton.setEnabled(True)
            ui.messageStatusLabel.setText(user_message(exc))
            ui.messageStatusLabel.setStyleSheet("color: #ff6b6b;")

        self._tasks.run_db(lambda: actions.message_patient(case_id, text), done, failed)

    def _on_message_link(self, url: QUrl) -> None:
        link = url.toString()
        if link.startswith("retry:"):
            self.retry_message(link.removeprefix("retry:"))
        elif link == "retry":
            self.retry_failed_messages()

    def retry_message(self, message_id: str) -> None:
        """Put this one failed message back in the outbox (its "failed — retry" link)."""
        d, service = self._detail, self._service
        if d is None or service is None:
            return
        from derm_workstation.core.portal_actions import PortalActions

        actions = PortalActions(service.ws, service.actor)
        case_id = d.id

        def done(_item: object) -> None:
            self.ui.messageStatusLabel.setText("Message queued again.")
            self.ui.messageStatusLabel.setStyleSheet("")
            self.message_queued.emit(case_id)

        def failed(exc: BaseException) -> None:
            from derm_workstation.qt.dialogs.qt_errors import user_message

            self.ui.messageStatusLabel.setText(user_message(exc))
            self.ui.messageStatusLabel.setStyleSheet("color: #ff6b6b;")

        self._tasks.run_db(lambda: actions.retry_message(message_id), done, failed)

    def retry_failed_messages(self) -> None:
        """Put this case's failed messages back in the outbox ("failed — retry")."""
        d, service = self._detail, self._service
        if d is None or service is None:
            return
        from derm_workstation.core.portal_actions import KIND_MESSAGE, PortalActions

        actions = PortalActions(service.ws, service.actor)
        case_id = d.id

        def work() -> int:
            failed = [i for i in actions.outbox(("failed",))
                      if i.kind == KIND_MESSAGE and i.case_id == case_id]
            for item in failed:
                actions.retry(item.id)
            return len(failed)

        def done(n: int) -> None:
            self.ui.messageStatusLabel.setText(
                f"{n} message(s) queued again." if n else "Nothing to retry.")
            self.ui.messageStatusLabel.setStyleSheet("")
            self.message_queued.emit(case_id)

        def failed(exc: BaseException) -> None:
            from derm_workstation.qt.dialogs.qt_errors import user_message

            self.ui.messageStatusLabel.setText(user_message(exc))
            self.ui.messageStatusLabel.setStyleSheet("color: #ff6b6b;")

        self._tasks.run_db(work, done, failed)

    # -- allergies ------------------------------------------------------------------------
    def _show_allergies(self, d: CaseDetail) -> None:
        text, severe = allergy_line(d)
        label = self.ui.allergyLabel
        label.setText(text)
        state = "severe" if severe else "unknown" if text == ALLERGIES_UNKNOWN else "plain"
        label.setProperty("allergyState", state)
        label.setStyleSheet({"severe": "color: #ff8a80; font-weight: bold;",
                             "unknown": "color: #e6b450;"}.get(state, "color: #c9d1d9;"))

    def allergy_text(self) -> str:
        return self.ui.allergyLabel.text()

    def _fill_history(self, d: CaseDetail) -> None:
        lst = self.ui.historyList
        lst.clear()
        for e in d.earlier_cases:
            item = QListWidgetItem(
                f"{e.submitted_at.astimezone():%d %b %Y}  ·  {e.chief_complaint}  ·  "
                f"{e.body_site}  ·  {e.photo_count} photo(s)  ·  {e.status}"
            )
            item.setData(PHOTO_ID_ROLE, e.id)
            lst.addItem(item)
        if not d.earlier_cases:
            lst.addItem(QListWidgetItem("No earlier visits on this workstation."))
        self.ui.detailTabs.setTabText(3, f"History ({len(d.earlier_cases)})")

    def _fill_thumbnails(self, d: CaseDetail) -> None:
        lst = self.ui.thumbnailList
        lst.blockSignals(True)
        lst.clear()
        lst.blockSignals(False)
        self._photo_by_id = {ph.id: ph for ph in d.photos}
        self._thumb_images.clear()
        size = lst.iconSize()
        gen = self._generation
        for i, ph in enumerate(d.photos, start=1):
            item = QListWidgetItem(_placeholder_icon("loading…", size), f"{i}. {ph.title}")
            item.setData(PHOTO_ID_ROLE, ph.id)
            item.setData(THUMB_STATE_ROLE, "loading")
            item.setToolTip(f"{ph.title}\n{ph.body_site}\n{ph.width} × {ph.height} px")
            lst.addItem(item)
            sha = ph.sha256
            self._tasks.run_image(
                lambda sha=sha: self._load_thumbnail(sha),
                lambda img, item=item, g=gen, pid=ph.id: self._thumb_ready(g, item, img, pid),
                lambda exc, item=item, g=gen: self._thumb_failed(g, item, exc),
            )
        if d.photos:
            lst.setCurrentRow(len(d.photos) - 1 if self._select_last else 0)
            self._select_last = False
        else:
            self.ui.photoView.show_message("This case has no photos.")
            if self.annotations is not None:
                self.annotations.close_photo()
            self.ui.photoInfoLabel.setText("")
            self.photo_shown.emit("")

    # -- background work (image pool) -------------------------------------------------------
    def _load_thumbnail(self, sha: str) -> QImage:
        service, thumbs = self._service, self._thumbs
        assert service is not None and thumbs is not None
        data = thumbs.get_or_create(sha, THUMB_SIZE, lambda: service.photo_bytes(sha))
        return thumbnail_qimage(data)

    # -- results (GUI thread) ----------------------------------------------------------------
    def _thumb_ready(self, gen: int, item: QListWidgetItem, img: QImage, photo_id: str) -> None:
        if gen == self._generation:
            # the same pixels when selected: Qt would otherwise tint a selected icon with
            # the highlight colour, and a thumbnail's colours must stay true
            pm = QPixmap.fromImage(img)
            icon = QIcon()
            icon.addPixmap(pm, QIcon.Mode.Normal)
            icon.addPixmap(pm, QIcon.Mode.Selected)
            item.setIcon(icon)
            item.setData(THUMB_STATE_ROLE, "ready")
            self._thumb_images[photo_id] = img

    def _thumb_failed(self, gen: int, item: QListWidgetItem, exc: BaseException) -> None:
        if gen != self._generation:
            return
        log.warning("thumbnail failed: %s", exc)
        item.setIcon(_placeholder_icon("damaged", self.ui.thumbnailList.iconSize()))
        item.setData(THUMB_STATE_ROLE, "damaged")

    def _on_thumbnail_changed(self, current: QListWidgetItem | None, _prev: object) -> None:
        if current is None:
            return
        photo_id = current.data(PHOTO_ID_ROLE)
        ph = self._photo_by_id.get(photo_id)
        if ph is None:
            return
        self._wanted_photo = ph.id
        self._shown_photo = None
        taken = _fmt_dt(ph.taken_at) if ph.taken_at else "date unknown"
        calib = (f"{ph.calibration_px_per_mm:.1f} px/mm" if ph.calibration_px_per_mm
                 else "uncalibrated")
        self.ui.photoInfoLabel.setText(
            f"{ph.title}  ·  {ph.body_site}  ·  taken {taken}  ·  "
            f"{ph.width} × {ph.height} px  ·  {calib}"
        )
        # The view decodes on the image pool and drops results for a photo it no longer
        # shows, so quick clicks through the strip always end on the last one.
        self.ui.photoView.open_photo(self.photo_source(ph), self._thumb_images.get(ph.id))
        self._open_annotations(ph)

    def _open_annotations(self, ph: PhotoView) -> None:
        """Show (and let the clinician edit) this photo's annotations."""
        service = self._service
        if self.annotations is None or service is None:
            return
        from derm_workstation.core.annotations import AnnotationService
        from derm_workstation.core.lesion_analysis import LesionAnalysisService

        self.annotations.open_photo(ph.id, AnnotationService(service.ws, service.actor),
                                    self._tasks, ph.calibration_px_per_mm)
        if self.analysis is not None:
            self.analysis.set_photo(ph.id, LesionAnalysisService(service.ws, service.actor))

    def _on_calibration_changed(self, photo_id: str, px_per_mm: float | None) -> None:
        """The Measure panel changed a photo's calibration: keep the strip's facts true."""
        from dataclasses import replace

        ph = self._photo_by_id.get(photo_id)
        if ph is None:
            return
        self._photo_by_id[photo_id] = replace(ph, calibration_px_per_mm=px_per_mm)
        self.ui.photoView.set_calibration(ph.sha256, px_per_mm)  # the Info overlay (I)
        if self._wanted_photo == photo_id:
            text = self.ui.photoInfoLabel.text()
            head, sep, _old = text.rpartition("  ·  ")
            calib = f"{px_per_mm:.1f} px/mm" if px_per_mm else "uncalibrated"
            if sep:
                self.ui.photoInfoLabel.setText(f"{head}  ·  {calib}")

    def _current_photo(self, key: str) -> str | None:
        ph = self._photo_by_id.get(self._wanted_photo or "")
        return ph.id if ph is not None and ph.sha256 == key else None

    def _on_view_shown(self, key: str) -> None:
        photo_id = self._current_photo(key)
        if photo_id is not None:
            self._shown_photo = photo_id
            self.photo_shown.emit(photo_id)
            self._ensure_preview(key)

    def _ensure_preview(self, sha: str) -> None:
        """Make the quick-preview copy in the background, for the next time."""
        service, thumbs = self._service, self._thumbs
        if service is None or thumbs is None:
            return
        self._tasks.run_image(
            lambda: thumbs.get_or_create(sha, PREVIEW_SIZE, lambda: service.photo_bytes(sha)),
            None, lambda exc: log.info("no quick preview: %s", exc))

    def _on_view_failed(self, _text: str) -> None:
        src = self.ui.photoView.source
        photo_id = self._current_photo(src.key) if src is not None else None
        if photo_id is not None:
            self._shown_photo = None
            self.photo_shown.emit(photo_id)

    # -- import --------------------------------------------------------------------------
    def start_import(self, paths: list[str] | None = None) -> None:
        """Add photo files to the open case: ``paths``, or ask with a file dialog."""
        if self._detail is None or self._service is None:
            return
        if paths:
            self._open_import_dialog(paths)
            return
        dlg = QFileDialog(self, "Add photos to this case")
        dlg.setObjectName("importFileDialog")
        dlg.setAccessibleName("Choose photo files")
        dlg.setFileMode(QFileDialog.FileMode.ExistingFiles)
        dlg.setNameFilter(PHOTO_FILE_FILTER)
        dlg.filesSelected.connect(lambda files: self._open_import_dialog(list(files)))
        self._file_dialog = dlg
        dlg.open()

    def _open_import_dialog(self, paths: list[str]) -> None:
        from derm_workstation.core.photo_import import PhotoImporter
        from derm_workstation.qt.dialogs.qt_import_dialog import QtImportDialog

        d, service = self._detail, self._service
        if d is None or service is None or not paths:
            return
        dlg = QtImportDialog(self._tasks, PhotoImporter(service.ws, service.actor), d, self,
                             thumbs=self._thumbs)
        dlg.imported.connect(lambda case_id, _n: self.case_changed.emit(case_id))
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.add_paths(paths)
        self._import_dialog = dlg
        dlg.destroyed.connect(lambda *_: self._import_closed(dlg))
        dlg.open()

    def _import_closed(self, dlg: QWidget) -> None:
        if self._import_dialog is dlg:
            self._import_dialog = None

    @property
    def import_dialog(self) -> QWidget | None:
        return self._import_dialog

    @staticmethod
    def _local_files(event: QDragEnterEvent | QDropEvent) -> list[str]:
        md = event.mimeData()
        if not md.hasUrls():
            return []
        return [u.toLocalFile() for u in md.urls() if u.isLocalFile()
                and not Path(u.toLocalFile()).is_dir()]

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if self._detail is not None and self._local_files(event):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:  # type: ignore[no-untyped-def]
        event.acceptProposedAction() if self._detail is not None else event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        files = self._local_files(event)
        if self._detail is None or not files:
            event.ignore()
            return
        event.acceptProposedAction()
        self._open_import_dialog(files)

    def _on_history_activated(self, item: QListWidgetItem) -> None:
        cid = item.data(PHOTO_ID_ROLE)
        if cid:
            self.open_case_requested.emit(cid)
