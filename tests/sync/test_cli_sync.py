"""``sync``, ``login``, ``outbox`` and ``case claim/message`` from the command line.

The first test runs the real entry point as a subprocess; the others call
``derm_workstation.cli.main`` in-process (the same code, without paying Python's
start-up for each of a dozen commands on a slow machine).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import keyring

from derm_workstation.portal import auth
from derm_workstation.portal.mapping import OUTBOX_SYSTEM
from derm_workstation.portal.reference.server import ReferencePortal
from tests.sync.conftest import TOKEN

SUMMARY_KEYS = {"cases_new", "cases_updated", "photos_downloaded", "bytes", "outbox_sent",
                "errors"}


def cli(data: Path, *args: str, stdin: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    return subprocess.run([sys.executable, "-m", "derm_workstation", *args, "--data-dir",
                           str(data)], input=stdin, capture_output=True, text=True, env=env,
                          timeout=timeout)


def run(data: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``derm-workstation ARGS --data-dir DATA`` in-process, with stdin and captured output."""
    from derm_workstation.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*args, "--data-dir", str(data)])
    finally:
        sys.stdin = old_stdin
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_sync_with_a_token_from_stdin(portal: ReferencePortal, tmp_path: Path) -> None:
    data = tmp_path / "ws"
    r = cli(data, "sync", "--portal-url", portal.base_url, "--token-stdin", "--json",
            stdin=f"{TOKEN}\n")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["cases_new"] > 0 and summary["photos_downloaded"] > 0
    assert summary["bytes"] > 0 and summary["errors"] == [] and summary["completed"] is True
    # the token was used, not stored
    assert not (data / auth.SETTINGS_FILE).exists()
    assert keyring.get_password(auth.KEYRING_SERVICE, f"token@{portal.base_url}") is None
    assert TOKEN not in (data / "derm.sqlite3").read_bytes().decode("latin-1")

    # case show --json: portal ids, status, each photo's sha256
    rows = json.loads(cli(data, "queue", "list", "--json").stdout)
    shown = json.loads(cli(data, "case", "show", rows[0]["id"], "--json").stdout)
    assert shown["portal"]["task_id"] and shown["portal"]["patient_id"]
    assert shown["status"] == rows[0]["status"]
    assert all(len(p["sha256"]) == 64 and p["portal_media_id"] for p in shown["photos"])

    r = cli(data, "sync", "--portal-url", portal.base_url, "--token-stdin", "--json",
            stdin=TOKEN)
    again = json.loads(r.stdout)
    assert r.returncode == 0 and again["cases_new"] == 0 and again["requests"] == 2


def test_login_then_claim_message_outbox_and_sync(portal: ReferencePortal,
                                                 tmp_path: Path) -> None:
    data = tmp_path / "ws"
    r = run(data, "login", "--portal-url", portal.base_url + "/", "--token-stdin", "--check",
            "--json", stdin=TOKEN)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["checked"] is True
    assert auth.load_token(portal.base_url) == TOKEN  # in the keyring
    assert TOKEN not in (data / auth.SETTINGS_FILE).read_text()
    assert run(data, "sync").returncode == 0  # saved portal and keyring token

    rows = json.loads(run(data, "queue", "list", "--status", "requested", "--json").stdout)
    case = rows[0]["id"]
    claim = run(data, "case", "claim", case, "--json")
    assert claim.returncode == 0, claim.stderr
    assert json.loads(claim.stdout)["state"] == "queued"
    msg = run(data, "case", "message", case, "--text-stdin", "--json",
              stdin="Please add a photo with a ruler.")
    assert msg.returncode == 0, msg.stderr
    outbox_id = json.loads(msg.stdout)["outbox_id"]
    items = json.loads(run(data, "outbox", "list", "--json").stdout)
    assert [i["state"] for i in items] == ["pending", "pending"]
    assert {i["kind"] for i in items} == {"task.claim", "communication"}
    assert "ruler" not in json.dumps(items)  # no message text in the listing

    r = run(data, "sync", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outbox_sent"] == 2
    items = json.loads(run(data, "outbox", "list", "--state", "sent", "--json").stdout)
    assert len(items) == 2 and all(i["portal_id"] for i in items)
    [comm] = portal.store.search("Communication", identifier=f"{OUTBOX_SYSTEM}|{outbox_id}")
    assert comm["payload"][0]["contentString"] == "Please add a photo with a ruler."


def test_offline_sync_exits_1_with_one_clear_line(portal: ReferencePortal,
                                                  tmp_path: Path) -> None:
    data = tmp_path / "ws"
    url = portal.base_url
    assert run(data, "sync", "--portal-url", url, "--token-stdin", stdin=TOKEN).returncode == 0
    portal.stop()
    r = run(data, "sync", "--portal-url", url, "--token-stdin", "--json", "--tries", "2",
            stdin=TOKEN)
    assert r.returncode == 1
    line = one_error_line(r)
    assert "could not be reached" in line and "can still be used" in line
    summary = json.loads(r.stdout)
    assert summary["completed"] is False and len(summary["errors"]) == 1
    # everything pulled before is still there
    assert run(data, "queue", "list", "--json").returncode == 0


def test_rejected_token_and_usage_errors(portal: ReferencePortal, tmp_path: Path) -> None:
    data = tmp_path / "ws"
    r = run(data, "sync", "--portal-url", portal.base_url, "--token-stdin", stdin="wrong")
    assert r.returncode == 1 and "rejected the credentials" in one_error_line(r)
    assert len([x for x in portal.request_log if x.status == 401]) == 1  # never a loop
    r = run(data, "sync")
    assert r.returncode == 2 and "No portal is set up" in one_error_line(r)
    r = run(data, "sync", "--portal-url", portal.base_url, "--token-stdin", stdin="\n")
    assert r.returncode == 2 and "empty" in one_error_line(r)
    r = run(data, "sync", "--portal-url", "not-a-url", "--token-stdin", stdin=TOKEN)
    assert r.returncode == 2 and "not a portal address" in one_error_line(r)
    r = run(data, "outbox", "list", "--state", "lost")
    assert r.returncode == 2 and "Unknown state" in one_error_line(r)
    r = run(data, "case", "message", "nope", "--text-stdin", stdin="hi")
    assert r.returncode == 2 and "No case" in one_error_line(r)
    r = run(data, "outbox", "retry", "nope-nope")
    assert r.returncode == 2 and "No outbox item" in one_error_line(r)


def _portal_events(data: Path) -> list[tuple[str, str, dict]]:
    from sqlalchemy import select

    from derm_workstation.core.models import AuditEvent
    from derm_workstation.core.workspace import Workspace

    ws = Workspace.open(data)
    try:
        with ws.db.session() as s:
            return [(e.action, e.actor, dict(e.detail)) for e in s.scalars(
                select(AuditEvent).where(AuditEvent.entity_type == "portal")
                .order_by(AuditEvent.id))]
    finally:
        ws.close()


def test_login_and_logout_are_in_the_audit_trail_with_the_host_only(
        portal: ReferencePortal, tmp_path: Path) -> None:
    data = tmp_path / "ws"
    r = run(data, "login", "--portal-url", portal.base_url, "--token-stdin", stdin=TOKEN)
    assert r.returncode == 0, r.stderr
    host = f"127.0.0.1:{portal.port}"
    events = _portal_events(data)
    assert [(a, d) for a, _who, d in events] == [("portal.connect", {"host": host})]
    assert run(data, "logout").returncode == 0
    assert run(data, "logout").returncode == 0  # nothing saved: nothing to record
    events = _portal_events(data)
    assert [(a, d) for a, _who, d in events] == [("portal.connect", {"host": host}),
                                                  ("portal.disconnect", {"host": host})]
    assert all(TOKEN not in json.dumps(d) and "/fhir" not in json.dumps(d)
               for _a, _w, d in events)
