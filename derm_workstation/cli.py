"""``derm-workstation``: the GUI by default, headless subcommands for everything else.

Errors are one line on stderr starting ``error:``; exit code 2 means the input
was wrong (arguments, ids, files), 1 that the workstation could not do it.
Tracebacks never reach the terminal for expected problems; unexpected ones are
written to the log file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from derm_workstation import __version__
from derm_workstation.core.errors import DermError, InputError

log = logging.getLogger("derm_workstation.cli")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage problem as one ``error:`` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _store_options(p: argparse.ArgumentParser, top: bool) -> None:
    default = None if top else argparse.SUPPRESS
    p.add_argument("--data-dir", metavar="DIR", default=default,
                   help="data folder (default: $DERM_WORKSTATION_HOME or the user data folder)")
    p.add_argument("--db", metavar="URL", default=default,
                   help="database URL instead of the SQLite file in the data folder, "
                        "e.g. postgresql+psycopg://user@host/derm")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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

    store = _Parser(add_help=False)
    _store_options(store, top=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    q = sub.add_parser("queue", help="the case queue", parents=[store])
    qsub = q.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=_Parser)
    ql = qsub.add_parser("list", help="list cases (open cases by default)", parents=[store])
    ql.add_argument("--status", action="append", metavar="S",
                    help="only this status (repeat or comma-separate); 'all' for every case")
    ql.add_argument("--priority", action="append", metavar="P", help="only this priority")
    ql.add_argument("--search", default="", metavar="TEXT", help="words to search for")
    ql.add_argument("--sort", default="priority", help="sort key (default: priority)")
    ql.add_argument("--desc", action="store_true", help="reverse the order")
    ql.add_argument("--limit", type=int, default=0, metavar="N", help="at most N cases")
    ql.add_argument("--json", action="store_true", help="print JSON")

    c = sub.add_parser("case", help="one case", parents=[store])
    csub = c.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=_Parser)
    cs = csub.add_parser("show", help="show a case", parents=[store])
    cs.add_argument("case_id", metavar="ID", help="case id (from 'queue list'), or case number")
    cs.add_argument("--json", action="store_true", help="print JSON")

    d = sub.add_parser("demo", help="synthetic demo data", parents=[store])
    dsub = d.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=_Parser)
    ds = dsub.add_parser("seed", help="fill an empty data folder with demo cases",
                         parents=[store])
    ds.add_argument("--cases", type=int, default=40, metavar="N")
    ds.add_argument("--seed", type=int, default=1729, metavar="N")
    ds.add_argument("--json", action="store_true")

    i = sub.add_parser("image", help="inspect image files")
    isub = i.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=_Parser)
    ii = isub.add_parser("info", help="format, size, orientation and colour profile of a photo")
    ii.add_argument("file", type=Path)
    ii.add_argument("--json", action="store_true")
    return parser


# -- commands ---------------------------------------------------------------------------------

def _workspace(args: argparse.Namespace) -> Any:
    from derm_workstation.core.workspace import Workspace

    return Workspace.open(getattr(args, "data_dir", None), getattr(args, "db", None))


def _split(values: Sequence[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    out = tuple(v.strip() for raw in values for v in raw.split(",") if v.strip())
    return out or None


def cmd_queue_list(args: argparse.Namespace) -> int:
    from derm_workstation.core.models import CASE_STATUSES
    from derm_workstation.core.queue import QueueQuery
    from derm_workstation.core.services import CaseService
    from derm_workstation.core.users import local_actor

    statuses = _split(args.status)
    if statuses and "all" in statuses:
        statuses = CASE_STATUSES
    if args.limit < 0:
        raise InputError("--limit must be 0 (no limit) or more.")
    query = QueueQuery(statuses=statuses, priorities=_split(args.priority), text=args.search,
                       sort=args.sort, descending=args.desc)
    ws = _workspace(args)
    try:
        svc = CaseService(ws, local_actor())
        ids = svc.queue_ids(query)
        if args.limit:
            ids = ids[: args.limit]
        rows = svc.queue_rows(ids)
    finally:
        ws.close()
    if args.json:
        print(json.dumps([r.as_json() for r in rows], indent=2))
        return 0
    if not rows:
        print("No cases match.")
        return 0
    for r in rows:
        age = "" if r.age_years is None else f"{r.age_years}y"
        print(f"{r.id}  {r.priority_label:<7} {r.status_label:<16} "
              f"{r.submitted_at:%Y-%m-%d %H:%M}  {r.photo_count} ph  "
              f"{r.patient_name} ({age} {r.sex})  {r.chief_complaint} — {r.body_site}")
    print(f"{len(rows)} case(s)")
    return 0


def _print_questions(items: Sequence[Any], indent: int = 2) -> None:
    for q in items:
        answer = "; ".join(q.answers)
        print(" " * indent + (f"{q.text}: {answer}" if answer else q.text))
        _print_questions(q.items, indent + 2)


def cmd_case_show(args: argparse.Namespace) -> int:
    from derm_workstation.core.services import CaseService
    from derm_workstation.core.users import local_actor

    ws = _workspace(args)
    try:
        d = CaseService(ws, local_actor()).case_detail(args.case_id)
    finally:
        ws.close()
    if args.json:
        print(json.dumps(d.as_json(), indent=2))
        return 0
    p = d.patient
    print(f"Case {d.case_number or d.id}  ({d.id})")
    print(f"  Patient:   {p.name}, {p.age_years} y, {p.sex}, {p.identifier or 'no identifier'}")
    print(f"  Status:    {d.status_label}   Priority: {d.priority_label}")
    print(f"  Submitted: {d.submitted_at:%Y-%m-%d %H:%M} UTC")
    print(f"  Complaint: {d.chief_complaint}   Site: {d.body_site}")
    if d.incomplete_reason:
        print(f"  Incomplete from portal: {d.incomplete_reason}")
    print(f"  Description: {d.description}")
    if d.questionnaire:
        print("  Questionnaire:")
        _print_questions(d.questionnaire, 4)
    for m in d.messages:
        who = "patient" if m.direction == "inbound" else "clinic"
        print(f"  Message ({who}, {m.sent_at:%Y-%m-%d %H:%M}): {m.text}")
    for ph in d.photos:
        print(f"  Photo {ph.sha256[:12]}  {ph.width}x{ph.height}  {ph.body_site}  {ph.title}")
    for e in d.earlier_cases:
        print(f"  Earlier: {e.id}  {e.submitted_at:%Y-%m-%d}  {e.status}  {e.chief_complaint}")
    return 0


def cmd_demo_seed(args: argparse.Namespace) -> int:
    from derm_workstation.core.paths import default_cache_dir
    from derm_workstation.demo.seed import seed_demo

    if args.cases < 1:
        raise InputError("--cases must be at least 1.")
    ws = _workspace(args)
    try:
        summary = seed_demo(ws, n_cases=args.cases, seed=args.seed,
                            cache_dir=default_cache_dir() / "demo-photos")
    finally:
        ws.close()
    result = {"cases": summary.cases, "photos": summary.photos, "skipped": summary.skipped,
              "data_dir": str(ws.paths.root)}
    if args.json:
        print(json.dumps(result, indent=2))
    elif summary.skipped:
        print(f"{ws.paths.root} already holds cases; nothing was added.")
    else:
        print(f"Added {summary.cases} demo cases with {summary.photos} photos to {ws.paths.root}")
    return 0


def cmd_image_info(args: argparse.Namespace) -> int:
    from derm_workstation.imaging.decode import inspect_file

    info = inspect_file(args.file)
    if args.json:
        print(json.dumps(info.as_json(), indent=2))
    else:
        for key, value in info.as_json().items():
            print(f"{key}: {value}")
    return 0


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


COMMANDS: dict[tuple[str, str | None], Callable[[argparse.Namespace], int]] = {
    ("queue", "list"): cmd_queue_list,
    ("case", "show"): cmd_case_show,
    ("demo", "seed"): cmd_demo_seed,
    ("image", "info"): cmd_image_info,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    try:
        if args.command is None:
            return cmd_gui(args)
        return COMMANDS[(args.command, args.action)](args)
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
