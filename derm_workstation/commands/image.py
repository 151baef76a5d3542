"""``image …``: inspecting image files and aligning a follow-up photo to its baseline."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from derm_workstation.commands import Context, print_json

log = logging.getLogger(__name__)

INFO_TIMEOUT_S = 9.5
"""``image info`` gives up (exit 2) after this long, so it always answers within 10 s."""
_MODELS = ("similarity", "affine")  # = imaging.registration.MODELS, without importing numpy


def register(sub: Any, ctx: Context) -> None:
    actions = ctx.group(sub, "image", "inspect image files, align photos")
    ii = actions.add_parser(
        "info", help="format, size, orientation and colour profile of a photo",
        description="Validate a photo file (safely: hostile or broken files are refused with "
                    "a reason, exit 2) and print its facts. Width and height are as "
                    "displayed, after EXIF orientation.")
    ii.add_argument("file", type=Path)
    ii.add_argument("--json", action="store_true", help="print JSON")
    ii.add_argument("--timeout", type=float, default=INFO_TIMEOUT_S, metavar="SECONDS",
                    help=f"give up after SECONDS (default {INFO_TIMEOUT_S})")
    ii.set_defaults(func=cmd_image_info)

    ia = actions.add_parser(
        "align", help="align a follow-up photo to its baseline photo",
        description="Find the transform from FOLLOWUP pixel coordinates to BASE pixel "
                    "coordinates (full-resolution, as displayed; pixel centres at integers) "
                    "from matching skin features. Exit 2 with the reason when no "
                    "trustworthy alignment is found.")
    ia.add_argument("base", type=Path, help="the baseline photo")
    ia.add_argument("followup", type=Path, help="the follow-up photo to align to it")
    ia.add_argument("--model", choices=_MODELS, default="similarity",
                    help="similarity (rotation, zoom, shift; default) or affine (also shear)")
    ia.add_argument("--json", action="store_true", help="print JSON")
    ia.set_defaults(func=cmd_image_align)


def _watchdog(seconds: float) -> threading.Timer:
    """Ends the process with one ``error:`` line (exit 2) if the work takes too long.

    Decoders release the GIL while they work, so the timer runs even during a long
    decode. A last line of defence: the decoder's own limits normally answer first."""

    def expire() -> None:
        sys.stderr.write(
            f"error: Reading the file took longer than {seconds:g} s; it is probably "
            "damaged or not a real photo.\n"
        )
        sys.stderr.flush()
        os._exit(2)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def cmd_image_info(args: argparse.Namespace) -> int:
    from derm_workstation.core.errors import DermError, InputError

    if not 0 < args.timeout <= 86400:
        raise InputError("--timeout must be more than 0 and at most 86400 seconds.")
    timer = _watchdog(args.timeout)  # before the imaging imports: they count too
    try:
        from derm_workstation.imaging.decode import inspect_file

        info = inspect_file(args.file)
    except DermError:
        raise
    except Exception as exc:  # a decoder failure nobody foresaw: still a rejected file
        from derm_workstation.imaging.decode import ImageRejected

        log.debug("unexpected failure reading %s", args.file.name, exc_info=True)
        raise ImageRejected(
            f"The image file cannot be read (unexpected {type(exc).__name__}).",
            code="damaged",
        ) from exc
    finally:
        timer.cancel()
    if args.json:
        print_json(info.as_json())
    else:
        for key, value in info.as_json().items():
            print(f"{key}: {value}")
    return 0


def cmd_image_align(args: argparse.Namespace) -> int:
    from derm_workstation.imaging.registration import align_files

    result = align_files(args.base, args.followup, args.model)
    if args.json:
        print_json(result.as_json())
        return 0
    print(f"model: {result.model}")
    print(f"inliers: {result.inliers} of {result.matches} matching features")
    print(f"confidence: {result.confidence:.2f}")
    print(f"rms_px: {result.rms_px:.2f}")
    print("matrix (follow-up -> base pixels):")
    for row in result.matrix:
        print("  " + "  ".join(f"{v:12.6f}" for v in row))
    return 0
