"""Test-wide isolation: no test touches the real user data, cache, settings or keyring.

* ``DERM_WORKSTATION_HOME`` and ``DERM_WORKSTATION_CACHE`` point into a tmp folder;
* Qt runs offscreen (set before any Qt import);
* the keyring uses an in-file backend from ``keyrings.alt`` inside tmp.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

# Offscreen Qt with a desktop-sized virtual screen (the default is 800x600, which
# clamps restored window geometry).
_SCREEN = Path(tempfile.gettempdir()) / "derm-tests-offscreen-screen.json"
_SCREEN.write_text(json.dumps({"screens": [{
    "name": "test-screen", "x": 0, "y": 0, "width": 1920, "height": 1200,
    "logicalDpi": 96, "logicalBaseDpi": 96, "dpr": 1}]}))
if os.environ.get("QT_QPA_PLATFORM", "offscreen").startswith("offscreen"):
    os.environ["QT_QPA_PLATFORM"] = f"offscreen:configfile={_SCREEN}"
os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path_factory.mktemp("isolated")
    monkeypatch.setenv("DERM_WORKSTATION_HOME", str(base / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(base / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(base / "xdg-config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(base / "xdg-cache"))
    # Rendered demo photos are deterministic: share them across the session.
    shared = tmp_path_factory.getbasetemp() / "demo-cache"
    monkeypatch.setenv("DERM_WORKSTATION_CACHE", str(shared))
