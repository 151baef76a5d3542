"""Fixtures for the core tests: a real workspace in a temporary folder."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # make `derm_workstation` importable however pytest is started
    sys.path.insert(0, str(_ROOT))

from derm_workstation.core.workspace import Workspace  # noqa: E402


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    ws = Workspace.open(tmp_path / "data")
    try:
        yield ws
    finally:
        ws.close()
