"""``case show``: one case from the command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from derm_workstation.commands import Context, open_workspace, print_json


def register(sub: Any, ctx: Context) -> None:
    actions = ctx.group(sub, "case", "one case")
    cs = actions.add_parser("show", help="show a case", parents=[ctx.store])
    cs.add_argument("case_id", metavar="ID", help="case id (from 'queue list'), or case number")
    cs.add_argument("--json", action="store_true", help="print JSON")
    cs.set_defaults(func=cmd_case_show)
    cc = actions.add_parser("claim", help="claim a case (the portal is told with the next sync)",
                            parents=[ctx.store])
    cc.add_argument("case_id", metavar="ID", help="case id (from 'queue list'), or case number")
    cc.add_argument("--json", action="store_true", help="print JSON")
    cc.set_defaults(func=cmd_case_claim)
    cm = actions.add_parser("message", help="queue a message to the patient",
                            parents=[ctx.store])
    cm.add_argument("case_id", metavar="ID", help="case id (from 'queue list'), or case number")
    cm.add_argument("--text-stdin", action="store_true", required=True,
                    help="read the message text from stdin")
    cm.add_argument("--json", action="store_true", help="print JSON")
    cm.set_defaults(func=cmd_case_message)


def _print_questions(items: Sequence[Any], indent: int = 2) -> None:
    for q in items:
        answer = "; ".join(q.answers)
        print(" " * indent + (f"{q.text}: {answer}" if answer else q.text))
        _print_questions(q.items, indent + 2)


def cmd_case_show(args: argparse.Namespace) -> int:
    from derm_workstation.core.services import CaseService
    from derm_workstation.core.users import local_actor

    ws = open_workspace(args)
    try:
        d = CaseService(ws, local_actor()).case_detail(args.case_id)
    finally:
        ws.close()
    if args.json:
        print_json(d.as_json())
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


def cmd_case_claim(args: argparse.Namespace) -> int:
    from derm_workstation.core.portal_actions import PortalActions
    from derm_workstation.core.users import local_actor

    ws = open_workspace(args)
    try:
        result = PortalActions(ws, local_actor()).claim(args.case_id)
    finally:
        ws.close()
    if args.json:
        print_json(result.as_json())
    else:
        print(result.message)
    return 0


def cmd_case_message(args: argparse.Namespace) -> int:
    import sys

    from derm_workstation.core.errors import InputError
    from derm_workstation.core.portal_actions import PortalActions
    from derm_workstation.core.users import local_actor

    text = sys.stdin.read() if sys.stdin is not None else ""
    if not text.strip():
        raise InputError("The message read from stdin is empty.")
    ws = open_workspace(args)
    try:
        queued = PortalActions(ws, local_actor()).message_patient(args.case_id, text)
    finally:
        ws.close()
    if args.json:
        print_json(queued.as_json())
    else:
        print(f"Message queued ({queued.outbox_id[:8]}); it is sent with the next sync.")
    return 0
