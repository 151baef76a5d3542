"""Compile the Qt Designer sources in ``ui/`` into ``derm_workstation/qt/forms``.

Run ``python -m derm_workstation.qt.build_ui``; ``dev.py`` and the test
conftest run it for you. The generated package is git-ignored. A form is only
recompiled when its ``.ui`` file is newer than the generated module.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
FORMS_DIR = PACKAGE_DIR / "forms"


def ui_source_dir() -> Path | None:
    """``ui/`` in a source checkout; None in an installed wheel (forms ship compiled)."""
    candidate = PACKAGE_DIR.parent.parent / "ui"
    return candidate if candidate.is_dir() else None


def _uic() -> list[str]:
    exe_dir = Path(sys.executable).parent
    for name in ("pyside6-uic", "pyside6-uic.exe"):
        if (exe_dir / name).exists():
            return [str(exe_dir / name)]
    found = shutil.which("pyside6-uic")
    if found:
        return [found]
    raise RuntimeError("pyside6-uic was not found; install PySide6 into this environment")


def stale_forms(src: Path | None = None) -> list[Path]:
    src = src or ui_source_dir()
    if src is None:
        return []
    out = []
    for ui in sorted(src.glob("*.ui")):
        target = FORMS_DIR / f"{ui.stem}.py"
        if not target.exists() or target.stat().st_mtime < ui.stat().st_mtime:
            out.append(ui)
    return out


def build(force: bool = False, quiet: bool = False) -> int:
    src = ui_source_dir()
    if src is None:
        if not FORMS_DIR.is_dir():
            raise RuntimeError("No ui/ sources and no compiled forms were found")
        return 0
    FORMS_DIR.mkdir(exist_ok=True)
    init = FORMS_DIR / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated from ui/*.ui by build_ui.py. Do not edit."""\n')
    todo = sorted(src.glob("*.ui")) if force else stale_forms(src)
    uic = _uic() if todo else []
    for ui in todo:
        target = FORMS_DIR / f"{ui.stem}.py"
        subprocess.run([*uic, "-g", "python", str(ui), "-o",
                        str(target)], check=True)
        if not quiet:
            print(f"compiled {ui.name} -> {target.relative_to(PACKAGE_DIR.parent.parent)}")
    return len(todo)


def ensure_forms() -> None:
    """Compile missing or outdated forms (a source checkout); no-op in a packaged build."""
    if stale_forms() or not (FORMS_DIR / "__init__.py").exists():
        build(quiet=True)


if __name__ == "__main__":
    n = build(force="--force" in sys.argv)
    print(f"{n} form(s) compiled")
