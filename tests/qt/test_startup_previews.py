"""At start the window prepares previews of open cases' photos that have none yet
(photos pulled by a command-line sync while it was closed), so they open at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from sqlalchemy import select

from derm_workstation.core.models import Case, Photo
from derm_workstation.core.services import CaseService
from derm_workstation.core.users import local_actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.imaging.levels import PREVIEW_SIZE
from derm_workstation.qt import main_window
from derm_workstation.qt.main_window import QtMainWindow
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets.qt_case_panel import THUMB_SIZE
from tests.builders import populate

TIMEOUT = 20000


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    w = Workspace.open(tmp_path / "data")
    populate(w)
    yield w
    w.close()


def _hashes(ws: Workspace, open_cases: bool) -> set[str]:
    with ws.db.session() as s:
        q = select(Photo.sha256).join(Case, Photo.case_id == Case.id)
        q = q.where(Case.status.not_in(["completed", "cancelled"]) if open_cases
                    else Case.status.in_(["completed", "cancelled"]))
        return set(s.scalars(q))


def test_open_cases_get_previews_in_the_background_at_start(
        qtbot, qapp, ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main_window, "PREPARE_PREVIEWS_AFTER_MS", 50)
    open_photos, closed_photos = _hashes(ws, True), _hashes(ws, False)
    assert open_photos and closed_photos
    tasks = QtTaskManager()
    win = QtMainWindow(tasks, QSettings())
    qtbot.addWidget(win)
    try:
        win.show()
        win.attach(ws, CaseService(ws, local_actor()))
        win.refresh()
        thumbs = win.case_panel.thumbs
        assert thumbs is not None

        def all_prepared() -> bool:
            return all(thumbs.path_for(sha, size).exists()
                       for sha in open_photos for size in (THUMB_SIZE, PREVIEW_SIZE))

        qtbot.waitUntil(all_prepared, timeout=TIMEOUT)
        # only the open queue: a completed case's photos are left until someone opens it
        assert not any(thumbs.path_for(sha, PREVIEW_SIZE).exists() for sha in closed_photos)
    finally:
        win.close()
        tasks.shutdown()
