"""``portal serve``: run the reference FHIR portal standalone."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from derm_workstation.commands import Context
from derm_workstation.core.errors import DermError, InputError

DB_NAME = "portal.sqlite3"

_DESCRIPTION = """\
Run the reference portal: a FHIR R4 server implementing docs/PORTAL_CONTRACT.md, for
demos, training and tests. It holds synthetic cases in its own SQLite file
(DIR/portal.sqlite3), never the workstation's data. Prints the FHIR base URL on one
line on stdout, then serves until Ctrl+C or SIGTERM.
"""

_EPILOG = """\
Fault SPEC: comma-separated key=value, e.g.
  latency=0.2,error_rate=0.1,drop=0.05,truncate=0.05,bad_hash=0.1,seed=7
  latency    seconds added to every FHIR request
  error_rate probability of a 500, or a 503 or 429 with Retry-After: 1
  drop       probability of a connection reset mid-body (writes are committed first)
  truncate   probability of a Binary body shorter than its Content-Length
  bad_hash   probability of a wrong Media.content.hash
  seed       makes the faults reproducible
  or_lists   honour (default), literal or reject: act like a minimal server that does
             not do comma OR-lists on _id and reference parameters (literal: nothing
             matches; reject: 400), to try the workstation's fallback

Point the workstation at it with:
  derm-workstation sync --portal-url <printed URL> --token-stdin
"""


def register(sub: Any, ctx: Context) -> None:
    actions = ctx.group(sub, "portal", "the reference FHIR portal (demos, training, tests)")
    ps = actions.add_parser("serve", help="run the reference FHIR portal",
                            description=_DESCRIPTION, epilog=_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ps.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1, this computer only)")
    ps.add_argument("--port", type=int, default=0, metavar="P",
                    help="port (default 0: any free port; the URL line shows which)")
    ps.add_argument("--seed-cases", type=int, default=0, metavar="N",
                    help="add N open demo cases (plus earlier visits) when the portal "
                         "database is empty")
    ps.add_argument("--seed", type=int, default=1729, metavar="N",
                    help="demo dataset seed (default 1729)")
    tok = ps.add_mutually_exclusive_group()
    tok.add_argument("--token", metavar="T",
                     help="require 'Authorization: Bearer T' (visible to other users of "
                          "this computer; prefer --token-stdin)")
    tok.add_argument("--token-stdin", action="store_true",
                     help="read the required bearer token from the first line of stdin")
    ps.add_argument("--client-id", metavar="ID",
                    help="also issue tokens by OAuth2 client credentials at /oauth/token; "
                         "the client secret is read from stdin (after the token, if "
                         "--token-stdin is given)")
    ps.add_argument("--faults", metavar="SPEC", help="inject faults (see below)")
    ps.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS,
                    help="folder for the portal's own database, kept between runs "
                         "(default: a temporary folder deleted on exit)")
    ps.set_defaults(func=cmd_portal_serve)


def _read_line(what: str) -> str:
    line = sys.stdin.readline().strip()
    if not line:
        raise InputError(f"expected the {what} on stdin, got nothing.")
    return line


def cmd_portal_serve(args: argparse.Namespace) -> int:
    from derm_workstation.portal.reference.faults import FaultSpec
    from derm_workstation.portal.reference.server import ReferencePortal

    if not 0 <= args.port <= 65535:
        raise InputError("--port must be between 0 and 65535.")
    if args.seed_cases < 0:
        raise InputError("--seed-cases must not be negative.")
    faults = FaultSpec.parse(args.faults) if args.faults else None
    token = _read_line("token") if args.token_stdin else args.token
    secret = _read_line("client secret") if args.client_id else None

    data_dir: str | None = getattr(args, "data_dir", None)
    throwaway = data_dir is None
    folder = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="derm-portal-"))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    try:
        if args.seed_cases:
            print(f"reference portal: preparing {args.seed_cases} demo cases…", file=sys.stderr,
                  flush=True)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            portal = ReferencePortal.start(
                folder / DB_NAME, host=args.host, port=args.port, token=token,
                client_id=args.client_id, client_secret=secret, seed_cases=args.seed_cases,
                seed=args.seed, faults=faults)
        except OSError as exc:
            raise DermError(f"cannot serve on {args.host}:{args.port}: "
                            f"{exc.strerror or exc}.") from exc
        try:
            previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
            print(portal.base_url, flush=True)
            notes = [f"reference portal: {portal.store.count('Task')} cases in "
                     f"{folder / DB_NAME}"]
            if portal.token_url:
                notes.append(f"OAuth2 token URL: {portal.token_url}")
            if faults is not None and faults.active:
                notes.append(f"faults: {faults}")
            notes.append("Ctrl+C to stop")
            print("; ".join(notes), file=sys.stderr, flush=True)
            while not stop.wait(0.25):  # a timeout, so signals are seen on Windows too
                pass
        finally:
            portal.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    finally:
        if throwaway:
            shutil.rmtree(folder, ignore_errors=True)
    return 0
