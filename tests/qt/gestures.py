"""What a clinician's hand does in GUI tests: click, drag, and calibrating a photo in the
measure panel with a ruler line."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QWidget

TIMEOUT = 20_000


def click(qtbot, w: QWidget, at: QPoint | None = None) -> None:
    """Move to ``at`` (default: the widget's centre) and click there."""
    if at is not None:
        qtbot.mouseMove(w, at)
    qtbot.mouseClick(w, Qt.MouseButton.LeftButton, pos=at or w.rect().center())


def drag(qtbot, w: QWidget, start: QPoint, end: QPoint, steps: int = 4) -> None:
    """Press at ``start``, move there in ``steps`` and release at ``end``."""
    qtbot.mousePress(w, Qt.MouseButton.LeftButton, pos=start)
    for i in range(1, steps + 1):
        qtbot.mouseMove(w, start + (end - start) * i / steps)
    qtbot.mouseRelease(w, Qt.MouseButton.LeftButton, pos=end)


def finished(qtbot, panel: Any, name: str) -> Any:
    """Waits for the measure panel's background job ``name`` to finish."""
    return qtbot.waitSignal(panel.finished, timeout=TIMEOUT,
                            check_params_cb=lambda n: n == name)


def calibrate_with_ruler_line(qtbot, panel: Any, view: QWidget, mm: str = "10") -> None:
    """Ruler, a 200-pixel line dragged across the middle of the photo, its length in mm,
    Use line; returns once the calibration is stored."""
    click(qtbot, panel.ruler_button)
    mid = view.rect().center()
    drag(qtbot, view, mid - QPoint(100, 0), mid + QPoint(100, 0))
    qtbot.waitUntil(lambda: panel.use_line_button.height() > 10, timeout=TIMEOUT)
    panel.ruler_spin.selectAll()
    qtbot.keyClicks(panel.ruler_spin, mm)
    with finished(qtbot, panel, "ruler"):
        click(qtbot, panel.use_line_button)
