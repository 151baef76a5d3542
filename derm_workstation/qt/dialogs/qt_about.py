"""The About dialog (layout from ``ui/about_dialog.ui``)."""

from __future__ import annotations

from PySide6.QtWidgets import QDialog, QWidget

from derm_workstation import __version__
from derm_workstation.qt.forms.about_dialog import Ui_AboutDialog


class QtAboutDialog(QDialog):
    def __init__(self, location: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ui = Ui_AboutDialog()
        self.ui.setupUi(self)
        self.ui.titleLabel.setProperty("role", "title")
        self.ui.versionLabel.setText(f"Version {__version__}")
        self.ui.locationLabel.setText(f"Data: {location}")
