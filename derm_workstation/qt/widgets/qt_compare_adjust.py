"""Brightness, contrast and gamma of each compared photo (the compare window's Adjust bar).

The bar (``adjustBar`` in ``ui/compare_window.ui``) holds a
:class:`~derm_workstation.qt.widgets.qt_levels_panel.QtLevelsPanel`, a list of the photos
on screen and **Apply to all photos**. The sliders change the photo picked in the list
(clicking a photo picks it too), or every shown photo at once. Like the single viewer's
panel this is display only: the adjustment lives on the pane's photo layer, which makes
the adjusted copy on the image pool; the overlay view shares the panes' layers, so blend,
swipe and flicker show the same adjusted pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject

from derm_workstation.imaging.levels import Adjustment
from derm_workstation.qt.resources import icon

if TYPE_CHECKING:
    from derm_workstation.qt.widgets.qt_compare_view import QtCompareWindow


class QtCompareAdjust(QObject):
    """Binds the Adjust bar to the compare window's panes (see module docstring)."""

    def __init__(self, window: QtCompareWindow) -> None:
        super().__init__(window)
        self._win = window
        ui = window.ui
        self._ui = ui
        self._target = 0
        ui.adjustButton.setIcon(icon("levels"))
        ui.adjustButton.toggled.connect(self._on_toggled)
        ui.adjustTargetCombo.activated.connect(self._on_target_activated)
        ui.adjustAllCheck.toggled.connect(self._on_all_toggled)
        ui.compareLevels.adjustment_changed.connect(self._on_adjustment)
        for pane in window.panes:
            pane.view.installEventFilter(self)

    # -- state ------------------------------------------------------------------------
    @property
    def target(self) -> int:
        """Index of the pane the sliders change (when not applied to all)."""
        return self._target

    @property
    def apply_to_all(self) -> bool:
        return self._ui.adjustAllCheck.isChecked()

    def adjustment(self, index: int) -> Adjustment:
        return self._win.panes[index].view.adjustment

    def set_target(self, index: int) -> None:
        """Let the sliders change pane ``index`` (and show its settings)."""
        if index not in self._win.visible_panes():
            return
        self._target = index
        combo = self._ui.adjustTargetCombo
        i = combo.findData(index)
        if i >= 0 and combo.currentIndex() != i:
            combo.setCurrentIndex(i)
        if not self.apply_to_all:
            self._ui.compareLevels.set_adjustment(self.adjustment(index))

    # -- keeping the list in step with the window --------------------------------------
    def refresh(self) -> None:
        """The layout, the photos or their roles changed: relist the shown photos."""
        win, combo = self._win, self._ui.adjustTargetCombo
        shown = [i for i in win.visible_panes() if win.panes[i].choice is not None]
        combo.blockSignals(True)
        combo.clear()
        for i in shown:
            pane = win.panes[i]
            c = pane.choice
            assert c is not None
            combo.addItem(f"{pane.ui.roleLabel.text()} · {c.when.astimezone():%d %b %Y}", i)
        combo.blockSignals(False)
        if self._target not in shown:
            self._target = shown[0] if shown else 0
        self.set_target(self._target)
        if self.apply_to_all:  # photos that just appeared get the common settings
            self._apply(self._ui.compareLevels.adjustment())

    # -- signals --------------------------------------------------------------------------
    def _on_toggled(self, on: bool) -> None:
        self._ui.adjustBar.setVisible(on)
        if on:
            self.refresh()

    def _on_target_activated(self, i: int) -> None:
        index = self._ui.adjustTargetCombo.itemData(i)
        if index is not None:
            self.set_target(int(index))

    def _on_all_toggled(self, on: bool) -> None:
        self._ui.adjustTargetCombo.setEnabled(not on)
        if on:
            self._apply(self._ui.compareLevels.adjustment())
        else:
            self._ui.compareLevels.set_adjustment(self.adjustment(self._target))

    def _on_adjustment(self, adj: Adjustment) -> None:
        self._apply(adj)

    def _apply(self, adj: Adjustment) -> None:
        win = self._win
        targets = win.visible_panes() if self.apply_to_all else [self._target]
        for i in targets:
            if win.panes[i].choice is not None:
                win.panes[i].view.set_adjustment(adj)
        win.ui.overlayView.update()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # clicking a photo makes it the one the sliders change
        if event.type() == QEvent.Type.MouseButtonPress:
            for pane in self._win.panes:
                if watched is pane.view:
                    self.set_target(pane.index)
                    break
        return False
