"""``QtCompareWindow.open_photos``: other screens (the body map) open the compare window on
chosen photos of this visit and of earlier visits. Real workspace, real JPEGs (the
fixtures of ``test_compare``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from derm_workstation.core.services import CaseService
from derm_workstation.core.users import local_actor
from derm_workstation.core.views import CaseDetail
from derm_workstation.core.workspace import Workspace
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets.qt_compare_view import QtCompareWindow
from tests.qt import test_compare as tc

case_id = tc.case_id
TIMEOUT = tc.TIMEOUT


class Opened:
    """Makes the compare window inside the test: just created, not shown, its earlier
    visits not listed yet (the listing arrives with the next event-loop turn, and
    pytest-qt turns the loop between a fixture and its test)."""

    def __init__(self, qtbot, tasks: QtTaskManager, service: CaseService,
                 detail: CaseDetail, ids: dict[str, str]) -> None:
        self.qtbot, self.tasks, self.service, self.detail, self.ids = (
            qtbot, tasks, service, detail, ids)
        self.listed: list[int] = []
        self.win: QtCompareWindow | None = None

    def make(self) -> tuple[QtCompareWindow, dict[str, str]]:
        win = QtCompareWindow(self.tasks, self.service, self.detail,
                              self.ids["Back, blue TD-3"])
        self.qtbot.addWidget(win)
        win.photos_listed.connect(lambda: self.listed.append(1))
        self.win = win
        return win, self.ids

    def show_and_list(self) -> None:
        assert self.win is not None
        self.win.show()
        self.qtbot.waitUntil(lambda: bool(self.listed), timeout=TIMEOUT)


@pytest.fixture
def opened(qtbot, ws: Workspace, case_id: str, tasks: QtTaskManager) -> Iterator[Opened]:
    """The window maker, with every photo id by '<title> <case number>'."""
    service = CaseService(ws, local_actor())
    detail = service.case_detail(case_id)
    ids = {f"{ph.title} TD-3": ph.id for ph in detail.photos}
    for e in detail.earlier_cases:
        d = service.case_detail(e.id)
        ids |= {f"{ph.title} {d.case_number}": ph.id for ph in d.photos}
    o = Opened(qtbot, tasks, service, detail, ids)
    yield o
    if o.win is not None:
        o.win.close()


def shown(win: QtCompareWindow) -> list[str | None]:
    return [p.choice.photo.title if p.choice and p.isVisible() else None for p in win.panes]


def test_three_photos_wait_for_earlier_visits_then_fill_the_grid(
        qtbot, opened: Opened) -> None:
    win, ids = opened.make()
    win.open_photos([ids["Elbow close-up TD-3"], ids["Elbow overview TD-2"],
                     ids["Elbow close-up TD-1"]])
    # two of them are photos of earlier visits, not listed yet: the window waits
    assert not opened.listed and win.layout_mode == "1x2"
    opened.show_and_list()
    assert win.layout_mode == "2x2" and win.ui.layoutCombo.currentData() == "2x2"
    # date order: the oldest is the baseline; the fourth pane stays empty
    assert shown(win) == ["Elbow close-up", "Elbow overview", "Elbow close-up", None]
    assert win.panes[0].choice.case_label.endswith("(TD-1)")  # type: ignore[union-attr]
    assert win.panes[2].choice.current_case  # type: ignore[union-attr]
    assert "Pick a photo" in win.panes[3].view.message
    qtbot.waitUntil(lambda: all(p.view.has_image for p in win.panes[:3]), timeout=TIMEOUT)
    assert win.panes[0].ui.roleLabel.text() == "Baseline"


def test_two_photos_side_by_side_and_the_listing_keeps_them(
        qtbot, opened: Opened) -> None:
    win, ids = opened.make()
    # both photos are of this visit: shown at once, and the listing does not replace them
    win.open_photos([ids["Back, blue TD-3"], ids["Elbow close-up TD-3"]])
    assert not opened.listed and win.layout_mode == "1x2"
    assert win.panes[1].choice.photo.title == "Elbow close-up"  # type: ignore[union-attr]
    opened.show_and_list()
    assert sorted(t for t in shown(win) if t) == ["Back, blue", "Elbow close-up"]
    assert shown(win)[2:] == [None, None]
    qtbot.waitUntil(lambda: all(p.view.has_image for p in win.panes[:2]), timeout=TIMEOUT)


def test_more_than_four_photos_the_first_four_in_date_order(
        qtbot, opened: Opened) -> None:
    win, ids = opened.make()
    win.open_photos(list(reversed(ids.values())))
    assert not opened.listed
    opened.show_and_list()
    assert win.layout_mode == "2x2"
    labels = [p.choice.case_label for p in win.panes if p.choice]  # type: ignore[union-attr]
    assert len(labels) == 4
    # 2 photos of TD-1 (90 days ago), TD-2 (30 days), then one of this visit
    assert [lb[-6:] for lb in labels[:3]] == ["(TD-1)", "(TD-1)", "(TD-2)"]
    assert labels[3] == "this visit"


def test_one_photo_is_compared_with_its_baseline(
        qtbot, opened: Opened) -> None:
    win, ids = opened.make()
    win.open_photos([ids["Elbow close-up TD-3"]])
    assert not opened.listed
    opened.show_and_list()
    assert win.layout_mode == "1x2"
    base, follow = win.panes[0].choice, win.panes[1].choice
    assert base is not None and base.case_label.endswith("(TD-1)")
    assert follow is not None and follow.photo.id == ids["Elbow close-up TD-3"]
    # the pickers now offer the elbow's photos first
    assert win.panes[1].ui.photoCombo.itemText(0) == "— Same body site: Left elbow —"


def test_unknown_ids_are_skipped_with_a_note(
        qtbot, opened: Opened) -> None:
    win, ids = opened.make()
    win.open_photos(["no-such-photo", ids["Back, red TD-1"], ids["Back, blue TD-3"]])
    assert not opened.listed
    opened.show_and_list()
    assert shown(win)[:2] == ["Back, red", "Back, blue"]
    assert "1 of the requested photos is not among this patient's photos" in win.status_text


def test_open_photos_after_the_listing(
        qtbot, opened: Opened) -> None:
    win, ids = opened.make()
    opened.show_and_list()
    win.open_photos([ids["Back, red TD-1"], ids["Elbow overview TD-2"]])
    assert shown(win)[:2] == ["Back, red", "Elbow overview"]
