"""A Qt-free notifier: the core reports problems here, the GUI shows them.

Listeners receive :class:`Notification` objects. The CLI has no listener and
prints errors itself; the Qt layer subscribes and shows a dialog or a status
message. Tracebacks go to the log, never to a clinician.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notification:
    severity: str  # "info" | "warning" | "error"
    message: str


Listener = Callable[[Notification], None]


class Notifier:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def emit(self, severity: str, message: str) -> None:
        note = Notification(severity, message)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(note)
            except Exception:
                log.exception("notification listener failed")

    def info(self, message: str) -> None:
        self.emit("info", message)

    def warning(self, message: str) -> None:
        self.emit("warning", message)

    def error(self, message: str) -> None:
        self.emit("error", message)


notifier = Notifier()
