"""Qt test setup: compiled forms, isolated QSettings, no leftover threads; the `ws` and
`tasks` fixtures the GUI tests share."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from derm_workstation.core.workspace import Workspace
from derm_workstation.qt.build_ui import ensure_forms
from derm_workstation.qt.tasks import QtTaskManager

ensure_forms()


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    """A fresh, empty data folder of the test's own."""
    w = Workspace.open(tmp_path / "data")
    yield w
    w.close()


@pytest.fixture
def tasks() -> Iterator[QtTaskManager]:
    """The background lanes (database, images, network), shut down after the test."""
    t = QtTaskManager()
    yield t
    t.shutdown()


@pytest.fixture(autouse=True)
def _isolated_qsettings(tmp_path: Path, qapp: object) -> Iterator[None]:
    from PySide6.QtCore import QSettings

    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    for scope in (QSettings.Scope.UserScope, QSettings.Scope.SystemScope):
        QSettings.setPath(QSettings.Format.IniFormat, scope, str(tmp_path / "qsettings"))
    yield


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    leftover = [
        t for t in threading.enumerate()
        if t.ident not in before and t.is_alive() and not t.daemon
        and t.name.startswith(("db-lane", "image-pool", "demo-render"))
    ]
    for t in leftover:
        t.join(timeout=5)
    still = [t.name for t in leftover if t.is_alive()]
    assert not still, f"threads left running after the test: {still}"
