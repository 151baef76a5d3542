"""Compare photos of a patient: side by side (1×2), a 2×2 grid, or the follow-up over
the baseline (blend, swipe curtain, flicker); linked zoom and pan; alignment of the
follow-ups to the baseline, automatic or by three clicked points.

Layout from ``ui/compare_window.ui`` and ``ui/compare_pane.ui``. Every pane picks any
photo of the case or of the patient's earlier visits (photos of the same body site
first, oldest first). Pane 1 is the **baseline**; each other pane has a transform from
its photo's image coordinates to the baseline's: by default one that matches the
photos' sizes, after alignment the follow-up -> baseline matrix. Linked views map the
centre, zoom and quarter-turn rotation of the pane the clinician moves through these
transforms, so once aligned every pane shows the same anatomy, not the same pixels (a
follow-up taken with the phone turned is turned back to match the baseline).

Aligning by hand works in every layout; in the overlay the view shows the baseline
alone for its three spots, then the follow-up alone for the same three.
:meth:`QtCompareWindow.open_photos` shows chosen photos (the body map uses it).

Helpers live beside this module: ``qt_compare_choices`` (which photos, in which order),
``qt_compare_align`` (alignment jobs on the image pool, matrices in view coordinates)
and ``qt_compare_adjust`` (each photo's brightness/contrast/gamma, or all at once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QPointF, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QImage, QKeyEvent, QStandardItemModel, QTransform
from PySide6.QtWidgets import QWidget
from shiboken6 import isValid

from derm_workstation.core.views import CaseDetail
from derm_workstation.imaging.levels import Adjustment
from derm_workstation.qt.dialogs.qt_errors import user_message
from derm_workstation.qt.forms.compare_pane import Ui_ComparePane
from derm_workstation.qt.forms.compare_window import Ui_CompareWindow
from derm_workstation.qt.resources import icon
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets.qt_case_panel import photo_source
from derm_workstation.qt.widgets.qt_compare_adjust import QtCompareAdjust
from derm_workstation.qt.widgets.qt_compare_align import (
    ALIGN_MODELS,
    ALIGN_SIDE,
    AlignResult,
    align_job,
    confidence_words,
    manual_job,
    qtransform,
    quarter_of,
    scale_of,
    size_match,
    to_view_coordinates,
)
from derm_workstation.qt.widgets.qt_compare_choices import (
    PANES,
    CompareChoice,
    choices_of,
    default_picks,
    order_choices,
    same_site,
)
from derm_workstation.qt.widgets.qt_photo_view import QtPhotoView, calibration_text

__all__ = [  # the window, and what its helper modules hold (imported from here before)
    "ALIGN_MODELS",
    "ALIGN_SIDE",
    "FLICKER_MS",
    "LAYOUTS",
    "OVERLAY_MODES",
    "PANES",
    "AlignResult",
    "CompareChoice",
    "QtComparePane",
    "QtCompareWindow",
    "align_job",
    "choices_of",
    "confidence_words",
    "default_picks",
    "manual_job",
    "order_choices",
    "qtransform",
    "quarter_of",
    "same_site",
    "scale_of",
    "size_match",
    "to_view_coordinates",
]

if TYPE_CHECKING:
    from derm_workstation.core.services import CaseService
    from derm_workstation.imaging.thumbnails import ThumbnailCache

log = logging.getLogger(__name__)

LAYOUTS: tuple[tuple[str, str], ...] = (
    ("1x2", "Side by side (2 photos)"),
    ("2x2", "Grid (4 photos)"),
    ("overlay", "Overlay: follow-up on baseline"),
)
OVERLAY_MODES: tuple[tuple[str, str], ...] = (
    ("blend", "Blend"), ("swipe", "Swipe"), ("flicker", "Flicker"))
FLICKER_MS: tuple[tuple[int, str], ...] = ((250, "0.25 s"), (500, "0.5 s"), (1000, "1 s"))
PHOTO_ROLE = Qt.ItemDataRole.UserRole


# ------------------------------------------------------------------------------ panes


class QtComparePane(QWidget):
    """One photo of the comparison: a picker, the photo, a caption."""

    #: The clinician picked another photo: (pane index, photo id).
    picked = Signal(int, str)

    def __init__(self, index: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.index = index
        self.ui = Ui_ComparePane()
        self.ui.setupUi(self)
        self.setObjectName(f"comparePane{index + 1}")
        self.ui.photoCombo.setObjectName(f"photoCombo{index + 1}")
        self.ui.photoView.setObjectName(f"compareView{index + 1}")
        self.ui.photoView.setAccessibleName(f"Compared photo {index + 1}")
        self.ui.photoCombo.setAccessibleName(f"Photo in pane {index + 1}")
        self.ui.roleLabel.setProperty("role", "paneRole")
        self.ui.photoCombo.activated.connect(self._on_activated)
        self.choice: CompareChoice | None = None

    @property
    def view(self) -> QtPhotoView:
        return self.ui.photoView

    def set_role(self, text: str) -> None:
        self.ui.roleLabel.setText(text)

    def fill(self, same: Sequence[CompareChoice], other: Sequence[CompareChoice],
             site: str) -> None:
        combo = self.ui.photoCombo
        combo.blockSignals(True)
        combo.clear()
        model = combo.model()
        assert isinstance(model, QStandardItemModel)

        def header(text: str) -> None:
            combo.addItem(text)
            item = model.item(combo.count() - 1)
            item.setEnabled(False)
            item.setSelectable(False)

        if same:
            header(f"— Same body site: {site} —")
            for c in same:
                combo.addItem(c.label(), c.photo.id)
        if other:
            header("— Other body sites —")
            for c in other:
                combo.addItem(c.label(), c.photo.id)
        if self.choice is not None:
            i = combo.findData(self.choice.photo.id)
            combo.setCurrentIndex(i)
        else:
            combo.setCurrentIndex(-1)
        combo.blockSignals(False)

    def select(self, photo_id: str) -> None:
        combo = self.ui.photoCombo
        i = combo.findData(photo_id)
        if i >= 0:
            combo.setCurrentIndex(i)

    def _on_activated(self, i: int) -> None:
        pid = self.ui.photoCombo.itemData(i)
        if pid:
            self.picked.emit(self.index, pid)


# ------------------------------------------------------------------------------ window


class QtCompareWindow(QWidget):
    """See the module docstring."""

    #: The earlier visits' photos are in the pickers.
    photos_listed = Signal()
    #: A pane was aligned to the baseline (its index).
    aligned = Signal(int)
    #: A pane could not be aligned: (index, reason).
    alignment_failed = Signal(int, str)

    def __init__(self, tasks: QtTaskManager, service: CaseService, detail: CaseDetail,
                 current_photo_id: str | None = None,
                 previews: dict[str, QImage] | None = None,
                 parent: QWidget | None = None,
                 thumbs: ThumbnailCache | None = None) -> None:
        super().__init__(parent)
        self.setWindowFlag(Qt.WindowType.Window, True)
        self.ui = Ui_CompareWindow()
        self.ui.setupUi(self)
        self.setObjectName("compareWindow")
        self.tasks = tasks
        self.service = service
        self.detail = detail
        self._previews = dict(previews or {})
        self._thumbs = thumbs
        self._choices: dict[str, CompareChoice] = {}
        self._site = ""
        self._syncing = False
        self._mode = "1x2"
        self._to_base: list[QTransform | None] = [None] * PANES
        self._align_text: list[str] = [""] * PANES
        self._align_busy: set[int] = set()
        self._points: list[list[QPointF]] = [[] for _ in range(PANES)]
        self._last_pointed: int | None = None
        self._closed = False
        self._listed = False  # the earlier visits' photos are known
        self._requested: list[str] | None = None  # open_photos() waiting for the listing
        self._explicit = False  # open_photos() chose the panes: the listing keeps them
        ui = self.ui
        p = detail.patient
        number = detail.case_number or detail.id[:8]
        ui.titleLabel.setText(f"{p.name}  ·  case {number}  ·  {detail.body_site}")
        ui.titleLabel.setProperty("role", "title")
        self.setWindowTitle(f"Compare photos — {p.name}")
        ui.alignStatusLabel.setProperty("role", "banner")

        self.panes = [QtComparePane(i, ui.gridPage) for i in range(PANES)]
        for pane in self.panes:
            pane.view.set_tasks(tasks)
            pane.view.set_prefetch_full_resolution(False)  # 4 panes: full size on zoom only
            pane.picked.connect(self._on_picked)
            pane.view.view_changed.connect(lambda i=pane.index: self._on_view_moved(i))
            pane.view.point_picked.connect(
                lambda x, y, i=pane.index: self._on_point(i, x, y))
        overlay = ui.overlayView
        overlay.setObjectName("overlayView")
        overlay.set_prefetch_full_resolution(False)
        overlay.set_layer(self.panes[0].view.layer)
        overlay.set_overlay(self.panes[1].view.layer, QTransform())

        for key, label in LAYOUTS:
            ui.layoutCombo.addItem(label, key)
        for key, label in OVERLAY_MODES:
            ui.overlayModeCombo.addItem(label, key)
        for ms, label in FLICKER_MS:
            ui.flickerCombo.addItem(label, ms)
        ui.flickerCombo.setCurrentIndex(1)
        for key, label in ALIGN_MODELS:
            ui.alignModelCombo.addItem(label, key)
        ui.alignButton.setIcon(icon("align"))
        ui.manualAlignButton.setIcon(icon("points"))
        ui.linkCheck.setIcon(icon("link"))
        ui.layoutCombo.currentIndexChanged.connect(
            lambda _i: self.set_layout_mode(ui.layoutCombo.currentData()))
        ui.overlayModeCombo.currentIndexChanged.connect(
            lambda _i: self.set_overlay_mode(ui.overlayModeCombo.currentData()))
        ui.amountSlider.valueChanged.connect(self._on_amount)
        overlay.swipe_moved.connect(
            lambda a: ui.amountSlider.setValue(round(a * 100)))
        ui.flickerCombo.currentIndexChanged.connect(
            lambda _i: self._flicker.setInterval(int(ui.flickerCombo.currentData())))
        ui.linkCheck.toggled.connect(self._on_link_toggled)
        ui.alignButton.clicked.connect(self.align_to_baseline)
        ui.manualAlignButton.toggled.connect(self.set_manual_mode)
        ui.clearAlignButton.clicked.connect(self.clear_alignment)
        self.adjust = QtCompareAdjust(self)
        overlay.point_picked.connect(self._on_overlay_point)

        self._flicker = QTimer(self)
        self._flicker.setInterval(int(ui.flickerCombo.currentData()))
        self._flicker.timeout.connect(lambda: overlay.set_flicker_phase(not overlay.flicker_phase))

        current = next((ph for ph in detail.photos if ph.id == current_photo_id), None)
        self._site = current.body_site if current and current.body_site else detail.body_site
        for c in choices_of(detail, current_case=True):
            self._choices[c.photo.id] = c
        self._refill(current_photo_id, initial=True)
        self.set_layout_mode("1x2")
        self.set_overlay_mode("blend")
        self.resize(1500, 950)
        self._load_earlier(current_photo_id)

    # -- photos ------------------------------------------------------------------------------
    def _load_earlier(self, current_photo_id: str | None) -> None:
        service = self.service
        ids = [e.id for e in self.detail.earlier_cases]
        if not ids:
            QTimer.singleShot(0, self._listed_without_earlier)
            return
        self.tasks.run_db(
            lambda: [service.case_detail(i) for i in ids],
            lambda details: self._earlier_loaded(details, current_photo_id),
            self._earlier_failed,
        )

    def _listed_without_earlier(self) -> None:
        if self._closed or not isValid(self):
            return
        self._listed = True
        self._apply_requested()
        self.photos_listed.emit()

    def _earlier_loaded(self, details: list[CaseDetail], current_photo_id: str | None) -> None:
        if self._closed or not isValid(self):
            return
        for d in details:
            for c in choices_of(d, current_case=False):
                self._choices[c.photo.id] = c
        self._listed = True
        self._refill(current_photo_id, initial=not self._explicit and self._requested is None)
        self._apply_requested()
        self.photos_listed.emit()

    def _earlier_failed(self, exc: BaseException) -> None:
        if self._closed or not isValid(self):
            return
        self._listed = True
        self._status(f"Earlier visits could not be listed: {user_message(exc)}")
        self._apply_requested()
        self.photos_listed.emit()

    def open_photos(self, photo_ids: list[str]) -> None:
        """Show exactly these photos (of this case or the patient's earlier visits).

        One photo: compared with its baseline, side by side (as when the window opens on
        it); two: side by side; three or four: the 2 x 2 grid; more: the first four in
        date order. The oldest is the baseline. Ids of earlier visits are resolved once
        those visits are listed (this waits for that internally); unknown ids are skipped
        with a note in the window."""
        self._requested = list(dict.fromkeys(photo_ids))
        self._apply_requested()

    def _apply_requested(self) -> None:
        ids = self._requested
        if ids is None:
            return
        known = [self._choices[i] for i in ids if i in self._choices]
        if not self._listed and (len(known) < len(ids) or len(ids) == 1):
            return  # photos (or the one photo's baseline) of earlier visits: wait for them
        self._requested = None
        self._explicit = True
        missing = len(ids) - len(known)
        if missing:
            self._status(f"{missing} of the requested photos {'is' if missing == 1 else 'are'} "
                         "not among this patient's photos and could not be shown.")
        if not known:
            return
        known.sort(key=lambda c: (c.when, c.photo.title))
        if len(known) == 1:
            photo = known[0].photo
            if photo.body_site:
                self._site = photo.body_site
            same, other = self.ordered()
            picks = default_picks(same, other, photo.id, n=2)
            for pane in self.panes:
                pane.fill(same, other, self._site)
        else:
            picks = [c.photo.id for c in known[:PANES]]
        self.set_layout_mode("1x2" if len(picks) <= 2 else "2x2")
        for i, pid in enumerate(picks):
            pane = self.panes[i]
            if pane.choice is None or pane.choice.photo.id != pid:
                self.choose(i, pid)
        for i in range(len(picks), PANES):
            self.clear_pane(i)
        self._update_roles()
        self._update_overlay()

    def clear_pane(self, index: int) -> None:
        """Leave a pane empty (open_photos with fewer photos than panes)."""
        pane = self.panes[index]
        pane.choice = None
        pane.ui.photoCombo.setCurrentIndex(-1)
        pane.view.show_message("Pick a photo for this pane from the list above.")
        self._forget_alignment(index)
        self._points[index] = []
        pane.view.set_markers([])

    def ordered(self) -> tuple[list[CompareChoice], list[CompareChoice]]:
        return order_choices(list(self._choices.values()), self._site)

    def _refill(self, current_photo_id: str | None, initial: bool) -> None:
        same, other = self.ordered()
        for pane in self.panes:
            pane.fill(same, other, self._site)
        if initial:
            picks = default_picks(same, other, current_photo_id)
            for i, pane in enumerate(self.panes):
                if i < len(picks) and (pane.choice is None or pane.choice.photo.id != picks[i]):
                    self.choose(i, picks[i])
        self._update_roles()

    def choose(self, index: int, photo_id: str) -> None:
        """Put a photo in a pane (what picking it in the pane's list does)."""
        c = self._choices.get(photo_id)
        if c is None:
            raise KeyError(photo_id)
        pane = self.panes[index]
        pane.choice = c
        pane.select(photo_id)
        src = photo_source(c.photo, self.service, self._thumbs)
        self._syncing = True
        try:
            pane.view.open_photo(src, self._previews.get(photo_id))
        finally:
            self._syncing = False
        if not self.adjust.apply_to_all:  # another photo starts unadjusted
            pane.view.set_adjustment(Adjustment())
        if index == 0:
            for i in range(1, PANES):
                self._forget_alignment(i)
        else:
            self._forget_alignment(index)
        self._points[index] = []
        pane.view.set_markers([])
        self._turn_like_the_others(index)
        self._update_roles()
        self._update_overlay()

    def _turn_like_the_others(self, index: int) -> None:
        """Linked: a photo put in a pane takes the rotation the other panes show (it
        still fits the pane; only zooming or panning moves the others to it)."""
        if not self.linked or self._mode == "overlay":
            return
        other = next((i for i in self.visible_panes()
                      if i != index and self.panes[i].choice is not None), None)
        if other is None:
            return
        ref = self.panes[other].view.rotation // 90 - quarter_of(self.to_base(other))
        want = (ref + quarter_of(self.to_base(index))) % 4
        view = self.panes[index].view
        turn = want - view.rotation // 90
        if turn % 4:
            self._syncing = True
            try:
                view.rotate(turn)
            finally:
                self._syncing = False

    def _on_picked(self, index: int, photo_id: str) -> None:
        if self.panes[index].choice is None or self.panes[index].choice.photo.id != photo_id:
            self.choose(index, photo_id)

    def _update_roles(self) -> None:
        base = self.panes[0].choice
        for pane in self.panes:
            i = pane.index
            role = "Baseline" if i == 0 else ("Follow-up" if self._mode != "2x2"
                                              else f"Photo {i + 1}")
            pane.set_role(role)
            c = pane.choice
            if c is None:
                pane.ui.captionLabel.setText("")
                pane.view.set_caption("")
                continue
            when = f"{c.when.astimezone():%d %b %Y}"
            if i > 0 and base is not None:
                days = (c.when - base.when).days
                rel = ("same day as baseline" if days == 0 else
                       f"{abs(days)} day{'s' if abs(days) != 1 else ''} "
                       f"{'after' if days > 0 else 'before'} baseline")
                pane.view.set_caption(f"{role} · {when} · {rel}")
            else:
                pane.view.set_caption(f"{role} · {when}")
            ph = c.photo
            parts = [ph.body_site or "site not recorded", f"{ph.width} × {ph.height} px",
                     calibration_text(ph.calibration_px_per_mm), c.case_label]
            if self._align_text[i]:
                parts.append(self._align_text[i])
            pane.ui.captionLabel.setText("  ·  ".join(parts))
        if hasattr(self, "adjust"):
            self.adjust.refresh()

    # -- layout and overlay ------------------------------------------------------------------
    def visible_panes(self) -> list[int]:
        return {"1x2": [0, 1], "2x2": [0, 1, 2, 3], "overlay": [0, 1]}[self._mode]

    @property
    def layout_mode(self) -> str:
        return self._mode

    def set_layout_mode(self, mode: str) -> None:
        if mode not in {k for k, _ in LAYOUTS}:
            raise ValueError(mode)
        if mode != self._mode and self.manual_mode:
            self.set_manual_mode(False)  # points clicked in one layout do not carry over
        self._mode = mode
        ui = self.ui
        combo_index = ui.layoutCombo.findData(mode)
        if ui.layoutCombo.currentIndex() != combo_index:
            ui.layoutCombo.setCurrentIndex(combo_index)
        grid = ui.paneGrid
        for pane in self.panes:
            grid.removeWidget(pane)
            pane.setVisible(False)
        if mode == "overlay":
            ui.viewStack.setCurrentWidget(ui.overlayPage)
        else:
            ui.viewStack.setCurrentWidget(ui.gridPage)
            cells = [(0, 0), (0, 1)] if mode == "1x2" else [(0, 0), (0, 1), (1, 0), (1, 1)]
            for pane, (r, c) in zip(self.panes, cells, strict=False):
                grid.addWidget(pane, r, c)
                pane.setVisible(True)
        overlay_controls = (ui.overlayModeCaption, ui.overlayModeCombo)
        for w in overlay_controls:
            w.setVisible(mode == "overlay")
        ui.linkCheck.setVisible(mode != "overlay")
        self._update_overlay_controls()
        self._update_roles()
        self._update_overlay()
        if mode != "overlay" and not self.panes[0].view.is_fit:
            self._on_view_moved(0)  # panes that just appeared join the linked view

    def set_overlay_mode(self, mode: str) -> None:
        ui = self.ui
        i = ui.overlayModeCombo.findData(mode)
        if ui.overlayModeCombo.currentIndex() != i:
            ui.overlayModeCombo.setCurrentIndex(i)
            return  # the combo's signal calls back here
        ui.overlayView.set_overlay_mode(mode)
        if mode == "swipe":
            ui.amountSlider.setValue(50)
        self._update_overlay_controls()
        self._on_amount(ui.amountSlider.value())

    def _update_overlay_controls(self) -> None:
        ui = self.ui
        on = self._mode == "overlay"
        mode = ui.overlayModeCombo.currentData()
        if on and self.manual_mode:  # aligning by hand: one photo at a time, no timer
            for w in (ui.amountCaption, ui.amountSlider, ui.amountValue, ui.flickerCaption,
                      ui.flickerCombo):
                w.setVisible(False)
            self._flicker.stop()
            self._show_overlay_stage()
            return
        for w in (ui.amountCaption, ui.amountSlider, ui.amountValue):
            w.setVisible(on and mode in ("blend", "swipe"))
        for w in (ui.flickerCaption, ui.flickerCombo):
            w.setVisible(on and mode == "flicker")
        ui.amountCaption.setText("Follow-up" if mode == "blend" else "Curtain")
        ui.amountSlider.setAccessibleName("Follow-up opacity" if mode == "blend"
                                          else "Curtain position")
        if on and mode == "flicker":
            if not self._flicker.isActive():
                ui.overlayView.set_flicker_phase(False)
                self._flicker.start()
        else:
            self._flicker.stop()
            ui.overlayView.set_flicker_phase(False)

    def _on_amount(self, value: int) -> None:
        self.ui.amountValue.setText(f"{value} %")
        self.ui.overlayView.set_overlay_amount(value / 100.0)

    def _update_overlay(self) -> None:
        base, follow = self.panes[0].choice, self.panes[1].choice
        view = self.ui.overlayView
        if base is None or follow is None:
            view.set_overlay(None)
            return
        view.set_overlay(self.panes[1].view.layer, self.to_base(1))
        b = f"Baseline {base.when.astimezone():%d %b %Y}"
        f = f"Follow-up {follow.when.astimezone():%d %b %Y}"
        view.set_overlay_labels(b, f)

    # -- linking ------------------------------------------------------------------------------
    def to_base(self, index: int) -> QTransform:
        """Pane ``index`` image coordinates -> baseline image coordinates."""
        if index == 0:
            return QTransform()
        t = self._to_base[index]
        if t is not None:
            return t
        a, b = self.panes[index].choice, self.panes[0].choice
        if a is None or b is None:
            return QTransform()
        return size_match((a.photo.width, a.photo.height), (b.photo.width, b.photo.height))

    @property
    def linked(self) -> bool:
        return self.ui.linkCheck.isChecked()

    def _on_link_toggled(self, on: bool) -> None:
        if on:
            self._on_view_moved(0)

    def _on_view_moved(self, index: int) -> None:
        if (self._syncing or not self.linked or self.panes[index].choice is None
                or index not in self.visible_panes() or self._mode == "overlay"):
            return
        st = self.panes[index].view.view_state()
        t = self.to_base(index)
        ref = t.map(QPointF(st.cx, st.cy))
        ref_zoom = st.zoom / scale_of(t)
        # the baseline's rotation: linked panes turn with it (aligned panes by their own
        # rotation more, so the same anatomy stays upright in every pane)
        ref_quarter = st.quarter - quarter_of(t)
        self._syncing = True
        try:
            for i in self.visible_panes():
                if i == index or self.panes[i].choice is None:
                    continue
                ti = self.to_base(i)
                inv, ok = ti.inverted()
                if not ok:
                    continue
                c = inv.map(ref)
                self.panes[i].view.set_view(c.x(), c.y(), ref_zoom * scale_of(ti),
                                            quarter=ref_quarter + quarter_of(ti))
        finally:
            self._syncing = False

    # -- alignment --------------------------------------------------------------------------
    def is_aligned(self, index: int) -> bool:
        return self._to_base[index] is not None

    def _forget_alignment(self, index: int) -> None:
        self._to_base[index] = None
        self._align_text[index] = ""
        self._refresh_align_ui()

    def clear_alignment(self) -> None:
        for i in range(1, PANES):
            self._forget_alignment(i)
        self._status("")
        self._update_roles()
        self._update_overlay()

    def _refresh_align_ui(self) -> None:
        self.ui.clearAlignButton.setEnabled(any(t is not None for t in self._to_base))

    def _status(self, text: str, warn: bool | None = None) -> None:
        """Show the alignment line(s); amber when something needs the clinician."""
        label = self.ui.alignStatusLabel
        if warn is None:
            warn = ("could not" in text or text.startswith("Align by hand")
                    or "\nAlign by hand" in text or "Place its" in text)
        role = "banner" if warn else "info"
        if label.property("role") != role:
            label.setProperty("role", role)
            label.style().unpolish(label)
            label.style().polish(label)
        label.setText(text)
        label.setVisible(bool(text))

    @property
    def status_text(self) -> str:
        return self.ui.alignStatusLabel.text()

    def _name(self, i: int) -> str:
        return "the follow-up" if self._mode != "2x2" else f"photo {i + 1}"

    def align_to_baseline(self) -> None:
        """Align every shown follow-up to the baseline, automatically, on the image pool."""
        base = self.panes[0]
        if base.choice is None:
            return
        targets = [i for i in self.visible_panes()[1:] if self.panes[i].choice is not None]
        if not targets:
            self._status("Pick a follow-up photo to align.")
            return
        model = self.ui.alignModelCombo.currentData()
        base_load = base.view.layer.bytes_loader()
        assert base_load is not None
        bsize = (base.choice.photo.width, base.choice.photo.height)
        self._status("Aligning… looking for the same skin features in the photos.")
        self.ui.alignButton.setEnabled(False)
        for i in targets:
            pane = self.panes[i]
            assert pane.choice is not None
            follow_load = pane.view.layer.bytes_loader()
            assert follow_load is not None
            fsize = (pane.choice.photo.width, pane.choice.photo.height)
            key = (base.choice.photo.id, pane.choice.photo.id)
            self._align_busy.add(i)
            self.tasks.run_image(
                lambda fl=follow_load, fs=fsize: align_job(base_load, bsize, fl, fs, model),
                lambda res, i=i, key=key: self._aligned(i, key, res, by_hand=False),
                lambda exc, i=i, key=key: self._align_failed(i, key, exc),
            )

    def _current_key(self, i: int) -> tuple[str, str] | None:
        b, f = self.panes[0].choice, self.panes[i].choice
        return (b.photo.id, f.photo.id) if b and f else None

    def _aligned(self, i: int, key: tuple[str, str], res: AlignResult, by_hand: bool) -> None:
        self._align_busy.discard(i)
        if self._closed or not isValid(self) or self._current_key(i) != key:
            return
        self._to_base[i] = qtransform(res.matrix)
        if by_hand:
            self._align_text[i] = f"aligned by hand (points agree within {res.rms_px:.1f} px)"
            line = (f"{self._name(i).capitalize()} is aligned to the baseline by hand; the three "
                    f"point pairs agree within {res.rms_px:.1f} px.")
        else:
            words = confidence_words(res.confidence)
            self._align_text[i] = f"aligned, confidence {res.confidence:.2f}"
            line = (f"{self._name(i).capitalize()} is aligned to the baseline: {res.inliers} of "
                    f"{res.matches} matching features agree ({res.model}); confidence "
                    f"{res.confidence:.2f} — {words}.")
        self._append_status(i, line)
        self._refresh_align_ui()
        self._update_roles()
        self._update_overlay()
        self._on_view_moved(0)
        self.aligned.emit(i)

    def _align_failed(self, i: int, key: tuple[str, str], exc: BaseException) -> None:
        self._align_busy.discard(i)
        if self._closed or not isValid(self) or self._current_key(i) != key:
            return
        if isinstance(exc, ImportError):
            reason = "automatic alignment is not available in this installation."
        else:
            reason = user_message(exc)
        self._append_status(
            i, f"{self._name(i).capitalize()} could not be aligned automatically: {reason}")
        self.alignment_failed.emit(i, reason)
        self.ui.manualAlignButton.setChecked(True)

    def _append_status(self, i: int, line: str) -> None:
        if not self._align_busy:
            self.ui.alignButton.setEnabled(True)
        lines = [s for s in self.status_text.split("\n") if s and not s.startswith("Aligning")
                 and not s.startswith(self._name(i).capitalize())
                 and not s.startswith("Align by hand")]
        lines.append(line)
        self._status("\n".join(lines))

    # -- manual alignment ---------------------------------------------------------------------
    @property
    def manual_mode(self) -> bool:
        return self.ui.manualAlignButton.isChecked()

    def set_manual_mode(self, on: bool) -> None:
        if self.ui.manualAlignButton.isChecked() != on:
            self.ui.manualAlignButton.setChecked(on)
            return  # toggled() calls back
        for pane in self.panes:
            pane.view.set_picking(on)
            if not on:
                self._points[pane.index] = []
                pane.view.set_markers([])
        self._last_pointed = None
        overlay = self.ui.overlayView
        overlay.set_picking(on and self._mode == "overlay")
        ui = self.ui
        ui.overlayModeCombo.setEnabled(not (on and self._mode == "overlay"))
        if not on:
            overlay.set_markers([])
            overlay.set_overlay_mode(ui.overlayModeCombo.currentData())
            self._on_amount(ui.amountSlider.value())
        self._update_overlay_controls()
        if on:
            self._manual_hint()
        else:
            lines = [s for s in self.status_text.split("\n")
                     if s and not s.startswith("Align by hand")]
            self._status("\n".join(lines))

    def _manual_hint(self) -> None:
        counts = "  ·  ".join(
            f"{'baseline' if i == 0 else self._name(i).removeprefix('the ')} "
            f"{len(self._points[i])}/3" for i in self.visible_panes())
        if self._mode == "overlay":
            hint = ("Align by hand: click 3 spots on the baseline (a mole, a freckle, the "
                    "corner of a scar); the view then shows the follow-up: click the same 3 "
                    f"spots in the same order. {counts}.  Backspace: remove the last point  ·  "
                    "Esc: stop.")
        else:
            hint = ("Align by hand: click 3 spots on the baseline (a mole, a freckle, the "
                    "corner of a scar), then the same 3 spots in the same order on the "
                    f"follow-up. {counts}.  Backspace: remove the last point  ·  Esc: stop.")
        lines = [s for s in self.status_text.split("\n")
                 if s and not s.startswith("Align by hand")]
        lines.append(hint)
        self._status("\n".join(lines))

    def points(self, index: int) -> list[QPointF]:
        return list(self._points[index])

    def _on_point(self, index: int, x: float, y: float) -> None:
        if not self.manual_mode or index not in self.visible_panes():
            return
        pts = self._points[index]
        if len(pts) >= 3:
            return
        pts.append(QPointF(x, y))
        self._last_pointed = index
        self.panes[index].view.set_markers(pts)
        self._manual_hint()
        self._try_manual()

    def remove_last_point(self) -> None:
        i = self._last_pointed
        if i is None or not self._points[i]:
            return
        self._points[i].pop()
        self.panes[i].view.set_markers(self._points[i])
        if i == 1 and not self._points[1]:
            self._last_pointed = 0  # the next Backspace goes on with the baseline's points
        self._show_overlay_stage()
        self._manual_hint()

    # -- manual alignment in the overlay layout -------------------------------------------
    @property
    def overlay_stage(self) -> str:
        """Aligning by hand in the overlay: which photo the clicks go to."""
        return "baseline" if len(self._points[0]) < 3 else "follow-up"

    def _show_overlay_stage(self) -> None:
        """Overlay + align by hand: show only the photo being clicked, with its points."""
        view = self.ui.overlayView
        if not (self.manual_mode and self._mode == "overlay"):
            return
        view.set_overlay_mode("flicker")  # shows one photo at a time, labelled
        follow = self.overlay_stage == "follow-up"
        view.set_flicker_phase(follow)
        if follow:
            t = view.overlay_transform
            view.set_markers([t.map(p) for p in self._points[1]])
        else:
            view.set_markers(self._points[0])

    def _on_overlay_point(self, x: float, y: float) -> None:
        """A click on the overlay view while aligning by hand (baseline coordinates)."""
        if not self.manual_mode or self._mode != "overlay":
            return
        if self.overlay_stage == "baseline":
            self._on_point(0, x, y)
        else:
            inv, ok = self.ui.overlayView.overlay_transform.inverted()
            follow = self.panes[1].choice
            if not ok or follow is None:
                return
            p = inv.map(QPointF(x, y))
            if not (0 <= p.x() <= follow.photo.width and 0 <= p.y() <= follow.photo.height):
                return  # beside the follow-up photo
            self._on_point(1, p.x(), p.y())
        self._show_overlay_stage()

    def _try_manual(self) -> None:
        base = self._points[0]
        if len(base) < 3:
            return
        model = self.ui.alignModelCombo.currentData()
        for i in self.visible_panes()[1:]:
            follow = self._points[i]
            key = self._current_key(i)
            if len(follow) < 3 or key is None:
                continue
            bp = [(p.x(), p.y()) for p in base]
            fp = [(p.x(), p.y()) for p in follow]
            self._points[i] = []
            self.panes[i].view.set_markers([])
            self.tasks.run_image(
                lambda bp=bp, fp=fp: manual_job(bp, fp, model),
                lambda res, i=i, key=key: self._manual_done(i, key, res),
                lambda exc, i=i, key=key: self._manual_failed(i, key, exc),
            )

    def _manual_done(self, i: int, key: tuple[str, str], res: AlignResult) -> None:
        if self._closed or not isValid(self) or self._current_key(i) != key:
            return
        self._aligned(i, key, res, by_hand=True)
        pending = [j for j in self.visible_panes()[1:]
                   if self.panes[j].choice is not None and not self.is_aligned(j)]
        if not pending and self.manual_mode:
            self.set_manual_mode(False)
        elif self.manual_mode:
            self._manual_hint()

    def _manual_failed(self, i: int, key: tuple[str, str], exc: BaseException) -> None:
        if self._closed or not isValid(self) or self._current_key(i) != key:
            return
        self._append_status(i, f"{self._name(i).capitalize()}: {user_message(exc)} "
                               "Place its three points again.")
        self.alignment_failed.emit(i, user_message(exc))
        self._manual_hint()

    # -- keys and closing ----------------------------------------------------------------------
    def keyPressEvent(self, event: QKeyEvent) -> None:
        if self.manual_mode and event.key() == Qt.Key.Key_Backspace:
            self.remove_last_point()
            event.accept()
            return
        if self.manual_mode and event.key() == Qt.Key.Key_Escape:
            self.set_manual_mode(False)
            event.accept()
            return
        super().keyPressEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:
        self._closed = True
        self._flicker.stop()
        super().closeEvent(event)

    def debug_state(self) -> dict[str, Any]:
        """What each pane shows (for tests and support)."""
        return {
            "mode": self._mode,
            "panes": [p.choice.photo.id if p.choice else None for p in self.panes],
            "aligned": [self.is_aligned(i) for i in range(PANES)],
        }
