"""The Measure panel beside the photo: calibration, assisted outline, metrics, change, export.

A thin view over :class:`~derm_workstation.core.lesion_analysis.LesionAnalysisService`
(and :class:`~derm_workstation.core.lesions.LesionService` for change over time). It
works with the photo's :class:`~derm_workstation.qt.widgets.qt_annotation_layer.
QtAnnotationLayer`: a found reference is drawn on the photo by the layer, the ruler
line and the click inside the lesion are captured by the layer, and a proposed outline
becomes an ordinary polygon annotation (editable by its handles, undoable).

Pixel work (reference detection, segmentation, metrics, the annotated copy) runs on the
image pool; database work (calibration, audit, change over time) on the database lane.
Every task ends with :attr:`QtAnalysisPanel.finished` (its name), for owners and tests.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QStandardPaths, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from derm_workstation.core import annotations as an
from derm_workstation.core import lesion_analysis as la
from derm_workstation.core.errors import DermError
from derm_workstation.core.notify import notifier
from derm_workstation.qt.dialogs.qt_errors import user_message

if TYPE_CHECKING:
    from derm_workstation.imaging.calibration import Calibration
    from derm_workstation.imaging.metrics import LesionMetrics
    from derm_workstation.qt.tasks import QtTaskManager
    from derm_workstation.qt.widgets.qt_annotation_layer import QtAnnotationLayer

log = logging.getLogger(__name__)

PANEL_WIDTH = 340
CUSTOM = "custom"
#: Swatch colours of the six dermoscopic colours.
SWATCHES = {"white": "#f2f2f0", "red": "#c0392b", "light brown": "#b07a4a",
            "dark brown": "#5a3722", "blue-grey": "#6f8296", "black": "#121212"}
WARN = "#e0891b"  # readable on the dark and on a light theme
MUTED = "#8b949e"
GOOD = "#3fb26b"
IMAGE_FILTER = "JPEG image (*.jpg *.jpeg);;PNG image (*.png)"
JSON_FILTER = "JSON (*.json)"


def lab_to_hex(lab: tuple[float, float, float]) -> str:
    """A CIELAB (D65) colour as an sRGB hex string, for a swatch."""
    L, a, b = lab
    fy = (L + 16.0) / 116.0
    fx, fz = fy + a / 500.0, fy - b / 200.0

    def finv(t: float) -> float:
        return t ** 3 if t ** 3 > 0.008856 else (t - 16.0 / 116.0) / 7.787

    x, y, z = 0.95047 * finv(fx), 1.0 * finv(fy), 1.08883 * finv(fz)
    lin = (3.2404542 * x - 1.5371385 * y - 0.4985314 * z,
           -0.9692660 * x + 1.8760108 * y + 0.0415560 * z,
           0.0556434 * x - 0.2040259 * y + 1.0572252 * z)

    def gamma(c: float) -> int:
        c = min(max(c, 0.0), 1.0)
        s = 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055
        return round(255 * s)

    return "#" + "".join(f"{gamma(c):02x}" for c in lin)


def _swatch(colour: str) -> str:
    return (f'<span style="background-color:{colour}; color:{colour}">'
            "&nbsp;&nbsp;&nbsp;&nbsp;</span>")


def metrics_html(m: LesionMetrics) -> str:
    """The metrics of one ROI as a small HTML table (mm when calibrated, else px)."""
    rows: list[tuple[str, str]] = []
    if m.calibrated:
        rows += [("Area", f"{m.area_mm2:.1f} mm²"), ("Perimeter", f"{m.perimeter_mm:.1f} mm"),
                 ("Longest diameter", f"{m.max_diameter_mm:.1f} mm"),
                 ("Shortest diameter", f"{m.min_diameter_mm:.1f} mm")]
    else:
        rows += [("Area", f"{m.area_px:.0f} px² (uncalibrated)"),
                 ("Perimeter", f"{m.perimeter_px:.0f} px (uncalibrated)"),
                 ("Longest diameter", f"{m.max_diameter_px:.0f} px (uncalibrated)"),
                 ("Shortest diameter", f"{m.min_diameter_px:.0f} px (uncalibrated)")]
    a1, a2 = m.asymmetry
    rows.append(("Asymmetry", f"{a1:.2f} / {a2:.2f} (two axes; 0 = symmetric)"))
    rows.append(("Border irregularity", f"{m.border_irregularity:.2f} (1 = circle)"))
    present = [c for c in m.colours_present]
    colours = "<br>".join(f"{_swatch(SWATCHES[c])} {html.escape(c)} {m.colours[c]:.0%}"
                          for c in present) or "none of the six"
    rows.append(("Colours", colours))
    L, a, b = m.mean_lab
    rows.append(("Mean colour", f"{_swatch(lab_to_hex(m.mean_lab))} "
                                f"L* {L:.0f}, a* {a:.0f}, b* {b:.0f}"))
    body = "".join(f'<tr><td style="color:{MUTED}; padding-right:8px">{k}</td>'
                   f"<td>{v}</td></tr>" for k, v in rows)
    out = f"<table>{body}</table>"
    if m.tds is not None:
        t = m.tds
        out += (f"<p><b>TDS {t.tds:.2f}</b> — A {t.a} · B {t.b} · C {t.c} · D {t.d}"
                + (f" ({html.escape(', '.join(t.structures))})" if t.structures else "")
                + f'<br><span style="color:{WARN}">{html.escape(t.note)}</span></p>')
    if m.warnings:
        out += "".join(f'<p style="color:{WARN}">{html.escape(w)}</p>' for w in m.warnings)
    return out


def _warnings_html(warnings: tuple[str, ...] | list[str]) -> str:
    return "".join(f'<br><span style="color:{WARN}">⚠ {html.escape(w)}</span>'
                   for w in warnings)


class QtAnalysisPanel(QFrame):
    """See the module docstring."""

    #: A task ended (successfully or not): "state", "reference", "confirm", "ruler",
    #: "clear", "outline", "metrics", "change", "export-image", "export-json".
    finished = Signal(str)
    #: A task failed: the sentence shown to the clinician.
    failed = Signal(str)
    #: The open photo's calibration changed: (photo id, px per mm or None).
    calibration_changed = Signal(str, object)
    #: A proposed outline was added as a polygon annotation: its id.
    outline_added = Signal(str)
    #: A file was exported: its path.
    exported = Signal(str)

    def __init__(self, layer: QtAnnotationLayer, tasks: QtTaskManager,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("analysisPanel")
        self.setAccessibleName("Measure panel")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setFixedWidth(PANEL_WIDTH)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Expanding)
        self._layer = layer
        self._tasks = tasks
        self._svc: la.LesionAnalysisService | None = None
        self._photo_id: str | None = None
        self._facts: la.PhotoFacts | None = None
        self._state: la.CalibrationState | None = None
        self._gen = 0
        self._found: tuple[Calibration, str | None, float | None] | None = None
        self._line: tuple[tuple[float, float], tuple[float, float]] | None = None
        self._metrics_key: str | None = None
        self._change_key: tuple[str, int] | None = None
        self._busy: set[str] = set()
        #: Asks where to save an export: (title, filter, suggested path) -> path or None.
        #: Tests replace it; the default shows the file dialog.
        self.save_path_provider: Callable[[str, str, str], str | None] = self._ask_path
        self._build()
        layer.selection_changed.connect(lambda _id: self._refresh_selection())
        layer.changed.connect(self._refresh_selection)
        layer.capture_ended.connect(self._capture_ended)
        self.set_photo(None, None)

    # -- building -----------------------------------------------------------------------------
    def _button(self, name: str, text: str, tip: str, slot: Callable[[], None]) -> QPushButton:
        b = QPushButton(text)
        b.setObjectName(name)
        b.setAccessibleName(text.rstrip("…"))
        b.setToolTip(tip)
        b.clicked.connect(slot)
        return b

    def _label(self, name: str, accessible: str, *, muted: bool = False) -> QLabel:
        lab = QLabel()
        lab.setObjectName(name)
        lab.setAccessibleName(accessible)
        lab.setWordWrap(True)
        lab.setTextFormat(Qt.TextFormat.RichText)
        lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        if muted:
            lab.setStyleSheet(f"color: {MUTED}")
        return lab

    def _group(self, name: str, title: str) -> tuple[QGroupBox, QVBoxLayout]:
        g = QGroupBox(title)
        g.setObjectName(name)
        g.setAccessibleName(title)
        lay = QVBoxLayout(g)
        lay.setContentsMargins(8, 6, 8, 8)
        lay.setSpacing(6)
        return g, lay

    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        self._scroll = scroll
        scroll.setObjectName("analysisScroll")
        scroll.setAccessibleName("Measure panel contents")
        scroll.setWidgetResizable(False)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer.addWidget(scroll)
        inner = QWidget()
        self._contents = inner
        inner.setObjectName("analysisContents")
        scroll.setWidget(inner)
        lay = QVBoxLayout(inner)
        lay.setContentsMargins(8, 8, 8, 8)
        lay.setSpacing(8)

        title = QLabel("Measure")
        title.setObjectName("analysisTitle")
        title.setProperty("role", "title")
        lay.addWidget(title)

        # calibration
        g, gl = self._group("calibrationGroup", "Calibration")
        self.state_label = self._label("calibrationStateLabel", "Calibration state")
        gl.addWidget(self.state_label)
        row = QHBoxLayout()
        self.reference_combo = QComboBox()
        self.reference_combo.setObjectName("referenceCombo")
        self.reference_combo.setAccessibleName("Calibration reference")
        self.reference_combo.setToolTip("The coin or sticker lying flat on the skin")
        for ref in la.reference_choices():
            self.reference_combo.addItem(ref.label, ref.name)
        self.reference_combo.addItem("Custom diameter… mm", CUSTOM)
        self.reference_combo.currentIndexChanged.connect(self._reference_kind_changed)
        row.addWidget(self.reference_combo, 1)
        self.custom_spin = QDoubleSpinBox()
        self.custom_spin.setObjectName("customDiameterSpin")
        self.custom_spin.setAccessibleName("Custom reference diameter in millimetres")
        self.custom_spin.setRange(1.0, 200.0)
        self.custom_spin.setDecimals(2)
        self.custom_spin.setValue(10.0)
        self.custom_spin.setSuffix(" mm")
        self.custom_spin.setVisible(False)
        row.addWidget(self.custom_spin)
        gl.addLayout(row)
        self.find_button = self._button(
            "findReferenceButton", "Find reference",
            "Find the chosen coin or sticker in the photo (you confirm it)", self.find_reference)
        gl.addWidget(self.find_button)
        self.reference_label = self._label("referenceResultLabel", "Reference found")
        gl.addWidget(self.reference_label)
        row = QHBoxLayout()
        self.confirm_button = self._button(
            "confirmReferenceButton", "Confirm",
            "Use this reference to calibrate the photo", self.confirm_reference)
        self.reject_button = self._button(
            "rejectReferenceButton", "Reject", "This is not the reference: forget it",
            self.reject_reference)
        row.addWidget(self.confirm_button)
        row.addWidget(self.reject_button)
        gl.addLayout(row)
        self.ruler_button = self._button(
            "rulerLineButton", "Calibrate with a ruler line",
            "Drag a line over a ruler in the photo, then type its length", self.start_ruler_line)
        gl.addWidget(self.ruler_button)
        self.ruler_label = self._label("rulerLineLabel", "Ruler line")
        gl.addWidget(self.ruler_label)
        row = QHBoxLayout()
        self.ruler_spin = QDoubleSpinBox()
        self.ruler_spin.setObjectName("rulerLengthSpin")
        self.ruler_spin.setAccessibleName("Length of the ruler line in millimetres")
        self.ruler_spin.setRange(0.1, 2000.0)
        self.ruler_spin.setDecimals(1)
        self.ruler_spin.setValue(10.0)
        self.ruler_spin.setSuffix(" mm")
        ruler_box = QVBoxLayout()
        ruler_box.setContentsMargins(0, 0, 0, 0)
        ruler_box.addWidget(self.ruler_spin)
        ruler_box.addLayout(row)
        self.use_line_button = self._button(
            "useRulerLineButton", "Use this line", "Calibrate: the line is this long",
            self.use_ruler_line)
        self.cancel_line_button = self._button(
            "cancelRulerLineButton", "Cancel", "Forget the ruler line", self.cancel_ruler_line)
        row.addWidget(self.use_line_button)
        row.addWidget(self.cancel_line_button)
        self._ruler_row = QWidget()
        self._ruler_row.setObjectName("rulerLengthRow")
        self._ruler_row.setLayout(ruler_box)
        gl.addWidget(self._ruler_row)
        self.clear_button = self._button(
            "clearCalibrationButton", "Clear calibration",
            "Forget this photo's calibration: measurements go back to pixels",
            self.clear_calibration)
        gl.addWidget(self.clear_button)
        lay.addWidget(g)

        # outline
        g, gl = self._group("outlineGroup", "Outline")
        self.auto_button = self._button(
            "autoOutlineButton", "Outline automatically",
            "Propose the lesion's outline as an editable polygon", self.outline_automatically)
        self.seed_button = self._button(
            "seedOutlineButton", "Click inside the lesion",
            "Then click once inside the lesion on the photo", self.outline_from_click)
        gl.addWidget(self.auto_button)
        gl.addWidget(self.seed_button)
        self.outline_label = self._label("outlineStatusLabel", "Outline status", muted=True)
        gl.addWidget(self.outline_label)
        lay.addWidget(g)

        # metrics
        g, gl = self._group("metricsGroup", "Metrics")
        self.metrics_label = self._label("metricsLabel", "Lesion metrics")
        gl.addWidget(self.metrics_label)
        lay.addWidget(g)

        # change over time
        g, gl = self._group("changeGroup", "Change over time")
        self.change_label = self._label("changeLabel", "Change over time")
        gl.addWidget(self.change_label)
        lay.addWidget(g)

        # export
        g, gl = self._group("exportGroup", "Export")
        self.export_image_button = self._button(
            "exportImageButton", "Export annotated copy…",
            "Save a new image with the annotations and measurements drawn in "
            "(no EXIF or GPS data)", self.export_image)
        self.export_json_button = self._button(
            "exportJsonButton", "Export annotations (JSON)…",
            "Save the annotations and their measurements as JSON", self.export_json)
        gl.addWidget(self.export_image_button)
        gl.addWidget(self.export_json_button)
        self.export_label = self._label("exportStatusLabel", "Export status", muted=True)
        gl.addWidget(self.export_label)
        lay.addWidget(g)

        self.status_label = self._label("analysisStatusLabel", "Measure panel status",
                                        muted=True)
        lay.addWidget(self.status_label)
        lay.addStretch(1)

    # -- the photo ------------------------------------------------------------------------------
    def set_photo(self, photo_id: str | None, service: la.LesionAnalysisService | None) -> None:
        """Show the panel for this photo (None: no photo). Reads its calibration."""
        self._gen += 1
        self._photo_id, self._svc = photo_id, service
        self._facts = None
        self._state = None
        self._found = None
        self._line = None
        self._metrics_key = None
        self._change_key = None
        self._busy.clear()
        self._layer.set_reference_overlay(None)
        self._say(self.reference_label, "")
        self._say(self.ruler_label, "")
        self._say(self.outline_label, "")
        self._say(self.export_label, "")
        self._say(self.status_label, "")
        self._say(self.metrics_label, "")
        self._say(self.change_label, "")
        if photo_id is None or service is None:
            self._say(self.state_label, "No photo open.")
            self._update_enabled()
            return
        self._say(self.state_label, "Reading the calibration…")
        gen = self._gen

        def read() -> tuple[la.PhotoFacts, la.CalibrationState]:
            return service.photo_facts(photo_id), service.calibration_state(photo_id)

        def done(r: tuple[la.PhotoFacts, la.CalibrationState]) -> None:
            if gen != self._gen:
                return
            self._facts, state = r
            self._show_state(state, notify=False)
            self._refresh_selection()
            self.finished.emit("state")

        self._tasks.run_db(read, done, lambda exc: self._fail(gen, "state", exc))
        self._update_enabled()

    @property
    def photo_id(self) -> str | None:
        return self._photo_id

    @property
    def state(self) -> la.CalibrationState | None:
        return self._state

    @property
    def busy(self) -> frozenset[str]:
        return frozenset(self._busy)

    def _editable(self) -> bool:
        return self._svc is not None and self._svc.actor.can("case.edit")

    def _say(self, label: QLabel, text: str) -> None:
        label.setText(text)
        label.setVisible(bool(text))  # an empty line would only leave a gap
        self._relayout()

    def _relayout(self) -> None:
        """Size the scrolled contents to their wrapped labels now, not a frame later
        (the contents are sized here, not by the scroll area, which does not follow
        word-wrapped labels reliably)."""
        lay = self._contents.layout()
        if lay is None:
            return
        # nested layouts (the group boxes) cache their heights until a posted layout
        # request arrives: drop the caches now
        for w in self._contents.findChildren(QGroupBox):
            inner = w.layout()
            if inner is not None:
                inner.invalidate()
            w.updateGeometry()
        lay.invalidate()
        full = max(self._scroll.width() - 2 * self._scroll.frameWidth(), 100)
        avail_h = self._scroll.height() - 2 * self._scroll.frameWidth()
        w = full
        h = lay.totalHeightForWidth(w)
        if h > avail_h:  # a vertical scroll bar takes part of the width
            w = full - self._scroll.verticalScrollBar().sizeHint().width()
            h = lay.totalHeightForWidth(w)
        self._contents.resize(w, max(h, lay.totalMinimumSize().height()))
        lay.activate()

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self._relayout()

    def _update_enabled(self) -> None:
        ready = self._facts is not None
        edit = ready and self._editable()
        self.find_button.setEnabled(ready and "reference" not in self._busy)
        self.reference_combo.setEnabled(ready)
        self.custom_spin.setEnabled(ready)
        self.confirm_button.setVisible(self._found is not None)
        self.reject_button.setVisible(self._found is not None)
        self.confirm_button.setEnabled(edit and self._found is not None)
        self.ruler_button.setEnabled(edit)
        self._ruler_row.setVisible(self._line is not None)
        self.clear_button.setEnabled(edit and self._state is not None
                                     and self._state.calibrated)
        self.auto_button.setEnabled(edit and "outline" not in self._busy)
        self.seed_button.setEnabled(edit and "outline" not in self._busy)
        self.export_image_button.setEnabled(ready)
        self.export_json_button.setEnabled(ready)
        if ready and not self._editable():
            for b in (self.confirm_button, self.ruler_button, self.clear_button,
                      self.auto_button, self.seed_button):
                b.setToolTip("Your role can look at measurements but not change them.")
        self._relayout()

    def _show_state(self, state: la.CalibrationState, *, notify: bool = True) -> None:
        self._state = state
        if self._facts is not None:
            self._facts = replace(self._facts, px_per_mm=state.px_per_mm,
                                  calibration_method=state.method)
        text = html.escape(state.describe())
        colour = GOOD if state.calibrated else WARN
        self._say(self.state_label, f'<span style="color:{colour}">{text}</span>'
                                 + _warnings_html(state.warnings))
        doc = self._layer.doc
        if doc is not None and doc.photo_id == state.photo_id and (
                doc.px_per_mm != state.px_per_mm):
            self._layer.set_px_per_mm(state.px_per_mm)
        if notify:
            self.calibration_changed.emit(state.photo_id, state.px_per_mm)
        self._update_enabled()

    # -- running tasks ----------------------------------------------------------------------
    def _start(self, name: str, text: str) -> int:
        self._busy.add(name)
        self._say(self.status_label, text)
        self._update_enabled()
        return self._gen

    def _end(self, gen: int, name: str) -> bool:
        """True when the result is still for the photo shown."""
        if gen != self._gen:
            return False
        self._busy.discard(name)
        if not self._busy:
            self._say(self.status_label, "")
        self._update_enabled()
        return True

    def _fail(self, gen: int, name: str, exc: BaseException) -> None:
        if gen != self._gen:
            return
        self._busy.discard(name)
        text = user_message(exc)
        if not self._busy:
            self._say(self.status_label, "")
        target = {"reference": self.reference_label, "confirm": self.reference_label,
                  "ruler": self.ruler_label, "outline": self.outline_label,
                  "metrics": self.metrics_label, "change": self.change_label,
                  "export-image": self.export_label, "export-json": self.export_label,
                  }.get(name, self.state_label)
        if name == "reference":
            from derm_workstation.imaging.calibration import NoReferenceFound

            if isinstance(exc, NoReferenceFound):
                text = "No reference found. " + text.removeprefix(
                    "No calibration reference was found in the photo. ")
        self._say(target, f'<span style="color:{WARN}">{html.escape(text)}</span>')
        if not isinstance(exc, DermError):
            notifier.error(text)
        self._update_enabled()
        self.failed.emit(text)
        self.finished.emit(name)

    # -- calibration --------------------------------------------------------------------------
    def _reference_kind_changed(self) -> None:
        self.custom_spin.setVisible(self.reference_combo.currentData() == CUSTOM)

    def choose_reference(self, name: str, diameter_mm: float | None = None) -> None:
        """Select a reference in the chooser (a built-in name, or "custom" with a diameter)."""
        i = self.reference_combo.findData(name)
        if i < 0:
            raise ValueError(f"unknown reference {name!r}")
        self.reference_combo.setCurrentIndex(i)
        if diameter_mm is not None:
            self.custom_spin.setValue(diameter_mm)

    def _chosen(self) -> tuple[str | None, float | None]:
        data = self.reference_combo.currentData()
        if data == CUSTOM:
            return None, float(self.custom_spin.value())
        return str(data), None

    def _lesion(self) -> tuple[an.AnnotationView | None, tuple[float, float] | None]:
        """The selected (or else the first) ROI, or else the centre of a marker."""
        views = self._layer.annotations()
        sel = self._layer.selected
        views.sort(key=lambda v: v.id != sel)
        for v in views:
            if v.kind in la.ROI_KINDS:
                return v, None
        for v in views:
            if v.kind == "marker":
                return None, v.points[0]
        return None, None

    def find_reference(self) -> None:
        svc, facts = self._svc, self._facts
        if svc is None or facts is None:
            return
        reference, diameter = self._chosen()
        self._found = None
        self._layer.set_reference_overlay(None)
        self._say(self.reference_label, "")
        gen = self._start("reference", "Looking for the reference…")
        roi, centre = self._lesion()
        label = self.reference_combo.currentText()
        if diameter is not None:
            label = f"{diameter:g} mm reference"

        def done(cal: Calibration) -> None:
            if not self._end(gen, "reference"):
                return
            self._found = (cal, reference, diameter)
            e = cal.ellipse
            if e is not None:
                self._layer.set_reference_overlay((e.cx, e.cy, e.rx, e.ry, e.angle_deg))
            self._say(self.reference_label,
                f"Found the {html.escape(label.split(' — ')[0])}: "
                f"<b>{cal.px_per_mm:.2f} px/mm</b>, confidence {cal.confidence:.0%}. "
                "Check the green outline on the photo, then confirm or reject."
                + _warnings_html(cal.warnings))
            self._update_enabled()
            self.finished.emit("reference")

        self._tasks.run_image(
            lambda: svc.detect_reference(facts, reference, diameter, lesion_xy=centre,
                                         lesion_roi=roi),
            done, lambda exc: self._fail(gen, "reference", exc))

    def confirm_reference(self) -> None:
        svc, pid, found = self._svc, self._photo_id, self._found
        if svc is None or pid is None or found is None:
            return
        cal, reference, diameter = found
        gen = self._start("confirm", "Saving the calibration…")

        def done(state: la.CalibrationState) -> None:
            if not self._end(gen, "confirm"):
                return
            self._found = None
            self._layer.set_reference_overlay(None)
            self._say(self.reference_label, "")
            self._show_state(state)
            self.finished.emit("confirm")

        self._tasks.run_db(lambda: svc.confirm_reference(pid, cal, reference, diameter),
                           done, lambda exc: self._fail(gen, "confirm", exc))

    def reject_reference(self) -> None:
        self._found = None
        self._layer.set_reference_overlay(None)
        self._say(self.reference_label, "Reference rejected: the photo's calibration is "
                                     "unchanged.")
        self._update_enabled()

    def start_ruler_line(self) -> None:
        if self._facts is None or not self._editable():
            return
        self._line = None
        self._say(self.ruler_label, "Drag a line along the ruler in the photo, over as many "
                                 "millimetres as you can read. Esc cancels.")
        self._layer.capture_line(self._ruler_drawn)
        self._update_enabled()

    def _ruler_drawn(self, p0: tuple[float, float], p1: tuple[float, float]) -> None:
        self._line = (p0, p1)
        length = an.distance(p0, p1)
        self._say(self.ruler_label, f"Line of {length:.0f} px. How long is it on the ruler?")
        self._update_enabled()
        self.ruler_spin.setFocus()
        self.ruler_spin.selectAll()

    def _capture_ended(self) -> None:
        if self._line is None and self.ruler_label.text().startswith("Drag a line"):
            self._say(self.ruler_label, "")
        if self.outline_label.text().startswith("Click once"):
            self._say(self.outline_label, "")

    def use_ruler_line(self) -> None:
        svc, pid, line = self._svc, self._photo_id, self._line
        if svc is None or pid is None or line is None:
            return
        length = float(self.ruler_spin.value())
        gen = self._start("ruler", "Saving the calibration…")

        def done(state: la.CalibrationState) -> None:
            if not self._end(gen, "ruler"):
                return
            self._line = None
            self._say(self.ruler_label, "")
            self._show_state(state)
            self.finished.emit("ruler")

        self._tasks.run_db(lambda: svc.calibrate_by_line(pid, line[0], line[1], length),
                           done, lambda exc: self._fail(gen, "ruler", exc))

    def cancel_ruler_line(self) -> None:
        self._line = None
        self._layer.cancel_capture()
        self._say(self.ruler_label, "")
        self._update_enabled()

    def clear_calibration(self) -> None:
        svc, pid = self._svc, self._photo_id
        if svc is None or pid is None:
            return
        gen = self._start("clear", "Clearing the calibration…")

        def done(state: la.CalibrationState) -> None:
            if self._end(gen, "clear"):
                self._show_state(state)
                self.finished.emit("clear")

        self._tasks.run_db(lambda: svc.clear_calibration(pid), done,
                           lambda exc: self._fail(gen, "clear", exc))

    # -- outline -----------------------------------------------------------------------------
    def outline_automatically(self) -> None:
        self._outline(None)

    def outline_from_click(self) -> None:
        if self._facts is None or not self._editable():
            return
        self._say(self.outline_label, "Click once inside the lesion on the photo. Esc cancels.")
        self._layer.capture_point(lambda x, y: self._outline((x, y)))

    def _outline(self, seed: tuple[float, float] | None) -> None:
        svc, facts = self._svc, self._facts
        if svc is None or facts is None or not self._editable():
            return
        markers = [v for v in self._layer.annotations() if v.kind == "marker"]
        gen = self._start("outline", "Outlining the lesion…")
        self._say(self.outline_label, "")

        def done(p: la.OutlineProposal) -> None:
            if not self._end(gen, "outline"):
                return
            number = la.lesion_number_inside(p.points, self._layer.annotations())
            aid = self._layer.add_annotation("polygon", list(p.points),
                                             lesion_number=number)
            if aid is None:
                self.finished.emit("outline")
                return
            self._layer.set_tool("select")
            lesion = f" Lesion {number}." if number else ""
            care = " Check it with particular care." if p.confidence < 0.4 else ""
            self._say(self.outline_label,
                f"Proposed outline, confidence {p.confidence:.0%}.{lesion}{care} Drag its "
                "corners to correct it; Ctrl+Z removes it." + _warnings_html(p.warnings))
            self.outline_added.emit(aid)
            self.finished.emit("outline")

        self._tasks.run_image(lambda: svc.segment(facts, seed, markers=markers), done,
                              lambda exc: self._fail(gen, "outline", exc))

    # -- metrics and change -----------------------------------------------------------------
    def _selected_view(self) -> an.AnnotationView | None:
        doc, sel = self._layer.doc, self._layer.selected
        return doc.get(sel) if doc is not None and sel is not None else None

    def _refresh_selection(self) -> None:
        if self._facts is None or self._svc is None or not self.isVisible():
            return
        v = self._selected_view()
        self._refresh_metrics(v)
        self._refresh_change(v)

    def refresh(self) -> None:
        """Recompute metrics and change for the current selection (e.g. when shown)."""
        self._metrics_key = None
        self._change_key = None
        self._refresh_selection()

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        self.refresh()

    def _refresh_metrics(self, v: an.AnnotationView | None) -> None:
        svc, facts = self._svc, self._facts
        assert svc is not None and facts is not None
        if v is None or v.kind not in la.ROI_KINDS:
            self._metrics_key = None
            self._say(self.metrics_label,
                f'<span style="color:{MUTED}">Select a region — a polygon, freehand or '
                "ellipse — to see its metrics.</span>")
            return
        key = json.dumps([v.id, v.geometry, facts.px_per_mm])
        if key == self._metrics_key:
            return
        self._metrics_key = key
        self._say(self.metrics_label, f'<span style="color:{MUTED}">Measuring…</span>')
        gen = self._start("metrics", "Measuring the region…")

        def done(m: LesionMetrics) -> None:
            if not self._end(gen, "metrics") or key != self._metrics_key:
                return
            self._say(self.metrics_label, metrics_html(m))
            self.finished.emit("metrics")

        def failed(exc: BaseException) -> None:
            if key == self._metrics_key:
                self._fail(gen, "metrics", exc)

        self._tasks.run_image(lambda: svc.metrics(facts, v), done, failed)

    def _lesion_number_of(self, v: an.AnnotationView) -> int | None:
        if v.lesion_number:
            return v.lesion_number
        if v.kind in la.ROI_KINDS:
            pts = v.points
            if v.kind == "ellipse":
                (cx, cy), a, b = an.ellipse_axes(pts)
                pts = [(cx + a * math.cos(t / 16 * math.pi), cy + b * math.sin(t / 16 * math.pi))
                       for t in range(32)]
            return la.lesion_number_inside(pts, self._layer.annotations())
        return None

    def _refresh_change(self, v: an.AnnotationView | None) -> None:
        svc, pid = self._svc, self._photo_id
        assert svc is not None and pid is not None
        number = self._lesion_number_of(v) if v is not None else None
        if v is None or number is None:
            self._change_key = None
            self._say(self.change_label,
                f'<span style="color:{MUTED}">Select a numbered lesion (a Lesion # marker, '
                "or an outline around one) to compare it with earlier visits.</span>")
            return
        key = (json.dumps([v.id, v.geometry, self._facts and self._facts.px_per_mm]), number)
        if key == self._change_key:
            return
        self._change_key = key
        gen = self._start("change", "Comparing with earlier visits…")
        ws, actor = svc.ws, svc.actor

        def read() -> Any:
            from derm_workstation.core.lesions import LesionService

            return LesionService(ws, actor).change_for(pid, number)

        def done(change: Any) -> None:
            if not self._end(gen, "change") or key != self._change_key:
                return
            if change is None:
                self._say(self.change_label,
                    f"Lesion {number}: no earlier outline of this lesion to compare with. "
                    f'<span style="color:{MUTED}">Outline it on an earlier photo with the '
                    "same lesion number.</span>")
            else:
                summary = html.escape(change.summary())
                text = (f'<span style="color:{WARN}"><b>{summary}</b></span>' if change.changed
                        else summary)
                if change.d_area_mm2 is not None:
                    text += _warnings_html(change.warnings)
                self._say(self.change_label, text)
            self.finished.emit("change")

        def failed(exc: BaseException) -> None:
            if key == self._change_key:
                self._fail(gen, "change", exc)

        self._tasks.run_db(read, done, failed)

    # -- export -------------------------------------------------------------------------------
    def _ask_path(self, title: str, filters: str, suggested: str) -> str | None:
        path, _f = QFileDialog.getSaveFileName(self, title, suggested, filters)
        return path or None

    def _suggested(self, suffix: str) -> str:
        folder = QStandardPaths.writableLocation(
            QStandardPaths.StandardLocation.DocumentsLocation) or str(Path.home())
        pid = (self._photo_id or "photo")[:8]
        return str(Path(folder) / f"photo-{pid}-{suffix}")

    def export_image(self) -> None:
        svc, facts = self._svc, self._facts
        if svc is None or facts is None:
            return
        path = self.save_path_provider("Export annotated copy", IMAGE_FILTER,
                                       self._suggested("annotated.jpg"))
        if not path:
            return
        if not Path(path).suffix:
            path += ".jpg"
        views = self._layer.annotations()
        gen = self._start("export-image", "Saving the annotated copy…")

        def recorded(fmt: str) -> None:
            if not self._end(gen, "export-image"):
                return
            scale = " with a scale bar" if facts.px_per_mm else " (uncalibrated: no scale bar)"
            self._say(self.export_label,
                f"Saved the annotated copy{scale} ({fmt}): {html.escape(path)}")
            self.exported.emit(path)
            self.finished.emit("export-image")

        def written(fmt: str) -> None:
            if gen != self._gen:
                return
            self._tasks.run_db(lambda: (svc.record_export(facts.id, "annotated-copy", fmt),
                                        fmt)[1],
                               recorded, lambda exc: self._fail(gen, "export-image", exc))

        self._tasks.run_image(lambda: svc.write_annotated(facts, path, views), written,
                              lambda exc: self._fail(gen, "export-image", exc))

    def export_json(self) -> None:
        svc, pid = self._svc, self._photo_id
        if svc is None or pid is None:
            return
        path = self.save_path_provider("Export annotations (JSON)", JSON_FILTER,
                                       self._suggested("annotations.json"))
        if not path:
            return
        if not Path(path).suffix:
            path += ".json"
        gen = self._start("export-json", "Saving the annotations…")

        def write() -> int:
            doc = svc.write_annotations_json(pid, path)
            svc.record_export(pid, "annotations-json", "JSON")
            return len(doc["annotations"])

        def done(n: int) -> None:
            if not self._end(gen, "export-json"):
                return
            self._say(self.export_label, f"Saved {n} annotation(s) as JSON: {html.escape(path)}")
            self.exported.emit(path)
            self.finished.emit("export-json")

        self._tasks.run_db(write, done, lambda exc: self._fail(gen, "export-json", exc))
