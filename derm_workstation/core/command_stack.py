"""Undo/redo in the core (ARCHITECTURE rule 6, after glue ``core/command.py``).

A :class:`Command` knows how to do and undo one change; a :class:`CommandStack`
runs commands and keeps them for undo and redo. The GUI only binds its actions
(Ctrl+Z / Ctrl+Shift+Z) to :meth:`CommandStack.undo` and :meth:`CommandStack.redo`
and listens to the change callback to enable them. No Qt here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


class Command:
    """One undoable change. Subclasses implement :meth:`do` and :meth:`undo`.

    ``do`` is called both the first time and on redo, so it must be repeatable
    after an ``undo``.
    """

    #: A short description for the Edit menu ("Add ruler", "Move arrow").
    text: str = ""

    def do(self) -> None:
        raise NotImplementedError

    def undo(self) -> None:
        raise NotImplementedError


class CallbackCommand(Command):
    """A command made of two callables (handy for small changes and tests)."""

    def __init__(self, text: str, do_fn: Callable[[], None],
                 undo_fn: Callable[[], None]) -> None:
        self.text = text
        self.do_fn = do_fn
        self.undo_fn = undo_fn

    def do(self) -> None:
        self.do_fn()

    def undo(self) -> None:
        self.undo_fn()


@dataclass
class CommandStack:
    """Commands done so far (undo side) and undone (redo side).

    ``on_change`` is called after every push, undo, redo and clear. A command whose
    ``do`` or ``undo`` raises leaves the stack as it was, and the error propagates.
    """

    on_change: Callable[[], None] | None = None
    limit: int = 200
    _undo: list[Command] = field(default_factory=list)
    _redo: list[Command] = field(default_factory=list)

    def push(self, command: Command) -> None:
        """Do ``command`` and keep it for undo; the redo side is dropped."""
        command.do()
        self._undo.append(command)
        if len(self._undo) > self.limit:
            del self._undo[0]
        self._redo.clear()
        self._changed()

    def undo(self) -> Command | None:
        if not self._undo:
            return None
        command = self._undo[-1]
        command.undo()
        self._undo.pop()
        self._redo.append(command)
        self._changed()
        return command

    def redo(self) -> Command | None:
        if not self._redo:
            return None
        command = self._redo[-1]
        command.do()
        self._redo.pop()
        self._undo.append(command)
        self._changed()
        return command

    def can_undo(self) -> bool:
        return bool(self._undo)

    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo_text(self) -> str:
        return self._undo[-1].text if self._undo else ""

    def redo_text(self) -> str:
        return self._redo[-1].text if self._redo else ""

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()
        self._changed()

    def __len__(self) -> int:
        return len(self._undo)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
