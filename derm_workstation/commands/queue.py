"""``queue list``: the case queue from the command line."""

from __future__ import annotations

import argparse
from typing import Any

from derm_workstation.commands import Context, open_workspace, print_json, split_values
from derm_workstation.core.errors import InputError


def register(sub: Any, ctx: Context) -> None:
    actions = ctx.group(sub, "queue", "the case queue")
    ql = actions.add_parser("list", help="list cases (open cases by default)",
                            parents=[ctx.store])
    ql.add_argument("--status", action="append", metavar="S",
                    help="only this status (repeat or comma-separate); 'all' for every case")
    ql.add_argument("--priority", action="append", metavar="P", help="only this priority")
    ql.add_argument("--search", default="", metavar="TEXT", help="words to search for")
    ql.add_argument("--sort", default="priority", help="sort key (default: priority)")
    ql.add_argument("--desc", action="store_true", help="reverse the order")
    ql.add_argument("--limit", type=int, default=0, metavar="N", help="at most N cases")
    ql.add_argument("--json", action="store_true", help="print JSON")
    ql.set_defaults(func=cmd_queue_list)


def cmd_queue_list(args: argparse.Namespace) -> int:
    from derm_workstation.core.models import CASE_STATUSES
    from derm_workstation.core.queue import QueueQuery
    from derm_workstation.core.services import CaseService
    from derm_workstation.core.users import local_actor

    statuses = split_values(args.status)
    if statuses and "all" in statuses:
        statuses = CASE_STATUSES
    if args.limit < 0:
        raise InputError("--limit must be 0 (no limit) or more.")
    query = QueueQuery(statuses=statuses, priorities=split_values(args.priority), text=args.search,
                       sort=args.sort, descending=args.desc)
    ws = open_workspace(args)
    try:
        svc = CaseService(ws, local_actor())
        ids = svc.queue_ids(query)
        if args.limit:
            ids = ids[: args.limit]
        rows = svc.queue_rows(ids)
    finally:
        ws.close()
    if args.json:
        print_json([r.as_json() for r in rows])
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
