"""Starting the GUI: application, theme, window first, then the store on the DB lane.

The window appears before the database libraries are even imported: opening
(and if needed backing up and migrating) the local store runs on the database
lane, and the window is attached to it when it is ready. A store that cannot be
opened is reported in plain words and the app exits with the CLI's exit code.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QSettings, QTimer, Signal
from PySide6.QtWidgets import QApplication, QMessageBox

from derm_workstation import __version__
from derm_workstation.core.errors import DermError
from derm_workstation.qt.build_ui import ensure_forms

if TYPE_CHECKING:
    from derm_workstation.core.services import CaseService
    from derm_workstation.core.workspace import Workspace
    from derm_workstation.qt.main_window import QtMainWindow

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
    #: Called once the window is interactive (event loop running), then once ready.
    on_interactive: Callable[[], None] | None = None
    quit_when_ready: bool = False


class QtProgressRelay(QObject):
    """Carries progress from a worker thread to the GUI thread."""

    progressed = Signal(int, int)


def _headless() -> bool:
    return os.environ.get("QT_QPA_PLATFORM", "").startswith(("offscreen", "minimal"))


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


def open_store(opts: GuiOptions) -> tuple[Workspace, CaseService]:
    """Runs on the database lane: import the database stack, open and migrate the store."""
    from derm_workstation.core.services import CaseService
    from derm_workstation.core.users import local_actor
    from derm_workstation.core.workspace import Workspace, configure_logging

    ws = Workspace.open(opts.data_dir, opts.db_url)
    configure_logging(ws.paths)
    return ws, CaseService(ws, local_actor())


def run_gui(opts: GuiOptions) -> int:
    """Run the workstation window; returns the process exit code."""
    ensure_forms()
    app = make_application()
    from derm_workstation.qt.main_window import QtMainWindow
    from derm_workstation.qt.tasks import QtTaskManager

    install_excepthook()
    tasks = QtTaskManager()
    window = QtMainWindow(tasks, QSettings(), remember_geometry=opts.screenshot is None)
    state: dict[str, object] = {"code": 0, "workspace": None}

    def finish(code: int) -> None:
        state["code"] = code
        app.exit(code)

    def store_failed(exc: BaseException) -> None:
        message = exc.message if isinstance(exc, DermError) else (
            "The local store could not be opened; details are in the log file.")
        if not isinstance(exc, DermError):
            log.error("opening the store failed", exc_info=exc)
        print(f"error: {message}", file=sys.stderr)
        if not _headless():
            QMessageBox.critical(window, "Derm Review Workstation", message)
        finish(exc.exit_code if isinstance(exc, DermError) else 1)

    def store_ready(result: tuple[Workspace, CaseService]) -> None:
        workspace, service = result
        state["workspace"] = workspace
        window.attach(workspace, service)
        if opts.demo:
            start_demo_portal(window, workspace, opts, state)
        else:
            window.refresh()

    if opts.screenshot is not None:
        target = opts.screenshot

        def grab() -> None:
            window.repaint()
            if not window.grab().save(str(target)):
                print(f"error: could not write the screenshot to {target}", file=sys.stderr)
                finish(1)
            else:
                finish(0)

        window.ready.connect(lambda: QTimer.singleShot(300, grab))
    if opts.quit_when_ready:
        window.ready.connect(lambda: finish(0))
    if opts.screenshot is not None or opts.quit_when_ready:
        def too_slow() -> None:
            print("error: the window did not finish loading in time", file=sys.stderr)
            finish(1)

        QTimer.singleShot(SCREENSHOT_TIMEOUT_MS, too_slow)
    if opts.on_interactive is not None:
        QTimer.singleShot(0, opts.on_interactive)

    window.show()
    tasks.run_db(lambda: open_store(opts), store_ready, store_failed)
    code = app.exec()
    window.sync.close()  # cancel a running sync so the network lane ends promptly
    tasks.shutdown(wait=True)
    portal = state.get("portal")
    if portal is not None:
        portal.stop()  # type: ignore[attr-defined]
    ws = state["workspace"]
    if ws is not None:
        ws.close()  # type: ignore[attr-defined]
    if opts.throwaway and opts.data_dir is not None:
        shutil.rmtree(opts.data_dir, ignore_errors=True)
    return int(state["code"]) or code  # type: ignore[call-overload]


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


def start_demo_seed(window: QtMainWindow, workspace: Workspace, opts: GuiOptions) -> None:
    """Seed the demo cases on the database lane, showing progress and cases as they land."""
    relay = QtProgressRelay(window)

    def on_progress(done: int, total: int) -> None:
        window.show_progress("Loading demo cases", done, total)
        if done == 1 or done % 10 == 0:
            window.refresh()

    relay.progressed.connect(on_progress)

    def work() -> object:
        from derm_workstation.demo.seed import seed_demo

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


def start_demo_portal(window: QtMainWindow, workspace: Workspace, opts: GuiOptions,
                      state: dict[str, object]) -> None:
    """The demo's real path: start the reference portal in-process on loopback (seeded when
    its database is empty), point the workstation at it with a random token for this
    process only (never stored in the keyring), and run a first sync into the local store.

    The portal database is ``<data dir>/portal/portal.sqlite3``, so ``--demo --data-dir D``
    keeps it (and the synced cases) for the CLI; it is stopped when the app exits.
    """
    import secrets
    from datetime import UTC, datetime

    relay = QtProgressRelay(window)
    relay.progressed.connect(
        lambda done, total: window.show_progress("Preparing the demo portal", done, total))
    token = secrets.token_urlsafe(24)
    db_path = workspace.paths.root / "portal" / "portal.sqlite3"
    # The hour, not the second: the demo photo render cache is keyed on the dataset's "now".
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)

    def start() -> object:
        from derm_workstation.portal.reference.server import ReferencePortal

        db_path.parent.mkdir(parents=True, exist_ok=True)
        return ReferencePortal.start(db_path, port=0, token=token, seed_cases=opts.demo_cases,
                                     seed=opts.demo_seed, now=now, cache_dir=opts.demo_cache,
                                     progress=relay.progressed.emit)

    def release(_outcome: object = None) -> None:
        window.sync.finished.disconnect(release)
        window.sync.failed.disconnect(release)
        window.hold_ready(False)
        # Start on the first case of the queue (the most urgent), not on whichever case
        # happened to arrive first while the sync was running.
        window.show_first_case()

    def started(portal: object) -> None:
        state["portal"] = portal
        window.show_progress("Preparing the demo portal", 1, 1)
        window.statusBar().showMessage("Fetching the demo cases from the portal…")
        window.sync.finished.connect(release)
        window.sync.failed.connect(release)
        window.sync.use_portal(portal.base_url, token)  # type: ignore[attr-defined]
        if not window.sync.sync_now():
            release()

    def failed(exc: BaseException) -> None:
        log.error("the demo portal did not start", exc_info=exc)
        window.statusBar().showMessage("The demo portal did not start; details are in the "
                                       "log file.", 30000)
        window.hold_ready(False)
        window.refresh()

    window.hold_ready(True)
    window.statusBar().showMessage("Starting the demo portal…")
    window.tasks.run_net(start, started, failed)
