"""``derm-workstation``: the GUI by default, headless subcommands for everything else.

Errors are one line on stderr starting ``error:``; exit code 2 means the input
was wrong (arguments, ids, files), 1 that the workstation could not do it.
Tracebacks never reach the terminal for expected problems; unexpected ones are
written to the log file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from derm_workstation import __version__
from derm_workstation.commands import MODULES, Context, Parser
from derm_workstation.core.errors import DermError, InputError

log = logging.getLogger("derm_workstation.cli")


def _store_options(p: argparse.ArgumentParser, top: bool) -> None:
    default = None if top else argparse.SUPPRESS
    p.add_argument("--data-dir", metavar="DIR", default=default,
                   help="data folder (default: $DERM_WORKSTATION_HOME or the user data folder)")
    p.add_argument("--db", metavar="URL", default=default,
                   help="database URL instead of the SQLite file in the data folder, "
                        "e.g. postgresql+psycopg://user@host/derm")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="derm-workstation",
        description="Derm Review Workstation. Without a command, opens the workstation window.",
    )
    parser.add_argument("--version", action="version", version=f"derm-workstation {__version__}")
    _store_options(parser, top=True)
    parser.add_argument("--demo", action="store_true",
                        help="open the window on synthetic demo cases (a throwaway data folder "
                             "unless --data-dir is given, which is seeded when empty and kept)")
    parser.add_argument("--demo-cases", type=int, default=40, metavar="N",
                        help="number of open demo cases (default 40)")
    parser.add_argument("--screenshot", metavar="PNG", type=Path,
                        help="render the window to PNG once the data has loaded, then exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")

    store = Parser(add_help=False)
    _store_options(store, top=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    ctx = Context(store=store)
    for name in MODULES:
        importlib.import_module(f"derm_workstation.commands.{name}").register(sub, ctx)
    return parser


def cmd_gui(args: argparse.Namespace) -> int:
    from derm_workstation.core.paths import default_cache_dir
    from derm_workstation.qt.app import GuiOptions, run_gui

    data_dir = Path(args.data_dir) if args.data_dir else None
    throwaway = False
    if args.demo and data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="derm-demo-"))
        throwaway = True
    if args.demo_cases < 1:
        raise InputError("--demo-cases must be at least 1.")
    return run_gui(GuiOptions(
        data_dir=data_dir,
        db_url=args.db,
        demo=args.demo,
        demo_cases=args.demo_cases,
        screenshot=args.screenshot,
        throwaway=throwaway,
        demo_cache=default_cache_dir() / "demo-photos",
    ))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    try:
        if args.command is None:
            return cmd_gui(args)
        return int(args.func(args))
    except DermError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # last resort: no traceback on the terminal
        log.debug("unexpected failure", exc_info=True)
        _log_unexpected(exc, getattr(args, "data_dir", None))
        print(f"error: unexpected problem ({type(exc).__name__}); details are in the log file",
              file=sys.stderr)
        return 1


def _log_unexpected(exc: BaseException, data_dir: str | None) -> None:
    try:
        from derm_workstation.core.paths import resolve_data_paths

        logs = resolve_data_paths(data_dir).logs
        logs.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(logs / "workstation.log", encoding="utf-8")
        logger = logging.getLogger("derm_workstation.crash")
        logger.addHandler(handler)
        logger.error("unexpected failure", exc_info=exc)
        handler.close()
        logger.removeHandler(handler)
    except Exception:
        pass


if __name__ == "__main__":
    sys.exit(main())
