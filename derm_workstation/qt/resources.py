"""Icons and styles by name (ARCHITECTURE rule 9): an unknown name raises KeyError."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from PySide6.QtGui import QIcon


@cache
def resources_dir() -> Path:
    here = Path(__file__).resolve().parent.parent  # derm_workstation/
    for candidate in (here.parent / "resources", here / "_resources"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("The resources folder is missing from this installation")


def resource_path(kind: str, name: str) -> Path:
    path = resources_dir() / kind / name
    if not path.is_file():
        raise KeyError(f"unknown {kind} resource: {name}")
    return path


def icon(name: str) -> QIcon:
    return QIcon(str(resource_path("icons", f"{name}.svg")))


def stylesheet(name: str) -> str:
    return resource_path("styles", f"{name}.qss").read_text(encoding="utf-8")
