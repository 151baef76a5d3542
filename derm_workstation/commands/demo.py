"""``demo seed``: synthetic demo data without the window."""

from __future__ import annotations

import argparse
from typing import Any

from derm_workstation.commands import Context, open_workspace, print_json
from derm_workstation.core.errors import InputError


def register(sub: Any, ctx: Context) -> None:
    actions = ctx.group(sub, "demo", "synthetic demo data")
    ds = actions.add_parser("seed", help="fill an empty data folder with demo cases",
                            parents=[ctx.store])
    ds.add_argument("--cases", type=int, default=40, metavar="N")
    ds.add_argument("--seed", type=int, default=1729, metavar="N")
    ds.add_argument("--json", action="store_true")
    ds.set_defaults(func=cmd_demo_seed)


def cmd_demo_seed(args: argparse.Namespace) -> int:
    from derm_workstation.core.paths import default_cache_dir
    from derm_workstation.demo.seed import seed_demo

    if args.cases < 1:
        raise InputError("--cases must be at least 1.")
    ws = open_workspace(args)
    try:
        summary = seed_demo(ws, n_cases=args.cases, seed=args.seed,
                            cache_dir=default_cache_dir() / "demo-photos")
    finally:
        ws.close()
    result = {"cases": summary.cases, "photos": summary.photos, "skipped": summary.skipped,
              "data_dir": str(ws.paths.root)}
    if args.json:
        print_json(result)
    elif summary.skipped:
        print(f"{ws.paths.root} already holds cases; nothing was added.")
    else:
        print(f"Added {summary.cases} demo cases with {summary.photos} photos to {ws.paths.root}")
    return 0
