"""Headless subcommands of ``derm-workstation``, one module per area.

Each module has ``register(sub, ctx)`` that adds its parsers and sets
``func`` on each leaf parser. Modules import heavy libraries inside the
command functions, so ``derm-workstation --help`` stays fast. Add a module
name to ``MODULES`` to add a command group.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from derm_workstation.core.workspace import Workspace

MODULES: tuple[str, ...] = ("queue", "case", "demo", "image", "portal", "sync", "analyze",
                            "annotations")


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage problem as one ``error:`` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


@dataclass(frozen=True)
class Context:
    """What every command module needs to build its parsers."""

    store: argparse.ArgumentParser  # parent parser with --data-dir / --db

    def group(self, sub: Any, name: str, help: str) -> Any:
        """A command group ``name ACTION …``; returns its sub-parsers."""
        p = sub.add_parser(name, help=help, parents=[self.store])
        return p.add_subparsers(dest="action", metavar="ACTION", required=True,
                                parser_class=Parser)


def open_workspace(args: argparse.Namespace) -> Workspace:
    from derm_workstation.core.workspace import Workspace

    return Workspace.open(getattr(args, "data_dir", None), getattr(args, "db", None))


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def split_values(values: Sequence[str] | None) -> tuple[str, ...] | None:
    """Repeated and comma-separated option values, flattened; None when none given."""
    if not values:
        return None
    out = tuple(v.strip() for raw in values for v in raw.split(",") if v.strip())
    return out or None
