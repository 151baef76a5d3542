"""Fixed thread lanes for the GUI (ARCHITECTURE rule 4).

* the **database lane**: one thread, so SQLite sees a single writer and work
  runs in the order it was asked for;
* the **image pool**: a few threads for reading and decoding photos;
* the **network lane**: one thread for portal syncs. A sync can take minutes (photo
  downloads), so it must not hold up the database lane, which the queue and the open
  case need; the sync engine opens its own short sessions (SQLite in WAL mode serialises
  the few writes), and at most one sync runs at a time.

Work is submitted with a callback; the result (or the exception) comes back on
the GUI thread through a queued signal. Nothing here ever waits on the GUI
thread, and there are no ``processEvents()`` loops.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal

log = logging.getLogger(__name__)

Done = Callable[[Any], None]
Failed = Callable[[BaseException], None]


class QtTaskManager(QObject):
    """Runs callables on the lanes and reports back on the GUI thread."""

    _deliver = Signal(object)
    #: Emitted (on the GUI thread) with the number of tasks still running.
    busy_changed = Signal(int)

    def __init__(self, parent: QObject | None = None, image_workers: int | None = None) -> None:
        super().__init__(parent)
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-lane")
        n = image_workers or max(2, min(4, os.cpu_count() or 2))
        self._images = ThreadPoolExecutor(max_workers=n, thread_name_prefix="image-pool")
        self._net = ThreadPoolExecutor(max_workers=1, thread_name_prefix="net-lane")
        self._pending = 0
        self._closed = False
        self._deliver.connect(self._on_deliver, Qt.ConnectionType.QueuedConnection)

    @property
    def pending(self) -> int:
        return self._pending

    def run_db(self, fn: Callable[[], Any], on_done: Done | None = None,
               on_error: Failed | None = None) -> None:
        self._submit(self._db, fn, on_done, on_error)

    def run_image(self, fn: Callable[[], Any], on_done: Done | None = None,
                  on_error: Failed | None = None) -> None:
        self._submit(self._images, fn, on_done, on_error)

    def run_net(self, fn: Callable[[], Any], on_done: Done | None = None,
                on_error: Failed | None = None) -> None:
        self._submit(self._net, fn, on_done, on_error)

    def _submit(self, pool: ThreadPoolExecutor, fn: Callable[[], Any], on_done: Done | None,
                on_error: Failed | None) -> None:
        if self._closed:
            return
        self._pending += 1
        self.busy_changed.emit(self._pending)
        fut: Future[Any] = pool.submit(fn)
        fut.add_done_callback(lambda f: self._deliver.emit((f, on_done, on_error)))

    def _on_deliver(self, payload: tuple[Future[Any], Done | None, Failed | None]) -> None:
        fut, on_done, on_error = payload
        self._pending -= 1
        self.busy_changed.emit(self._pending)
        if self._closed:
            return
        exc = fut.exception()
        if exc is not None:
            if on_error is not None:
                on_error(exc)
            else:
                log.error("background task failed", exc_info=exc)
            return
        if on_done is not None:
            on_done(fut.result())

    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting work; finish (or cancel) what is queued; join the threads."""
        self._closed = True
        self._db.shutdown(wait=wait, cancel_futures=True)
        self._images.shutdown(wait=wait, cancel_futures=True)
        self._net.shutdown(wait=wait, cancel_futures=True)
