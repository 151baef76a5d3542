"""The Measure panel driven as a clinician would: clicks, drags, typing.

A real workspace, real synthetic skin photos (a coin of known size, a lesion with a
known mask) decoded by the real pipeline and analysed by the real code on the real
task lanes. The photo is 800 x 600 in a view of exactly 800 x 600 (fit: 100 %), so
widget (x, y) is image (x, y).
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from derm_workstation.core import annotations as an
from derm_workstation.core import intake
from derm_workstation.core.lesion_analysis import LesionAnalysisService, roi_mask
from derm_workstation.core.models import AuditEvent, Photo
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.imaging.synthetic import PhotoSpec, render_photo
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets.qt_analysis_panel import QtAnalysisPanel
from derm_workstation.qt.widgets.qt_annotation_layer import QtAnnotationLayer
from derm_workstation.qt.widgets.qt_photo_layer import PhotoSource
from derm_workstation.qt.widgets.qt_photo_view import QtPhotoView
from tests.core.helpers import add_case, add_patient
from tests.qt.gestures import calibrate_with_ruler_line, click, drag, finished
from tests.qt.windows import main_window

TIMEOUT = 20_000
W, H = 800, 600
DOC = Actor("dr.grey", "dermatologist")
PPM = 9.0


def _coin_photo():
    return render_photo(PhotoSpec(seed=21, kind="pigmented", fitzpatrick=3, severity=0.5,
                                  width=W, height=H, px_per_mm=PPM, with_reference=True,
                                  reference_mm=24.26, reference_name="US 25¢"))


COIN = _coin_photo()


def _plain_photo() -> bytes:
    """Skin with a dark oval and no reference, with EXIF (and GPS) that must not leak."""
    y, x = np.mgrid[0:H, 0:W]
    arr = np.stack([200 - y * 30 // H, 160 - x * 20 // W, np.full_like(x, 140)], axis=-1)
    arr = arr.astype(np.uint8)
    arr[((x - 400) ** 2 / 130 ** 2 + (y - 300) ** 2 / 90 ** 2) < 1] = (90, 55, 40)
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 1.0)}  # GPS IFD
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92, exif=exif)
    return buf.getvalue()


PLAIN = _plain_photo()


class Harness(QWidget):
    def __init__(self, tasks: QtTaskManager) -> None:
        super().__init__()
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        self.view = QtPhotoView(self)
        self.layer = QtAnnotationLayer(self.view)
        outer.addWidget(self.layer.toolbar())
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        row.addWidget(self.view, 1)
        self.panel = QtAnalysisPanel(self.layer, tasks, self)
        row.addWidget(self.panel)
        outer.addLayout(row, 1)
        self.view.set_tasks(tasks)




def add_photo(ws: Workspace, data: bytes, px_per_mm: float | None = None, *,
              when: datetime = datetime(2026, 2, 3, tzinfo=UTC),
              patient_id: str | None = None) -> str:
    with ws.db.session() as s:
        from derm_workstation.core.models import Patient

        p = s.get(Patient, patient_id) if patient_id else add_patient(s)
        c = add_case(s, p, when)
        ph = intake.add_photo(s, ws.images, c, data, taken_at=when)
        ph.calibration_px_per_mm = px_per_mm
        return ph.id


def patient_of(ws: Workspace, photo_id: str) -> str:
    with ws.db.session() as s:
        ph = s.get(Photo, photo_id)
        return ph.case.patient_id


@pytest.fixture
def harness(qtbot, tasks: QtTaskManager) -> Harness:
    h = Harness(tasks)
    qtbot.addWidget(h)
    h.show()
    qtbot.waitExposed(h)
    extra_w = h.width() - h.view.width()
    # the tool row wraps (its height follows the width): set the width first
    h.resize(W + extra_w, H + h.height() - h.view.height())
    qtbot.waitUntil(lambda: h.view.width() == W, timeout=TIMEOUT)
    extra_h = h.height() - h.view.height()
    h.resize(W + extra_w, H + extra_h)
    qtbot.waitUntil(lambda: (h.view.width(), h.view.height()) == (W, H), timeout=TIMEOUT)
    return h


def open_photo(qtbot, h: Harness, ws: Workspace, tasks: QtTaskManager, photo_id: str,
               data: bytes, actor: Actor = DOC) -> None:
    with ws.db.session() as s:
        ppm = s.get(Photo, photo_id).calibration_px_per_mm
    src = PhotoSource(photo_id, W, H, lambda: data, calibration_px_per_mm=ppm)
    with qtbot.waitSignal(h.view.image_shown, timeout=TIMEOUT):
        h.view.open_photo(src)
    with qtbot.waitSignal(h.layer.loaded, timeout=TIMEOUT):
        h.layer.open_photo(photo_id, an.AnnotationService(ws, actor), tasks, ppm)
    with qtbot.waitSignal(h.panel.finished, timeout=TIMEOUT,
                          check_params_cb=lambda name: name == "state"):
        h.panel.set_photo(photo_id, LesionAnalysisService(ws, actor))


def settled(qtbot, h: Harness) -> None:
    qtbot.waitUntil(lambda: h.layer.pending_saves == 0 and not h.panel.busy,
                    timeout=TIMEOUT)


def stored_ppm(ws: Workspace, pid: str) -> tuple[float | None, str | None]:
    with ws.db.session() as s:
        ph = s.get(Photo, pid)
        return ph.calibration_px_per_mm, ph.calibration_method


def audit_events(ws: Workspace, action: str) -> list[AuditEvent]:
    from sqlalchemy import select

    with ws.db.session() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))
        s.expunge_all()
        return rows


def text_of(label) -> str:
    return re.sub(r"<[^>]+>", "", label.text()).replace("&nbsp;", " ")


# -- calibration ---------------------------------------------------------------------------
def test_find_coin_confirm_and_every_measurement_follows(qtbot, harness: Harness,
                                                         ws: Workspace,
                                                         tasks: QtTaskManager) -> None:
    h = harness
    pid = add_photo(ws, COIN.jpeg)
    open_photo(qtbot, h, ws, tasks, pid, COIN.jpeg)
    assert text_of(h.panel.state_label) == "Uncalibrated — measurements in pixels"
    h.layer.set_tool("ruler")
    drag(qtbot, h.view, QPoint(100, 500), QPoint(280, 500))  # 180 px
    settled(qtbot, h)
    [ruler] = h.layer.annotations()
    assert h.layer.doc_measure(ruler).text == "180 px (uncalibrated)"
    assert not h.panel.confirm_button.isVisible()
    h.panel.choose_reference("us-25c")
    with finished(qtbot, h.panel, "reference"):
        click(qtbot, h.panel.find_button)
    found = text_of(h.panel.reference_label)
    assert "US 25¢" in found and "px/mm" in found, found
    overlay = h.layer.reference_overlay
    assert overlay is not None
    truth = COIN.reference
    assert overlay[0] == pytest.approx(truth.cx, abs=2) and overlay[1] == pytest.approx(
        truth.cy, abs=2)
    assert h.panel.confirm_button.isVisible() and h.panel.confirm_button.isEnabled()
    h.grab().save("/tmp/analysis_reference_found.png")
    # the green reference outline is drawn on the photo at the coin's rim
    img = h.view.grab().toImage()
    rim = img.pixelColor(QPoint(round(overlay[0] + overlay[2]), round(overlay[1])))
    assert rim.green() > 150 and rim.green() > rim.red() and rim.green() > rim.blue()
    assert stored_ppm(ws, pid) == (None, None)  # nothing stored before the confirmation
    qtbot.waitUntil(lambda: h.panel.confirm_button.height() > 10, timeout=TIMEOUT)
    with finished(qtbot, h.panel, "confirm"):
        click(qtbot, h.panel.confirm_button)
    ppm, method = stored_ppm(ws, pid)
    assert ppm == pytest.approx(PPM, rel=0.02) and method == "reference:us-25c"
    assert text_of(h.panel.state_label).startswith(
        f"Calibrated: {ppm:.1f} px/mm (US 25¢ (quarter) coin, confirmed by dr.grey)")
    assert h.layer.reference_overlay is None and not h.panel.confirm_button.isVisible()
    # the ruler drawn before now reads in millimetres, at once
    assert h.layer.doc_measure(ruler).text == f"{180 / ppm:.1f} mm"
    [ev] = audit_events(ws, "photo.calibrate")
    assert ev.actor == "dr.grey" and ev.entity_id == pid
    assert ev.detail["reference"] == "us-25c" and ev.detail["reference_mm"] == 24.26
    assert ev.detail["ellipse"]["rx"] == pytest.approx(truth.radius_px, rel=0.02)
    assert 0 < ev.detail["confidence"] <= 1


def test_no_reference_found_is_one_plain_sentence(qtbot, harness: Harness, ws: Workspace,
                                                  tasks: QtTaskManager) -> None:
    h = harness
    pid = add_photo(ws, PLAIN)
    open_photo(qtbot, h, ws, tasks, pid, PLAIN)
    # the oval lesion is outlined, so it is never taken for a coin
    h.layer.set_tool("ellipse")
    drag(qtbot, h.view, QPoint(270, 210), QPoint(530, 390))
    settled(qtbot, h)
    with finished(qtbot, h.panel, "reference"):
        click(qtbot, h.panel.find_button)
    msg = text_of(h.panel.reference_label)
    assert msg.startswith("No reference found.") and "Traceback" not in msg
    assert "coin" in msg  # tells what to do instead
    assert not h.panel.confirm_button.isVisible() and h.layer.reference_overlay is None
    assert stored_ppm(ws, pid) == (None, None)


def test_reject_forgets_the_reference_and_custom_diameter(qtbot, harness: Harness,
                                                          ws: Workspace,
                                                          tasks: QtTaskManager) -> None:
    h = harness
    pid = add_photo(ws, COIN.jpeg)
    open_photo(qtbot, h, ws, tasks, pid, COIN.jpeg)
    combo = h.panel.reference_combo
    combo.setFocus()
    qtbot.keyClick(combo, Qt.Key.Key_End)  # the last entry: "Custom diameter… mm"
    assert combo.currentData() == "custom" and h.panel.custom_spin.isVisible()
    h.panel.custom_spin.selectAll()
    qtbot.keyClicks(h.panel.custom_spin, "24.26")
    with finished(qtbot, h.panel, "reference"):
        click(qtbot, h.panel.find_button)
    assert "24.26 mm reference" in text_of(h.panel.reference_label)
    qtbot.waitUntil(lambda: h.panel.reject_button.height() > 10, timeout=TIMEOUT)
    click(qtbot, h.panel.reject_button)
    assert h.layer.reference_overlay is None and not h.panel.confirm_button.isVisible()
    assert "rejected" in text_of(h.panel.reference_label)
    assert stored_ppm(ws, pid) == (None, None)


def test_ruler_line_calibration_then_clear(qtbot, harness: Harness, ws: Workspace,
                                           tasks: QtTaskManager) -> None:
    h = harness
    pid = add_photo(ws, PLAIN)
    open_photo(qtbot, h, ws, tasks, pid, PLAIN)
    h.layer.set_tool("ellipse")
    drag(qtbot, h.view, QPoint(300, 250), QPoint(400, 350))
    settled(qtbot, h)
    [ell] = h.layer.annotations()
    click(qtbot, h.panel.ruler_button)
    assert h.layer.capturing == "line"
    drag(qtbot, h.view, QPoint(100, 550), QPoint(500, 550))
    assert "400 px" in text_of(h.panel.ruler_label)
    assert h.panel.use_line_button.isVisible()
    h.panel.ruler_spin.selectAll()
    qtbot.keyClicks(h.panel.ruler_spin, "20")
    qtbot.waitUntil(lambda: h.panel.use_line_button.height() > 10, timeout=TIMEOUT)
    with finished(qtbot, h.panel, "ruler"):
        click(qtbot, h.panel.use_line_button)
    assert stored_ppm(ws, pid) == (pytest.approx(20.0), "ruler-line")
    assert text_of(h.panel.state_label).startswith(
        "Calibrated: 20.0 px/mm (ruler line, confirmed by dr.grey)")
    assert len(h.layer.annotations()) == 1  # the ruler line is not an annotation
    m = h.layer.doc_measure(ell)
    assert m.mm is not None and m.mm["area"] == pytest.approx(np.pi * 50 * 50 / 400)
    [ev] = audit_events(ws, "photo.calibrate")
    assert ev.detail["p0"] == [100.0, 550.0] and ev.detail["length_mm"] == 20.0
    with finished(qtbot, h.panel, "clear"):
        click(qtbot, h.panel.clear_button)
    assert stored_ppm(ws, pid) == (None, None)
    assert text_of(h.panel.state_label) == "Uncalibrated — measurements in pixels"
    assert "uncalibrated" in h.layer.doc_measure(ell).text
    assert len(audit_events(ws, "photo.calibration_clear")) == 1


def test_escape_cancels_the_ruler_line(qtbot, harness: Harness, ws: Workspace,
                                       tasks: QtTaskManager) -> None:
    h = harness
    pid = add_photo(ws, PLAIN)
    open_photo(qtbot, h, ws, tasks, pid, PLAIN)
    click(qtbot, h.panel.ruler_button)
    assert h.layer.capturing == "line"
    h.view.setFocus()
    qtbot.keyClick(h.view, Qt.Key.Key_Escape)
    assert h.layer.capturing == "" and text_of(h.panel.ruler_label) == ""
    drag(qtbot, h.view, QPoint(100, 550), QPoint(500, 550))  # now it pans, draws nothing
    assert not h.panel.use_line_button.isVisible()
    assert h.layer.annotations() == []


# -- outline and metrics ----------------------------------------------------------------------
def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def test_outline_automatically_takes_the_marker_number_and_undoes(
        qtbot, harness: Harness, ws: Workspace, tasks: QtTaskManager) -> None:
    h = harness
    pid = add_photo(ws, COIN.jpeg, PPM)
    open_photo(qtbot, h, ws, tasks, pid, COIN.jpeg)
    ys, xs = np.nonzero(COIN.lesion_mask)
    cx, cy = int(np.median(xs)), int(np.median(ys))
    h.layer.set_tool("marker")
    click(qtbot, h.view, QPoint(cx, cy))
    settled(qtbot, h)
    with qtbot.waitSignal(h.panel.outline_added, timeout=TIMEOUT) as sig:
        click(qtbot, h.panel.auto_button)
    settled(qtbot, h)
    poly = h.layer.doc.get(sig.args[0])
    assert poly is not None and poly.kind == "polygon" and poly.lesion_number == 1
    assert h.layer.selected == poly.id and h.layer.tool == "select"
    stored = {v.id: v for v in an.AnnotationService(ws, DOC).list(pid)}
    assert stored[poly.id].lesion_number == 1
    mask = roi_mask("polygon", poly.geometry, (W, H))
    assert _jaccard(mask, COIN.lesion_mask) > 0.75
    assert "confidence" in text_of(h.panel.outline_label)
    qtbot.waitUntil(lambda: "mm²" in text_of(h.panel.metrics_label), timeout=TIMEOUT)
    metrics = text_of(h.panel.metrics_label)
    area = float(re.search(r"Area([\d.]+) mm²", metrics).group(1))
    assert area == pytest.approx(COIN.lesion_mask.sum() / PPM ** 2, rel=0.2)
    for word in ("Perimeter", "Longest diameter", "Shortest diameter", "Asymmetry",
                 "Border irregularity", "Colours", "L*"):
        assert word in metrics
    h.grab().save("/tmp/analysis_outline_metrics.png")
    # the proposal is an ordinary annotation: Ctrl+Z takes it away again
    h.view.setFocus()
    qtbot.keyClick(h.view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    settled(qtbot, h)
    assert [v.kind for v in an.AnnotationService(ws, DOC).list(pid)] == ["marker"]


def test_click_inside_the_lesion_then_edit_a_corner(qtbot, harness: Harness, ws: Workspace,
                                                    tasks: QtTaskManager) -> None:
    h = harness
    pid = add_photo(ws, PLAIN, 10.0)
    open_photo(qtbot, h, ws, tasks, pid, PLAIN)
    click(qtbot, h.panel.seed_button)
    assert h.layer.capturing == "point"
    with qtbot.waitSignal(h.panel.outline_added, timeout=TIMEOUT) as sig:
        click(qtbot, h.view, QPoint(400, 300))
    settled(qtbot, h)
    poly = h.layer.doc.get(sig.args[0])
    assert poly is not None and poly.lesion_number is None
    truth = np.zeros((H, W), bool)
    yy, xx = np.mgrid[0:H, 0:W]
    truth[((xx - 400) ** 2 / 130 ** 2 + (yy - 300) ** 2 / 90 ** 2) < 1] = True
    assert _jaccard(roi_mask("polygon", poly.geometry, (W, H)), truth) > 0.9
    qtbot.waitUntil(lambda: "mm²" in text_of(h.panel.metrics_label), timeout=TIMEOUT)
    before = text_of(h.panel.metrics_label)
    # drag the left-most corner 30 px further left with the Select tool: a bigger lesion
    i = min(range(len(poly.points)), key=lambda k: poly.points[k][0])
    x0, y0 = poly.points[i]
    drag(qtbot, h.view, QPoint(round(x0), round(y0)), QPoint(round(x0) - 30, round(y0)))
    settled(qtbot, h)
    qtbot.waitUntil(lambda: text_of(h.panel.metrics_label) not in (before, "Measuring…"),
                    timeout=TIMEOUT)
    area0 = float(re.search(r"Area([\d.]+) mm²", before).group(1))
    area1 = float(re.search(r"Area([\d.]+) mm²", text_of(h.panel.metrics_label)).group(1))
    assert area1 > area0


def test_metrics_of_an_ellipse_exact_and_uncalibrated(qtbot, harness: Harness,
                                                      ws: Workspace,
                                                      tasks: QtTaskManager) -> None:
    h = harness
    pid = add_photo(ws, PLAIN, None)
    open_photo(qtbot, h, ws, tasks, pid, PLAIN)
    h.layer.set_tool("ellipse")
    with finished(qtbot, h.panel, "metrics"):
        drag(qtbot, h.view, QPoint(270, 210), QPoint(530, 390))  # the dark oval's box
    text = text_of(h.panel.metrics_label)
    area = float(re.search(r"Area(\d+) px² \(uncalibrated\)", text).group(1))
    assert area == pytest.approx(np.pi * 130 * 90, rel=0.01)
    longest = float(re.search(r"Longest diameter(\d+) px", text).group(1))
    assert longest == pytest.approx(260, abs=3)
    assert "dark brown" in text or "light brown" in text
    assert "TDS" not in text  # not a dermoscopic photo
    h.layer.set_tool("ruler")
    drag(qtbot, h.view, QPoint(10, 20), QPoint(200, 20))
    settled(qtbot, h)
    assert "Select a region" in text_of(h.panel.metrics_label)


def test_dermoscopic_photo_shows_tds_as_decision_support(qtbot, harness: Harness,
                                                         ws: Workspace,
                                                         tasks: QtTaskManager) -> None:
    h = harness
    photo = render_photo(PhotoSpec(seed=5, kind="pigmented", fitzpatrick=2, severity=0.7,
                                   width=W, height=H, px_per_mm=30.0, dermoscopic=True))
    pid = add_photo(ws, photo.jpeg, 30.0)
    open_photo(qtbot, h, ws, tasks, pid, photo.jpeg)
    with finished(qtbot, h.panel, "outline"):
        click(qtbot, h.panel.auto_button)
    qtbot.waitUntil(lambda: "TDS" in text_of(h.panel.metrics_label), timeout=TIMEOUT)
    text = text_of(h.panel.metrics_label)
    assert re.search(r"TDS [\d.]+ — A \d · B \d · C \d · D \d", text), text
    assert "not a diagnosis" in text
    # the panel and the outline's label on the photo give the same figures
    (outline,) = [v for v in h.layer.annotations() if v.kind == "polygon"]
    label = h.layer.doc_measure(outline).text  # "82.8 mm² · perimeter 34.9 mm"
    area, perimeter = re.fullmatch(r"([\d.]+) mm² · perimeter ([\d.]+) mm", label).groups()
    assert f"Area{area} mm²" in text and f"Perimeter{perimeter} mm" in text, (label, text)
    h.grab().save("/tmp/analysis_dermoscopic.png")


# -- change over time --------------------------------------------------------------------------
def test_change_over_time_for_a_numbered_lesion(qtbot, harness: Harness, ws: Workspace,
                                                tasks: QtTaskManager) -> None:
    h = harness
    earlier = add_photo(ws, PLAIN, 10.0, when=datetime(2026, 8, 1, tzinfo=UTC))
    later = add_photo(ws, PLAIN, 10.0, when=datetime(2026, 11, 1, tzinfo=UTC),
                      patient_id=patient_of(ws, earlier))
    svc = an.AnnotationService(ws, DOC)
    svc.add(earlier, "polygon", [(300, 200), (400, 200), (400, 300), (300, 300)],
            lesion_number=2)  # 100 mm², longest 14.1 mm
    open_photo(qtbot, h, ws, tasks, later, PLAIN)
    h.layer.set_tool("marker")
    click(qtbot, h.view, QPoint(50, 50))  # lesion 1 elsewhere
    click(qtbot, h.view, QPoint(350, 250))
    settled(qtbot, h)
    assert [v.lesion_number for v in h.layer.annotations()] == [1, 2]
    h.layer.set_tool("polygon")
    for pt in (QPoint(290, 190), QPoint(410, 190), QPoint(410, 310)):
        click(qtbot, h.view, pt)
    with finished(qtbot, h.panel, "change"):
        qtbot.mouseDClick(h.view, Qt.MouseButton.LeftButton, pos=QPoint(290, 310))
    text = text_of(h.panel.change_label)
    # 120 x 120 px at 10 px/mm = 144 mm² (+44 mm², +44 %); longest 17.0 mm (+2.8 mm, +20 %)
    assert text.startswith("Lesion 2 — since 2026-08-01: area +44.0 mm² (+44 %), "
                           "longest diameter +2.8 mm (+20 %)"), text
    # an uncalibrated earlier photo: no mm comparison, and the panel says why
    with ws.db.session() as s:
        s.get(Photo, earlier).calibration_px_per_mm = None
    h.panel.refresh()
    qtbot.waitUntil(lambda: "uncalibrated" in text_of(h.panel.change_label), timeout=TIMEOUT)
    assert "no mm comparison" in text_of(h.panel.change_label)
    h.grab().save("/tmp/analysis_change.png")


# -- export ------------------------------------------------------------------------------------
def test_export_annotated_copy_and_json(qtbot, harness: Harness, ws: Workspace,
                                        tasks: QtTaskManager, tmp_path: Path) -> None:
    h = harness
    pid = add_photo(ws, PLAIN, 10.0)
    open_photo(qtbot, h, ws, tasks, pid, PLAIN)
    h.layer.set_tool("ruler")
    drag(qtbot, h.view, QPoint(100, 100), QPoint(300, 100))
    settled(qtbot, h)
    asked: list[str] = []

    def provider(title: str, _filters: str, suggested: str) -> str:
        asked.append(title)
        assert "photo-" in suggested and pid[:8] in suggested
        return str(tmp_path / ("copy.jpg" if "copy" in title else "notes"))

    h.panel.save_path_provider = provider
    with finished(qtbot, h.panel, "export-image"):
        click(qtbot, h.panel.export_image_button)
    out = tmp_path / "copy.jpg"
    im = Image.open(out)
    assert im.format == "JPEG" and im.size == (W, H)
    assert not im.getexif() and "exif" not in im.info and "xmp" not in im.info
    assert b"PhoneMaker" not in out.read_bytes()
    px = im.convert("RGB").getpixel((200, 100))
    assert px[0] > 200 and px[1] > 170 and px[2] < 140  # the ruler is burned in
    bar = np.asarray(im.convert("L"))[H - 40:H - 10, 10:200]
    assert (bar > 235).sum() > 100  # the white scale bar
    assert "scale bar" in text_of(h.panel.export_label)
    with finished(qtbot, h.panel, "export-json"):
        click(qtbot, h.panel.export_json_button)
    doc = json.loads((tmp_path / "notes.json").read_text())
    assert doc["format"] == an.EXPORT_FORMAT and len(doc["annotations"]) == 1
    assert doc["annotations"][0]["measurement"]["mm"]["length"] == pytest.approx(20.0)
    assert asked == ["Export annotated copy", "Export annotations (JSON)"]
    events = audit_events(ws, "photo.export")
    assert [e.detail["what"] for e in events] == ["annotated-copy", "annotations-json"]
    assert all(str(tmp_path) not in json.dumps(e.detail) for e in events)


# -- roles and names -------------------------------------------------------------------------
def test_nurse_can_look_and_export_but_not_change(qtbot, harness: Harness, ws: Workspace,
                                                  tasks: QtTaskManager) -> None:
    h = harness
    pid = add_photo(ws, COIN.jpeg)
    open_photo(qtbot, h, ws, tasks, pid, COIN.jpeg, Actor("n.joy", "nurse"))
    p = h.panel
    assert p.find_button.isEnabled() and p.export_image_button.isEnabled()
    for b in (p.ruler_button, p.clear_button, p.auto_button, p.seed_button):
        assert not b.isEnabled()
    with finished(qtbot, h.panel, "reference"):
        click(qtbot, p.find_button)
    assert p.confirm_button.isVisible() and not p.confirm_button.isEnabled()


def test_every_control_is_named_and_the_panel_reads_well(qtbot, harness: Harness,
                                                         ws: Workspace,
                                                         tasks: QtTaskManager) -> None:
    h = harness
    pid = add_photo(ws, COIN.jpeg, PPM)
    open_photo(qtbot, h, ws, tasks, pid, COIN.jpeg)
    widgets = (h.panel.findChildren(QPushButton) + h.panel.findChildren(QComboBox)
               + h.panel.findChildren(QDoubleSpinBox))
    assert len(widgets) >= 14
    for w in widgets:
        assert w.objectName() and w.accessibleName(), w
    assert h.panel.objectName() == "analysisPanel" and h.panel.accessibleName()
    act = h.layer.measure_action
    assert act.isCheckable() and act.objectName() == "annotationMeasure"
    names = [h.panel.reference_combo.itemText(i) for i in range(h.panel.reference_combo.count())]
    for coin in ("US 1¢", "US 5¢", "US 10¢", "US 25¢", "€1", "€2", "1 euro-cent", "UK 1p",
                 "UK 2p", "UK £1", "sticker 10 mm", "Custom diameter"):
        assert any(coin in n for n in names), coin
    assert text_of(h.panel.state_label).startswith("Calibrated: 9.0 px/mm")
    h.grab().save("/tmp/analysis_panel.png")


# -- in the workstation window ----------------------------------------------------------------
def test_measure_panel_in_the_window(qtbot, qapp, ws: Workspace) -> None:
    from PySide6.QtWidgets import QToolButton

    from tests.builders import populate

    populate(ws)
    with main_window(qtbot, qapp, ws, DOC) as win:
        cp = win.case_panel
        qtbot.waitUntil(lambda: cp.shown_photo_id is not None, timeout=TIMEOUT)
        panel = cp.analysis
        assert panel is not None and not panel.isVisible()
        bar = cp.annotations.toolbar()
        button = bar.findChild(QToolButton, "annotationMeasureButton")
        assert button is not None and button.accessibleName()
        qtbot.waitUntil(lambda: panel.state is not None, timeout=TIMEOUT)
        click(qtbot, button)
        assert panel.isVisible() and cp.annotations.measure_action.isChecked()
        assert text_of(panel.state_label) == "Uncalibrated — measurements in pixels"
        assert panel.photo_id == cp.shown_photo_id
        # calibrate with a ruler line dragged on the window's own photo view
        calibrate_with_ruler_line(qtbot, panel, cp.ui.photoView, "10")
        ppm, method = stored_ppm(ws, cp.shown_photo_id)
        assert method == "ruler-line" and ppm is not None
        assert f"{ppm:.1f} px/mm" in cp.ui.photoInfoLabel.text()
        assert text_of(panel.state_label).startswith(f"Calibrated: {ppm:.1f} px/mm (ruler line")
        win.grab().save("/tmp/analysis_window.png")
        click(qtbot, button)
        assert not panel.isVisible()


