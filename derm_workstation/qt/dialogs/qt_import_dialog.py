"""Import photo files into a case (layout: ``ui/import_dialog.ui``).

Each file is checked through the safe image pipeline on the image pool as soon as it
is listed (``core.photo_import.validate_file``); the clinician sees per file either
what it is ("JPEG · 4000 × 3000 px · taken …") or why it was refused. Import stores the
accepted ones on the database lane (``PhotoImporter.store_all``), one transaction per
photo, and says per file what happened. Rejected files are never stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QResizeEvent
from PySide6.QtWidgets import QDialog, QFileDialog, QHeaderView, QTableWidgetItem, QWidget
from shiboken6 import isValid

from derm_workstation.core.errors import DermError
from derm_workstation.core.photo_import import (
    ImportOutcome,
    PhotoImporter,
    ValidatedPhoto,
    validate_file,
)
from derm_workstation.core.views import CaseDetail
from derm_workstation.qt.dialogs.qt_errors import user_message
from derm_workstation.qt.forms.import_dialog import Ui_ImportDialog
from derm_workstation.qt.tasks import QtTaskManager

if TYPE_CHECKING:
    from derm_workstation.imaging.thumbnails import ThumbnailCache

log = logging.getLogger(__name__)

OK_COLOUR = QColor("#7ee2a8")
BAD_COLOUR = QColor("#ff9b8f")
WAIT_COLOUR = QColor("#aeb7c0")


@dataclass
class ImportRow:
    path: str
    name_item: QTableWidgetItem
    item: QTableWidgetItem  # the check result
    state: str = "checking"  # checking | ready | rejected | importing | imported | failed
    photo: ValidatedPhoto | None = None
    message: str = ""


class QtImportDialog(QDialog):
    #: Photos were stored: (case id, how many).
    imported = Signal(str, int)
    #: Every listed file has been checked (for tests and the summary).
    checked = Signal()

    def __init__(self, tasks: QtTaskManager, importer: PhotoImporter, case: CaseDetail,
                 parent: QWidget | None = None, thumbs: ThumbnailCache | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("importDialog")
        self.ui = Ui_ImportDialog()
        self.ui.setupUi(self)
        self.setObjectName("importDialog")
        self._tasks = tasks
        self._importer = importer
        self._case = case
        self._thumbs = thumbs
        self.rows: list[ImportRow] = []
        ui = self.ui
        number = case.case_number or case.id[:8]
        ui.headerLabel.setText(f"Add photos to case {number}  ·  {case.patient.name}")
        ui.headerLabel.setProperty("role", "title")
        ui.siteEdit.setText(case.body_site)
        header = ui.fileList.horizontalHeader()
        header.setObjectName("importFileHeader")
        header.setAccessibleName("Import columns")
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        ui.fileList.verticalHeader().setObjectName("importRowHeader")
        ui.fileList.verticalHeader().setAccessibleName("Import rows")
        ui.fileList.setColumnWidth(0, 220)
        ui.importButton.clicked.connect(self.start_import)
        ui.addFilesButton.clicked.connect(self._ask_files)
        self.resize(820, 460)

    # -- listing and checking -----------------------------------------------------------
    def add_paths(self, paths: list[str]) -> None:
        known = {r.path for r in self.rows}
        for path in paths:
            if path in known:
                continue
            known.add(path)
            table = self.ui.fileList
            r = table.rowCount()
            table.insertRow(r)
            name = QTableWidgetItem(Path(path).name)
            name.setToolTip(path)
            item = QTableWidgetItem("Checking…")
            item.setForeground(QBrush(WAIT_COLOUR))
            table.setItem(r, 0, name)
            table.setItem(r, 1, item)
            row = ImportRow(path, name, item)
            self.rows.append(row)
            self._tasks.run_image(
                lambda p=path: validate_file(p),
                lambda ph, r=row: self._checked(r, ph),
                lambda exc, r=row: self._rejected(r, exc),
            )
        self._update_summary()
        self.ui.fileList.resizeRowsToContents()

    def _ask_files(self) -> None:
        from derm_workstation.qt.widgets.qt_case_panel import PHOTO_FILE_FILTER

        dlg = QFileDialog(self, "Add photos to this case")
        dlg.setObjectName("importMoreFileDialog")
        dlg.setAccessibleName("Choose photo files")
        dlg.setFileMode(QFileDialog.FileMode.ExistingFiles)
        dlg.setNameFilter(PHOTO_FILE_FILTER)
        dlg.filesSelected.connect(lambda files: self.add_paths(list(files)))
        dlg.open()

    def _set(self, row: ImportRow, state: str, text: str, colour: QColor) -> None:
        row.state = state
        row.message = text
        row.item.setText(text)
        row.item.setToolTip(text)
        row.item.setForeground(QBrush(colour))
        self.ui.fileList.resizeRowToContents(row.item.row())

    def _checked(self, row: ImportRow, photo: ValidatedPhoto) -> None:
        if not isValid(self):
            return
        row.photo = photo
        self._set(row, "ready", f"✓ Ready: {photo.summary()}", OK_COLOUR)
        self._after_check()

    def _rejected(self, row: ImportRow, exc: BaseException) -> None:
        if not isValid(self):
            return
        self._set(row, "rejected", f"✗ Not imported: {user_message(exc)}", BAD_COLOUR)
        self._after_check()

    def _after_check(self) -> None:
        self._update_summary()
        if not any(r.state == "checking" for r in self.rows):
            self.checked.emit()

    def _update_summary(self) -> None:
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r.state] = counts.get(r.state, 0) + 1
        parts = []
        for state, label in (("checking", "checking"), ("ready", "ready"),
                             ("rejected", "rejected"), ("imported", "imported"),
                             ("failed", "not stored")):
            if counts.get(state):
                parts.append(f"{counts[state]} {label}")
        self.ui.summaryLabel.setText("  ·  ".join(parts))
        ready = counts.get("ready", 0)
        busy = counts.get("checking", 0) or counts.get("importing", 0)
        self.ui.importButton.setEnabled(bool(ready) and not busy)
        self.ui.importButton.setText(f"Import {ready} photo{'s' if ready != 1 else ''}"
                                     if ready else "Import")
        self.ui.addFilesButton.setEnabled(not counts.get("importing", 0))

    # -- storing ----------------------------------------------------------------------------
    def start_import(self) -> None:
        todo = [r for r in self.rows if r.state == "ready" and r.photo is not None]
        if not todo:
            return
        for r in todo:
            self._set(r, "importing", "Importing…", WAIT_COLOUR)
        self._update_summary()
        photos = [r.photo for r in todo if r.photo is not None]
        site = self.ui.siteEdit.text().strip()
        title = self.ui.titleEdit.text().strip() or None
        case_id = self._case.id
        importer = self._importer
        self._tasks.run_db(
            lambda: importer.store_all(case_id, photos, body_site=site, title=title),
            lambda outcomes: self._stored(todo, outcomes),
            lambda exc: self._store_failed(todo, exc),
        )

    def _stored(self, rows: list[ImportRow], outcomes: list[ImportOutcome]) -> None:
        if not isValid(self):  # closed meanwhile: the photos are stored all the same
            return
        n = 0
        for row, out in zip(rows, outcomes, strict=True):
            data = row.photo.data if row.photo is not None else b""
            row.photo = None  # the bytes are stored; free the memory
            if out.ok and out.photo is not None:
                n += 1
                self._set(row, "imported", "✓ Imported", OK_COLOUR)
                self._make_previews(out.photo.sha256, data)
            else:
                self._set(row, "failed", f"✗ Not stored: {out.error}", BAD_COLOUR)
        self._finish(n)

    def _make_previews(self, sha: str, data: bytes) -> None:
        """Thumbnail and quick preview in the background, so the photo opens at once."""
        thumbs = self._thumbs
        if thumbs is None or not data:
            return

        def work() -> None:
            from derm_workstation.imaging.levels import PREVIEW_SIZE
            from derm_workstation.qt.widgets.qt_case_panel import THUMB_SIZE

            for size in (THUMB_SIZE, PREVIEW_SIZE):
                thumbs.get_or_create(sha, size, lambda: data)

        self._tasks.run_image(work, None, lambda exc: log.info("no preview made: %s", exc))

    def _store_failed(self, rows: list[ImportRow], exc: BaseException) -> None:
        text = user_message(exc)
        if not isValid(self):
            return
        for row in rows:
            self._set(row, "failed", f"✗ Not stored: {text}", BAD_COLOUR)
        if not isinstance(exc, DermError):
            log.error("import failed", exc_info=exc)
        self._finish(0)

    def _finish(self, n: int) -> None:
        self._update_summary()
        self.ui.closeButton.setText("Close")
        self.ui.closeButton.setDefault(True)
        if n:
            self.imported.emit(self._case.id, n)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.ui.fileList.resizeRowsToContents()  # reasons wrap to the new width

    def result_text(self, name: str) -> str:
        for r in self.rows:
            if Path(r.path).name == name:
                return r.item.text()
        raise KeyError(name)

    def state_of(self, name: str) -> str:
        """The state of the row for file ``name`` (tests and accessibility)."""
        for r in self.rows:
            if Path(r.path).name == name:
                return r.state
        raise KeyError(name)

    def keyPressEvent(self, event) -> None:  # type: ignore[no-untyped-def]
        # Enter must not close the dialog while a field has focus: it imports, if possible.
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if self.ui.importButton.isEnabled():
                self.start_import()
            event.accept()
            return
        super().keyPressEvent(event)
