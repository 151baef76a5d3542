"""Importing photo files into a case: the core service, then the GUI (drag-and-drop and
Ctrl+I with the file dialog), with real files, a real store and the real pipeline."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QFileDialog, QLineEdit
from sqlalchemy import func, select

from derm_workstation.core.errors import NotFoundError, PermissionDeniedError
from derm_workstation.core.models import AuditEvent, Case, Photo
from derm_workstation.core.photo_import import (
    DuplicatePhotoError,
    PhotoImporter,
    validate_bytes,
    validate_file,
)
from derm_workstation.core.services import CaseService
from derm_workstation.core.users import Actor, local_actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.imaging.decode import HEIF_SUPPORTED, ImageRejected
from derm_workstation.imaging.levels import PREVIEW_SIZE
from derm_workstation.qt.dialogs.qt_import_dialog import QtImportDialog
from derm_workstation.qt.main_window import QtMainWindow
from tests.builders import populate
from tests.qt.windows import main_window

TIMEOUT = 15_000
DOCTOR = local_actor()
NURSE = Actor("nurse1", "nurse")


def photo_jpeg(colour: tuple[int, int, int] = (180, 120, 100), taken: str | None = None,
               size: tuple[int, int] = (640, 480)) -> bytes:
    rng = np.random.default_rng(sum(colour))
    arr = np.clip(np.array(colour) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    img = Image.fromarray(arr.astype(np.uint8))
    buf = io.BytesIO()
    kwargs = {}
    if taken:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = taken  # DateTimeOriginal
        exif[0x0110] = "Phone"
        kwargs["exif"] = exif.tobytes()
    img.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()



@pytest.fixture
def case_ids(ws: Workspace) -> dict[str, str]:
    return populate(ws)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "usb stick"
    d.mkdir()
    good = photo_jpeg(taken="2026:03:12 14:05:00")
    out = {
        "good": d / "elbow close-up.jpg",
        "second": d / "elbow overview.jpg",
        "truncated": d / "cut off.jpg",
        "text": d / "notes.jpg",
        "gif": d / "animation.gif",
        "empty": d / "empty.png",
    }
    out["good"].write_bytes(good)
    out["second"].write_bytes(photo_jpeg((120, 90, 80)))
    out["truncated"].write_bytes(good[: len(good) // 2])
    out["text"].write_text("Dear doctor, please find the photos attached.")
    gif = io.BytesIO()
    Image.new("P", (20, 20)).save(gif, "GIF")
    out["gif"].write_bytes(gif.getvalue())
    out["empty"].write_bytes(b"")
    return out


def n_photos(ws: Workspace, case_id: str) -> int:
    with ws.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Photo)
                            .where(Photo.case_id == case_id)) or 0)


def stored_files(ws: Workspace) -> set[str]:
    root = ws.images.root
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


# ------------------------------------------------------------------------ core service


def test_validate_reads_the_facts(files: dict[str, Path]) -> None:
    ph = validate_file(files["good"])
    assert ph.name == "elbow close-up.jpg"
    assert (ph.info.format, ph.info.width, ph.info.height) == ("JPEG", 640, 480)
    assert ph.info.taken_at == datetime(2026, 3, 12, 14, 5)
    assert ph.summary().startswith("JPEG · 640 × 480 px · taken 12 Mar 2026")


@pytest.mark.parametrize(("which", "code", "words"), [
    ("truncated", "truncated", "truncated"),
    ("text", "unknown_format", ""),
    ("gif", "unsupported", "GIF files are not accepted"),
    ("empty", "empty", ""),
])
def test_validate_rejects_with_a_reason(files: dict[str, Path], which: str, code: str,
                                        words: str) -> None:
    with pytest.raises(ImageRejected) as info:
        validate_file(files[which])
    assert info.value.code == code
    assert words in info.value.message and info.value.message.endswith(".")


def test_store_adds_the_photo_with_an_audit_event(ws: Workspace, case_ids: dict[str, str],
                                                  files: dict[str, Path]) -> None:
    case_id = case_ids["Nguyen"]
    before = n_photos(ws, case_id)
    stored = PhotoImporter(ws, DOCTOR).store(case_id, validate_file(files["good"]))
    assert stored.source == "import" and stored.title == "elbow close-up"
    assert stored.body_site == "Right shin"  # the case's site by default
    assert (stored.width, stored.height, stored.content_type) == (640, 480, "image/jpeg")
    # EXIF time without a zone is the camera's wall clock: read as local time
    assert stored.taken_at is not None
    assert stored.taken_at.astimezone().replace(tzinfo=None) == datetime(2026, 3, 12, 14, 5)
    assert n_photos(ws, case_id) == before + 1
    assert ws.images.read_bytes(stored.sha256) == files["good"].read_bytes()
    with ws.db.session() as s:
        assert s.get(Case, case_id).photo_count == before + 1  # type: ignore[union-attr]
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "photo.import")).one()
        assert ev.entity_id == stored.id and ev.detail["case_id"] == case_id
        assert "elbow" not in str(ev.detail)  # file names may hold patient names
    # it shows in the case
    detail = CaseService(ws, DOCTOR).case_detail(case_id)
    assert detail.photos[-1].id == stored.id


def test_store_options_and_duplicates(ws: Workspace, case_ids: dict[str, str],
                                      files: dict[str, Path]) -> None:
    case_id = case_ids["Nguyen"]
    imp = PhotoImporter(ws, DOCTOR)
    ph = validate_file(files["good"])
    stored = imp.store(case_id, ph, body_site="  Right   shin, lateral ", title="Day 1")
    assert (stored.body_site, stored.title) == ("Right shin, lateral", "Day 1")
    count = n_photos(ws, case_id)
    with pytest.raises(DuplicatePhotoError, match="already in the case"):
        imp.store(case_id, ph)
    assert n_photos(ws, case_id) == count
    # the same photo may go into another case
    imp.store(case_ids["Okafor"], ph)


def test_store_needs_permission_and_a_real_case(ws: Workspace, case_ids: dict[str, str],
                                                files: dict[str, Path]) -> None:
    ph = validate_file(files["good"])
    before = stored_files(ws)
    with pytest.raises(PermissionDeniedError):
        PhotoImporter(ws, NURSE).store(case_ids["Nguyen"], ph)
    with pytest.raises(NotFoundError):
        PhotoImporter(ws, DOCTOR).store("no-such-case", ph)
    assert stored_files(ws) == before  # nothing written


def test_import_files_reports_each_file(ws: Workspace, case_ids: dict[str, str],
                                        files: dict[str, Path]) -> None:
    case_id = case_ids["Nguyen"]
    before_files, before = stored_files(ws), n_photos(ws, case_id)
    paths = [files["good"], files["truncated"], files["text"], files["second"], files["good"]]
    out = PhotoImporter(ws, DOCTOR).import_files(case_id, paths)
    assert [o.ok for o in out] == [True, False, False, True, False]
    assert "truncated" in (out[1].error or "")
    assert "already in the case" in (out[4].error or "")
    assert n_photos(ws, case_id) == before + 2
    new = stored_files(ws) - before_files
    assert new == {o.photo.sha256 for o in out if o.photo}  # nothing from rejected files


@pytest.mark.skipif(not HEIF_SUPPORTED, reason="pillow-heif is not installed")
def test_heic_from_a_phone(ws: Workspace, case_ids: dict[str, str], tmp_path: Path) -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    Image.fromarray(np.full((120, 160, 3), (200, 150, 130), np.uint8)).save(buf, "HEIF")
    ph = validate_bytes(buf.getvalue(), "IMG_0001.HEIC")
    stored = PhotoImporter(ws, DOCTOR).store(case_ids["Nguyen"], ph)
    assert stored.content_type == "image/heic" and (stored.width, stored.height) == (160, 120)


# ----------------------------------------------------------------------------------- GUI


@pytest.fixture
def window(qtbot, qapp, ws: Workspace, case_ids: dict[str, str]) -> Iterator[QtMainWindow]:
    with main_window(qtbot, qapp, ws, DOCTOR) as win:
        yield win


def drag_enter(pos: QPointF, *args: object) -> QDragEnterEvent:
    """A drag-enter event; PySide6 before 6.12 takes an integer QPoint, 6.12 a QPointF."""
    try:
        return QDragEnterEvent(pos, *args)  # type: ignore[arg-type]
    except TypeError:
        return QDragEnterEvent(pos.toPoint(), *args)  # type: ignore[arg-type]


def drop_files(window: QtMainWindow, paths: list[Path]) -> None:
    panel = window.case_panel
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = QPointF(panel.rect().center())
    enter = drag_enter(pos, Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(panel, enter)
    assert enter.isAccepted()
    drop = QDropEvent(pos, Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(panel, drop)


def open_dialog(qtbot, window: QtMainWindow) -> QtImportDialog:
    qtbot.waitUntil(lambda: isinstance(window.case_panel.import_dialog, QtImportDialog),
                    timeout=TIMEOUT)
    dlg = window.case_panel.import_dialog
    assert isinstance(dlg, QtImportDialog)
    if any(r.state == "checking" for r in dlg.rows):
        with qtbot.waitSignal(dlg.checked, timeout=TIMEOUT):
            pass
    return dlg


def test_drop_files_checks_each_and_imports_the_good_ones(
        qtbot, window: QtMainWindow, ws: Workspace, files: dict[str, Path]) -> None:
    panel = window.case_panel
    case = panel.detail
    assert case is not None
    before, before_files = n_photos(ws, case.id), stored_files(ws)
    drop_files(window, [files["good"], files["truncated"], files["gif"], files["second"]])
    dlg = open_dialog(qtbot, window)
    assert [dlg.state_of(n) for n in ("elbow close-up.jpg", "cut off.jpg", "animation.gif",
                                      "elbow overview.jpg")] == [
        "ready", "rejected", "rejected", "ready"]
    texts = {dlg.ui.fileList.item(i, 0).text(): dlg.ui.fileList.item(i, 1).text()
             for i in range(dlg.ui.fileList.rowCount())}
    assert texts["elbow close-up.jpg"].startswith("✓ Ready: JPEG · 640 × 480 px · taken 12 Mar")
    assert "truncated" in texts["cut off.jpg"] and texts["cut off.jpg"].startswith("✗")
    assert "GIF files are not accepted" in texts["animation.gif"]
    assert dlg.ui.summaryLabel.text() == "2 ready  ·  2 rejected"
    assert dlg.ui.siteEdit.text() == case.body_site
    assert dlg.ui.importButton.text() == "Import 2 photos"
    dlg.ui.titleEdit.clear()
    qtbot.keyClicks(dlg.ui.titleEdit, "From USB")
    with qtbot.waitSignal(window.case_shown, timeout=TIMEOUT):
        qtbot.mouseClick(dlg.ui.importButton, Qt.MouseButton.LeftButton)
    assert dlg.state_of("elbow close-up.jpg") == "imported"
    assert dlg.state_of("cut off.jpg") == "rejected"
    assert dlg.ui.closeButton.text() == "Close"
    # the case is shown again with its new photos, the last one opened
    assert n_photos(ws, case.id) == before + 2
    assert len(stored_files(ws) - before_files) == 2
    lst = panel.ui.thumbnailList
    assert lst.count() == before + 2
    qtbot.waitUntil(lambda: panel.shown_photo_id == panel.detail.photos[-1].id,  # type: ignore[union-attr]
                    timeout=TIMEOUT)
    assert "From USB (2)" in panel.ui.photoInfoLabel.text()
    row = window.model.row_of(case.id)
    qtbot.waitUntil(lambda: window.model.loaded_row(row).photo_count == before + 2,  # type: ignore[union-attr]
                    timeout=TIMEOUT)
    # the quick-preview copies were made in the background, for instant opening
    thumbs = panel.thumbs
    assert thumbs is not None
    new = panel.detail.photos[-2:]  # type: ignore[union-attr]
    qtbot.waitUntil(lambda: all(thumbs.get(ph.sha256, PREVIEW_SIZE) for ph in new),
                    timeout=TIMEOUT)


def test_only_rejected_files_means_nothing_to_import(
        qtbot, window: QtMainWindow, ws: Workspace, files: dict[str, Path]) -> None:
    case = window.case_panel.detail
    assert case is not None
    before = n_photos(ws, case.id)
    drop_files(window, [files["text"], files["empty"]])
    dlg = open_dialog(qtbot, window)
    assert not dlg.ui.importButton.isEnabled()
    assert all(r.state == "rejected" for r in dlg.rows)
    qtbot.mouseClick(dlg.ui.closeButton, Qt.MouseButton.LeftButton)
    assert not dlg.isVisible()
    assert n_photos(ws, case.id) == before


def test_ctrl_i_opens_a_file_dialog(qtbot, window: QtMainWindow, ws: Workspace,
                                    files: dict[str, Path]) -> None:
    case = window.case_panel.detail
    assert case is not None
    before = n_photos(ws, case.id)
    window.table.setFocus()
    qtbot.keyClick(window, Qt.Key.Key_I, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: window.findChild(QFileDialog, "importFileDialog") is not None
                    and window.findChild(QFileDialog, "importFileDialog").isVisible(),
                    timeout=TIMEOUT)
    fd = window.findChild(QFileDialog, "importFileDialog")
    fd.setDirectory(str(files["good"].parent))
    name = fd.findChild(QLineEdit, "fileNameEdit")
    assert name is not None
    qtbot.keyClicks(name, files["second"].name)
    qtbot.keyClick(name, Qt.Key.Key_Return)
    dlg = open_dialog(qtbot, window)
    assert [r.state for r in dlg.rows] == ["ready"]
    with qtbot.waitSignal(dlg.imported, timeout=TIMEOUT):
        qtbot.keyClick(dlg.ui.siteEdit, Qt.Key.Key_Return)  # Enter imports
    assert n_photos(ws, case.id) == before + 1


def test_drop_is_refused_without_a_case_or_files(qtbot, window: QtMainWindow,
                                                 tmp_path: Path) -> None:
    panel = window.case_panel
    md = QMimeData()
    md.setText("just text")
    enter = drag_enter(QPointF(5, 5), Qt.DropAction.CopyAction, md,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(panel, enter)
    assert not enter.isAccepted()
    md2 = QMimeData()
    md2.setUrls([QUrl.fromLocalFile(str(tmp_path))])  # a folder
    enter2 = drag_enter(QPointF(5, 5), Qt.DropAction.CopyAction, md2,
                             Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(panel, enter2)
    assert not enter2.isAccepted()
