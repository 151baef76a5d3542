"""Workstation polish, driven as a clinician would: every annotation tool in view at the
default window size, and the Info overlay following a calibration change at once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QToolBar, QToolButton

from derm_workstation.core.workspace import Workspace
from derm_workstation.qt.main_window import QtMainWindow
from tests.builders import populate
from tests.qt.gestures import calibrate_with_ruler_line, click, drag, finished
from tests.qt.windows import main_window

TIMEOUT = 10_000



@pytest.fixture
def window(qtbot, qapp, ws: Workspace) -> Iterator[QtMainWindow]:
    populate(ws)
    with main_window(qtbot, qapp, ws) as win:
        qtbot.waitUntil(lambda: win.case_panel.shown_photo_id is not None, timeout=TIMEOUT)
        yield win


# -- 1. the annotation tool row never hides a tool ----------------------------------------------
def test_every_annotation_tool_is_in_view_at_the_default_size(qtbot, window) -> None:
    window.resize(1500, 940)
    cp = window.case_panel
    layer = cp.annotations
    assert layer is not None
    bar = layer.toolbar()
    qtbot.waitUntil(lambda: window.width() == 1500, timeout=TIMEOUT)
    assert not bar.findChildren(QToolBar) and not isinstance(bar, QToolBar)
    assert bar.findChild(QToolButton, "qt_toolbar_ext_button") is None  # no ">>" menu
    buttons = [b for b in bar.findChildren(QToolButton) if b.defaultAction() is not None]
    names = {b.objectName() for b in buttons}
    assert {"annotationTool_bidirectionalButton", "annotationDeleteButton",
            "annotationUndoButton", "annotationRedoButton",
            "annotationMeasureButton"} <= names
    assert len(buttons) == 14
    area = bar.rect()
    for b in buttons:
        assert b.isVisible(), b.objectName()
        assert b.accessibleName() and b.toolTip(), b.objectName()
        assert area.contains(b.geometry()), b.objectName()  # wholly inside, not clipped
    # the photo is below the whole row, not under its second line
    view = cp.ui.photoView
    assert view.mapTo(window, QPoint(0, 0)).y() >= bar.mapTo(window, QPoint(0, bar.height())).y()
    window.grab().save("/tmp/workstation_tool_row.png")

    # the last tools work by a real click
    bidi = bar.findChild(QToolButton, "annotationTool_bidirectionalButton")
    click(qtbot, bidi)
    assert layer.tool == "bidirectional" and bidi.isChecked()
    qtbot.waitUntil(lambda: layer.pending_saves == 0, timeout=TIMEOUT)
    before = len(layer.annotations())
    mid = view.rect().center()
    drag(qtbot, view, mid - QPoint(60, 0), mid + QPoint(60, 20))
    assert len(layer.annotations()) == before + 1
    undo = bar.findChild(QToolButton, "annotationUndoButton")
    redo = bar.findChild(QToolButton, "annotationRedoButton")
    assert undo.isEnabled()
    click(qtbot, undo)
    assert len(layer.annotations()) == before
    assert redo.isEnabled()
    click(qtbot, redo)
    assert len(layer.annotations()) == before + 1
    qtbot.waitUntil(lambda: layer.pending_saves == 0, timeout=TIMEOUT)


def test_the_tool_row_wraps_rather_than_hides_when_narrow(qtbot, window) -> None:
    bar = window.case_panel.annotations.toolbar()
    one_line = bar.sizeHint().height()
    narrow = bar.heightForWidth(300)
    assert narrow > 2 * one_line  # several lines, every button still laid out
    wide = bar.heightForWidth(bar.sizeHint().width() + 10)
    assert wide <= one_line + 1


# -- 2. the Info overlay follows the Measure panel's calibration --------------------------------
def test_info_overlay_follows_a_calibration_change_at_once(qtbot, window) -> None:
    cp = window.case_panel
    view = cp.ui.photoView
    panel = cp.analysis
    assert panel is not None
    qtbot.waitUntil(lambda: view.has_image and panel.state is not None, timeout=TIMEOUT)
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_I)  # the Info overlay, by its key
    assert view.info_enabled
    assert "Calibration: uncalibrated" in view.info_lines()
    click(qtbot, cp.annotations.toolbar().findChild(QToolButton, "annotationMeasureButton"))
    assert panel.isVisible()
    calibrate_with_ruler_line(qtbot, panel, view, "10")  # a 10 mm line dragged on the photo
    ppm = panel.state.px_per_mm
    assert ppm is not None
    shown = view.source
    assert shown is not None and shown.calibration_px_per_mm == ppm  # no reopen needed
    assert f"Calibration: {ppm:.1f} px/mm" in view.info_lines()
    window.grab().save("/tmp/workstation_info_calibrated.png")
    # clearing it shows at once too
    qtbot.waitUntil(lambda: panel.clear_button.isEnabled(), timeout=TIMEOUT)
    with finished(qtbot, panel, "clear"):
        click(qtbot, panel.clear_button)
    assert "Calibration: uncalibrated" in view.info_lines()
    assert view.source is not None and view.source.key == shown.key
