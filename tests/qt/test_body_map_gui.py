"""The Body map tab driven as a clinician would: open a case, switch to the tab, look at
the pins, click one to list its photos, drag one and see it kept (and undone with
Ctrl+Z), place a site the map did not know, and double-click a pin to compare its
photos across visits.

Real workspace (SQLite in tmp), real JPEGs, the real main window and compare window.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QTabWidget

from derm_workstation.core import intake
from derm_workstation.core.annotations import AnnotationService
from derm_workstation.core.body_map import BodyMapService
from derm_workstation.core.users import SYSTEM, Actor, local_actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.qt.app import apply_theme
from derm_workstation.qt.main_window import QtMainWindow
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets.qt_body_map import QtBodyMap
from derm_workstation.qt.widgets.qt_compare_view import QtCompareWindow
from tests.builders import jpeg
from tests.qt.windows import main_window

TIMEOUT = 15_000
NOW = datetime.now(UTC).replace(microsecond=0)
ARM = "forearm:left:front"



@pytest.fixture
def data(ws: Workspace) -> dict[str, str]:
    """A patient with two visits: the left forearm (with lesion 1, grown) on both, the
    upper back (lesion 2) on the first, and a site the map does not know on the second.
    Returns ids: patient, case (the open, latest visit), photos by title."""
    ids: dict[str, str] = {}
    with ws.db.session() as s:
        p = intake.upsert_patient(s, identifier="MRN-BM", family_name="Okafor",
                                  given_name="Ada", birth_date=date(1975, 4, 2), sex="female")

        def visit(days: int, number: str, status: str) -> object:
            return intake.add_case(s, SYSTEM, p, status=status, priority="routine",
                                   chief_complaint="Changing mole", body_site="Left forearm",
                                   description="", submitted_at=NOW - timedelta(days=days),
                                   case_number=number)

        first, now = visit(150, "BM-1", "completed"), visit(1, "BM-2", "received")
        for case, title, site, days, colour in (
            (first, "Arm, first visit", "Left forearm", 150, (120, 60, 40)),
            (first, "Back, first visit", "Upper back", 150, (90, 50, 40)),
            (now, "Arm, follow-up", "left forearm", 1, (130, 70, 45)),
            (now, "Watch strap", "under my watch strap", 1, (140, 80, 60)),
        ):
            ph = intake.add_photo(s, ws.images, case, jpeg(colour), body_site=site,  # type: ignore[arg-type]
                                  title=title, taken_at=NOW - timedelta(days=days, hours=1))
            ph.calibration_px_per_mm = 10.0
            ids[title] = ph.id
        ids["patient"], ids["case"] = p.id, now.id  # type: ignore[attr-defined]
    notes = AnnotationService(ws, Actor("dr.grey"))
    for title, size in (("Arm, first visit", 100), ("Arm, follow-up", 150)):
        notes.add(ids[title], "marker", [(240, 180)], lesion_number=1)
        notes.add(ids[title], "ellipse", [(200, 140), (200 + size, 140 + size)],
                  lesion_number=1)
    notes.add(ids["Back, first visit"], "marker", [(100, 100)], lesion_number=2)
    return ids


@pytest.fixture
def window(qtbot, qapp, ws: Workspace, data: dict[str, str]) -> Iterator[QtMainWindow]:
    with main_window(qtbot, qapp, ws) as win:
        with qtbot.waitSignal(win.case_shown, timeout=TIMEOUT):
            win.open_case(data["case"])
        yield win


def open_tab(qtbot, win: QtMainWindow) -> QtBodyMap:
    """Click the "Body map" tab and wait for its pins."""
    body = win.case_panel.body_map
    assert body is not None
    tabs: QTabWidget = win.case_panel.ui.detailTabs
    index = tabs.indexOf(body)
    assert tabs.tabText(index) == "Body map"
    bar = tabs.tabBar()
    with qtbot.waitSignal(body.pins_loaded, timeout=TIMEOUT):
        qtbot.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.tabRect(index).center())
    assert tabs.currentWidget() is body
    return body


def test_the_tab_shows_every_site_and_lesion_of_the_patient(qtbot, window: QtMainWindow,
                                                            data: dict[str, str]) -> None:
    window.resize(1600, 1100)
    body = open_tab(qtbot, window)
    m = body.body_map
    assert m is not None
    drawn = {(p.kind, p.key) for p in body.canvas.pins}
    assert drawn == {("site", ARM), ("site", "upper-back:-:back"), ("lesion", "1"),
                     ("lesion", "2")}
    arm = m.find("site", ARM)
    assert arm is not None and arm.photo_ids == [data["Arm, first visit"],
                                                 data["Arm, follow-up"]]
    one = m.find("lesion", "1")
    assert one is not None and one.changed is True
    assert body.header.text() == "3 photo sites · 2 numbered lesions · 1 changed (all visits)"
    # the site the map does not know is listed for placing by hand
    assert body.unplaced_list.count() == 1
    assert body.unplaced_list.item(0).text().startswith(
        "Site not on the map: under my watch strap")
    # front pins are drawn on the front figure, back pins on the back one
    front, back = body.canvas.figure_rect("front"), body.canvas.figure_rect("back")
    assert front.contains(body.canvas.pin_point("site", ARM))
    assert back.contains(body.canvas.pin_point("site", "upper-back:-:back"))
    # the left forearm is on the viewer's right of the front figure
    assert body.canvas.pin_point("site", ARM).x() > front.center().x()
    window.case_panel.grab().save("/tmp/h5_case_panel.png")
    body.grab().save("/tmp/h5_body_map_tab.png")


def test_clicking_a_pin_lists_its_photos_oldest_first(qtbot, window: QtMainWindow) -> None:
    body = open_tab(qtbot, window)
    assert not body.compare_button.isEnabled()
    qtbot.mouseClick(body.canvas, Qt.MouseButton.LeftButton,
                     pos=body.canvas.pin_point("site", ARM))
    rows = [body.photo_list.item(i).text() for i in range(body.photo_list.count())]
    assert len(rows) == 2
    assert "Arm, first visit" in rows[0] and "visit BM-1" in rows[0]
    assert "Arm, follow-up" in rows[1] and "visit BM-2" in rows[1]
    assert body.pin_label.text().startswith("Left forearm")
    assert body.compare_button.isEnabled()
    qtbot.mouseClick(body.canvas, Qt.MouseButton.LeftButton,
                     pos=body.canvas.pin_point("lesion", "1"))
    assert body.pin_label.text().startswith("Lesion 1")
    assert "changed" in body.pin_label.text()
    assert body.canvas.pin_at(body.canvas.pin_point("lesion", "1").toPointF()) is not None


def test_dragging_a_pin_moves_it_keeps_it_and_ctrl_z_undoes_it(
        qtbot, window: QtMainWindow, ws: Workspace, data: dict[str, str]) -> None:
    body = open_tab(qtbot, window)
    canvas = body.canvas
    start = canvas.pin_point("site", "upper-back:-:back")
    back = canvas.figure_rect("back")
    target = QPoint(int(back.left() + 0.62 * back.width()), int(back.top() + 0.30 * back.height()))
    with qtbot.waitSignal(body.pins_loaded, timeout=TIMEOUT):
        qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=start)
        for k in range(1, 6):
            qtbot.mouseMove(canvas, pos=start + (target - start) * k / 5)
        qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=target)
    pin = body.body_map.find("site", "upper-back:-:back") if body.body_map else None
    assert pin is not None and pin.adjusted and pin.view == "back"
    assert pin.x == pytest.approx(0.62, abs=0.01) and pin.y == pytest.approx(0.30, abs=0.01)
    assert (canvas.pin_point("site", "upper-back:-:back") - target).manhattanLength() <= 2
    # kept in the store, as a fresh service (a restart) reads it
    stored = BodyMapService(ws, local_actor()).pins(data["patient"]).find(
        "site", "upper-back:-:back")
    assert stored is not None and stored.adjusted and stored.x == pytest.approx(0.62, abs=0.01)
    # the lesion on that photo followed its site's pin
    two = body.body_map.find("lesion", "2") if body.body_map else None
    assert two is not None and (two.x, two.y) == (pin.x, pin.y) and not two.adjusted
    assert body.reset_button.isEnabled() and body.undo_button.isEnabled()

    # Ctrl+Z puts it back where the body site places it
    canvas.setFocus()
    with qtbot.waitSignal(body.pins_loaded, timeout=TIMEOUT):
        qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    pin = body.body_map.find("site", "upper-back:-:back") if body.body_map else None
    assert pin is not None and not pin.adjusted and pin.x == 0.5
    assert (canvas.pin_point("site", "upper-back:-:back") - start).manhattanLength() <= 2
    stored = BodyMapService(ws, local_actor()).pins(data["patient"]).find(
        "site", "upper-back:-:back")
    assert stored is not None and not stored.adjusted
    # and Ctrl+Shift+Z moves it again
    with qtbot.waitSignal(body.pins_loaded, timeout=TIMEOUT):
        qtbot.keyClick(canvas, Qt.Key.Key_Z,
                       Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    stored = BodyMapService(ws, local_actor()).pins(data["patient"]).find(
        "site", "upper-back:-:back")
    assert stored is not None and stored.adjusted

    # Reset position (a button) does the same as undo, for the selected pin
    with qtbot.waitSignal(body.pins_loaded, timeout=TIMEOUT):
        qtbot.mouseClick(body.reset_button, Qt.MouseButton.LeftButton)
    stored = BodyMapService(ws, local_actor()).pins(data["patient"]).find(
        "site", "upper-back:-:back")
    assert stored is not None and not stored.adjusted


def test_a_short_click_does_not_move_a_pin(qtbot, window: QtMainWindow, ws: Workspace,
                                           data: dict[str, str]) -> None:
    body = open_tab(qtbot, window)
    p = body.canvas.pin_point("site", ARM)
    qtbot.mousePress(body.canvas, Qt.MouseButton.LeftButton, pos=p)
    qtbot.mouseMove(body.canvas, pos=p + QPoint(2, 1))  # a trembling hand, not a drag
    qtbot.mouseRelease(body.canvas, Qt.MouseButton.LeftButton, pos=p + QPoint(2, 1))
    assert body.selected_pin() is not None and body.selected_pin().key == ARM  # type: ignore[union-attr]
    assert not body.stack.can_undo()
    stored = BodyMapService(ws, local_actor()).pins(data["patient"]).find("site", ARM)
    assert stored is not None and not stored.adjusted


def test_a_site_not_on_the_map_is_placed_by_clicking_the_body(
        qtbot, window: QtMainWindow, ws: Workspace, data: dict[str, str]) -> None:
    body = open_tab(qtbot, window)
    lst = body.unplaced_list
    qtbot.mouseClick(lst.viewport(), Qt.MouseButton.LeftButton,
                     pos=lst.visualItemRect(lst.item(0)).center())
    assert body.canvas.placing
    assert "under my watch strap" in body.pin_label.text()
    assert body.photo_list.count() == 1
    assert body.photo_list.item(0).text().endswith("Watch strap  ·  visit BM-2")
    front = body.canvas.figure_rect("front")
    wrist = QPoint(int(front.left() + 0.80 * front.width()),
                   int(front.top() + 0.49 * front.height()))
    with qtbot.waitSignal(body.pins_loaded, timeout=TIMEOUT):
        qtbot.mouseClick(body.canvas, Qt.MouseButton.LeftButton, pos=wrist)
    m = BodyMapService(ws, local_actor()).pins(data["patient"])
    assert m.unplaced == []
    placed = next(p for p in m.site_pins() if p.key.startswith("text:"))
    assert placed.view == "front" and placed.x == pytest.approx(0.80, abs=0.01)
    assert lst.count() == 0 and not lst.isVisible()
    assert (body.canvas.pin_point("site", placed.key) - wrist).manhattanLength() <= 2


def test_double_clicking_a_pin_opens_its_photos_in_the_compare_window(
        qtbot, window: QtMainWindow, data: dict[str, str]) -> None:
    body = open_tab(qtbot, window)
    qtbot.mouseDClick(body.canvas, Qt.MouseButton.LeftButton,
                      pos=body.canvas.pin_point("lesion", "1"))
    qtbot.waitUntil(lambda: window.compare_window is not None, timeout=TIMEOUT)
    win = window.compare_window
    assert isinstance(win, QtCompareWindow)
    want = [data["Arm, first visit"], data["Arm, follow-up"]]

    def shown() -> list[str]:
        return [p.choice.photo.id for p in win.panes[:2] if p.choice is not None]

    qtbot.waitUntil(lambda: shown() == want, timeout=TIMEOUT)
    assert win.layout_mode == "1x2"
    win.grab().save("/tmp/h5_compare_from_pin.png")


def test_compare_photos_button_opens_the_selected_site(qtbot, window: QtMainWindow,
                                                       data: dict[str, str]) -> None:
    body = open_tab(qtbot, window)
    qtbot.mouseClick(body.canvas, Qt.MouseButton.LeftButton,
                     pos=body.canvas.pin_point("site", "upper-back:-:back"))
    with qtbot.waitSignal(body.compare_requested, timeout=TIMEOUT) as sig:
        qtbot.mouseClick(body.compare_button, Qt.MouseButton.LeftButton)
    assert sig.args == [[data["Back, first visit"]]]
    qtbot.waitUntil(lambda: window.compare_window is not None, timeout=TIMEOUT)


def test_a_nurse_sees_the_map_but_cannot_drag_pins(qtbot, qapp, ws: Workspace,
                                                  data: dict[str, str]) -> None:
    apply_theme(qapp)
    tasks = QtTaskManager()
    try:
        body = QtBodyMap(tasks, BodyMapService(ws, Actor("nurse.joy", "nurse")))
        qtbot.addWidget(body)
        body.resize(900, 560)
        body.show()
        qtbot.waitExposed(body)
        with qtbot.waitSignal(body.pins_loaded, timeout=TIMEOUT):
            body.set_patient(data["patient"])
        assert not body.reset_button.isVisible() and not body.undo_button.isVisible()
        assert "Drag" not in body.pin_label.text()
        start = body.canvas.pin_point("site", ARM)
        qtbot.mousePress(body.canvas, Qt.MouseButton.LeftButton, pos=start)
        qtbot.mouseMove(body.canvas, pos=start + QPoint(-60, 40))
        qtbot.mouseRelease(body.canvas, Qt.MouseButton.LeftButton, pos=start + QPoint(-60, 40))
        assert body.canvas.pin_point("site", ARM) == start
        assert not body.stack.can_undo()
        # but the pin was selected and its photos listed
        assert body.photo_list.count() == 2
        stored = BodyMapService(ws, local_actor()).pins(data["patient"]).find("site", ARM)
        assert stored is not None and not stored.adjusted
    finally:
        tasks.shutdown()


def test_the_tab_follows_the_open_case_and_clears(qtbot, window: QtMainWindow,
                                                  data: dict[str, str]) -> None:
    body = open_tab(qtbot, window)
    assert body.patient_id == data["patient"]
    window.case_panel.clear()
    assert body.patient_id is None and body.canvas.pins == []


def test_a_lesion_marked_on_the_photo_appears_on_the_open_map(
        qtbot, window: QtMainWindow, data: dict[str, str]) -> None:
    body = open_tab(qtbot, window)
    panel = window.case_panel
    layer = panel.annotations
    assert layer is not None
    qtbot.waitUntil(lambda: panel.shown_photo_id == data["Arm, follow-up"], timeout=TIMEOUT)
    qtbot.waitUntil(lambda: layer.pending_saves == 0, timeout=TIMEOUT)

    def lesion_photos() -> int:
        m = body.body_map
        return sum(len(p.photos) for p in m.lesion_pins()) if m is not None else 0

    before = lesion_photos()
    layer.set_tool("marker")  # the next number on this photo: 2
    view = panel.ui.photoView
    at = QPoint(view.width() // 4, view.height() // 4)
    with qtbot.waitSignal(body.pins_loaded, timeout=TIMEOUT):
        qtbot.mouseMove(view, at)
        qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=at)
    qtbot.waitUntil(lambda: lesion_photos() == before + 1, timeout=TIMEOUT)
    two = body.body_map.find("lesion", "2") if body.body_map else None
    assert two is not None and data["Arm, follow-up"] in two.photo_ids


def test_the_map_works_from_the_keyboard(qtbot, window: QtMainWindow,
                                         data: dict[str, str]) -> None:
    """Tab reaches the map; Tab and the arrow keys step through the pins (the canvas's
    accessible name reads the selected one); Enter opens its photos side by side."""
    body = open_tab(qtbot, window)
    canvas = body.canvas
    assert canvas.focusPolicy() & Qt.FocusPolicy.TabFocus
    bar = window.case_panel.ui.detailTabs.tabBar()
    bar.setFocus()
    seen = []
    for _ in range(6):  # from the tab bar, Tab into the map
        if canvas.hasFocus():
            break
        seen.append((window.focusWidget().objectName(), type(window.focusWidget()).__name__))
        qtbot.keyClick(window.focusWidget(), Qt.Key.Key_Tab)
    assert canvas.hasFocus(), (seen, window.isActiveWindow())
    order = [pin_id_of(p) for p in canvas.pins_in_order()]
    assert len(order) >= 3 and set(order) == {pin_id_of(p) for p in canvas.pins}
    assert body.selected_pin() is None
    qtbot.keyClick(canvas, Qt.Key.Key_Right)
    first = body.selected_pin()
    assert first is not None and pin_id_of(first) == order[0]
    assert first.label in canvas.accessibleName()
    assert body.photo_list.count() == len(first.photos)
    qtbot.keyClick(canvas, Qt.Key.Key_Tab)  # Tab goes to the next pin, focus stays
    assert canvas.hasFocus() and pin_id_of(body.selected_pin()) == order[1]
    qtbot.keyClick(canvas, Qt.Key.Key_Left)
    assert pin_id_of(body.selected_pin()) == order[0]
    canvas.grab().save("/tmp/body_map_keyboard.png")
    # the focus ring: the canvas edge is drawn in the focus colour while it has focus
    img = canvas.grab().toImage()
    assert img.pixelColor(canvas.width() // 2, 1).name() == "#58a6ff"
    # to lesion 1 with the arrows, then Enter = double-click
    for _ in order:
        if canvas.selected == ("lesion", "1"):
            break
        qtbot.keyClick(canvas, Qt.Key.Key_Down)
    assert canvas.selected == ("lesion", "1")
    assert "Lesion" in canvas.accessibleName() or "lesion" in canvas.accessibleName()
    qtbot.keyClick(canvas, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.compare_window is not None, timeout=TIMEOUT)
    win = window.compare_window
    assert isinstance(win, QtCompareWindow)
    want = [data["Arm, first visit"], data["Arm, follow-up"]]
    qtbot.waitUntil(lambda: [p.choice.photo.id for p in win.panes[:2]
                             if p.choice is not None] == want, timeout=TIMEOUT)


def test_tab_leaves_the_map_after_the_last_pin(qtbot, window: QtMainWindow) -> None:
    body = open_tab(qtbot, window)
    canvas = body.canvas
    canvas.setFocus()
    qtbot.waitUntil(canvas.hasFocus, timeout=TIMEOUT)
    order = [pin_id_of(p) for p in canvas.pins_in_order()]
    for want in order:
        qtbot.keyClick(canvas, Qt.Key.Key_Tab)
        assert canvas.selected == want
    qtbot.keyClick(canvas, Qt.Key.Key_Tab)  # no keyboard trap
    assert not canvas.hasFocus()
    assert canvas.selected == order[-1]


def pin_id_of(pin) -> tuple[str, str]:
    assert pin is not None
    return (pin.kind, pin.key)
