"""Starting the GUI: application, theme, workspace, main window, demo, screenshot."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QMessageBox

from derm_workstation import __version__
from derm_workstation.core.errors import DermError
from derm_workstation.core.services import CaseService
from derm_workstation.core.users import local_actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.qt.build_ui import ensure_forms

log = logging.getLogger(__name__)

SCREENSHOT_TIMEOUT_MS = 180_000


@dataclass
class GuiOptions:
    data_dir: Path | None = None
    db_url: str | None = None
    demo: bool = False
    demo_cases: int = 40
    demo_seed: int = 1729
    screenshot: Path | None = None
    throwaway: bool = False  # delete data_dir when the app exits (plain --demo)
    demo_cache: Path | None = None


class QtProgressRelay(QObject):
    """Carries progress from a worker thread to the GUI thread."""

    progressed = Signal(int, int)


def _headless() -> bool:
    return os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal")


def make_application() -> QApplication:
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        app = QApplication(sys.argv[:1])
    app.setApplicationName("Derm Review Workstation")
    app.setOrganizationName("DermWorkstation")
    app.setApplicationVersion(__version__)
    apply_theme(app)
    return app


def apply_theme(app: QApplication) -> None:
    from derm_workstation.qt.resources import icon, stylesheet

    app.setStyle("Fusion")
    app.setStyleSheet(stylesheet("dark"))
    app.setWindowIcon(icon("app"))


def _report_startup_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    if not _headless() and QGuiApplication.instance() is not None:
        QMessageBox.critical(None, "Derm Review Workstation", message)


def run_gui(opts: GuiOptions) -> int:
    """Run the workstation window; returns the process exit code."""
    ensure_forms()
    app = make_application()
    try:
        workspace = Workspace.open(opts.data_dir, opts.db_url)
    except DermError as exc:
        _report_startup_error(exc.message)
        return exc.exit_code

    from derm_workstation.core.workspace import configure_logging
    from derm_workstation.qt.main_window import QtMainWindow
    from derm_workstation.qt.tasks import QtTaskManager

    configure_logging(workspace.paths)
    install_excepthook()
    tasks = QtTaskManager()
    service = CaseService(workspace, local_actor())
    window = QtMainWindow(workspace, service, tasks, QSettings())
    exit_code = {"value": 0}

    if opts.screenshot is not None:
        target = opts.screenshot

        def grab() -> None:
            window.repaint()
            ok = window.grab().save(str(target))
            if not ok:
                print(f"error: could not write the screenshot to {target}", file=sys.stderr)
                exit_code["value"] = 1
            app.exit(exit_code["value"])

        def too_slow() -> None:
            print("error: the window did not finish loading in time", file=sys.stderr)
            exit_code["value"] = 1
            app.exit(1)

        window.ready.connect(lambda: QTimer.singleShot(300, grab))
        QTimer.singleShot(SCREENSHOT_TIMEOUT_MS, too_slow)

    if opts.demo:
        start_demo_seed(window, workspace, opts)
    else:
        window.refresh()
    window.show()
    code = app.exec()
    tasks.shutdown(wait=True)
    workspace.close()
    if opts.throwaway and opts.data_dir is not None:
        shutil.rmtree(opts.data_dir, ignore_errors=True)
    return exit_code["value"] or code


def install_excepthook() -> None:
    """An unexpected exception in a Qt slot: log the traceback, show a plain sentence."""
    from derm_workstation.qt.dialogs.qt_errors import show_error

    def hook(exc_type: type[BaseException], exc: BaseException, tb: object) -> None:
        log.error("unhandled exception", exc_info=(exc_type, exc, tb))  # type: ignore[arg-type]
        if QApplication.instance() is not None and not _headless():
            show_error(QApplication.activeWindow(), exc)
        else:
            print(f"error: {exc if isinstance(exc, DermError) else 'unexpected problem'}"
                  "; details are in the log file", file=sys.stderr)

    sys.excepthook = hook


def start_demo_seed(window: object, workspace: Workspace, opts: GuiOptions) -> None:
    """Seed the demo cases on the database lane, showing progress and cases as they land."""
    from derm_workstation.demo.seed import seed_demo
    from derm_workstation.qt.main_window import QtMainWindow

    assert isinstance(window, QtMainWindow)
    relay = QtProgressRelay(window)

    def on_progress(done: int, total: int) -> None:
        window.show_progress("Loading demo cases", done, total)
        if done == 1 or done % 10 == 0:
            window.refresh()

    relay.progressed.connect(on_progress)

    def work() -> object:
        return seed_demo(
            workspace,
            n_cases=opts.demo_cases,
            seed=opts.demo_seed,
            cache_dir=opts.demo_cache,
            progress=relay.progressed.emit,
        )

    def finished(_summary: object) -> None:
        window.hold_ready(False)
        window.refresh()

    window.hold_ready(True)
    window.statusBar().showMessage("Preparing demo cases…")
    window.run_in_background(work, finished)
