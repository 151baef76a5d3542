"""The compare window driven as a clinician would: pick photos, switch layouts, zoom one
pane and watch the others follow, blend / swipe / flicker, align automatically and by
hand.

Real workspace and real JPEGs: a patient with two earlier visits and the open one. The
follow-up close-up of the left elbow is the baseline close-up warped by a known
similarity transform, so alignment can be checked against the truth.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
import shiboken6
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QWheelEvent
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QComboBox,
    QSlider,
    QWidget,
)
from shiboken6 import isValid

from derm_workstation.core import intake
from derm_workstation.core.services import CaseService
from derm_workstation.core.users import SYSTEM, local_actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.qt.app import apply_theme
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets.qt_compare_view import (
    QtCompareWindow,
    default_picks,
    same_site,
    to_view_coordinates,
)
from derm_workstation.qt.widgets.qt_photo_view import QtPhotoView

TIMEOUT = 15_000
ALIGN_TIMEOUT = 60_000
NOW = datetime.now(UTC).replace(microsecond=0)
RED, BLUE = (200, 40, 40), (40, 60, 210)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _flat(colour: tuple[int, int, int]) -> bytes:
    return _jpeg(np.full((600, 800, 3), colour, np.uint8))


def _pair() -> tuple[bytes, bytes, np.ndarray]:
    """Baseline close-up, the follow-up warped from it, and the follow-up -> baseline matrix
    (registration convention: pixel centres at integers)."""
    from skimage.transform import SimilarityTransform, warp

    from derm_workstation.imaging.synthetic import PhotoSpec, render_rgb

    base, _, _ = render_rgb(PhotoSpec(seed=11, kind="psoriasis", fitzpatrick=3, severity=0.7,
                                      width=1200, height=900))
    tf = SimilarityTransform(scale=1.08, rotation=np.deg2rad(7), translation=(-40, -100))
    follow = (warp(base, tf, output_shape=base.shape[:2], mode="edge") * 255).round()
    return _jpeg(base), _jpeg(follow.astype(np.uint8)), np.asarray(tf.params)


BASE, FOLLOW, TRUTH = _pair()



@pytest.fixture
def case_id(ws: Workspace) -> str:
    """Three visits; returns the open (latest) one."""
    with ws.db.session() as s:
        p = intake.upsert_patient(s, identifier="MRN-1", family_name="Okafor",
                                  given_name="Ada", birth_date=date(1970, 1, 1), sex="female")

        def visit(days: int, number: str) -> object:
            return intake.add_case(s, SYSTEM, p, status="completed" if days else "received",
                                   priority="routine", chief_complaint="Scaly plaques",
                                   body_site="Left elbow", description="",
                                   submitted_at=NOW - timedelta(days=days), case_number=number)

        first, second, now = visit(90, "TD-1"), visit(30, "TD-2"), visit(0, "TD-3")

        def add(case: object, data: bytes, site: str, title: str, days: int) -> None:
            intake.add_photo(s, ws.images, case, data, body_site=site, title=title,  # type: ignore[arg-type]
                             taken_at=NOW - timedelta(days=days, hours=1))

        add(first, BASE, "Left elbow", "Elbow close-up", 90)
        add(first, _flat(RED), "Upper back", "Back, red", 90)
        add(second, _jpeg(np.full((600, 800, 3), (150, 120, 110), np.uint8)), "left  ELBOW",
            "Elbow overview", 30)
        add(now, _flat(BLUE), "Upper back", "Back, blue", 0)
        add(now, FOLLOW, "Left elbow", "Elbow close-up", 0)
        return str(now.id)  # type: ignore[attr-defined]



@pytest.fixture
def window(qtbot, qapp, ws: Workspace, case_id: str, tasks: QtTaskManager
           ) -> Iterator[QtCompareWindow]:
    apply_theme(qapp)
    service = CaseService(ws, local_actor())
    detail = service.case_detail(case_id)
    current = next(ph.id for ph in detail.photos if ph.title == "Elbow close-up")
    win = QtCompareWindow(tasks, service, detail, current)
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.photos_listed, timeout=TIMEOUT):
        win.show()
    qtbot.waitExposed(win)
    qtbot.waitUntil(lambda: all(p.view.has_image for p in win.panes[:2]), timeout=TIMEOUT)
    yield win
    win.close()


def titles(win: QtCompareWindow, i: int) -> list[str]:
    combo = win.panes[i].ui.photoCombo
    return [combo.itemText(k) for k in range(combo.count())]


def pick(qtbot, win: QtCompareWindow, pane: int, needle: str) -> None:
    """Choose a photo the way the keyboard does: focus the pane's list, arrow to it."""
    combo = win.panes[pane].ui.photoCombo
    target = next(k for k in range(combo.count())
                  if needle in combo.itemText(k) and combo.itemData(k))
    combo.setFocus()
    key = Qt.Key.Key_Down if target > combo.currentIndex() else Qt.Key.Key_Up
    for _ in range(combo.count()):
        if combo.currentIndex() == target:
            break
        qtbot.keyClick(combo, key)
    assert combo.currentIndex() == target
    qtbot.waitUntil(lambda: win.panes[pane].view.has_image
                    and win.panes[pane].choice is not None
                    and needle in win.panes[pane].choice.label(), timeout=TIMEOUT)


def choose_layout(qtbot, win: QtCompareWindow, label_start: str) -> None:
    combo = win.ui.layoutCombo
    target = next(k for k in range(combo.count()) if combo.itemText(k).startswith(label_start))
    combo.setFocus()
    while combo.currentIndex() != target:
        qtbot.keyClick(combo, Qt.Key.Key_Down if target > combo.currentIndex() else Qt.Key.Key_Up)


def choose_mode(qtbot, win: QtCompareWindow, label: str) -> None:
    combo = win.ui.overlayModeCombo
    target = combo.findText(label)
    combo.setFocus()
    while combo.currentIndex() != target:
        qtbot.keyClick(combo, Qt.Key.Key_Down if target > combo.currentIndex() else Qt.Key.Key_Up)


def wheel(v: QtPhotoView, pos: QPointF, clicks: float) -> None:
    ev = QWheelEvent(QPointF(pos), QPointF(v.mapToGlobal(pos.toPoint())), QPoint(0, 0),
                     QPoint(0, int(120 * clicks)), Qt.MouseButton.NoButton,
                     Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(v, ev)


def colour_at(v: QtPhotoView, x: float, y: float) -> QColor:
    return v.grab().toImage().pixelColor(int(x), int(y))


def is_red(c: QColor) -> bool:
    return c.red() > 150 and c.blue() < 100


def is_blue(c: QColor) -> bool:
    return c.blue() > 150 and c.red() < 100


def view_truth() -> np.ndarray:
    return to_view_coordinates(TRUTH)


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    h = np.hstack([pts, np.ones((len(pts), 1))]) @ m.T
    return h[:, :2] / h[:, 2:3]


def qt_matrix(win: QtCompareWindow, i: int) -> np.ndarray:
    t = win.to_base(i)
    return np.array([[t.m11(), t.m21(), t.m31()], [t.m12(), t.m22(), t.m32()],
                     [t.m13(), t.m23(), t.m33()]])


GRID = np.array([[x, y] for x in (150, 450, 750, 1050) for y in (150, 450, 750)], float)


def rms_error(win: QtCompareWindow, i: int) -> float:
    got = apply(qt_matrix(win, i), GRID)
    want = apply(view_truth(), GRID)
    return float(np.sqrt(np.mean(np.sum((got - want) ** 2, axis=1))))


# ---------------------------------------------------------------------- choosing photos


def test_same_body_site_first_in_date_order(window: QtCompareWindow) -> None:
    items = titles(window, 1)
    assert items[0] == "— Same body site: Left elbow —"
    elbow = items[1:4]
    assert [t.split("  ·  ")[1] for t in elbow] == [
        "Elbow close-up", "Elbow overview", "Elbow close-up"]
    assert "(TD-1)" in elbow[0] and "(TD-2)" in elbow[1] and "this visit" in elbow[2]
    assert items[4] == "— Other body sites —"
    assert [t.split("  ·  ")[1] for t in items[5:]] == ["Back, red", "Back, blue"]
    combo = window.panes[1].ui.photoCombo
    assert not combo.model().item(0).isEnabled()  # headers cannot be chosen


def test_baseline_is_the_oldest_and_the_open_photo_is_the_follow_up(
        window: QtCompareWindow) -> None:
    base, follow = window.panes[0].choice, window.panes[1].choice
    assert base is not None and follow is not None
    assert base.case_label.endswith("(TD-1)") and base.photo.title == "Elbow close-up"
    assert follow.current_case and follow.photo.title == "Elbow close-up"
    assert window.panes[0].ui.roleLabel.text() == "Baseline"
    assert window.panes[1].ui.roleLabel.text() == "Follow-up"
    assert "90 days after baseline" in window.panes[1].view.caption


def test_picking_another_photo(qtbot, window: QtCompareWindow) -> None:
    pick(qtbot, window, 1, "Elbow overview")
    assert window.panes[1].choice.photo.title == "Elbow overview"  # type: ignore[union-attr]
    assert "60 days after baseline" in window.panes[1].view.caption


def test_ordering_helpers() -> None:
    assert same_site("Left elbow", " left,  ELBOW ")
    assert not same_site("", "")
    assert default_picks([], [], None) == []


def test_layouts(qtbot, window: QtCompareWindow) -> None:
    assert [p.isVisible() for p in window.panes] == [True, True, False, False]
    choose_layout(qtbot, window, "Grid")
    assert window.layout_mode == "2x2"
    assert all(p.isVisible() for p in window.panes)
    # the next photos of the site, then the rest, fill the extra panes
    qtbot.waitUntil(lambda: window.panes[2].view.has_image, timeout=TIMEOUT)
    assert window.panes[2].choice.photo.title == "Elbow overview"  # type: ignore[union-attr]
    assert window.panes[1].ui.roleLabel.text() == "Photo 2"
    choose_layout(qtbot, window, "Overlay")
    assert window.ui.viewStack.currentWidget() is window.ui.overlayPage
    assert window.ui.overlayView.overlay_layer is window.panes[1].view.layer
    choose_layout(qtbot, window, "Side by side")
    assert [p.isVisible() for p in window.panes] == [True, True, False, False]


# ------------------------------------------------------------------------------ linking


def test_linked_zoom_and_pan(qtbot, window: QtCompareWindow) -> None:
    a, b = window.panes[0].view, window.panes[1].view
    wheel(a, QPointF(a.width() / 3, a.height() / 3), 3)
    sa, sb = a.view_state(), b.view_state()
    assert sa.zoom == pytest.approx(b.fit_zoom() * 1.25**3, rel=1e-6)
    # same size photos, not aligned: the same place and zoom
    assert (sb.cx, sb.cy, sb.zoom) == pytest.approx((sa.cx, sa.cy, sa.zoom))
    qtbot.mousePress(b, Qt.MouseButton.LeftButton, pos=QPoint(200, 200))
    qtbot.mouseMove(b, QPoint(150, 170))
    qtbot.mouseMove(b, QPoint(100, 140))
    qtbot.mouseRelease(b, Qt.MouseButton.LeftButton, pos=QPoint(100, 140))
    sa, sb = a.view_state(), b.view_state()
    assert (sa.cx, sa.cy) == pytest.approx((sb.cx, sb.cy))
    # unlink: the panes move on their own
    qtbot.mouseClick(window.ui.linkCheck, Qt.MouseButton.LeftButton,
                     pos=QPoint(8, window.ui.linkCheck.height() // 2))
    assert not window.linked
    wheel(a, QPointF(50, 50), -1)
    assert a.zoom_factor() != pytest.approx(b.zoom_factor())


# ------------------------------------------------------------------------------ overlay


@pytest.fixture
def overlay(qtbot, window: QtCompareWindow) -> QtPhotoView:
    pick(qtbot, window, 0, "Back, red")
    pick(qtbot, window, 1, "Back, blue")
    choose_layout(qtbot, window, "Overlay")
    v = window.ui.overlayView
    qtbot.waitUntil(lambda: v.has_image, timeout=TIMEOUT)
    return v


def test_blend_slider(qtbot, window: QtCompareWindow, overlay: QtPhotoView) -> None:
    assert overlay.overlay_mode == "blend"
    slider = window.ui.amountSlider
    x, y = overlay.width() / 2, overlay.height() / 2
    slider.setFocus()
    qtbot.keyClick(slider, Qt.Key.Key_Home)
    assert slider.value() == 0
    qtbot.waitUntil(lambda: is_red(colour_at(overlay, x, y)), timeout=TIMEOUT)
    qtbot.keyClick(slider, Qt.Key.Key_End)
    qtbot.waitUntil(lambda: is_blue(colour_at(overlay, x, y)), timeout=TIMEOUT)
    for _ in range(5):
        qtbot.keyClick(slider, Qt.Key.Key_PageDown)
    assert window.ui.amountValue.text() == "50 %"
    c = colour_at(overlay, x, y)
    assert 100 < c.red() < 140 and 105 < c.blue() < 145  # half and half


def test_swipe_curtain(qtbot, window: QtCompareWindow, overlay: QtPhotoView) -> None:
    choose_mode(qtbot, window, "Swipe")
    assert overlay.overlay_mode == "swipe"
    w, y = overlay.width(), overlay.height() * 0.6
    assert window.ui.amountSlider.value() == 50
    assert is_red(colour_at(overlay, w * 0.4, y)) and is_blue(colour_at(overlay, w * 0.6, y))
    # drag the curtain to a quarter of the width
    qtbot.mousePress(overlay, Qt.MouseButton.LeftButton, pos=QPoint(w // 2, int(y)))
    qtbot.mouseMove(overlay, QPoint(w // 3, int(y)))
    qtbot.mouseMove(overlay, QPoint(w // 4, int(y)))
    qtbot.mouseRelease(overlay, Qt.MouseButton.LeftButton, pos=QPoint(w // 4, int(y)))
    assert window.ui.amountSlider.value() == 25
    assert is_blue(colour_at(overlay, w * 0.4, y)) and is_red(colour_at(overlay, w * 0.2, y))


def test_flicker(qtbot, window: QtCompareWindow, overlay: QtPhotoView) -> None:
    choose_mode(qtbot, window, "Flicker")
    combo = window.ui.flickerCombo
    assert combo.isVisible() and not window.ui.amountSlider.isVisible()
    combo.setFocus()
    qtbot.keyClick(combo, Qt.Key.Key_Up)  # 0.25 s
    x, y = overlay.width() / 2, overlay.height() / 2
    qtbot.waitUntil(lambda: is_blue(colour_at(overlay, x, y)), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: is_red(colour_at(overlay, x, y)), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: is_blue(colour_at(overlay, x, y)), timeout=TIMEOUT)
    choose_mode(qtbot, window, "Blend")  # the timer stops
    assert not overlay.flicker_phase


# ---------------------------------------------------------------------------- alignment


def test_align_to_baseline_recovers_a_known_transform(qtbot, window: QtCompareWindow) -> None:
    with qtbot.waitSignal(window.aligned, timeout=ALIGN_TIMEOUT) as sig:
        qtbot.mouseClick(window.ui.alignButton, Qt.MouseButton.LeftButton)
    assert sig.args == [1] and window.is_aligned(1)
    assert rms_error(window, 1) < 1.5  # full-size pixels
    text = window.status_text
    assert "matching features agree" in text and "confidence" in text
    assert "aligned, confidence" in window.panes[1].ui.captionLabel.text()
    assert window.ui.clearAlignButton.isEnabled()

    # linked views now follow the anatomy: zoom the baseline in on a spot...
    a, b = window.panes[0].view, window.panes[1].view
    spot = QPointF(700.0, 380.0)  # baseline image coordinates
    a.set_view(spot.x(), spot.y(), 1.0, emit=True)
    # ...and the follow-up shows the same spot, zoomed by the photos' scale ratio
    want = apply(np.linalg.inv(view_truth()), np.array([[spot.x(), spot.y()]]))[0]
    st = b.view_state()
    assert np.hypot(st.cx - want[0], st.cy - want[1]) < 2.0
    assert st.zoom == pytest.approx(1.08, rel=0.02)

    # the overlay uses the alignment too
    choose_layout(qtbot, window, "Overlay")
    got = window.ui.overlayView.overlay_transform
    assert got == window.to_base(1)

    qtbot.mouseClick(window.ui.clearAlignButton, Qt.MouseButton.LeftButton)
    assert not window.is_aligned(1)


def test_closing_while_aligning_and_loading_is_safe(qtbot, ws: Workspace, case_id: str,
                                                   tasks: QtTaskManager) -> None:
    service = CaseService(ws, local_actor())
    detail = service.case_detail(case_id)
    win = QtCompareWindow(tasks, service, detail, detail.photos[1].id)
    win.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    with qtbot.waitSignal(win.photos_listed, timeout=TIMEOUT):
        win.show()
    qtbot.waitUntil(lambda: win.panes[1].view.has_image, timeout=TIMEOUT)
    qtbot.mouseClick(win.ui.alignButton, Qt.MouseButton.LeftButton)
    win.panes[0].view.set_view(600, 450, 2.0, emit=True)  # full-size levels requested
    assert tasks.pending > 0
    shiboken6.delete(win)  # as when the main window goes, taking its children with it
    assert not isValid(win)
    # results arrive for a window that no longer exists: ignored, without an error
    qtbot.waitUntil(lambda: tasks.pending == 0, timeout=ALIGN_TIMEOUT)


def test_failed_alignment_offers_alignment_by_hand(qtbot, window: QtCompareWindow) -> None:
    pick(qtbot, window, 1, "Back, blue")  # a flat photo: nothing to match
    with qtbot.waitSignal(window.alignment_failed, timeout=ALIGN_TIMEOUT) as sig:
        qtbot.mouseClick(window.ui.alignButton, Qt.MouseButton.LeftButton)
    assert sig.args[0] == 1
    assert "could not be aligned automatically" in window.status_text
    assert window.manual_mode and window.panes[0].view.picking
    assert "click 3 spots" in window.status_text
    assert window.ui.alignStatusLabel.property("role") == "banner"
    qtbot.keyClick(window, Qt.Key.Key_Escape)
    assert not window.manual_mode and not window.panes[0].view.picking


def click_image_point(qtbot, v: QtPhotoView, x: float, y: float) -> None:
    p = v.map_from_image(QPointF(x, y))
    qtbot.mouseClick(v, Qt.MouseButton.LeftButton, pos=QPoint(round(p.x()), round(p.y())))


def test_alignment_by_hand_with_three_points(qtbot, window: QtCompareWindow) -> None:
    qtbot.mouseClick(window.ui.manualAlignButton, Qt.MouseButton.LeftButton)
    assert window.manual_mode
    base_pts = np.array([[200.0, 180.0], [1000.0, 260.0], [560.0, 760.0]])
    follow_pts = apply(np.linalg.inv(view_truth()), base_pts)
    a, b = window.panes[0].view, window.panes[1].view
    for x, y in base_pts:
        click_image_point(qtbot, a, x, y)
    assert len(window.points(0)) == 3 and len(a.markers) == 3
    assert "baseline 3/3" in window.status_text
    # a wrong click, taken back with Backspace
    click_image_point(qtbot, b, 50, 50)
    qtbot.keyClick(window, Qt.Key.Key_Backspace)
    assert window.points(1) == []
    with qtbot.waitSignal(window.aligned, timeout=ALIGN_TIMEOUT):
        for x, y in follow_pts:
            click_image_point(qtbot, b, x, y)
    assert window.is_aligned(1)
    # clicks land on whole screen pixels (about 2.5 photo pixels here)
    assert rms_error(window, 1) < 6.0
    assert "by hand" in window.status_text
    assert not window.manual_mode and a.markers == []  # done: the mode ends


def test_every_interactive_widget_has_names(window: QtCompareWindow) -> None:
    missing = []
    for w in window.findChildren(QWidget):
        if not isinstance(w, QComboBox | QAbstractButton | QSlider | QtPhotoView):
            continue
        parent, inside_combo = w.parentWidget(), False
        while parent is not None:  # Qt's own parts of a combo box's popup
            inside_combo = inside_combo or isinstance(parent, QComboBox)
            parent = parent.parentWidget()
        if inside_combo:
            continue
        if not w.objectName() or not w.accessibleName():
            missing.append(f"{type(w).__name__}:{w.objectName()!r}")
    assert not missing, missing


def test_compare_opens_from_the_case_panel(qtbot, qapp, ws: Workspace, case_id: str) -> None:
    from tests.qt.windows import main_window

    with main_window(qtbot, qapp, ws) as win:
        panel = win.case_panel
        assert panel.detail is not None and panel.detail.id == case_id
        button = panel.ui.photoToolbar.ui.compareButton
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
        cmp = win.compare_window
        assert isinstance(cmp, QtCompareWindow) and cmp.isVisible()
        with qtbot.waitSignal(cmp.photos_listed, timeout=TIMEOUT):
            pass
        qtbot.waitUntil(lambda: cmp.panes[1].view.has_image, timeout=TIMEOUT)
        # the photo open in the case panel is the follow-up; the baseline is the oldest
        follow, base = cmp.panes[1].choice, cmp.panes[0].choice
        assert follow is not None and follow.photo.id == panel.shown_photo_id
        assert base is not None and base.case_label.endswith("(TD-1)")
        cmp.close()
        qtbot.waitUntil(lambda: win.compare_window is None, timeout=TIMEOUT)
        win.activateWindow()
        qtbot.waitUntil(win.isActiveWindow, timeout=TIMEOUT)
        win.table.setFocus()
        qtbot.keyClick(win, Qt.Key.Key_C,
                       Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
        assert isinstance(win.compare_window, QtCompareWindow)
        with qtbot.waitSignal(win.compare_window.photos_listed, timeout=TIMEOUT):
            pass
        win.compare_window.close()
