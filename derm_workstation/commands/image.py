"""``image …``: inspecting image files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from derm_workstation.commands import Context, print_json


def register(sub: Any, ctx: Context) -> None:
    actions = ctx.group(sub, "image", "inspect image files")
    ii = actions.add_parser("info",
                            help="format, size, orientation and colour profile of a photo")
    ii.add_argument("file", type=Path)
    ii.add_argument("--json", action="store_true")
    ii.set_defaults(func=cmd_image_info)


def cmd_image_info(args: argparse.Namespace) -> int:
    from derm_workstation.imaging.decode import inspect_file

    info = inspect_file(args.file)
    if args.json:
        print_json(info.as_json())
    else:
        for key, value in info.as_json().items():
            print(f"{key}: {value}")
    return 0
