"""The tool row above a photo: fit, 100 %, zoom, rotate, loupe, grid, info, adjustments,
and (in the case panel) compare and import. Layout from ``ui/photo_toolbar.ui``.

The buttons drive one :class:`~derm_workstation.qt.widgets.qt_photo_view.QtPhotoView`
(bound with :meth:`QtPhotoToolbar.bind`) and follow its state when keys change it.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import QSizePolicy, QToolButton, QWidget

from derm_workstation.qt.forms.photo_toolbar import Ui_PhotoToolbar
from derm_workstation.qt.resources import icon
from derm_workstation.qt.widgets.qt_photo_view import QtPhotoView

ICONS = {
    "fitButton": "fit",
    "actualSizeButton": "actual-size",
    "zoomOutButton": "zoom-out",
    "zoomInButton": "zoom-in",
    "rotateLeftButton": "rotate-left",
    "rotateRightButton": "rotate-right",
    "loupeButton": "loupe",
    "gridButton": "grid",
    "infoButton": "info",
    "levelsButton": "levels",
    "compareButton": "compare",
    "importButton": "import",
}


class QtPhotoToolbar(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ui = Ui_PhotoToolbar()
        self.ui.setupUi(self)
        self.setObjectName("photoToolbar")
        for name, icon_name in ICONS.items():
            getattr(self.ui, name).setIcon(icon(icon_name))
        self._view: QtPhotoView | None = None
        # Never force the window wider: when space is short the buttons lose their
        # words (the tooltips keep them) instead.
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self._compact = False

    def _buttons(self) -> list[QToolButton]:
        return [b for b in self.findChildren(QToolButton) if b.text()]

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._set_compact(False)
        needed = self.ui.toolbarLayout.sizeHint().width()
        self._set_compact(needed > self.width())

    def _set_compact(self, compact: bool) -> None:
        if compact == self._compact:
            return
        self._compact = compact
        style = (Qt.ToolButtonStyle.ToolButtonIconOnly if compact
                 else Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for b in self._buttons():
            b.setToolButtonStyle(style)
        self.ui.toolbarLayout.invalidate()

    def bind(self, view: QtPhotoView) -> None:
        ui = self.ui
        self._view = view
        ui.fitButton.clicked.connect(view.fit)
        ui.actualSizeButton.clicked.connect(lambda: view.actual_size())
        ui.zoomInButton.clicked.connect(lambda: view.zoom(1.25))
        ui.zoomOutButton.clicked.connect(lambda: view.zoom(0.8))
        ui.rotateLeftButton.clicked.connect(view.rotate_ccw)
        ui.rotateRightButton.clicked.connect(view.rotate_cw)
        ui.loupeButton.toggled.connect(view.set_loupe)
        ui.gridButton.toggled.connect(view.set_grid)
        ui.infoButton.toggled.connect(view.set_info)
        view.tools_changed.connect(self._sync)
        self._sync()

    def show_case_actions(self, on: bool) -> None:
        """Compare and Import belong to a case; hidden where there is none."""
        self.ui.compareButton.setVisible(on)
        self.ui.importButton.setVisible(on)

    def _sync(self) -> None:
        v = self._view
        if v is None:
            return
        for button, state in ((self.ui.loupeButton, v.loupe_enabled),
                              (self.ui.gridButton, v.grid_enabled),
                              (self.ui.infoButton, v.info_enabled)):
            if button.isChecked() != state:
                button.blockSignals(True)
                button.setChecked(state)
                button.blockSignals(False)
