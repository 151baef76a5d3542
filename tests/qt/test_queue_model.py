"""The lazy queue model on its own: counts, pages fetched on demand, stale results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from derm_workstation.core.services import CaseService
from derm_workstation.core.users import local_actor
from derm_workstation.core.views import QueueQuery
from derm_workstation.core.workspace import Workspace
from derm_workstation.qt.models.qt_queue_model import PAGE, QtQueueModel
from derm_workstation.qt.tasks import QtTaskManager
from tests.builders import bulk_cases

N = 2 * PAGE + 50
TIMEOUT = 10_000


@pytest.fixture(scope="module")
def bulk_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("bulk")
    ws = Workspace.open(root)
    try:
        ids = bulk_cases(ws, N)
    finally:
        ws.close()
    return root, ids


@pytest.fixture
def model(qtbot, bulk_store: tuple[Path, list[str]]) -> Iterator[QtQueueModel]:
    ws = Workspace.open(bulk_store[0])
    tasks = QtTaskManager()
    m = QtQueueModel(tasks, CaseService(ws, local_actor()))
    yield m
    tasks.shutdown()
    ws.close()


def test_count_and_first_page_arrive_together(qtbot, model: QtQueueModel,
                                              bulk_store: tuple[Path, list[str]]) -> None:
    with qtbot.waitSignal(model.loaded, timeout=TIMEOUT) as sig:
        model.reload()
    assert sig.args == [N]
    assert model.rowCount() == N and model.columnCount() == 9
    ids = bulk_store[1]
    # triage order: all routine, longest waiting (= first created) first
    assert [model.case_id(r) for r in range(PAGE)] == ids[:PAGE]
    # rows beyond the first page are not loaded until asked for
    assert model.loaded_row(PAGE + 10) is None


def test_a_later_page_loads_when_the_view_asks(qtbot, model: QtQueueModel,
                                               bulk_store: tuple[Path, list[str]]) -> None:
    with qtbot.waitSignal(model.loaded, timeout=TIMEOUT):
        model.reload()
    row = 2 * PAGE + 7
    idx = model.index(row, 5)
    with qtbot.waitSignal(model.dataChanged, timeout=TIMEOUT) as sig:
        assert model.data(idx) is None  # not loaded yet: blank, fetch requested
    top, bottom = sig.args[0], sig.args[1]
    assert top.row() == 2 * PAGE and bottom.row() == N - 1
    assert model.data(idx) == f"Complaint {row:04d}"
    assert model.case_id(row) == bulk_store[1][row]
    assert model.data(model.index(row, 2), Qt.ItemDataRole.DisplayRole) == "Bulk, Patient"


def test_a_superseded_query_is_ignored(qtbot, model: QtQueueModel) -> None:
    """Two queries in a row: only the last one's result may land in the model."""
    with qtbot.waitSignal(model.loaded, timeout=TIMEOUT) as sig:
        model.set_query(QueueQuery(text="complaint 0122"))
        model.set_query(QueueQuery(text="complaint 0123"))
    assert sig.args == [1]
    assert model.loaded_row(0).chief_complaint == "Complaint 0123"  # type: ignore[union-attr]


def test_sorting_reverses_in_sql(qtbot, model: QtQueueModel,
                                 bulk_store: tuple[Path, list[str]]) -> None:
    with qtbot.waitSignal(model.loaded, timeout=TIMEOUT):
        model.sort(5, Qt.SortOrder.DescendingOrder)  # complaint, Z..A
    assert model.query.sort == "complaint" and model.query.descending
    assert model.case_id(0) == bulk_store[1][-1]
