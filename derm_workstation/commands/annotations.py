"""``annotations export``: a photo's annotations as JSON and as a burned-in copy.

``--json-out F`` writes the annotations with their measurements (the format of
:meth:`~derm_workstation.core.annotations.AnnotationService.export_json`);
``--image-out F`` writes a *new* image (JPEG or PNG, by the extension): the photo as
displayed with the annotations, their measurement labels and — when the photo is
calibrated — a scale bar drawn in, with no EXIF, GPS or other metadata of the
original. Both exports are recorded in the audit trail (never the file's path).

JSON output (``--json``): ``{"photo_id", "json_out", "annotations", "image_out",
"image_format", "calibrated", "px_per_mm"}`` (the ``*_out`` keys only for the files
written).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from derm_workstation.commands import Context, open_workspace, print_json


def register(sub: Any, ctx: Context) -> None:
    actions = ctx.group(sub, "annotations", "export the annotations of a photo")
    ex = actions.add_parser("export", parents=[ctx.store],
                            help="write a photo's annotations as JSON and/or an annotated copy")
    ex.add_argument("photo_id", metavar="PHOTO_ID",
                    help="the photo's id (see 'case show ID --json'), or its first 8+ "
                         "characters")
    ex.add_argument("--json-out", type=Path, metavar="F",
                    help="write the annotations and their measurements as JSON")
    ex.add_argument("--image-out", type=Path, metavar="F",
                    help="write the photo with the annotations burned in (.jpg or .png)")
    ex.add_argument("--json", action="store_true", help="print a JSON summary")
    ex.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from derm_workstation.core.errors import InputError
    from derm_workstation.core.lesion_analysis import LesionAnalysisService, export_format
    from derm_workstation.core.users import local_actor

    if args.json_out is None and args.image_out is None:
        raise InputError("Nothing to export: give --json-out F and/or --image-out F.")
    if args.image_out is not None:
        export_format(args.image_out)  # a wrong extension fails before any work
    ws = open_workspace(args)
    try:
        svc = LesionAnalysisService(ws, local_actor())
        photo_id = svc.resolve_photo_id(args.photo_id)
        result = svc.export(photo_id, image_out=args.image_out, json_out=args.json_out)
    finally:
        ws.close()
    if args.json:
        print_json(result)
        return 0
    if "json_out" in result:
        print(f"{result['json_out']}: {result['annotations']} annotation(s)")
    if "image_out" in result:
        scale = ("with a scale bar" if result["calibrated"]
                 else "uncalibrated: measurements in pixels, no scale bar")
        print(f"{result['image_out']}: annotated copy ({result['image_format']}, {scale})")
    return 0
