"""One sync per data folder at a time, across processes: a real second process holds the
lock; a second sync refuses at once (engine, CLI); a SIGKILLed holder releases it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.client import RetryPolicy
from derm_workstation.portal.reference.server import ReferencePortal
from derm_workstation.sync.engine import run_sync
from derm_workstation.sync.lock import BUSY_MESSAGE, SyncBusyError, is_locked, sync_lock
from tests.sync.conftest import TOKEN, ClientFactory, add_portal_case

ROOT = Path(__file__).resolve().parents[2]

HOLDER = """
import sys
from pathlib import Path
from derm_workstation.sync.lock import sync_lock
with sync_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.readline()  # hold until told (or killed)
print("released", flush=True)
"""


class Holder:
    """A separate Python process holding the data folder's sync lock."""

    def __init__(self, data_dir: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(data_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the lock is held
        assert line.strip() == "locked", self.proc.stderr.read() if self.proc.stderr else line

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.proc.wait(timeout=30)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def small_portal(tmp_path: Path):  # type: ignore[no-untyped-def]
    with ReferencePortal.start(tmp_path / "small-portal.sqlite3", token=TOKEN) as p:
        add_portal_case(p.store, n=1, photos=1)
        yield p


def test_a_sync_refuses_at_once_while_another_process_syncs_the_same_folder(
        ws: Workspace, small_portal: ReferencePortal, make_client: ClientFactory) -> None:
    root = Path(ws.paths.root)
    holder = Holder(root)
    try:
        assert is_locked(root)
        client = make_client(small_portal.base_url)
        t0 = time.monotonic()
        with pytest.raises(SyncBusyError) as err:
            run_sync(ws, client)
        assert time.monotonic() - t0 < 2.0  # it does not wait
        assert "another sync is running on this workstation" in err.value.message.lower()
        assert client.stats.requests == 0  # nothing was asked of the portal
        holder.release()
        assert not is_locked(root)
        summary = run_sync(ws, client)  # free again
        assert summary.completed and summary.cases_new == 1
    finally:
        holder.close()


def test_a_sigkilled_holder_does_not_leave_a_stale_lock(
        ws: Workspace, small_portal: ReferencePortal, make_client: ClientFactory) -> None:
    root = Path(ws.paths.root)
    holder = Holder(root)
    try:
        assert is_locked(root)
        holder.kill()
        assert holder.proc.returncode == -signal.SIGKILL
        assert (root / "sync.lock").exists()  # the file is left, the lock is not
        assert not is_locked(root)
        summary = run_sync(ws, make_client(small_portal.base_url))
        assert summary.completed and summary.cases_new == 1
    finally:
        holder.close()


def test_the_cli_sync_exits_1_with_one_error_line_while_another_sync_runs(
        tmp_path: Path, small_portal: ReferencePortal) -> None:
    data = tmp_path / "cli-ws"
    Workspace.open(data).close()
    holder = Holder(data)
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        r = subprocess.run([sys.executable, "-m", "derm_workstation", "sync", "--portal-url",
                            small_portal.base_url, "--token-stdin", "--data-dir", str(data)],
                           input=TOKEN + "\n", capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 1
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert lines == [f"error: {BUSY_MESSAGE}"], r.stderr
        assert "another sync is running on this workstation" in lines[0].lower()
        assert "Traceback" not in r.stderr and r.stdout == ""
        assert TOKEN not in r.stderr
    finally:
        holder.close()


def test_the_lock_is_released_when_a_sync_fails_and_is_one_per_process(
        ws: Workspace, make_client: ClientFactory, tmp_path: Path) -> None:
    root = Path(ws.paths.root)
    # an unreachable portal: the sync ends with an error in the summary, lock released
    client = make_client("http://127.0.0.1:9/fhir", retry=RetryPolicy(max_tries=1))
    summary = run_sync(ws, client)
    assert not summary.completed and not is_locked(root)
    # within one process, a second sync (another thread) is refused while one holds it
    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with sync_lock(root):
            entered.set()
            leave.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert entered.wait(30)
        with pytest.raises(SyncBusyError):
            run_sync(ws, client)
        other = tmp_path / "other-folder"
        other.mkdir()
        # one sync per process, whatever the folder
        with pytest.raises(SyncBusyError), sync_lock(other):
            pass
    finally:
        leave.set()
        t.join(30)
    with sync_lock(root):  # free again
        assert is_locked(root)
    assert not is_locked(root)
