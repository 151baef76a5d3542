"""Portal in the window: Connect to portal (test, save to the keyring, disconnect),
messages to the patient, allergies in the header, opening a case claims it, and the
inter-process sync lock as the window sees it.

A real reference portal runs on loopback in each test; the window syncs with it on its
network lane; the keyring is the file backend of the test conftest.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor
from sqlalchemy import select

from derm_workstation.core.models import Case, Message, OutboxItem
from derm_workstation.core.users import Actor, local_actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.portal import auth
from derm_workstation.portal.client import PortalClient, RetryPolicy
from derm_workstation.portal.reference.server import ReferencePortal
from derm_workstation.qt.main_window import QtMainWindow
from derm_workstation.sync.engine import run_sync
from tests.builders import populate
from tests.qt.windows import main_window, open_main_window, use_portal
from tests.sync.conftest import add_portal_case
from tests.sync.proxy import Exchange, FaultProxy, Reply, refuse_messages
from tests.sync.test_sync_lock import Holder

TOKEN = "portal-gui-token-5f2c"
TIMEOUT = 20_000
ONE_TRY = RetryPolicy(max_tries=1, data_tries=1, backoff_base=0.01, backoff_max=0.02)
ME = local_actor().username


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[ReferencePortal]:
    p = ReferencePortal.start(tmp_path / "portal" / "portal.sqlite3", token=TOKEN)
    for n in (1, 2, 3):
        add_portal_case(p.store, n=n, photos=1)
    yield p
    p.stop()



def make_window(qtbot, qapp, ws: Workspace, actor: Actor | None = None) -> QtMainWindow:
    return open_main_window(qtbot, qapp, ws, actor, retry=ONE_TRY)


@pytest.fixture
def window(qtbot, qapp, ws: Workspace) -> Iterator[QtMainWindow]:
    with main_window(qtbot, qapp, ws, retry=ONE_TRY) as win:
        yield win


def flush_db(qtbot, win: QtMainWindow) -> None:
    """Wait until everything queued on the database lane so far has run (it is FIFO)."""
    done: list[bool] = []
    win.tasks.run_db(lambda: True, done.append)
    qtbot.waitUntil(lambda: bool(done), timeout=TIMEOUT)


def outbox(ws: Workspace) -> list[OutboxItem]:
    with ws.db.session() as s:
        return list(s.scalars(select(OutboxItem).order_by(OutboxItem.created_at)))


def case_id_for_task(ws: Workspace, task_id: str) -> str:
    with ws.db.session() as s:
        return s.scalars(select(Case.id).where(Case.portal_task_id == task_id)).one()


def click_row(qtbot, win: QtMainWindow, case_id: str, double: bool = False) -> None:
    row = win.model.row_of(case_id)
    assert row >= 0
    rect = win.table.visualRect(win.model.index(row, 2))
    qtbot.mouseClick(win.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    if double:  # a real double-click: press, release, then the double-click event
        qtbot.mouseDClick(win.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def next_row_key(win: QtMainWindow) -> Qt.Key:
    """Down, or Up on the last row (cases synced later may sort above the open one)."""
    last = win.table.currentIndex().row() >= win.model.rowCount() - 1
    return Qt.Key.Key_Up if last else Qt.Key.Key_Down


def show_case(qtbot, win: QtMainWindow, case_id: str) -> None:
    """Click a queue row (a preview) and wait until the case is on screen."""
    d = win.case_panel.detail
    if d is not None and d.id == case_id:
        return
    qtbot.waitUntil(lambda: win.model.row_of(case_id) >= 0, timeout=TIMEOUT)
    with qtbot.waitSignal(win.case_shown, timeout=TIMEOUT):
        click_row(qtbot, win, case_id)


def open_dialog(qtbot, win: QtMainWindow):  # type: ignore[no-untyped-def]
    """Portal › Connect to portal…; waits until the saved settings are shown."""
    win.connect_action.trigger()
    dlg = win.portal_dialog
    assert dlg is not None
    qtbot.waitUntil(lambda: dlg.saved is not None, timeout=TIMEOUT)
    return dlg


def click(qtbot, widget) -> None:  # type: ignore[no-untyped-def]
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def type_into(qtbot, edit, text: str) -> None:  # type: ignore[no-untyped-def]
    edit.clear()
    qtbot.keyClicks(edit, text)


def run_test(qtbot, dlg) -> tuple[bool, str]:  # type: ignore[no-untyped-def]
    with qtbot.waitSignal(dlg.tested, timeout=TIMEOUT) as blocker:
        click(qtbot, dlg.ui.testButton)
    return blocker.args[0], blocker.args[1]


# ----------------------------------------------------------------- connect to portal


def test_connect_dialog_tests_the_token_saves_it_in_the_keyring_and_the_window_syncs(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert "Portal: not set up" in window.sync_status.plain_text()
    dlg = open_dialog(qtbot, window)
    ui = dlg.ui
    assert "Not connected" in ui.currentLabel.text()
    assert not ui.disconnectButton.isEnabled()
    # nothing typed: a plain sentence, no portal asked
    ok, text = run_test(qtbot, dlg)
    assert not ok and text == "Enter the portal's address, e.g. https://portal.example.org/fhir"
    type_into(qtbot, ui.urlEdit, portal.base_url)
    type_into(qtbot, ui.tokenEdit, "not-the-token")
    ok, text = run_test(qtbot, dlg)
    assert not ok and "refused the credentials" in text and "access token" in text
    type_into(qtbot, ui.tokenEdit, TOKEN)
    ok, text = run_test(qtbot, dlg)
    assert ok and text.startswith("Connected") and f"127.0.0.1:{portal.port}" in text
    assert auth.load_token(portal.base_url) is None  # a test saves nothing
    assert not auth.PortalSettings.path(ws.paths.root).exists()
    # Save: the token goes to the keyring, the address to portal.json; the window syncs
    with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT) as blocker:
        click(qtbot, ui.saveButton)
    assert blocker.args[0].summary.completed and blocker.args[0].summary.cases_new == 3
    assert auth.load_token(portal.base_url) == TOKEN
    saved = auth.PortalSettings.load(ws.paths.root)
    assert saved is not None and saved.base_url == portal.base_url
    assert saved.auth == auth.AUTH_BEARER and saved.sync_interval_s == 300
    assert ui.tokenEdit.text() == "" and "keyring" in ui.tokenEdit.placeholderText()
    # the secret is nowhere in a file of the data folder or the settings, nor in the log
    for f in [*Path(ws.paths.root).rglob("*"), *(tmp_path / "qsettings").rglob("*")]:
        if f.is_file() and f.suffix in (".json", ".ini", ".conf", ".log", ".txt", ""):
            assert TOKEN not in f.read_text(errors="replace"), f
    assert TOKEN not in caplog.text
    qtbot.waitUntil(lambda: window.model.rowCount() == 3, timeout=TIMEOUT)
    assert window.sync.timer.isActive() and window.sync.timer.interval() == 300_000
    tip = window.sync_status.state_label.toolTip()
    assert f"Portal: 127.0.0.1:{portal.port}" in tip and "/fhir" not in tip
    assert "Online" in window.sync_status.plain_text()
    # the CLI reads the same storage: its connect() builds a client with the token
    from derm_workstation.sync.engine import connect

    client, cli_saved = connect(Path(ws.paths.root))
    try:
        assert cli_saved is not None and client.tokens is not None
        assert client.tokens.token() == TOKEN
    finally:
        client.close()
    # reopened, the dialog shows the saved portal (host) and keeps the token when empty
    click(qtbot, ui.closeButton)
    qtbot.waitUntil(lambda: window.portal_dialog is None, timeout=TIMEOUT)
    dlg = open_dialog(qtbot, window)
    assert f"127.0.0.1:{dlg.saved.settings.base_url.split(':')[-1].split('/')[0]}" \
        in dlg.ui.currentLabel.text()
    assert dlg.ui.urlEdit.text() == portal.base_url and dlg.ui.disconnectButton.isEnabled()
    ok, text = run_test(qtbot, dlg)  # the token in the keyring is used
    assert ok, text
    click(qtbot, dlg.ui.closeButton)


def test_connect_dialog_says_plainly_why_it_cannot_connect(
        qtbot, window: QtMainWindow) -> None:
    class Html(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>Clinic intranet</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    web = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    web.daemon_threads = True
    t = threading.Thread(target=web.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed_port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    try:
        dlg = open_dialog(qtbot, window)
        ui = dlg.ui
        type_into(qtbot, ui.tokenEdit, TOKEN)
        type_into(qtbot, ui.urlEdit, f"http://127.0.0.1:{closed_port}/fhir")
        ok, text = run_test(qtbot, dlg)
        assert not ok and text.startswith(f"Cannot reach the portal at 127.0.0.1:{closed_port}")
        type_into(qtbot, ui.urlEdit, f"http://127.0.0.1:{web.server_address[1]}/fhir")
        ok, text = run_test(qtbot, dlg)
        assert not ok and "not like a FHIR server" in text
        type_into(qtbot, ui.urlEdit, "portal.example.org")
        ok, text = run_test(qtbot, dlg)
        assert not ok and "is not a portal address" in text
        assert "Traceback" not in text
        # Save refuses the same way and stores nothing
        click(qtbot, ui.saveButton)
        assert "is not a portal address" in dlg.result_text()
        assert not auth.PortalSettings.path(window.workspace.paths.root).exists()
    finally:
        web.shutdown()
        web.server_close()
        t.join(5)


def test_oauth_client_credentials_from_the_dialog(
        qtbot, window: QtMainWindow, ws: Workspace, tmp_path: Path) -> None:
    secret = "client-secret-8d1e"
    p = ReferencePortal.start(tmp_path / "oauth-portal.sqlite3", client_id="workstation",
                              client_secret=secret)
    try:
        add_portal_case(p.store, n=7, photos=1)
        assert p.token_url
        dlg = open_dialog(qtbot, window)
        ui = dlg.ui
        type_into(qtbot, ui.urlEdit, p.base_url)
        ui.authCombo.setFocus()
        qtbot.keyClick(ui.authCombo, Qt.Key.Key_Down)  # "OAuth2 client credentials"
        assert dlg.oauth and not ui.tokenEdit.isVisible() and ui.secretEdit.isVisible()
        ok, text = run_test(qtbot, dlg)
        assert not ok and text == "Enter the OAuth2 token URL."
        type_into(qtbot, ui.tokenUrlEdit, p.token_url)
        type_into(qtbot, ui.clientIdEdit, "workstation")
        type_into(qtbot, ui.secretEdit, "wrong")
        ok, text = run_test(qtbot, dlg)
        assert not ok and "client id and secret" in text
        type_into(qtbot, ui.secretEdit, secret)
        ok, text = run_test(qtbot, dlg)
        assert ok, text
        ui.intervalSpin.setFocus()
        qtbot.keyClick(ui.intervalSpin, Qt.Key.Key_Up)  # 6 minutes
        with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT) as blocker:
            click(qtbot, ui.saveButton)
        assert blocker.args[0].summary.cases_new == 1
        saved = auth.PortalSettings.load(ws.paths.root)
        assert saved is not None and saved.auth == auth.AUTH_CLIENT_CREDENTIALS
        assert saved.client_id == "workstation" and saved.token_url == p.token_url
        assert saved.sync_interval_s == 360
        assert auth.load_client_secret(p.base_url) == secret
        assert secret not in auth.PortalSettings.path(ws.paths.root).read_text()
        qtbot.waitUntil(lambda: window.sync.timer.interval() == 360_000, timeout=TIMEOUT)
        click(qtbot, ui.closeButton)
    finally:
        p.stop()


def test_disconnect_forgets_the_portal_and_its_secret_and_syncing_stops(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal) -> None:
    auth.save_login(Path(ws.paths.root), auth.PortalSettings(base_url=portal.base_url), TOKEN)
    with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT):
        window.sync.portal_saved()  # what the dialog's Save does
    qtbot.waitUntil(lambda: window.sync_action.isEnabled(), timeout=TIMEOUT)
    dlg = open_dialog(qtbot, window)
    assert dlg.ui.disconnectButton.isEnabled()
    with qtbot.waitSignal(dlg.changed, timeout=TIMEOUT):
        click(qtbot, dlg.ui.disconnectButton)
    assert "Disconnected" in dlg.result_text()
    assert auth.load_token(portal.base_url) is None
    assert not auth.PortalSettings.path(ws.paths.root).exists()
    qtbot.waitUntil(lambda: "Portal: not set up" in window.sync_status.plain_text(),
                    timeout=TIMEOUT)
    assert not window.sync.timer.isActive() and not window.sync_action.isEnabled()
    qtbot.waitUntil(lambda: not dlg.ui.disconnectButton.isEnabled()
                    and "Not connected" in dlg.ui.currentLabel.text(), timeout=TIMEOUT)
    # cases already pulled stay usable
    assert window.model.rowCount() == 3
    click(qtbot, dlg.ui.closeButton)


def test_connecting_and_disconnecting_are_audited_with_the_host_only(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal) -> None:
    from derm_workstation.core.models import AuditEvent

    def portal_events() -> list[tuple[str, str, dict]]:
        with ws.db.session() as s:
            return [(e.action, e.actor, dict(e.detail)) for e in s.scalars(
                select(AuditEvent).where(AuditEvent.entity_type == "portal")
                .order_by(AuditEvent.id))]

    dlg = open_dialog(qtbot, window)
    ui = dlg.ui
    type_into(qtbot, ui.urlEdit, portal.base_url)
    type_into(qtbot, ui.tokenEdit, TOKEN)
    with qtbot.waitSignal(dlg.changed, timeout=TIMEOUT):
        click(qtbot, ui.saveButton)
    host = f"127.0.0.1:{portal.port}"
    me = local_actor().username
    assert portal_events() == [("portal.connect", me, {"host": host})]
    qtbot.waitUntil(lambda: ui.disconnectButton.isEnabled(), timeout=TIMEOUT)
    with qtbot.waitSignal(dlg.changed, timeout=TIMEOUT):
        click(qtbot, ui.disconnectButton)
    events = portal_events()
    assert events == [("portal.connect", me, {"host": host}),
                      ("portal.disconnect", me, {"host": host})]
    assert TOKEN not in repr(events)
    qtbot.waitUntil(lambda: window.sync_status is not None and not window.sync.running,
                    timeout=TIMEOUT)
    click(qtbot, ui.closeButton)


# ----------------------------------------------------------------- messages to the patient


def open_messages_tab(qtbot, win: QtMainWindow) -> None:
    """Once a case is shown, click its Messages tab."""
    qtbot.waitUntil(lambda: win.case_panel.detail is not None, timeout=TIMEOUT)
    tabs = win.case_panel.ui.detailTabs
    bar = tabs.tabBar()
    qtbot.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.tabRect(2).center())
    assert tabs.currentIndex() == 2


def test_a_message_to_the_patient_is_queued_sent_and_shown_and_empty_is_refused(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert use_portal(qtbot, window, portal.base_url, TOKEN).summary.completed
    panel = window.case_panel
    ui = panel.ui
    open_messages_tab(qtbot, window)
    assert "No messages yet." in panel.message_thread_text()
    assert ui.sendMessageButton.isEnabled()
    # empty (only spaces): refused with a plain sentence, nothing queued
    qtbot.keyClicks(ui.messageEdit, "   ")
    click(qtbot, ui.sendMessageButton)
    assert ui.messageStatusLabel.text() == \
        "Write a message first: an empty message is not sent."
    flush_db(qtbot, window)
    assert outbox(ws) == []
    text = "Please send a closer photo of the edge, in daylight."
    ui.messageEdit.clear()
    qtbot.keyClicks(ui.messageEdit, text)
    d = panel.detail
    assert d is not None
    with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT) as blocker:
        click(qtbot, ui.sendMessageButton)  # queued, then pushed at once (online)
    outcome = blocker.args[0]
    assert not outcome.pulled and outcome.summary.outbox_sent == 1
    assert ui.messageEdit.toPlainText() == ""
    sent = portal.store.search("Communication", based_on=f"ServiceRequest/"
                               f"{d.portal_service_request_id}")
    assert [c["payload"][0]["contentString"] for c in sent] == [text]
    qtbot.waitUntil(lambda: "Clinic" in panel.message_thread_text()
                    and " · sent" in panel.message_thread_text(), timeout=TIMEOUT)
    assert text in panel.message_thread_text()
    assert ui.detailTabs.tabText(2) == "Messages (1)"
    assert "1 change(s) sent to the portal." in window.statusBar().currentMessage()
    assert text not in caplog.text  # never logged


def test_offline_a_message_waits_queued_and_a_refused_one_offers_retry(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal) -> None:
    with FaultProxy(portal.origin) as proxy:
        assert use_portal(qtbot, window, proxy.base_url, TOKEN).summary.completed
        panel = window.case_panel
        ui = panel.ui
        open_messages_tab(qtbot, window)

        proxy.before = refuse_messages
        qtbot.keyClicks(ui.messageEdit, "Your results are ready.")
        with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT):
            click(qtbot, ui.sendMessageButton)
        qtbot.waitUntil(lambda: "failed — retry" in panel.message_thread_text(),
                        timeout=TIMEOUT)
        [item] = outbox(ws)
        assert item.state == "failed" and "left the portal" in (item.last_error or "")
        # click the "retry" link in the thread, as a user would
        view = ui.messagesView
        cur = view.document().find("retry")
        assert not cur.isNull()
        mid = QTextCursor(view.document())
        mid.setPosition(cur.selectionStart() + 2)
        pos = view.cursorRect(mid).center()
        proxy.before = None
        with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT) as blocker:
            qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=pos)
        assert blocker.args[0].summary.outbox_sent == 1
        qtbot.waitUntil(lambda: " · sent" in panel.message_thread_text(), timeout=TIMEOUT)
        [item] = outbox(ws)
        assert item.state == "sent"
    # the portal is gone: a new message stays queued, shown as such
    qtbot.keyClicks(ui.messageEdit, "We will call you tomorrow.")
    with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT) as blocker:
        click(qtbot, ui.sendMessageButton)
    assert not blocker.args[0].online
    qtbot.waitUntil(lambda: "queued" in panel.message_thread_text(), timeout=TIMEOUT)
    assert "Offline" in window.sync_status.plain_text()
    with ws.db.session() as s:
        states = sorted(m.delivery_state for m in s.scalars(
            select(Message).where(Message.direction == "outbound")))
    assert states == ["queued", "sent"]
    assert [i.state for i in outbox(ws)] == ["sent", "pending"]
    # offline now known: the next message is queued without trying the portal
    qtbot.keyClicks(ui.messageEdit, "Second note.")
    with qtbot.waitSignal(panel.message_queued, timeout=TIMEOUT):
        click(qtbot, ui.sendMessageButton)
    assert not window.sync.running
    qtbot.waitUntil(lambda: panel.message_thread_text().count("queued") == 2, timeout=TIMEOUT)


def test_a_nurse_cannot_send_messages_and_a_local_case_has_no_one_to_write_to(
        qtbot, qapp, ws: Workspace) -> None:
    populate(ws)  # local cases, not from the portal
    win = make_window(qtbot, qapp, ws)
    try:
        qtbot.waitUntil(lambda: win.case_panel.detail is not None, timeout=TIMEOUT)
        ui = win.case_panel.ui
        assert not ui.sendMessageButton.isEnabled() and not ui.messageEdit.isEnabled()
        assert "did not come from the portal" in ui.messageEdit.placeholderText()
    finally:
        win.close()
        win.tasks.shutdown()
    nurse = make_window(qtbot, qapp, ws, Actor("nurse1", "nurse"))
    try:
        qtbot.waitUntil(lambda: nurse.case_panel.detail is not None, timeout=TIMEOUT)
        assert "role cannot send" in nurse.case_panel.ui.messageEdit.placeholderText()
    finally:
        nurse.close()
        nurse.tasks.shutdown()


# ----------------------------------------------------------------- allergies


def test_allergies_are_shown_in_the_header_in_three_states(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal) -> None:
    first = portal.store.search("Task")[0]
    patient = first["for"]["reference"]
    for code, crit, status in (("Penicillin", "high", "active"), ("Latex", None, "active"),
                               ("Peanut", "low", "resolved")):
        res = {"resourceType": "AllergyIntolerance", "patient": {"reference": patient},
               "code": {"text": code},
               "clinicalStatus": {"coding": [{
                   "system": "http://terminology.hl7.org/CodeSystem/"
                             "allergyintolerance-clinical", "code": status}]}}
        if crit:
            res["criticality"] = crit
        portal.store.create(res)
    populate(ws)  # local cases: nobody asked the portal about their allergies
    assert use_portal(qtbot, window, portal.base_url, TOKEN).summary.completed
    qtbot.waitUntil(lambda: window.model.rowCount() >= 4, timeout=TIMEOUT)
    panel = window.case_panel
    with_allergies = case_id_for_task(ws, first["id"])
    show_case(qtbot, window, with_allergies)
    assert panel.allergy_text() == "Allergies: Latex, Penicillin (high)"
    assert panel.ui.allergyLabel.property("allergyState") == "severe"
    assert panel.ui.allergyLabel.isVisible()
    other = case_id_for_task(ws, portal.store.search("Task")[1]["id"])
    show_case(qtbot, window, other)
    assert panel.allergy_text() == "No known allergies recorded"
    assert panel.ui.allergyLabel.property("allergyState") == "plain"
    with ws.db.session() as s:
        local = s.scalars(select(Case.id).where(Case.portal_task_id.is_(None))).first()
    assert local is not None
    show_case(qtbot, window, local)
    assert panel.allergy_text() == "Allergies not checked"
    assert panel.ui.allergyLabel.property("allergyState") == "unknown"


# ----------------------------------------------------------------- opening a case claims it


def task_of(portal: ReferencePortal, ws: Workspace, case_id: str) -> dict:  # type: ignore[type-arg]
    with ws.db.session() as s:
        task_id = s.get(Case, case_id).portal_task_id  # type: ignore[union-attr]
    return portal.store.get("Task", task_id)


def test_arrowing_previews_and_enter_opens_the_case_and_claims_it_online(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal) -> None:
    assert use_portal(qtbot, window, portal.base_url, TOKEN).summary.completed
    qtbot.waitUntil(lambda: window.model.rowCount() == 3, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: window.case_panel.detail is not None, timeout=TIMEOUT)
    first = window.case_panel.detail.id  # type: ignore[union-attr]
    qtbot.waitUntil(lambda: window.tasks.pending == 0, timeout=TIMEOUT)  # queue reloads done
    window.table.setFocus()
    with qtbot.waitSignal(window.case_shown, timeout=TIMEOUT) as shown:
        qtbot.keyClick(window.table, next_row_key(window))  # preview only
    second = shown.args[0]
    assert second != first
    flush_db(qtbot, window)
    assert outbox(ws) == []
    assert all(t.get("owner") is None for t in portal.store.search("Task"))
    assert "Claim this case" in window.case_panel.banner_text()
    with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT) as blocker:
        qtbot.keyClick(window.table, Qt.Key.Key_Return)  # open for review
    outcome = blocker.args[0]
    assert not outcome.pulled and outcome.summary.outbox_sent == 1
    task = task_of(portal, ws, second)
    assert task["owner"]["display"] == ME and task["status"] == "in-progress"
    assert task_of(portal, ws, first).get("owner") is None
    assert window.case_panel.ui.thumbnailList.hasFocus()  # Enter still goes to the photos
    qtbot.waitUntil(lambda: "Claimed by you" in window.case_panel.banner_text()
                    and "pending" not in window.case_panel.banner_text(), timeout=TIMEOUT)
    # Enter again on a case this user holds: nothing more is sent
    window.table.setFocus()
    qtbot.keyClick(window.table, Qt.Key.Key_Return)
    flush_db(qtbot, window)
    assert [i.kind for i in outbox(ws)] == ["task.claim"]
    # a double-click on another row opens and claims it too
    third = next(c for r in range(3) if (c := window.model.case_id(r)) not in (first, second))
    assert third is not None
    with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT):
        click_row(qtbot, window, third, double=True)
    assert task_of(portal, ws, third)["owner"]["display"] == ME
    assert window.claim_action.isEnabled()  # the explicit Claim action stays


def test_offline_opening_a_case_queues_its_claim(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal) -> None:
    assert use_portal(qtbot, window, portal.base_url, TOKEN).summary.completed
    qtbot.waitUntil(lambda: window.case_panel.detail is not None, timeout=TIMEOUT)
    portal.stop()
    window.table.setFocus()
    with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT) as blocker:
        qtbot.keyClick(window.table, Qt.Key.Key_Enter)
    assert not blocker.args[0].online  # tried at once, the portal is gone: it waits
    [item] = outbox(ws)
    assert item.kind == "task.claim" and item.state == "pending"
    qtbot.waitUntil(lambda: "Claimed by you (pending sync)" in window.case_panel.banner_text(),
                    timeout=TIMEOUT)
    qtbot.waitUntil(lambda: "Offline" in window.sync_status.plain_text()
                    and "1 waiting to send" in window.sync_status.plain_text(), timeout=TIMEOUT)
    # now known to be offline: the next case's claim is queued without a try
    qtbot.waitUntil(lambda: window.tasks.pending == 0, timeout=TIMEOUT)
    with qtbot.waitSignal(window.case_shown, timeout=TIMEOUT):
        qtbot.keyClick(window.table, next_row_key(window))
    with qtbot.waitSignal(window.case_shown, timeout=TIMEOUT):
        qtbot.keyClick(window.table, Qt.Key.Key_Return)
    assert not window.sync.running
    assert [i.state for i in outbox(ws)] == ["pending", "pending"]


def test_opening_a_case_claimed_by_someone_else_or_changed_meanwhile_overwrites_nothing(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal) -> None:
    tasks = portal.store.search("Task")
    held = dict(tasks[0], status="in-progress", owner={"display": "dr-other"})
    portal.store.put(held)
    with FaultProxy(portal.origin) as proxy:
        assert use_portal(qtbot, window, proxy.base_url, TOKEN).summary.completed
        qtbot.waitUntil(lambda: window.model.rowCount() == 3, timeout=TIMEOUT)
        held_case = case_id_for_task(ws, held["id"])
        show_case(qtbot, window, held_case)
        assert "Claimed on the portal by dr-other" in window.case_panel.banner_text()
        window.table.setFocus()
        qtbot.keyClick(window.table, Qt.Key.Key_Return)
        flush_db(qtbot, window)
        assert outbox(ws) == [] and not window.sync.running
        assert "claimed by someone else" in window.statusBar().currentMessage()
        assert portal.store.get("Task", held["id"])["owner"]["display"] == "dr-other"
        # 412: someone changes the Task just before our PUT
        free = case_id_for_task(ws, tasks[1]["id"])
        show_case(qtbot, window, free)

        def change_first(ex: Exchange) -> Reply | None:
            if ex.method == "PUT" and proxy.before is change_first:
                proxy.before = None
                t = portal.store.get("Task", tasks[1]["id"])
                t["businessStatus"] = {"text": "Patient sent more photos"}
                portal.store.put(t)
            return None

        proxy.before = change_first
        window.table.setFocus()
        with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT) as blocker:
            qtbot.keyClick(window.table, Qt.Key.Key_Return)
        assert blocker.args[0].summary.outbox_failed == 1
        assert [e.status for e in proxy.log if e.method == "PUT"] == [412]
    assert portal.store.get("Task", tasks[1]["id"]).get("owner") is None
    qtbot.waitUntil(lambda: "changed on the portal" in window.case_panel.banner_text(),
                    timeout=TIMEOUT)


def test_a_nurse_opening_a_case_does_not_claim_it(
        qtbot, qapp, ws: Workspace, portal: ReferencePortal) -> None:
    with PortalClient(portal.base_url, auth.StaticToken(TOKEN), retry=ONE_TRY) as client:
        assert run_sync(ws, client).completed  # cases pulled earlier by a dermatologist
    win = make_window(qtbot, qapp, ws, Actor("nurse1", "nurse"))
    try:
        with qtbot.waitSignal(win.sync.failed, timeout=TIMEOUT):
            win.sync.use_portal(portal.base_url, TOKEN)  # a nurse's sync is refused
        assert win.sync.configured
        qtbot.waitUntil(lambda: win.case_panel.detail is not None, timeout=TIMEOUT)
        win.table.setFocus()
        qtbot.keyClick(win.table, Qt.Key.Key_Return)
        flush_db(qtbot, win)
        assert outbox(ws) == [] and not win.sync.running
        assert all(t.get("owner") is None for t in portal.store.search("Task"))
    finally:
        win.close()
        win.tasks.shutdown()


# ----------------------------------------------------------------- the sync lock


def test_the_window_says_so_when_another_process_is_syncing_and_tries_again_later(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal) -> None:
    holder = Holder(Path(ws.paths.root))  # e.g. `derm-workstation sync` from a script
    try:
        with qtbot.waitSignal(window.sync.failed, timeout=TIMEOUT) as blocker:
            window.sync.use_portal(portal.base_url, TOKEN)
        assert "Another sync is running on this workstation" in blocker.args[0]
        assert "Another sync is running" in window.statusBar().currentMessage()
        assert window.sync.timer.isActive()  # the next interval tries again
        assert not window.sync.running and window.model.rowCount() == 0
        holder.release()
        with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT) as done:
            window.sync.timer.timeout.emit()  # what the timer does at the next interval
        assert done.args[0].summary.completed and done.args[0].summary.cases_new == 3
    finally:
        holder.close()


def test_the_retry_link_resends_only_its_own_message(
        qtbot, window: QtMainWindow, ws: Workspace, portal: ReferencePortal) -> None:
    with FaultProxy(portal.origin) as proxy:
        assert use_portal(qtbot, window, proxy.base_url, TOKEN).summary.completed
        panel = window.case_panel
        ui = panel.ui
        open_messages_tab(qtbot, window)

        proxy.before = refuse_messages
        for text in ("First note.", "Second note."):
            qtbot.keyClicks(ui.messageEdit, text)
            with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT):
                click(qtbot, ui.sendMessageButton)
        qtbot.waitUntil(lambda: panel.message_thread_text().count("failed — retry") == 2,
                        timeout=TIMEOUT)
        assert [i.state for i in outbox(ws)] == ["failed", "failed"]
        # click the SECOND message's "retry" link
        view = ui.messagesView
        doc = view.document()
        first = doc.find("retry")
        second = doc.find("retry", first.selectionEnd())
        assert not second.isNull() and second.selectionStart() > first.selectionStart()
        mid = QTextCursor(doc)
        mid.setPosition(second.selectionStart() + 2)
        pos = view.cursorRect(mid).center()
        proxy.before = None
        with qtbot.waitSignal(window.sync.finished, timeout=TIMEOUT) as blocker:
            qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=pos)
        assert blocker.args[0].summary.outbox_sent == 1
        assert [i.state for i in outbox(ws)] == ["failed", "sent"]
        sent = portal.store.search("Communication")
        assert [c["payload"][0]["contentString"] for c in sent] == ["Second note."]
        qtbot.waitUntil(lambda: panel.message_thread_text().count("failed — retry") == 1
                        and " · sent" in panel.message_thread_text(), timeout=TIMEOUT)
