"""The main window driven as a clinician would: click, type, keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PySide6.QtCore import QPoint, QSettings, Qt
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QComboBox,
    QLineEdit,
    QSlider,
    QTabWidget,
    QTextBrowser,
    QWidget,
)

from derm_workstation.core.workspace import Workspace
from derm_workstation.qt.main_window import QtMainWindow
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets.qt_case_panel import THUMB_STATE_ROLE
from derm_workstation.qt.widgets.qt_photo_view import QtPhotoView
from tests.builders import CASES, corrupt_first_photo, populate
from tests.qt.windows import main_window

OPEN = [c for c in CASES if c[2] not in ("completed", "cancelled")]
TIMEOUT = 10_000



@pytest.fixture
def case_ids(ws: Workspace) -> dict[str, str]:
    return populate(ws)


@pytest.fixture
def window(qtbot, qapp, ws: Workspace, case_ids: dict[str, str]) -> Iterator[QtMainWindow]:
    with main_window(qtbot, qapp, ws) as win:
        yield win


def click_row(qtbot, win: QtMainWindow, row: int) -> None:
    rect = win.table.visualRect(win.model.index(row, 2))
    with qtbot.waitSignal(win.case_shown, timeout=TIMEOUT):
        qtbot.mouseClick(win.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def wait_loaded(qtbot, win: QtMainWindow):
    return qtbot.waitSignal(win.model.loaded, timeout=TIMEOUT)


def test_opens_on_the_open_cases_in_triage_order(window: QtMainWindow) -> None:
    m = window.model
    assert m.rowCount() == len(OPEN)
    shown = [m.loaded_row(r) for r in range(m.rowCount())]
    assert all(r is not None for r in shown)
    prios = [r.priority for r in shown if r]
    assert prios[0] == "stat" and prios[1] == "asap" and prios[2] == "urgent"
    # the first case is open, with its photo on screen
    d = window.case_panel.detail
    assert d is not None and d.id == shown[0].id  # type: ignore[union-attr]
    assert "García" in window.case_panel.ui.patientLabel.text()
    assert window.case_panel.ui.photoView.has_image
    assert window.filter_ui.resultCountLabel.text() == f"{len(OPEN)} cases"
    assert "open" in window.counts_label.text()


def thumb_states(win: QtMainWindow) -> list[str]:
    lst = win.case_panel.ui.thumbnailList
    return [lst.item(i).data(THUMB_STATE_ROLE) for i in range(lst.count())]


def test_clicking_a_row_opens_that_case(qtbot, window: QtMainWindow,
                                        case_ids: dict[str, str]) -> None:
    row = window.model.row_of(case_ids["Müller"])
    click_row(qtbot, window, row)
    panel = window.case_panel
    assert panel.detail is not None and panel.detail.id == case_ids["Müller"]
    assert "Müller, Lena" in panel.ui.patientLabel.text()
    assert panel.ui.complaintValue.text() == "Scaly plaques"
    assert panel.ui.thumbnailList.count() == 3
    qtbot.waitUntil(lambda: thumb_states(window) == ["ready"] * 3, timeout=TIMEOUT)
    # clicking the third thumbnail shows that photo
    lst = panel.ui.thumbnailList
    third = panel.detail.photos[2].id
    with qtbot.waitSignal(panel.photo_shown, timeout=TIMEOUT) as sig:
        qtbot.mouseClick(lst.viewport(), Qt.MouseButton.LeftButton,
                         pos=lst.visualItemRect(lst.item(2)).center())
    assert sig.args == [third] and panel.shown_photo_id == third
    assert "Photo 3" in panel.ui.photoInfoLabel.text()


def test_arrow_keys_move_through_the_queue(qtbot, window: QtMainWindow) -> None:
    window.table.setFocus()
    second = window.model.case_id(1)
    with qtbot.waitSignal(window.case_shown, timeout=TIMEOUT) as sig:
        qtbot.keyClick(window.table, Qt.Key.Key_Down)
    assert sig.args == [second]
    qtbot.keyClick(window.table, Qt.Key.Key_Return)
    assert window.case_panel.ui.thumbnailList.hasFocus()


def test_status_filter_shows_completed_cases(qtbot, window: QtMainWindow) -> None:
    combo = window.filter_ui.statusFilter
    with wait_loaded(qtbot, window):
        combo.setCurrentIndex(combo.findText("Completed"))
    assert window.model.rowCount() == 1
    row = window.model.loaded_row(0)
    assert row is not None and row.patient_name == "Haddad, Rami"


def test_priority_filter(qtbot, window: QtMainWindow) -> None:
    combo = window.filter_ui.priorityFilter
    with wait_loaded(qtbot, window):
        combo.setCurrentIndex(combo.findText("Urgent or higher"))
    names = {window.model.loaded_row(r).patient_name.split(",")[0]  # type: ignore[union-attr]
             for r in range(window.model.rowCount())}
    assert names == {"Okafor", "García", "Tanaka"}


def test_ctrl_f_and_typing_searches(qtbot, window: QtMainWindow) -> None:
    window.table.setFocus()
    qtbot.keyClick(window, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    search = window.filter_ui.searchEdit
    assert search.hasFocus()
    with wait_loaded(qtbot, window):
        qtbot.keyClicks(search, "elbow")
    assert window.model.rowCount() == 1
    assert window.model.loaded_row(0).patient_name == "Müller, Lena"  # type: ignore[union-attr]
    with wait_loaded(qtbot, window):
        qtbot.keyClick(search, Qt.Key.Key_Escape)  # clears the search, back to the table
    assert window.table.hasFocus()
    assert window.model.rowCount() == len(OPEN)


def test_search_with_no_match_clears_the_panel(qtbot, window: QtMainWindow) -> None:
    with wait_loaded(qtbot, window):
        qtbot.keyClicks(window.filter_ui.searchEdit, "zzzz-no-such")
    assert window.model.rowCount() == 0
    assert window.filter_ui.resultCountLabel.text() == "0 cases"


def test_header_click_sorts_in_sql(qtbot, window: QtMainWindow) -> None:
    header = window.table.horizontalHeader()
    x = header.sectionViewportPosition(2) + 10  # "Patient"
    with wait_loaded(qtbot, window):
        qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(x, 5))
    names = [window.model.loaded_row(r).patient_name  # type: ignore[union-attr]
             for r in range(window.model.rowCount())]
    assert window.model.query.sort == "patient"
    assert names == sorted(names) or names == sorted(names, reverse=True)


def test_damaged_photo_shows_a_clear_message(qtbot, window: QtMainWindow, ws: Workspace,
                                             case_ids: dict[str, str]) -> None:
    corrupt_first_photo(ws, case_ids["Okafor"])
    row = window.model.row_of(case_ids["Okafor"])
    with qtbot.waitSignal(window.case_panel.photo_shown, timeout=TIMEOUT):
        click_row(qtbot, window, row)
    view = window.case_panel.ui.photoView
    assert not view.has_image
    assert "damaged" in view.message
    qtbot.waitUntil(lambda: thumb_states(window) == ["damaged", "ready"], timeout=TIMEOUT)


def test_earlier_visits_listed(qtbot, window: QtMainWindow) -> None:
    d = window.case_panel.detail
    assert d is not None
    assert window.case_panel.ui.historyList.count() >= 1
    assert window.case_panel.ui.detailTabs.tabText(2).startswith("Messages")


def test_geometry_is_remembered(qtbot, qapp, window: QtMainWindow, ws: Workspace) -> None:
    window.resize(1111, 777)
    window.close()
    tasks = QtTaskManager()
    again = QtMainWindow(tasks, QSettings())
    qtbot.addWidget(again)
    try:
        assert (again.width(), again.height()) == (1111, 777)
    finally:
        tasks.shutdown()


INTERACTIVE = (QLineEdit, QComboBox, QAbstractItemView, QAbstractButton, QtPhotoView,
               QSlider, QTabWidget, QTextBrowser)


def test_every_interactive_widget_has_names(window: QtMainWindow) -> None:
    missing = []
    for w in window.findChildren(QWidget):
        if not isinstance(w, INTERACTIVE) or w.objectName().startswith("qt_"):
            continue
        parent = w.parentWidget()
        internal = False
        while parent is not None:  # Qt's own sub-widgets (combo popups, tab scrollers)
            if isinstance(parent, QComboBox | QTabWidget | QLineEdit) and parent is not w:
                internal = isinstance(w, QAbstractButton | QAbstractItemView)
                break
            parent = parent.parentWidget()
        if internal:
            continue
        if not w.objectName() or not w.accessibleName():
            missing.append(f"{type(w).__name__}:{w.objectName()!r}")
    assert not missing, missing


def test_a_slow_earlier_photo_never_replaces_the_chosen_one(qtbot, window: QtMainWindow,
                                                            case_ids: dict[str, str]) -> None:
    """Photos decode on a pool: results can arrive out of order. The last choice wins."""
    click_row(qtbot, window, window.model.row_of(case_ids["Müller"]))
    panel = window.case_panel
    lst = panel.ui.thumbnailList
    wanted = panel.detail.photos[2].id  # type: ignore[union-attr]
    for _ in range(3):  # quick clicks through all three, ending on the third
        for i in (0, 1, 2):
            lst.setCurrentRow(i)
    qtbot.waitUntil(lambda: panel.shown_photo_id == wanted, timeout=TIMEOUT)
    # let every queued decode finish: the stale ones must be ignored
    qtbot.waitUntil(lambda: window.tasks.pending == 0, timeout=TIMEOUT)
    assert panel.shown_photo_id == wanted and panel.ui.photoView.has_image


def test_annotation_tools_in_the_case_panel_save_to_the_store(
        qtbot, window: QtMainWindow, ws: Workspace) -> None:
    """The annotation layer is part of the open case: a ruler drawn on the photo is saved
    for that photo and is there again after the window is gone (a restart)."""
    from derm_workstation.core.annotations import AnnotationService
    from derm_workstation.core.users import local_actor as actor

    panel = window.case_panel
    layer = panel.annotations
    assert layer is not None and layer.toolbar().isVisibleTo(window)
    photo_id = panel.shown_photo_id
    assert photo_id is not None
    qtbot.waitUntil(lambda: layer.pending_saves == 0, timeout=TIMEOUT)
    layer.set_tool("ruler")
    view = panel.ui.photoView
    start, end = QPoint(view.width() // 3, view.height() // 2), QPoint(
        2 * view.width() // 3, view.height() // 2)
    qtbot.mousePress(view, Qt.MouseButton.LeftButton, pos=start)
    for i in range(1, 5):
        qtbot.mouseMove(view, start + (end - start) * i / 4)
    qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, pos=end)
    qtbot.waitUntil(lambda: layer.pending_saves == 0, timeout=TIMEOUT)
    window.close()
    [ruler] = AnnotationService(ws, actor()).list(photo_id)
    assert ruler.kind == "ruler"
