"""Portal sync in the window: Sync now, the status bar, offline, the outbox dialog, banners.

A real reference portal runs on loopback in each test (small cases with real JPEG
photos written into its store); the window syncs with it on its network lane.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from sqlalchemy import select

from derm_workstation.core.models import Case, OutboxItem
from derm_workstation.core.services import CaseService
from derm_workstation.core.users import local_actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.portal import auth
from derm_workstation.portal.client import RetryPolicy
from derm_workstation.portal.reference.server import FaultSpec, ReferencePortal
from derm_workstation.qt.main_window import QtMainWindow
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets.qt_sync_status import SyncOutcome
from tests.qt.windows import main_window, use_portal
from tests.sync.conftest import add_portal_case
from tests.sync.proxy import Exchange, FaultProxy, Reply

TOKEN = "gui-test-token"
TIMEOUT = 20_000
ONE_TRY = RetryPolicy(max_tries=1, data_tries=1, backoff_base=0.01, backoff_max=0.02)


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[ReferencePortal]:
    p = ReferencePortal.start(tmp_path / "portal" / "portal.sqlite3", token=TOKEN)
    for n in (1, 2, 3):
        add_portal_case(p.store, n=n, photos=1)
    yield p
    p.stop()



@pytest.fixture
def window(qtbot, qapp, ws: Workspace) -> Iterator[QtMainWindow]:
    with main_window(qtbot, qapp, ws, retry=ONE_TRY) as win:
        yield win


def sync_now(qtbot, win: QtMainWindow) -> SyncOutcome:
    """Press F9 and wait for the sync to end; returns its outcome."""
    with qtbot.waitSignal(win.sync.finished, timeout=TIMEOUT) as blocker:
        qtbot.keyClick(win, Qt.Key.Key_F9)
    return blocker.args[0]


def status_text(win: QtMainWindow) -> str:
    return win.sync_status.plain_text()


def case_id_for_task(ws: Workspace, task_id: str) -> str:
    with ws.db.session() as s:
        return s.scalars(select(Case.id).where(Case.portal_task_id == task_id)).one()


def open_case_in_window(qtbot, win: QtMainWindow, case_id: str) -> None:
    row = win.model.row_of(case_id)
    assert row >= 0
    rect = win.table.visualRect(win.model.index(row, 2))
    with qtbot.waitSignal(win.case_shown, timeout=TIMEOUT):
        qtbot.mouseClick(win.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_without_a_portal_the_window_says_so_and_sync_is_off(window: QtMainWindow) -> None:
    assert "Portal: not set up" in status_text(window)
    assert not window.sync_action.isEnabled()
    assert not window.sync_status.sync_button.isEnabled()
    assert not window.sync.timer.isActive()


def test_sync_now_fills_the_queue_and_the_status_bar_says_online(
        qtbot, window: QtMainWindow, portal: ReferencePortal) -> None:
    assert window.model.rowCount() == 0
    first = use_portal(qtbot, window, portal.base_url, TOKEN)  # starts by itself
    assert first.summary.completed and first.summary.cases_new == 3 and first.online
    qtbot.waitUntil(lambda: window.model.rowCount() == 3, timeout=TIMEOUT)
    assert window.sync_action.isEnabled()
    add_portal_case(portal.store, n=4, photos=1)
    progress: list[tuple[int, int]] = []
    window.sync.progressed.connect(lambda d, t: progress.append((d, t)))
    seen_bar: list[bool] = []
    window.sync.started.connect(lambda: seen_bar.append(window.sync_status.progress.isVisible()))
    outcome = sync_now(qtbot, window)  # F9
    assert outcome.summary.completed and outcome.summary.cases_new == 1
    assert outcome.online
    assert seen_bar == [True] and not window.sync_status.progress.isVisible()
    assert progress and progress[-1][0] == 1
    qtbot.waitUntil(lambda: window.model.rowCount() == 4, timeout=TIMEOUT)
    text = status_text(window)
    assert "Online" in text and "Synced just now" in text and "all sent" in text
    assert window.sync_status.state_label.property("syncState") == "online"
    # the periodic sync runs while a portal is set up (default interval)
    assert window.sync.timer.isActive() and window.sync.timer.interval() == 300_000


def test_a_portal_saved_by_login_is_synced_at_start_by_itself(
        qtbot, qapp, ws: Workspace, portal: ReferencePortal) -> None:
    settings = auth.PortalSettings(base_url=portal.base_url, sync_interval_s=60)
    settings.save(ws.paths.root)
    auth.store_token(portal.base_url, TOKEN)  # the test keyring backend (conftest)
    tasks = QtTaskManager()
    win = QtMainWindow(tasks, QSettings())
    qtbot.addWidget(win)
    try:
        with qtbot.waitSignal(win.sync.finished, timeout=TIMEOUT) as blocker:
            win.show()
            win.attach(ws, CaseService(ws, local_actor()))
            win.refresh()
        assert blocker.args[0].summary.completed
        qtbot.waitUntil(lambda: win.model.rowCount() == 3, timeout=TIMEOUT)
        assert win.sync.timer.interval() == 60_000
        assert "Online" in status_text(win)
    finally:
        win.close()
        tasks.shutdown()


def test_portal_gone_shows_offline_and_local_cases_stay_usable(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal) -> None:
    assert use_portal(qtbot, window, portal.base_url, TOKEN).summary.completed
    qtbot.waitUntil(lambda: window.model.rowCount() == 3, timeout=TIMEOUT)
    portal.stop()
    outcome = sync_now(qtbot, window)
    assert not outcome.online and not outcome.summary.completed
    text = status_text(window)
    assert "Offline" in text and "Synced just now" in text  # the last good sync is kept
    assert window.sync_status.state_label.property("syncState") == "offline"
    assert "can still be used" in window.statusBar().currentMessage()
    assert "can still be used" in window.sync_status.state_label.toolTip()
    # everything pulled is still there: open another case and see its photo
    current = window.case_panel.detail.id if window.case_panel.detail else None
    other = next(cid for r in range(3) if (cid := window.model.case_id(r)) != current)
    assert other is not None
    with qtbot.waitSignal(window.case_panel.photo_shown, timeout=TIMEOUT):
        open_case_in_window(qtbot, window, other)
    assert window.case_panel.detail is not None and window.case_panel.detail.id == other
    assert len(window.case_panel.detail.photos) == 1
    # claiming offline works: queued, shown in the banner and the status bar
    with qtbot.waitSignal(window.case_shown, timeout=TIMEOUT):
        window.claim_case()
    assert "Claimed by you (pending sync)" in window.case_panel.banner_text()
    qtbot.waitUntil(lambda: "1 waiting to send" in status_text(window), timeout=TIMEOUT)
    # The portal comes back (same address): the next periodic attempt reconnects by
    # itself and sends the queued claim.
    back = ReferencePortal.start(Path(ws.paths.root).parent / "portal" / "portal.sqlite3",
                                 port=portal.port, token=TOKEN)
    try:
        with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT) as blocker:
            window.sync.timer.timeout.emit()  # what the QTimer does every interval
        assert blocker.args[0].online and blocker.args[0].summary.outbox_sent == 1
        qtbot.waitUntil(lambda: "Online" in status_text(window)
                        and "all sent" in status_text(window), timeout=TIMEOUT)
        qtbot.waitUntil(lambda: "Claimed by you" in window.case_panel.banner_text()
                        and "pending" not in window.case_panel.banner_text(), timeout=TIMEOUT)
    finally:
        back.stop()


def test_closing_the_window_cancels_a_running_sync(
        qtbot, qapp, ws: Workspace, portal: ReferencePortal) -> None:
    portal.faults = FaultSpec(latency=0.3)  # every request takes a while
    tasks = QtTaskManager()
    win = QtMainWindow(tasks, QSettings())
    qtbot.addWidget(win)
    try:
        win.show()
        win.attach(ws, CaseService(ws, local_actor()))
        outcomes: list[SyncOutcome] = []
        win.sync.finished.connect(outcomes.append)
        with qtbot.waitSignal(win.sync.progressed, timeout=TIMEOUT):
            win.sync.use_portal(portal.base_url, TOKEN)
        assert win.sync.running
        with qtbot.waitSignal(win.sync.finished, timeout=TIMEOUT):
            win.close()
        [outcome] = outcomes
        s = outcome.summary
        assert s.aborted and not s.completed and "stopped" in s.errors[0]
        assert outcome.snapshot.last_success_at is None  # a cancelled sync is no success
        assert not win.sync.sync_now()  # no new sync after closing
        assert not win.sync.timer.isActive()
    finally:
        tasks.shutdown()


def test_outbox_dialog_shows_a_412_with_the_portals_words_and_retry_requeues_it(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal) -> None:
    with FaultProxy(portal.origin) as proxy:
        assert use_portal(qtbot, window, proxy.base_url, TOKEN).summary.completed
        qtbot.waitUntil(lambda: window.model.rowCount() == 3, timeout=TIMEOUT)
        d = window.case_panel.detail
        assert d is not None and d.portal_task_id is not None
        assert "Claim this case" in window.case_panel.banner_text()
        task_id = d.portal_task_id

        def change_first(ex: Exchange) -> Reply | None:
            if ex.method == "PUT" and proxy.before is change_first:
                proxy.before = None  # someone else edits the Task just before our PUT
                t = portal.store.get("Task", task_id)
                t["businessStatus"] = {"text": "Patient sent more photos"}
                portal.store.put(t)
            return None

        proxy.before = change_first
        # Claim (the banner link): queued, then pushed at once because the portal is online.
        with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT) as blocker:
            window.case_panel.ui.bannerLabel.linkActivated.emit("claim")
        summary = blocker.args[0].summary
        assert [e.status for e in proxy.log if e.method == "PUT"] == [412]
        assert summary.outbox_failed == 1
    task = portal.store.get("Task", task_id)
    assert task.get("owner") is None  # nothing overwritten
    qtbot.waitUntil(lambda: "changed on the portal" in window.case_panel.banner_text(),
                    timeout=TIMEOUT)
    qtbot.waitUntil(lambda: "1 failed" in status_text(window), timeout=TIMEOUT)

    with qtbot.waitSignal(window.outbox_action.triggered, timeout=TIMEOUT):
        window.outbox_action.trigger()
    dlg = window.outbox_dialog
    assert dlg is not None
    qtbot.waitUntil(lambda: len(dlg.items) == 1, timeout=TIMEOUT)  # type: ignore[attr-defined]
    table = dlg.ui.outboxTable  # type: ignore[attr-defined]
    row = [table.item(0, c).text() for c in range(table.columnCount())]
    assert row[1] == "Claim case" and row[2] == d.case_number
    assert row[3] == "Failed — needs attention" and row[4] == "1"
    assert "changed on the portal" in row[5]
    retry = dlg.ui.retryButton  # type: ignore[attr-defined]
    assert retry.isEnabled()
    with qtbot.waitSignal(dlg.loaded, timeout=TIMEOUT):  # type: ignore[attr-defined]
        qtbot.mouseClick(retry, Qt.MouseButton.LeftButton)
    assert table.item(0, 3).text() == "Waiting to be sent"
    assert not retry.isEnabled()
    with ws.db.session() as s:
        [item] = s.scalars(select(OutboxItem)).all()
        assert item.state == "pending" and item.attempts == 0
    qtbot.waitUntil(lambda: "1 waiting to send" in status_text(window), timeout=TIMEOUT)
    # no message text or patient name in the dialog
    texts = [table.item(r, c).text() for r in range(table.rowCount())
             for c in range(table.columnCount())]
    assert not any("Family" in t or "Given" in t for t in texts)
    dlg.close()  # type: ignore[attr-defined]
    # the next sync sends it on the version the workstation now holds
    window.sync.use_portal(portal.base_url, TOKEN)
    window.activateWindow()
    with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT) as blocker:
        window.sync_status.sync_button.click()
    assert blocker.args[0].summary.outbox_sent == 1
    task = portal.store.get("Task", task_id)
    assert task["owner"]["display"] == local_actor().username
    assert task["businessStatus"]["text"] == "Patient sent more photos"
    qtbot.waitUntil(lambda: "Claimed by you" in window.case_panel.banner_text(),
                    timeout=TIMEOUT)


def test_a_case_cancelled_on_the_portal_keeps_its_banner_on_screen(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal) -> None:
    assert use_portal(qtbot, window, portal.base_url, TOKEN).summary.completed
    qtbot.waitUntil(lambda: window.model.rowCount() == 3, timeout=TIMEOUT)
    # the first case's detail loads on the database lane after the rows
    qtbot.waitUntil(lambda: window.case_panel.detail is not None, timeout=TIMEOUT)
    d = window.case_panel.detail
    assert d is not None and d.portal_task_id is not None
    t = portal.store.get("Task", d.portal_task_id)
    t["status"] = "cancelled"
    portal.store.put(t)
    outcome = sync_now(qtbot, window)
    assert d.id in {cid for cid, _n in outcome.summary.notices}
    qtbot.waitUntil(lambda: window.model.rowCount() == 2, timeout=TIMEOUT)
    # the case is reloaded after the sync; a reload the first sync asked for may still
    # be arriving (a case_shown of the old state), so wait for the new state itself
    qtbot.waitUntil(lambda: getattr(window.case_panel.detail, "status", None) == "cancelled",
                    timeout=TIMEOUT)
    shown = window.case_panel.detail
    assert shown is not None and shown.id == d.id and shown.status == "cancelled"
    banner = window.case_panel.banner_text()
    assert banner.startswith("Portal: ") and "cancel" in banner.lower()
    assert "Claim this case" not in banner
    # the JSON of the case carries the notice too (what `case show --json` prints)
    data = json.loads(json.dumps(CaseService(ws, local_actor()).case_detail(
        d.id, audit_view=False).as_json()))
    assert data["portal_notice"] and data["portal"]["task_id"] == d.portal_task_id


def test_synced_photos_get_their_quick_preview_in_the_background(
        qtbot, window: QtMainWindow, portal: ReferencePortal, ws: Workspace) -> None:
    """After a sync, every new photo's thumbnail and quick preview are made on the image
    pool, so the first time a clinician opens one it appears at once."""
    from derm_workstation.imaging.levels import PREVIEW_SIZE

    outcome = use_portal(qtbot, window, portal.base_url, TOKEN)
    assert outcome.summary.completed and outcome.summary.photos_downloaded >= 1
    assert window.service is not None and window.case_panel.thumbs is not None
    hashes = window.service.photo_hashes(list(outcome.summary.changed_case_ids))
    assert len(hashes) >= 1
    thumbs = window.case_panel.thumbs
    qtbot.waitUntil(lambda: all(thumbs.get(h, PREVIEW_SIZE) is not None for h in hashes),
                    timeout=TIMEOUT)
    assert all(thumbs.get(h, 256) is not None for h in hashes)
