"""The compare window's tools beyond layouts: linked rotation (also when aligned),
per-photo brightness/contrast/gamma with "Apply to all photos", and alignment by hand in
the overlay layout. Real workspace and JPEGs (the fixtures of ``test_compare``), driven
with clicks and keys."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor

from derm_workstation.qt.widgets.qt_compare_view import QtCompareWindow, quarter_of
from derm_workstation.qt.widgets.qt_photo_view import QtPhotoView
from tests.qt import test_compare as tc

case_id = tc.case_id
window = tc.window
TIMEOUT, ALIGN_TIMEOUT = tc.TIMEOUT, tc.ALIGN_TIMEOUT


def click_at(qtbot, v: QtPhotoView, x: float, y: float) -> None:
    """Click the widget point showing image point (x, y) of the view's own photo."""
    p = v.map_from_image(QPointF(x, y))
    qtbot.mouseClick(v, Qt.MouseButton.LeftButton, pos=QPoint(round(p.x()), round(p.y())))


# ------------------------------------------------------------------------- rotation


def test_linked_panes_rotate_together(qtbot, window: QtCompareWindow) -> None:
    a, b = window.panes[0].view, window.panes[1].view
    a.setFocus()
    qtbot.keyClick(a, Qt.Key.Key_R)
    assert a.rotation == 90 and b.rotation == 90
    qtbot.keyClick(b, Qt.Key.Key_R, Qt.KeyboardModifier.ShiftModifier)
    assert a.rotation == 0 and b.rotation == 0
    # the panes still show the same place after turning
    qtbot.keyClick(a, Qt.Key.Key_R)
    sa, sb = a.view_state(), b.view_state()
    assert (sb.cx, sb.cy) == pytest.approx((sa.cx, sa.cy))
    # a photo put in a pane turns like the others, and still fits its pane
    before = a.view_state()
    tc.pick(qtbot, window, 1, "Elbow overview")
    assert b.rotation == 90 and b.is_fit
    assert a.view_state() == before  # and the other pane did not move
    # unlinked: each pane turns on its own
    qtbot.mouseClick(window.ui.linkCheck, Qt.MouseButton.LeftButton,
                     pos=QPoint(8, window.ui.linkCheck.height() // 2))
    qtbot.keyClick(b, Qt.Key.Key_R)
    assert a.rotation == 90 and b.rotation == 180


# follow-up -> baseline: a quarter turn clockwise about the photo's centre (1200 x 900)
BASE_PTS = [(200.0, 180.0), (1000.0, 260.0), (560.0, 760.0)]
FOLLOW_PTS = [(600 + (by - 450), 450 - (bx - 600)) for bx, by in BASE_PTS]


def align_by_hand_side_by_side(qtbot, win: QtCompareWindow) -> None:
    qtbot.mouseClick(win.ui.manualAlignButton, Qt.MouseButton.LeftButton)
    for x, y in BASE_PTS:
        click_at(qtbot, win.panes[0].view, x, y)
    with qtbot.waitSignal(win.aligned, timeout=ALIGN_TIMEOUT):
        for x, y in FOLLOW_PTS:
            click_at(qtbot, win.panes[1].view, x, y)


def test_aligned_panes_turn_to_keep_the_same_anatomy_upright(
        qtbot, window: QtCompareWindow) -> None:
    align_by_hand_side_by_side(qtbot, window)
    assert quarter_of(window.to_base(1)) == 1
    a, b = window.panes[0].view, window.panes[1].view
    # the follow-up was taken turned a quarter: shown turned back, like the baseline
    assert a.rotation == 0 and b.rotation == 90
    a.setFocus()
    qtbot.keyClick(a, Qt.Key.Key_R)
    assert a.rotation == 90 and b.rotation == 180
    # and the same anatomy sits in the middle of both panes
    sa, sb = a.view_state(), b.view_state()
    mapped = window.to_base(1).map(QPointF(sb.cx, sb.cy))
    assert abs(mapped.x() - sa.cx) < 3 and abs(mapped.y() - sa.cy) < 3
    qtbot.keyClick(b, Qt.Key.Key_R, Qt.KeyboardModifier.ShiftModifier)
    assert a.rotation == 0 and b.rotation == 90


# ------------------------------------------------------------------------- adjustments


def brightness(v: QtPhotoView) -> float:
    img = v.grab().toImage()
    pts = [(x, y) for x in (0.3, 0.5, 0.7) for y in (0.35, 0.5, 0.65)]
    return float(np.mean([QColor(img.pixel(int(v.width() * x), int(v.height() * y))).value()
                          for x, y in pts]))


def test_adjust_one_photo_then_all(qtbot, window: QtCompareWindow) -> None:
    ui = window.ui
    a, b = window.panes[0].view, window.panes[1].view
    assert not ui.adjustBar.isVisible()
    qtbot.mouseClick(ui.adjustButton, Qt.MouseButton.LeftButton)
    assert ui.adjustBar.isVisible()
    combo = ui.adjustTargetCombo
    assert [combo.itemText(i).split(" · ")[0] for i in range(combo.count())] == [
        "Baseline", "Follow-up"]
    before_a, before_b = brightness(a), brightness(b)
    # clicking the follow-up makes it the photo the sliders change
    qtbot.mouseClick(b, Qt.MouseButton.LeftButton, pos=QPoint(b.width() // 2, b.height() // 2))
    assert window.adjust.target == 1 and combo.currentData() == 1
    slider = ui.compareLevels.ui.brightnessSlider
    slider.setFocus()
    for _ in range(4):
        qtbot.keyClick(slider, Qt.Key.Key_PageUp)
    assert b.adjustment.brightness == 40 and a.adjustment.is_identity
    qtbot.waitUntil(lambda: brightness(b) > before_b + 25, timeout=TIMEOUT)
    assert brightness(a) == pytest.approx(before_a, abs=1)
    assert "brightness +40" in b.status_text()
    # another photo in the follow-up pane starts unadjusted
    tc.pick(qtbot, window, 1, "Back, blue")
    assert b.adjustment.is_identity and slider.value() == 0
    tc.pick(qtbot, window, 1, "Elbow close-up  ·  Left elbow  ·  this visit")
    window.adjust.set_target(1)
    slider.setValue(40)
    assert b.adjustment.brightness == 40
    # the baseline keeps its own settings: picking it shows them on the sliders
    qtbot.mouseClick(a, Qt.MouseButton.LeftButton, pos=QPoint(a.width() // 2, a.height() // 2))
    assert slider.value() == 0
    # apply to all photos: every pane, also panes that appear later
    qtbot.mouseClick(ui.adjustAllCheck, Qt.MouseButton.LeftButton,
                     pos=QPoint(8, ui.adjustAllCheck.height() // 2))
    assert window.adjust.apply_to_all and not combo.isEnabled()
    contrast = ui.compareLevels.ui.contrastSlider
    contrast.setFocus()
    qtbot.keyClick(contrast, Qt.Key.Key_PageUp)
    assert a.adjustment == b.adjustment and a.adjustment.contrast == 10
    assert a.adjustment.brightness == 0  # the sliders showed the baseline's settings
    tc.choose_layout(qtbot, window, "Grid")
    qtbot.waitUntil(lambda: window.panes[2].choice is not None, timeout=TIMEOUT)
    assert window.panes[2].view.adjustment == a.adjustment
    # display only: an adjusted copy is drawn; the decoded level itself is kept as it was
    layer = a.layer
    d = layer.image_for(a.zoom_factor())
    assert d is not None
    decoded = layer.level_image(d.level)
    pixel_before = decoded.pixel(600, 450) if decoded is not None else None

    def drawn_is_a_copy() -> bool:
        now = layer.image_for(a.zoom_factor())
        return now is not None and now.image is not layer.level_image(now.level)

    qtbot.waitUntil(drawn_is_a_copy, timeout=TIMEOUT)
    assert decoded is not None and decoded.pixel(600, 450) == pixel_before


def test_adjusted_follow_up_shows_in_the_overlay(qtbot, window: QtCompareWindow) -> None:
    ui = window.ui
    qtbot.mouseClick(ui.adjustButton, Qt.MouseButton.LeftButton)
    tc.choose_layout(qtbot, window, "Overlay")
    overlay = ui.overlayView
    tc.choose_mode(qtbot, window, "Swipe")  # left half baseline, right half follow-up
    qtbot.waitUntil(lambda: overlay.has_image, timeout=TIMEOUT)
    before = overlay.grab().toImage()
    combo = ui.adjustTargetCombo
    combo.setFocus()
    qtbot.keyClick(combo, Qt.Key.Key_Down)  # the follow-up
    assert window.adjust.target == 1
    slider = ui.compareLevels.ui.brightnessSlider
    slider.setFocus()
    qtbot.keyClick(slider, Qt.Key.Key_End)  # +100

    def lighter(x: float) -> bool:
        img = overlay.grab().toImage()
        p = (int(overlay.width() * x), overlay.height() // 2)
        return QColor(img.pixel(*p)).value() > QColor(before.pixel(*p)).value() + 40

    qtbot.waitUntil(lambda: lighter(0.8), timeout=TIMEOUT)
    assert not lighter(0.2)


# ------------------------------------------------------------- by hand in the overlay


def test_align_by_hand_in_the_overlay(qtbot, window: QtCompareWindow) -> None:
    ui = window.ui
    tc.choose_layout(qtbot, window, "Overlay")
    overlay = ui.overlayView
    qtbot.waitUntil(lambda: overlay.has_image, timeout=TIMEOUT)
    assert ui.manualAlignButton.isEnabled()
    qtbot.mouseClick(ui.manualAlignButton, Qt.MouseButton.LeftButton)
    assert window.manual_mode and overlay.picking
    assert window.overlay_stage == "baseline"
    assert overlay.overlay_mode == "flicker" and not overlay.flicker_phase  # baseline only
    assert "the view then shows the follow-up" in window.status_text
    base_pts = np.array([[200.0, 180.0], [1000.0, 260.0], [560.0, 760.0]])
    follow_pts = tc.apply(np.linalg.inv(tc.view_truth()), base_pts)
    for x, y in base_pts[:2]:
        click_at(qtbot, overlay, x, y)
    assert len(overlay.markers) == 2
    click_at(qtbot, overlay, *base_pts[2])
    assert len(window.points(0)) == 3
    # now the follow-up alone; a wrong click taken back with Backspace
    assert window.overlay_stage == "follow-up" and overlay.flicker_phase
    assert overlay.markers == []
    click_at(qtbot, overlay, 60, 60)
    assert len(window.points(1)) == 1
    qtbot.keyClick(overlay, Qt.Key.Key_Backspace)
    assert window.points(1) == [] and window.overlay_stage == "follow-up"
    t = overlay.overlay_transform  # follow-up -> baseline (size match before alignment)
    with qtbot.waitSignal(window.aligned, timeout=ALIGN_TIMEOUT):
        for x, y in follow_pts:
            p = t.map(QPointF(x, y))
            click_at(qtbot, overlay, p.x(), p.y())
    assert window.is_aligned(1) and tc.rms_error(window, 1) < 6.0
    # done: the overlay uses the alignment and goes back to blending
    assert not window.manual_mode and not overlay.picking and overlay.markers == []
    assert overlay.overlay_mode == "blend" and overlay.overlay_transform == window.to_base(1)
    assert ui.overlayModeCombo.isEnabled()


def test_leaving_the_overlay_stops_aligning_by_hand(qtbot, window: QtCompareWindow) -> None:
    ui = window.ui
    tc.choose_layout(qtbot, window, "Overlay")
    qtbot.mouseClick(ui.manualAlignButton, Qt.MouseButton.LeftButton)
    click_at(qtbot, ui.overlayView, 300, 300)
    assert len(window.points(0)) == 1
    tc.choose_layout(qtbot, window, "Side by side")
    assert not window.manual_mode and window.points(0) == []
    assert not ui.overlayView.picking and not window.panes[0].view.picking
