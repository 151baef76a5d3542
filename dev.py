#!/usr/bin/env python3
"""One entry point for developers, the same on Linux, macOS and Windows.

    python dev.py demo     set everything up, then open the workstation on demo data
    python dev.py test     set everything up, then run every check and test
    python dev.py setup    only set up (.venv with the app and its dev tools)
    python dev.py ui       recompile the Qt Designer forms

Setup makes a virtual environment in .venv, installs the project (editable)
with its test and dev extras, and compiles ui/*.ui. It is skipped when
pyproject.toml has not changed since the last setup. Needs Python 3.11+.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".derm-setup-stamp"


def venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.call([str(c) for c in cmd], cwd=ROOT, env=env)


def must(*cmd: str | Path) -> None:
    code = run(*cmd)
    if code != 0:
        sys.exit(code)


def setup() -> Path:
    if sys.version_info < (3, 11):  # noqa: UP036 (this file must also run on older Pythons)
        major, minor = sys.version_info[:2]
        sys.exit(f"error: Python 3.11 or newer is needed (this is {major}.{minor})")
    py = venv_python()
    if not py.exists():
        print(f"Creating the virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=VENV.exists()).create(VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != want:
        must(py, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--upgrade", "pip")
        must(py, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", ".[dev]")
        STAMP.write_text(want)
    must(py, "-m", "derm_workstation.qt.build_ui")
    return py


def test(py: Path, extra: list[str]) -> int:
    checks = [
        ("ruff", [py, "-m", "ruff", "check", "."]),
        ("mypy", [py, "-m", "mypy"]),
        ("import-linter", [py, "-c", "import sys; from importlinter.cli import "
                           "lint_imports_command; sys.exit(lint_imports_command())"]),
    ]
    for name, cmd in checks:
        print(f"== {name}", flush=True)
        code = run(*cmd)
        if code != 0:
            print(f"error: {name} failed", flush=True)
            return code
    print("== pytest", flush=True)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    return run(py, "-m", "pytest", *extra, env=env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    cmd, extra = argv[0], argv[1:]
    if cmd not in ("setup", "demo", "test", "ui"):
        print(f"error: unknown command '{cmd}'; use demo, test, setup or ui", file=sys.stderr)
        return 2
    py = setup()
    if cmd == "demo":
        return run(py, "-m", "derm_workstation", "--demo", *extra)
    if cmd == "test":
        return test(py, extra)
    if cmd == "ui":
        return run(py, "-m", "derm_workstation.qt.build_ui", "--force")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
