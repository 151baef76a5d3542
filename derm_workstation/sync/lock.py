"""One sync per data folder at a time, across processes (GUI, CLI, a second window).

:func:`sync_lock` holds an operating-system file lock on ``sync.lock`` in the data folder
for the duration of a sync (``fcntl.flock`` on macOS/Linux, ``msvcrt.locking`` on
Windows, through the ``filelock`` package). The operating system drops the lock when the
process that holds it ends, however it ends — a killed or crashed sync never leaves a
stale lock behind. A second sync does not wait: it raises :class:`SyncBusyError` at once
(the CLI exits 1 with one ``error:`` line; the window says so and tries again at the next
interval).

The lock file itself is left in place (deleting it on release would race with a process
that has just opened it); it holds nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from derm_workstation.core.errors import DermError

log = logging.getLogger(__name__)

LOCK_NAME = "sync.lock"
BUSY_MESSAGE = ("Another sync is running on this workstation; "
                "this one was not started. Try again when it has finished.")

#: One sync per process (cheap, and it also covers a file system without file locks).
_IN_PROCESS = threading.Lock()


class SyncBusyError(DermError):
    """Another sync of the same data folder is running (in this or another process)."""


def lock_path(data_dir: Path) -> Path:
    return Path(data_dir) / LOCK_NAME


@contextmanager
def sync_lock(data_dir: Path, *, timeout: float = 0.0) -> Iterator[None]:
    """Hold the data folder's sync lock; :class:`SyncBusyError` when another sync has it.

    ``timeout`` seconds to wait for it (default 0: do not wait).
    """
    from filelock import FileLock, Timeout

    got = _IN_PROCESS.acquire(timeout=timeout) if timeout > 0 \
        else _IN_PROCESS.acquire(blocking=False)
    if not got:
        raise SyncBusyError(BUSY_MESSAGE)
    try:
        lock = FileLock(lock_path(data_dir), timeout=timeout, thread_local=False,
                        fallback_to_soft=False, preserve_lock_file=True)
        held = False
        try:
            lock.acquire()
            held = True
        except Timeout as exc:
            raise SyncBusyError(BUSY_MESSAGE) from exc
        except (OSError, NotImplementedError) as exc:
            # A folder whose file system has no locks (some network shares): the sync
            # still runs, guarded only within this process.
            log.warning("sync lock unavailable in the data folder (%s); continuing without",
                        type(exc).__name__)
        try:
            yield
        finally:
            if held:
                lock.release()
    finally:
        _IN_PROCESS.release()


def is_locked(data_dir: Path) -> bool:
    """True when some process holds the data folder's sync lock (for status displays)."""
    from filelock import FileLock, Timeout

    if not lock_path(data_dir).exists():
        return False
    probe = FileLock(lock_path(data_dir), timeout=0, thread_local=False,
                     fallback_to_soft=False, preserve_lock_file=True)
    try:
        probe.acquire()
    except Timeout:
        return True
    except (OSError, NotImplementedError):
        return False
    probe.release()
    return False


__all__ = ["BUSY_MESSAGE", "LOCK_NAME", "SyncBusyError", "is_locked", "lock_path", "sync_lock"]
