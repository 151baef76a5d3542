"""Portal sync in the GUI: the controller (Sync now, the periodic timer, cancel) and the
status-bar widget (online/offline, last successful sync, outbox, progress).

The sync itself (:func:`derm_workstation.sync.engine.run_sync`) runs on the task
manager's **network lane**, never on the GUI thread and never on the database lane (a
sync with photo downloads can take minutes; the queue and the open case must keep
loading meanwhile). The engine opens its own sessions. Progress comes back through a
queued signal; closing the window sets the cancel event, and the puller stops at the
next case.

"Online" means the portal answered at the last attempt; an unreachable portal turns
the indicator to "Offline" and the next periodic attempt reconnects by itself.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QToolButton, QWidget

from derm_workstation.qt.tasks import QtTaskManager

if TYPE_CHECKING:
    from derm_workstation.core.workspace import Workspace

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 300
_LINK = "color:#d7dde4; text-decoration:underline"
MIN_INTERVAL_S = 15


@dataclass(frozen=True)
class SyncSnapshot:
    """What the status bar shows; built on a worker thread, read on the GUI thread."""

    configured: bool
    portal_url: str | None = None
    online: bool | None = None  # None: not tried yet in this session
    last_success_at: datetime | None = None
    last_error: str | None = None
    outbox: dict[str, int] = field(default_factory=dict)
    interval_s: int = DEFAULT_INTERVAL_S

    @property
    def pending(self) -> int:
        return self.outbox.get("pending", 0)

    @property
    def failed(self) -> int:
        return self.outbox.get("failed", 0)


@dataclass(frozen=True)
class SyncOutcome:
    summary: Any  # SyncSummary (imported lazily: the sync stack loads with the store)
    online: bool
    snapshot: SyncSnapshot
    #: False for a push of the outbox only (a claim sent the moment a case is opened).
    pulled: bool = True


#: What the status bar says when another sync of the same data folder is running (the
#: CLI, or a second window); the periodic timer simply tries again at the next interval.
BUSY_TEXT = ("Another sync is running on this workstation; this window tries again at "
             "the next interval.")
NOT_SET_UP_TEXT = "No portal is set up. Connect one with Portal › Connect to portal…"


def _is_offline(errors: list[str]) -> bool:
    from derm_workstation.sync.engine import OFFLINE_HINT

    return any(OFFLINE_HINT in e for e in errors)


def portal_host(url: str | None) -> str:
    """The portal's host (and port) for display; the path and any query are left out."""
    from derm_workstation.portal.auth import portal_host as host_of

    return host_of(url)


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """"just now", "3 min ago", "2 h ago", "on 2026-11-28 14:05"."""
    if when is None:
        return "never"
    now = now or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    secs = (now - when).total_seconds()
    if secs < 60:
        return "just now"
    if secs < 3600:
        return f"{int(secs // 60)} min ago"
    if secs < 86400:
        return f"{int(secs // 3600)} h ago"
    return f"on {when.astimezone():%Y-%m-%d %H:%M}"


class QtSyncController(QObject):
    """Runs syncs off the GUI thread; one at a time; a timer while a portal is set up."""

    #: A sync started.
    started = Signal()
    #: (cases done, total or -1 when not known yet), on the GUI thread.
    progressed = Signal(int, int)
    #: A sync ended (argument: :class:`SyncOutcome`).
    finished = Signal(object)
    #: Status to show changed (argument: :class:`SyncSnapshot`).
    snapshot_changed = Signal(object)
    #: A sync could not even start (argument: a sentence for the status bar).
    failed = Signal(str)
    _progress_relay = Signal(int, int)

    def __init__(self, tasks: QtTaskManager, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.tasks = tasks
        self.workspace: Workspace | None = None
        self._actor: Any = None
        self._override: tuple[str, str] | None = None  # (url, token): this process only
        self._cancel: threading.Event | None = None
        self._running = False
        self._push_after = False  # a push was asked for while a sync ran
        self._closed = False
        self._online: bool | None = None
        self._tried = False  # a sync was started in this session
        #: Retry policy for the portal client (None: the client's default, 5 tries).
        self.retry: Any = None
        self.snapshot = SyncSnapshot(configured=False)
        self.timer = QTimer(self)
        self.timer.setObjectName("syncTimer")
        self.timer.timeout.connect(self.sync_now)
        self._progress_relay.connect(self.progressed, Qt.ConnectionType.QueuedConnection)

    # -- set-up -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._running

    @property
    def configured(self) -> bool:
        return self.snapshot.configured

    def attach(self, workspace: Workspace, actor: Any) -> None:
        """Connect to the opened store; read the portal settings and the outbox (DB lane)."""
        self.workspace = workspace
        self._actor = actor
        self.refresh()

    def use_portal(self, url: str, token: str) -> None:
        """Sync with ``url`` using ``token`` for this process only (the demo): nothing is
        written to the keyring or to ``portal.json``."""
        self._override = (url, token)
        self.refresh()

    def portal_saved(self) -> None:
        """A portal was saved (or forgotten) in the Connect dialog: stop using the one given
        for this process only, re-read the settings and sync with the saved one now."""
        self._override = None
        self._online = None
        self._tried = False  # the first sync with the new settings starts by itself
        self.refresh()

    def _data_dir(self) -> Path:
        assert self.workspace is not None
        return Path(self.workspace.paths.root)

    def _read_snapshot(self) -> SyncSnapshot:
        """Worker thread: settings file, sync state and outbox counts."""
        from derm_workstation.core.portal_actions import PortalActions
        from derm_workstation.portal.auth import PortalSettings
        from derm_workstation.sync import state

        ws = self.workspace
        assert ws is not None
        interval = DEFAULT_INTERVAL_S
        url: str | None = None
        if self._override is not None:
            url = self._override[0]
        else:
            try:
                saved = PortalSettings.load(self._data_dir())
            except Exception as exc:  # a damaged portal.json: say so, keep working
                log.warning("portal settings unreadable: %s", exc)
                saved = None
            if saved is not None:
                url, interval = saved.base_url, saved.sync_interval_s
        st = state.status(ws)
        counts = PortalActions(ws, self._actor).outbox_counts()
        return SyncSnapshot(configured=url is not None, portal_url=url, online=self._online,
                            last_success_at=st.last_success_at, last_error=st.last_error,
                            outbox=counts, interval_s=max(MIN_INTERVAL_S, int(interval)))

    def refresh(self) -> None:
        """Re-read what the status bar shows (after a claim, a retry, at start)."""
        if self.workspace is None or self._closed:
            return
        self.tasks.run_db(self._read_snapshot, self._set_snapshot,
                          lambda exc: log.error("sync status unreadable", exc_info=exc))

    def _set_snapshot(self, snap: SyncSnapshot) -> None:
        self.snapshot = snap
        if snap.configured and not self._closed:
            ms = snap.interval_s * 1000
            if not self.timer.isActive() or self.timer.interval() != ms:
                self.timer.start(ms)
            if not self._tried:  # the first sync of the session starts by itself
                QTimer.singleShot(0, self.sync_now)
        else:
            self.timer.stop()
        self.snapshot_changed.emit(snap)

    # -- syncing ------------------------------------------------------------------------------
    def sync_now(self) -> bool:
        """Start a sync on the network lane; False when one is running or none is possible."""
        return self._start(pull=True)

    def push_now(self) -> bool:
        """Send what waits in the outbox now, without pulling (a claim made when a case is
        opened). While a sync runs, the push follows it. False when nothing was started."""
        if self._running:
            self._push_after = True
            return False
        return self._start(pull=False)

    def _start(self, *, pull: bool) -> bool:
        if self.workspace is None or self._running or self._closed:
            return False
        if not self.snapshot.configured and self._override is None:
            self.failed.emit(NOT_SET_UP_TEXT)
            return False
        ws, actor, override, retry = self.workspace, self._actor, self._override, self.retry
        cancel = threading.Event()
        if pull:
            self._tried = True
            self._push_after = False  # the sync pushes the outbox at its end
        self._cancel = cancel
        self._running = True
        relay = self._progress_relay

        def progress(done: int, total: int | None) -> None:
            relay.emit(done, -1 if total is None else total)

        def work() -> SyncOutcome:
            from derm_workstation.sync.engine import connect, run_sync

            url, token = override if override is not None else (None, None)
            client, saved = connect(Path(ws.paths.root), portal_url=url, token=token,
                                    retry=retry)
            try:
                practitioner = saved.practitioner if saved and \
                    saved.base_url == client.base_url else None
                summary = run_sync(ws, client, actor=actor, practitioner=practitioner,
                                   progress=progress, cancel=cancel, pull=pull)
            finally:
                client.close()
            online = not _is_offline(summary.errors)
            self._online = online
            return SyncOutcome(summary, online, self._read_snapshot(), pulled=pull)

        self.started.emit()
        self.tasks.run_net(work, self._done, self._error)
        return True

    def _done(self, outcome: SyncOutcome) -> None:
        self._running = False
        self._cancel = None
        self._set_snapshot(outcome.snapshot)
        self.finished.emit(outcome)
        self._follow_up()

    def _error(self, exc: BaseException) -> None:
        from derm_workstation.core.errors import DermError
        from derm_workstation.sync.lock import SyncBusyError

        self._running = False
        self._cancel = None
        if isinstance(exc, SyncBusyError):
            message = BUSY_TEXT  # the timer keeps running: the next interval tries again
        elif isinstance(exc, DermError):
            message = exc.message
        else:
            message = "The sync stopped because of an unexpected problem; details are in " \
                      "the log file."
            log.error("sync failed", exc_info=exc)
        self.failed.emit(message)
        self.refresh()
        self._follow_up()

    def _follow_up(self) -> None:
        if self._push_after and not self._closed:
            self._push_after = False
            self._start(pull=False)

    def cancel(self) -> None:
        """Ask a running sync to stop (it stops at the next case; nothing is half-stored)."""
        if self._cancel is not None:
            self._cancel.set()

    def close(self) -> None:
        """The window is closing: no more syncs; cancel the running one."""
        self._closed = True
        self.timer.stop()
        self.cancel()


class QtSyncStatus(QWidget):
    """Status-bar part: ● Online · Synced 3 min ago · 2 waiting to send · [Sync now].

    The connection's tooltip names the portal by its host only (no path, no credentials).
    """

    #: The clinician clicked the outbox text.
    outbox_requested = Signal()
    #: The clinician clicked "Sync now".
    sync_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("syncStatus")
        self.setAccessibleName("Portal sync status")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 4, 0)
        lay.setSpacing(10)
        self.state_label = QLabel("Portal: not set up", self)
        self.state_label.setObjectName("syncStateLabel")
        self.state_label.setAccessibleName("Portal connection")
        self.last_label = QLabel("", self)
        self.last_label.setObjectName("syncLastLabel")
        self.last_label.setAccessibleName("Last successful sync")
        self.outbox_label = QLabel("", self)
        self.outbox_label.setObjectName("syncOutboxLabel")
        self.outbox_label.setAccessibleName("Changes waiting to be sent to the portal")
        self.outbox_label.setTextFormat(Qt.TextFormat.RichText)
        self.outbox_label.linkActivated.connect(lambda _l: self.outbox_requested.emit())
        self.progress = QProgressBar(self)
        self.progress.setObjectName("syncProgress")
        self.progress.setAccessibleName("Sync progress")
        self.progress.setMaximumWidth(200)
        self.progress.setVisible(False)
        self.sync_button = QToolButton(self)
        self.sync_button.setObjectName("syncNowButton")
        self.sync_button.setText("Sync now")
        self.sync_button.setToolTip("Fetch new cases and send waiting changes (F9)")
        self.sync_button.setAccessibleName("Sync now")
        self.sync_button.clicked.connect(self.sync_requested)
        for w in (self.state_label, self.last_label, self.outbox_label, self.progress,
                  self.sync_button):
            lay.addWidget(w)
        self.snapshot: SyncSnapshot = SyncSnapshot(configured=False)
        self.syncing = False
        self._clock = QTimer(self)
        self._clock.setInterval(30_000)
        self._clock.timeout.connect(self._render)
        self._clock.start()
        self._render()

    def set_snapshot(self, snap: SyncSnapshot) -> None:
        self.snapshot = snap
        self._render()

    def set_syncing(self, syncing: bool) -> None:
        self.syncing = syncing
        self.progress.setVisible(syncing)
        if syncing:
            self.progress.setRange(0, 0)  # busy until the portal says how many
            self.progress.setFormat("Syncing…")
        self._render()

    def set_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
            self.progress.setFormat("Syncing %v/%m cases")
        else:
            self.progress.setRange(0, 0)

    def _render(self) -> None:
        snap = self.snapshot
        self.sync_button.setEnabled(snap.configured and not self.syncing)
        if not snap.configured:
            self.state_label.setText("Portal: not set up")
            self.state_label.setProperty("syncState", "none")
            self.state_label.setStyleSheet("color: #9aa3ad;")
            self.state_label.setToolTip("No portal is set up: Portal › Connect to portal…")
            self.last_label.setText("")
        else:
            if self.syncing:
                text, color, st = "● Syncing…", "#7fb2ff", "syncing"
            elif snap.online is False:
                text, color, st = "● Offline", "#ff9f43", "offline"
            elif snap.online is True:
                text, color, st = "● Online", "#4cd07d", "online"
            else:
                text, color, st = "● Portal", "#9aa3ad", "unknown"
            self.state_label.setText(text)
            self.state_label.setProperty("syncState", st)
            self.state_label.setStyleSheet(f"color: {color}; font-weight: bold;")
            tip = f"Portal: {portal_host(snap.portal_url)}"
            if snap.online is False:
                tip += "\nThe portal could not be reached. Everything on this workstation " \
                       "can still be used; the next sync tries again by itself."
            if snap.last_error:
                tip += f"\nLast problem: {snap.last_error}"
            self.state_label.setToolTip(tip)
            self.last_label.setText(f"Synced {ago(snap.last_success_at)}"
                                    if snap.last_success_at else "Never synced")
        parts = []
        if snap.pending:
            parts.append(f"{snap.pending} waiting to send")
        if snap.failed:
            parts.append(f"<span style='color:#ff6b6b; font-weight:bold'>{snap.failed} "
                         "failed — needs attention</span>")
        if parts:
            self.outbox_label.setText(f"<a href='outbox' style='{_LINK}'>Outbox:</a> "
                                      f"{' · '.join(parts)}")
        elif snap.configured:
            self.outbox_label.setText(f"<a href='outbox' style='{_LINK}'>Outbox:</a> all sent")
        else:
            self.outbox_label.setText("")

    def plain_text(self) -> str:
        """What the widget says, for tests and screen readers."""
        from PySide6.QtGui import QTextDocument

        doc = QTextDocument()
        doc.setHtml(self.outbox_label.text())
        return "  ".join(t for t in (self.state_label.text(), self.last_label.text(),
                                     doc.toPlainText()) if t)
