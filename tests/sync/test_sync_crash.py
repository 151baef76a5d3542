"""SIGKILL a syncing ``derm-workstation sync`` process at random points, then resume.

Nothing may be lost and nothing duplicated: the resumed sync ends with exactly the
portal's cases, photos and messages, every queued change sent exactly once, the
database intact and the audit chain unbroken.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from derm_workstation.core.models import Case, OutboxItem, Photo
from derm_workstation.core.portal_actions import PortalActions
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.mapping import OUTBOX_SYSTEM
from derm_workstation.portal.reference.server import ReferencePortal
from derm_workstation.sync.engine import run_sync
from tests.sync.conftest import TOKEN, ClientFactory, add_portal_case, faults
from tests.sync.test_pull import assert_matches_portal, assert_no_duplicates

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
    pytest.mark.slow,
]


def sync_killed_after(portal: ReferencePortal, data_dir: Path, requests: int) -> str:
    """Run the CLI sync; SIGKILL it once the portal has seen ``requests`` more requests."""
    start = len(portal.request_log)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.Popen(
        [sys.executable, "-m", "derm_workstation", "--data-dir", str(data_dir), "sync",
         "--portal-url", portal.base_url, "--token-stdin", "--json", "--tries", "3"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdin is not None
    proc.stdin.write(f"{TOKEN}\n".encode())
    proc.stdin.close()
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        if len(portal.request_log) - start >= requests:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return "killed"
        time.sleep(0.002)
    proc.wait(30)
    return f"exited {proc.returncode}"


@contextmanager
def resumed(portal: ReferencePortal, data_dir: Path,
            make_client: ClientFactory) -> Iterator[Workspace]:
    """After the kills: faults off, one sync that completes and ends with exactly the
    portal's data; the workspace, for the caller's further checks."""
    portal.faults = None
    ws = Workspace.open(data_dir)
    try:
        summary = run_sync(ws, make_client(portal.base_url))
        assert summary.completed, summary.errors
        assert_matches_portal(ws, portal)
        yield ws
    finally:
        ws.close()


def test_sigkill_at_random_points_then_resume(portal: ReferencePortal, tmp_path: Path,
                                              make_client: ClientFactory) -> None:
    rng = random.Random(20261129)
    for n in range(20):
        add_portal_case(portal.store, n=n, photos=2)
    portal.faults = faults("latency=0.005,seed=1")
    data_dir = tmp_path / "ws"
    Workspace.open(data_dir).close()
    outcomes = [sync_killed_after(portal, data_dir, rng.randint(1, 160)) for _ in range(4)]

    # Part of the data is in; a clinician works offline meanwhile.
    ws = Workspace.open(data_dir)
    try:
        assert run_sync(ws, make_client(portal.base_url)).completed
        doc = Actor("dr.ade", "dermatologist")
        with ws.db.session() as s:
            open_ids = list(s.scalars(select(Case.id).where(
                Case.status.in_(("requested", "received")))))
        messages = [PortalActions(ws, doc).message_patient(cid, f"Message {i}")
                    for i, cid in enumerate(open_ids[:3])]
        PortalActions(ws, doc).claim(open_ids[3])
    finally:
        ws.close()
    for n in range(20, 30):
        add_portal_case(portal.store, n=n, photos=2)
    outcomes += [sync_killed_after(portal, data_dir, rng.randint(1, 30)) for _ in range(3)]
    # Pull everything (push nothing), so the next kills land in the push: two searches,
    # then the three message POSTs and the claim's GET + PUT.
    ws = Workspace.open(data_dir)
    try:
        run_sync(ws, make_client(portal.base_url), push=False)
    finally:
        ws.close()
    outcomes += [sync_killed_after(portal, data_dir, k) for k in (3, 4, 6)]
    assert outcomes.count("killed") >= 8, outcomes  # the kills really happened mid-sync

    with resumed(portal, data_dir, make_client) as ws:
        assert_no_duplicates(ws)
        for m in messages:
            found = portal.store.search("Communication",
                                        identifier=f"{OUTBOX_SYSTEM}|{m.outbox_id}")
            assert len(found) == 1
        with ws.db.session() as s:
            assert {i.state for i in s.scalars(select(OutboxItem))} == {"sent"}
            claimed = s.get(Case, open_ids[3])
            assert claimed.claim_state == "claimed"
            shas = list(s.scalars(select(Photo.sha256)))
        assert all(ws.images.verify(sha) for sha in shas)
        task = portal.store.get("Task", claimed.portal_task_id)
        assert task["owner"]["display"] == "dr.ade"
        assert len(portal.store.history("Task", claimed.portal_task_id)) == 2
    con = sqlite3.connect(data_dir / "derm.sqlite3")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
