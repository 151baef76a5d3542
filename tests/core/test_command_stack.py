"""The core undo/redo stack."""

from __future__ import annotations

import pytest

from derm_workstation.core.command_stack import CallbackCommand, Command, CommandStack


class Append(Command):
    def __init__(self, target: list[int], value: int) -> None:
        self.target, self.value = target, value
        self.text = f"append {value}"

    def do(self) -> None:
        self.target.append(self.value)

    def undo(self) -> None:
        self.target.remove(self.value)


def test_push_undo_redo_and_flags() -> None:
    changes: list[tuple[bool, bool]] = []
    stack = CommandStack()
    stack.on_change = lambda: changes.append((stack.can_undo(), stack.can_redo()))
    data: list[int] = []
    assert not stack.can_undo() and not stack.can_redo()
    stack.push(Append(data, 1))
    stack.push(Append(data, 2))
    assert data == [1, 2] and stack.undo_text() == "append 2"
    assert stack.undo() is not None
    assert data == [1] and stack.can_redo() and stack.redo_text() == "append 2"
    stack.undo()
    assert data == [] and not stack.can_undo()
    assert stack.undo() is None  # nothing left: no change, no callback
    stack.redo()
    stack.redo()
    assert data == [1, 2] and not stack.can_redo()
    assert stack.redo() is None
    assert changes == [(True, False), (True, False), (True, True), (False, True),
                       (True, True), (True, False)]


def test_push_after_undo_drops_redo_side() -> None:
    stack = CommandStack()
    data: list[int] = []
    stack.push(Append(data, 1))
    stack.push(Append(data, 2))
    stack.undo()
    stack.push(Append(data, 3))
    assert data == [1, 3]
    assert not stack.can_redo()
    stack.undo()
    stack.undo()
    assert data == []


def test_clear_and_limit() -> None:
    stack = CommandStack(limit=3)
    data: list[int] = []
    for i in range(5):
        stack.push(Append(data, i))
    assert len(stack) == 3
    while stack.undo():
        pass
    assert data == [0, 1]  # the two oldest fell off the stack
    stack.redo()
    stack.clear()
    assert not stack.can_undo() and not stack.can_redo()


def test_failing_command_leaves_stack_unchanged() -> None:
    stack = CommandStack()
    data: list[int] = []
    stack.push(Append(data, 1))

    def boom() -> None:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        stack.push(CallbackCommand("bad", boom, lambda: None))
    assert len(stack) == 1 and stack.undo_text() == "append 1"
    flaky = CallbackCommand("flaky", lambda: data.append(9), boom)
    stack.push(flaky)
    with pytest.raises(RuntimeError):
        stack.undo()
    assert stack.undo_text() == "flaky" and not stack.can_redo()
