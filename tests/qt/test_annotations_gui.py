"""Annotation tools on the viewer, driven as a clinician would: drags, clicks, keys.

A real workspace with a real 1600 x 1200 JPEG photo, decoded by the real pipeline,
in a view of exactly 800 x 600 (fit: 50 %, so widget (x, y) is image (2x, 2y)).
Every change is saved on the real database lane and read back from the database.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtWidgets import QToolButton, QVBoxLayout, QWidget

from derm_workstation.core import annotations as an
from derm_workstation.core import intake
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets.qt_annotation_layer import QtAnnotationLayer
from derm_workstation.qt.widgets.qt_photo_layer import PhotoSource
from derm_workstation.qt.widgets.qt_photo_view import QtPhotoView
from tests.core.helpers import add_case, add_patient
from tests.qt.gestures import click, drag

TIMEOUT = 10_000
W, H = 1600, 1200
DOC = Actor("dr.grey", "dermatologist")


def make_photo() -> bytes:
    y, x = np.mgrid[0:H, 0:W]
    arr = np.stack([200 - y * 30 // H, 160 - x * 20 // W, np.full_like(x, 140)], axis=-1)
    arr = arr.astype(np.uint8)
    arr[((x - 700) ** 2 / 260 ** 2 + (y - 600) ** 2 / 180 ** 2) < 1] = (90, 55, 40)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92)
    return buf.getvalue()


PHOTO = make_photo()


class Harness(QWidget):
    def __init__(self, tasks: QtTaskManager) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self.view = QtPhotoView(self)
        self.layer = QtAnnotationLayer(self.view)
        layout.addWidget(self.layer.toolbar())
        layout.addWidget(self.view)
        self.view.set_tasks(tasks)




def add_photo(ws: Workspace, px_per_mm: float | None) -> str:
    with ws.db.session() as s:
        p = add_patient(s)
        c = add_case(s, p, datetime(2026, 2, 3, tzinfo=UTC))
        ph = intake.add_photo(s, ws.images, c, PHOTO)
        ph.calibration_px_per_mm = px_per_mm
        return ph.id


@pytest.fixture
def harness(qtbot, tasks: QtTaskManager) -> Harness:
    h = Harness(tasks)
    qtbot.addWidget(h)
    h.show()
    qtbot.waitExposed(h)
    # the tool row wraps (its height follows the width): set the width first
    h.resize(800, 600 + h.height() - h.view.height())
    qtbot.waitUntil(lambda: h.view.width() == 800, timeout=TIMEOUT)
    extra = h.height() - h.view.height()
    h.resize(800, 600 + extra)
    qtbot.waitUntil(lambda: (h.view.width(), h.view.height()) == (800, 600), timeout=TIMEOUT)
    return h


def open_photo(qtbot, h: Harness, ws: Workspace, tasks: QtTaskManager, photo_id: str,
               ppm: float | None) -> an.AnnotationService:
    svc = an.AnnotationService(ws, DOC)
    src = PhotoSource(photo_id, W, H, lambda: PHOTO, calibration_px_per_mm=ppm)
    with qtbot.waitSignal(h.view.image_shown, timeout=TIMEOUT):
        h.view.open_photo(src)
    with qtbot.waitSignal(h.layer.loaded, timeout=TIMEOUT):
        h.layer.open_photo(photo_id, svc, tasks, ppm)
    return svc


@pytest.fixture
def calibrated(qtbot, harness: Harness, ws: Workspace,
               tasks: QtTaskManager) -> tuple[Harness, an.AnnotationService, str]:
    pid = add_photo(ws, 10.0)
    return harness, open_photo(qtbot, harness, ws, tasks, pid, 10.0), pid


def settled(qtbot, h: Harness) -> None:
    qtbot.waitUntil(lambda: h.layer.pending_saves == 0, timeout=TIMEOUT)


def stored(svc: an.AnnotationService, pid: str) -> list[an.AnnotationView]:
    return svc.list(pid)


def test_ruler_drag_measures_in_mm_and_is_saved(qtbot, calibrated) -> None:
    h, svc, pid = calibrated
    h.layer.set_tool("ruler")
    drag(qtbot, h.view, QPoint(100, 100), QPoint(300, 100))
    settled(qtbot, h)
    [r] = stored(svc, pid)
    assert r.kind == "ruler" and r.author == "dr.grey"
    assert r.points == [pytest.approx((200.0, 200.0)), pytest.approx((600.0, 200.0))]
    assert h.layer.doc_measure(r).text == "40.0 mm"  # 400 px at 10 px/mm
    assert h.layer.selected == r.id


def test_uncalibrated_photo_says_so(qtbot, harness: Harness, ws: Workspace,
                                    tasks: QtTaskManager) -> None:
    pid = add_photo(ws, None)
    svc = open_photo(qtbot, harness, ws, tasks, pid, None)
    harness.layer.set_tool("ellipse")
    drag(qtbot, harness.view, QPoint(200, 200), QPoint(300, 250))
    settled(qtbot, harness)
    [e] = stored(svc, pid)
    m = harness.layer.doc_measure(e)
    assert m.px["area"] == pytest.approx(np.pi * 100 * 50, rel=1e-6)
    assert "uncalibrated" in m.text and "mm" not in m.text
    harness.layer.set_tool("ruler")
    drag(qtbot, harness.view, QPoint(100, 450), QPoint(400, 450))
    settled(qtbot, harness)
    assert harness.layer.doc_measure(stored(svc, pid)[1]).text == "600 px (uncalibrated)"
    harness.view.grab().save("/tmp/annotations_uncalibrated.png")


def test_ellipse_polygon_arrow_and_markers(qtbot, calibrated) -> None:
    h, svc, pid = calibrated
    v = h.view
    h.layer.set_tool("ellipse")
    drag(qtbot, v, QPoint(300, 200), QPoint(400, 300))
    settled(qtbot, h)
    h.layer.set_tool("polygon")
    for pt in (QPoint(500, 100), QPoint(600, 100), QPoint(600, 200)):
        click(qtbot, v, pt)
    qtbot.mouseDClick(v, Qt.MouseButton.LeftButton, pos=QPoint(500, 200))
    settled(qtbot, h)
    h.layer.text_provider = lambda current: "raised edge"
    h.layer.set_tool("arrow")
    drag(qtbot, v, QPoint(100, 400), QPoint(200, 300))
    h.layer.set_tool("marker")
    click(qtbot, v, QPoint(350, 250))
    click(qtbot, v, QPoint(700, 500))
    settled(qtbot, h)
    got = stored(svc, pid)
    assert [a.kind for a in got] == ["ellipse", "polygon", "arrow", "marker", "marker"]
    ell, poly, arrow, m1, m2 = got
    assert ell.points == [pytest.approx((600, 400)), pytest.approx((800, 600))]
    assert h.layer.doc_measure(ell).mm["area"] == pytest.approx(np.pi * 10 * 10)  # type: ignore[index]
    assert poly.points == [pytest.approx(p) for p in [(1000, 200), (1200, 200),
                                                       (1200, 400), (1000, 400)]]
    assert h.layer.doc_measure(poly).text.startswith("400.0 mm²")
    assert arrow.label == "raised edge"
    assert arrow.points == [pytest.approx((200, 800)), pytest.approx((400, 600))]
    assert (m1.lesion_number, m2.lesion_number) == (1, 2)
    assert m1.points == [pytest.approx((700, 500))]


def test_select_move_delete_undo_redo_and_restart(qtbot, calibrated, ws: Workspace,
                                                  tasks: QtTaskManager) -> None:
    h, svc, pid = calibrated
    v = h.view
    h.layer.set_tool("ruler")
    drag(qtbot, v, QPoint(100, 100), QPoint(300, 100))
    h.layer.set_tool("select")
    h.layer.select(None)
    drag(qtbot, v, QPoint(200, 100), QPoint(250, 150))  # grab the line's middle
    settled(qtbot, h)
    [r] = stored(svc, pid)
    assert r.points == [pytest.approx((300, 300)), pytest.approx((700, 300))]
    # reshape by a handle (the right end, now at widget (350, 150))
    drag(qtbot, v, QPoint(350, 150), QPoint(350, 250))
    settled(qtbot, h)
    assert stored(svc, pid)[0].points[1] == pytest.approx((700, 500))
    # undo twice with the keyboard, redo once
    v.setFocus()
    qtbot.keyClick(v, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(v, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    settled(qtbot, h)
    assert stored(svc, pid)[0].points == [pytest.approx((200, 200)), pytest.approx((600, 200))]
    qtbot.keyClick(v, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier
                   | Qt.KeyboardModifier.ShiftModifier)
    settled(qtbot, h)
    assert stored(svc, pid)[0].points[0] == pytest.approx((300, 300))
    # select by clicking it, delete with the key; undo brings it back
    click(qtbot, v, QPoint(250, 150))
    assert h.layer.selected == r.id and h.layer.delete_action.isEnabled()
    qtbot.keyClick(v, Qt.Key.Key_Delete)
    settled(qtbot, h)
    assert stored(svc, pid) == [] and h.layer.annotations() == []
    h.layer.undo_action.trigger()
    settled(qtbot, h)
    assert [a.id for a in stored(svc, pid)] == [r.id]
    # "restart": a new view and layer read it back from the database
    h2 = Harness(tasks)
    qtbot.addWidget(h2)
    h2.show()
    qtbot.waitExposed(h2)
    open_photo(qtbot, h2, ws, tasks, pid, 10.0)
    [back] = h2.layer.annotations()
    assert back.id == r.id and back.points[0] == pytest.approx((300, 300))
    assert not h2.layer.undo_action.isEnabled()


def test_no_tool_keeps_the_viewer_panning(qtbot, calibrated) -> None:
    h, svc, pid = calibrated
    before = h.view.view_state()
    h.layer.set_tool("")
    h.view.set_zoom(1.0)
    before = h.view.view_state()
    drag(qtbot, h.view, QPoint(400, 300), QPoint(300, 300))
    assert h.view.view_state().cx == pytest.approx(before.cx + 100)
    assert h.layer.annotations() == []
    # select on empty photo pans too
    h.layer.set_tool("select")
    drag(qtbot, h.view, QPoint(400, 300), QPoint(300, 300))
    assert h.view.view_state().cx == pytest.approx(before.cx + 200)
    assert stored(svc, pid) == []


def test_polyline_angle_freehand_bidirectional(qtbot, calibrated) -> None:
    h, svc, pid = calibrated
    v = h.view
    h.layer.set_tool("polyline")
    for pt in (QPoint(100, 100), QPoint(130, 140)):
        click(qtbot, v, pt)
    click(qtbot, v, QPoint(130, 190))
    qtbot.keyClick(v, Qt.Key.Key_Return)
    h.layer.set_tool("angle")
    for pt in (QPoint(400, 300), QPoint(300, 300), QPoint(300, 200)):
        click(qtbot, v, pt)
    h.layer.set_tool("freehand")
    qtbot.mousePress(v, Qt.MouseButton.LeftButton, pos=QPoint(500, 400))
    for pt in (QPoint(600, 400), QPoint(600, 500), QPoint(500, 500)):
        qtbot.mouseMove(v, pt)
    qtbot.mouseRelease(v, Qt.MouseButton.LeftButton, pos=QPoint(500, 500))
    h.layer.set_tool("bidirectional")
    drag(qtbot, v, QPoint(100, 500), QPoint(200, 500))
    settled(qtbot, h)
    poly, ang, free, bi = stored(svc, pid)
    assert poly.kind == "polyline" and len(poly.points) == 3
    assert h.layer.doc_measure(poly).mm["length"] == pytest.approx(20.0)  # type: ignore[index]
    assert h.layer.doc_measure(ang).px["angle"] == pytest.approx(90.0)
    assert free.kind == "freehand"
    assert h.layer.doc_measure(free).mm["area"] == pytest.approx(400.0)  # type: ignore[index]
    mb = h.layer.doc_measure(bi)
    assert mb.mm == {"long": pytest.approx(20.0), "short": pytest.approx(10.0)}


def test_names_and_screenshot(qtbot, calibrated, tmp_path: Path) -> None:
    h, svc, pid = calibrated
    bar = h.layer.toolbar()
    assert bar.objectName() and bar.accessibleName()
    buttons = [b for b in bar.findChildren(QToolButton) if b.defaultAction() is not None]
    assert len(buttons) >= 13
    for b in buttons:
        assert b.objectName() and b.accessibleName(), b.text()
    assert h.layer.objectName() == "annotationLayer" and h.layer.accessibleName()
    h.layer.text_provider = lambda current: "biopsy here"
    for tool, a, b in (("ruler", (80, 80), (280, 80)), ("ellipse", (240, 200), (480, 380)),
                       ("arrow", (620, 520), (470, 390)), ("bidirectional", (90, 480),
                                                           (260, 560))):
        h.layer.set_tool(tool)
        drag(qtbot, h.view, QPoint(*a), QPoint(*b))
    h.layer.set_tool("marker")
    click(qtbot, h.view, QPoint(600, 150))
    settled(qtbot, h)
    img = h.view.grab().toImage()
    out = Path("/tmp/annotations_screenshot.png")
    img.save(str(out))
    # the ruler's yellow line is painted over the photo at widget (180, 80)
    c = img.pixelColor(QPointF(180, 80).toPoint())
    assert c.red() > 200 and c.green() > 170 and c.blue() < 140
    assert len(stored(svc, pid)) == 5
    # the annotations follow the view: pan 60 px down and the ruler moves with the photo
    h.layer.set_tool("")
    drag(qtbot, h.view, QPoint(400, 300), QPoint(400, 360))
    moved = h.view.grab().toImage()
    c = moved.pixelColor(QPoint(180, 140))
    assert c.red() > 200 and c.green() > 170 and c.blue() < 140


def test_read_only_role_cannot_draw(qtbot, harness: Harness, ws: Workspace,
                                    tasks: QtTaskManager) -> None:
    pid = add_photo(ws, 10.0)
    an.AnnotationService(ws, DOC).add(pid, "ruler", [(0, 0), (100, 0)])
    nurse = an.AnnotationService(ws, Actor("n.joy", "nurse"))
    src = PhotoSource(pid, W, H, lambda: PHOTO, calibration_px_per_mm=10.0)
    with qtbot.waitSignal(harness.view.image_shown, timeout=TIMEOUT):
        harness.view.open_photo(src)
    with qtbot.waitSignal(harness.layer.loaded, timeout=TIMEOUT):
        harness.layer.open_photo(pid, nurse, tasks, 10.0)
    assert len(harness.layer.annotations()) == 1  # she sees them
    assert not harness.layer.editable
    assert not any(a.isEnabled() for a in harness.layer.tool_actions.values())
    harness.layer.set_tool("ruler")
    assert harness.layer.tool == ""
    drag(qtbot, harness.view, QPoint(100, 100), QPoint(300, 100))
    assert len(nurse.list(pid)) == 1


def test_failed_save_is_reported(qtbot, calibrated, ws: Workspace) -> None:
    from derm_workstation.core.models import Photo
    from derm_workstation.core.notify import notifier

    h, _svc, pid = calibrated
    with ws.db.session() as s:  # the photo disappears behind the layer's back
        s.delete(s.get(Photo, pid))
    heard: list[str] = []
    unsubscribe = notifier.subscribe(lambda n: heard.append(n.message))
    try:
        h.layer.set_tool("ruler")
        with qtbot.waitSignal(h.layer.save_failed, timeout=TIMEOUT) as sig:
            drag(qtbot, h.view, QPoint(100, 100), QPoint(300, 100))
        assert "No photo" in sig.args[0]
        assert heard and "No photo" in heard[-1]
        assert h.layer.pending_saves == 0
    finally:
        unsubscribe()


def test_escape_cancels_and_double_click_edits_arrow_text(qtbot, calibrated) -> None:
    h, svc, pid = calibrated
    v = h.view
    h.layer.set_tool("polygon")
    click(qtbot, v, QPoint(100, 100))
    click(qtbot, v, QPoint(200, 100))
    qtbot.keyClick(v, Qt.Key.Key_Escape)
    click(qtbot, v, QPoint(300, 300))  # starts a new polygon, not a third corner
    qtbot.keyClick(v, Qt.Key.Key_Return)  # one point: nothing to close
    assert h.layer.annotations() == []
    h.layer.text_provider = lambda current: "first"
    h.layer.set_tool("arrow")
    drag(qtbot, v, QPoint(100, 400), QPoint(200, 300))
    h.layer.set_tool("arrow")
    h.layer.text_provider = lambda current: None  # cancelled: no arrow
    drag(qtbot, v, QPoint(500, 400), QPoint(600, 300))
    h.layer.set_tool("select")
    h.layer.text_provider = lambda current: current + " and second"
    qtbot.mouseDClick(v, Qt.MouseButton.LeftButton, pos=QPoint(150, 350))
    settled(qtbot, h)
    [arrow] = stored(svc, pid)
    assert arrow.label == "first and second"
    h.layer.undo()
    settled(qtbot, h)
    assert stored(svc, pid)[0].label == "first"


def test_burned_in_copy_is_a_new_image(qtbot, calibrated) -> None:
    from PySide6.QtGui import QImage

    h, svc, pid = calibrated
    h.layer.set_tool("ruler")
    drag(qtbot, h.view, QPoint(100, 100), QPoint(300, 100))  # image (200,200)-(600,200)
    settled(qtbot, h)
    assert len(stored(svc, pid)) == 1
    photo = QImage.fromData(PHOTO)
    before = photo.pixelColor(400, 200)
    out = h.layer.render_annotated(photo)
    assert (out.width(), out.height()) == (W, H)
    c = out.pixelColor(400, 200)
    assert c.red() > 200 and c.green() > 170 and c.blue() < 140
    assert photo.pixelColor(400, 200) == before  # the photo itself is untouched
    out.save("/tmp/annotations_burned.png")


def test_captures_overlay_and_programmatic_add_for_the_measure_panel(qtbot, calibrated) -> None:
    h, svc, pid = calibrated
    v = h.view
    selected: list[object] = []
    h.layer.selection_changed.connect(selected.append)
    # one click is handed over in image pixels; nothing is drawn
    got: list[tuple[float, float]] = []
    h.layer.set_tool("ruler")
    h.layer.capture_point(lambda x, y: got.append((x, y)))
    assert h.layer.capturing == "point" and h.layer.tool == ""
    with qtbot.waitSignal(h.layer.capture_ended, timeout=TIMEOUT):
        click(qtbot, v, QPoint(150, 100))
    assert got == [pytest.approx((300, 200))] and h.layer.capturing == ""
    # a dragged line, shown while dragging, handed over on release
    lines: list[tuple[tuple[float, float], tuple[float, float]]] = []
    h.layer.capture_line(lambda a, b: lines.append((a, b)))
    qtbot.mousePress(v, Qt.MouseButton.LeftButton, pos=QPoint(100, 500))
    qtbot.mouseMove(v, QPoint(300, 500))
    live = v.grab().toImage().pixelColor(QPoint(200, 500))
    assert live.green() > 200 and live.red() < 160  # the green capture line
    qtbot.mouseRelease(v, Qt.MouseButton.LeftButton, pos=QPoint(300, 500))
    assert lines == [(pytest.approx((200, 1000)), pytest.approx((600, 1000)))]
    # Esc cancels a capture; the next drag pans instead
    h.layer.capture_line(lambda a, b: lines.append((a, b)))
    v.setFocus()
    with qtbot.waitSignal(h.layer.capture_ended, timeout=TIMEOUT):
        qtbot.keyClick(v, Qt.Key.Key_Escape)
    drag(qtbot, v, QPoint(100, 300), QPoint(200, 300))
    assert len(lines) == 1 and stored(svc, pid) == []
    # a found reference is drawn until it is cleared
    h.layer.set_reference_overlay((800.0, 600.0, 100.0, 100.0, 0.0))
    rim = v.grab().toImage().pixelColor(QPoint(450, 300))  # image (900, 600)
    assert rim.green() > 200 and rim.red() < 160
    h.layer.set_reference_overlay(None)
    assert h.layer.reference_overlay is None
    # an outline added by the panel is an ordinary, undoable annotation
    aid = h.layer.add_annotation("polygon", [(100, 100), (300, 100), (300, 300)],
                                 lesion_number=4)
    settled(qtbot, h)
    assert aid is not None and selected[-1] == aid and h.layer.selected == aid
    [poly] = stored(svc, pid)
    assert poly.id == aid and poly.lesion_number == 4 and poly.author == "dr.grey"
    assert h.layer.doc_measure(poly).text.startswith("200.0 mm²")
    h.layer.set_px_per_mm(None)  # a cleared calibration: pixels at once
    assert h.layer.doc_measure(poly).text.startswith("20000 px²")
    h.layer.undo()
    settled(qtbot, h)
    assert stored(svc, pid) == [] and selected[-1] is None
