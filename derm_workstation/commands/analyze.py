"""``analyze …``: lesion segmentation, calibration and measurement of one photo file.

Images are read through :mod:`derm_workstation.imaging.decode`, so every coordinate
and mask is of the photo *as displayed* (after EXIF orientation).

JSON output (``--json``):

* ``segment``: ``{"out", "method", "confidence", "dermoscopic", "width", "height",
  "area_px", "polygon": [[x, y], ...], "warnings"}``.
* ``calibrate``: ``{"reference", "reference_mm", "px_per_mm", "method", "confidence",
  "ellipse": {"cx", "cy", "rx", "ry", "angle"}, "warnings"}`` — ``rx >= ry`` are the
  semi-axes in pixels, ``angle`` the direction of ``rx`` in degrees from the x-axis
  towards +y.
* ``measure``: ``{"calibrated", "px_per_mm", "calibration", "area_mm2",
  "perimeter_mm", "max_diameter_mm", "min_diameter_mm", "area_px", "perimeter_px",
  "max_diameter_px", "min_diameter_px", "asymmetry": {"axis_1", "axis_2",
  "axis_1_angle_deg"}, "border_irregularity", "colours": {six colours: share},
  "colours_present", "mean_lab", "centroid", "components", "dermoscopic", "tds",
  "warnings"}``. Uncalibrated: ``calibrated`` is false, ``px_per_mm`` and every
  ``*_mm``/``*_mm2`` value is null, the ``*_px`` values are given. ``tds`` is null
  unless the photo is dermoscopic (``--dermoscopic``, or a dermatoscope's round
  field is detected); then ``{"tds", "a", "b", "c", "d", "structures", "note"}``.
  ``calibration`` is null, or the calibration used (``method`` ``"manual"`` for
  ``--px-per-mm``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from derm_workstation.commands import Context, print_json
from derm_workstation.core.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

_REFERENCE_HELP = (
    "built-in reference: us-1c (19.05 mm), us-5c (21.21), us-10c (17.91), us-25c (24.26), "
    "eur-1c (16.25), eur-1 (23.25), eur-2 (25.75), uk-1p (20.3), uk-2p (25.9), "
    "gbp-1 (23.43), sticker-10mm, sticker-15mm, sticker-20mm, or sticker-<N>mm "
    "(default: sticker-10mm)")


def register(sub: Any, ctx: Context) -> None:
    actions = ctx.group(sub, "analyze",
                        "segment, calibrate and measure a lesion on a photo file")

    sg = actions.add_parser("segment", help="outline the lesion; write a 0/255 PNG mask")
    sg.add_argument("image", type=Path)
    sg.add_argument("--out", type=Path, required=True, metavar="MASK.png",
                    help="where to write the mask (PNG, the photo's size)")
    sg.add_argument("--seed", metavar="X,Y",
                    help="a point inside the lesion (pixels of the photo as displayed); "
                         "without it the lesion is found automatically")
    sg.add_argument("--json", action="store_true", help="print JSON")
    sg.set_defaults(func=cmd_segment)

    ca = actions.add_parser("calibrate",
                            help="find a coin or calibration sticker: pixels per mm")
    ca.add_argument("image", type=Path)
    _reference_options(ca)
    ca.add_argument("--json", action="store_true", help="print JSON")
    ca.set_defaults(func=cmd_calibrate)

    me = actions.add_parser("measure", help="measure the lesion outlined by a mask")
    me.add_argument("image", type=Path)
    me.add_argument("--mask", type=Path, required=True, metavar="MASK.png",
                    help="the lesion mask (white = lesion), the photo's size")
    cal = me.add_mutually_exclusive_group()
    cal.add_argument("--px-per-mm", type=float, metavar="F", help="known calibration")
    cal.add_argument("--auto-calibrate", action="store_true",
                     help="find a coin or calibration sticker in the photo")
    _reference_options(me)
    me.add_argument("--dermoscopic", action="store_true",
                    help="a dermoscopic photo: add the ABCD total dermoscopy score "
                         "(detected automatically when a dermatoscope's round field shows)")
    me.add_argument("--json", action="store_true", help="print JSON")
    me.set_defaults(func=cmd_measure)


def _reference_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--reference", metavar="NAME", help=_REFERENCE_HELP)
    g.add_argument("--reference-mm", type=float, metavar="D",
                   help="a custom circular reference of diameter D millimetres")


def _reference(args: argparse.Namespace) -> tuple[str, float]:
    from derm_workstation.imaging.calibration import reference_diameter

    if args.reference_mm is not None:
        d = float(args.reference_mm)
        if not (1.0 <= d <= 200.0):
            raise InputError("--reference-mm must be between 1 and 200 millimetres.")
        return f"custom {d:g} mm", d
    name = args.reference or "sticker-10mm"
    return name, reference_diameter(name)


def _load_rgb(path: Path) -> npt.NDArray[np.uint8]:
    import numpy as np

    from derm_workstation.imaging.decode import decode_image, read_image_file

    img = decode_image(read_image_file(path))
    return np.asarray(img, dtype=np.uint8)


def _parse_seed(text: str) -> tuple[float, float]:
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise InputError(f"--seed must be two numbers X,Y (pixels), not '{text}'.") from None


def cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from derm_workstation.imaging.segmentation import segment

    seed = _parse_seed(args.seed) if args.seed else None
    out: Path = args.out
    if not out.parent.is_dir():
        raise InputError(f"The folder for --out does not exist: {out.parent}")
    rgb = _load_rgb(args.image)
    seg = segment(rgb, seed)
    try:
        Image.fromarray(seg.mask.astype(np.uint8) * 255, mode="L").save(out, format="PNG")
    except OSError as exc:
        raise InputError(f"The mask cannot be written to {out} "
                         f"({exc.strerror or exc}).") from exc
    if args.json:
        print_json({"out": str(out), **seg.as_json()})
    else:
        h, w = seg.mask.shape
        print(f"{out}: {w} x {h} mask, lesion {seg.area_px} px ({seg.method}, "
              f"confidence {seg.confidence:.2f})")
        for warning in seg.warnings:
            print(f"warning: {warning}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from derm_workstation.imaging.calibration import detect_reference

    name, diameter = _reference(args)
    rgb = _load_rgb(args.image)
    cal = detect_reference(rgb, diameter)
    if args.json:
        print_json({"reference": name, **cal.as_json()})
    else:
        e = cal.ellipse
        print(f"{cal.px_per_mm:.3f} px/mm from {name} ({diameter:g} mm), confidence "
              f"{cal.confidence:.2f}")
        if e is not None:
            print(f"reference at ({e.cx:.1f}, {e.cy:.1f}), radii {e.rx:.1f} x {e.ry:.1f} px, "
                  f"angle {e.angle_deg:.1f}°")
        for warning in cal.warnings:
            print(f"warning: {warning}")
    return 0


def _load_mask(path: Path, shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
    import numpy as np

    from derm_workstation.imaging.decode import decode_image, read_image_file

    img = np.asarray(decode_image(read_image_file(path)), dtype=np.uint8)
    if img.shape[:2] != shape:
        raise InputError(f"The mask is {img.shape[1]} x {img.shape[0]} pixels but the photo "
                         f"is {shape[1]} x {shape[0]}; they must be the same size.")
    mask: npt.NDArray[np.bool_] = img.max(axis=2) >= 128
    return mask


def cmd_measure(args: argparse.Namespace) -> int:
    from derm_workstation.imaging.calibration import detect_reference
    from derm_workstation.imaging.metrics import measure
    from derm_workstation.imaging.segmentation import looks_dermoscopic

    if (args.reference or args.reference_mm is not None) and not args.auto_calibrate:
        raise InputError("--reference and --reference-mm go with --auto-calibrate.")
    if args.px_per_mm is not None and not (args.px_per_mm > 0 and args.px_per_mm < 1e5):
        raise InputError("--px-per-mm must be a positive number.")
    rgb = _load_rgb(args.image)
    mask = _load_mask(args.mask, rgb.shape[:2])
    calibration: dict[str, Any] | None = None
    px_per_mm: float | None = None
    warnings: list[str] = []
    if args.px_per_mm is not None:
        px_per_mm = float(args.px_per_mm)
        calibration = {"method": "manual", "px_per_mm": px_per_mm}
    elif args.auto_calibrate:
        name, diameter = _reference(args)
        cal = detect_reference(rgb, diameter, lesion=mask)
        px_per_mm = cal.px_per_mm
        calibration = {"reference": name, **cal.as_json()}
        warnings.extend(cal.warnings)
    dermoscopic = bool(args.dermoscopic) or looks_dermoscopic(rgb)
    metrics = measure(mask, rgb, px_per_mm, dermoscopic=dermoscopic)
    result = metrics.as_json()
    result["calibration"] = calibration
    result["warnings"] = warnings + result["warnings"]
    if args.json:
        print_json(result)
        return 0
    if metrics.calibrated:
        print(f"area {metrics.area_mm2:.2f} mm², perimeter {metrics.perimeter_mm:.2f} mm")
        print(f"longest diameter {metrics.max_diameter_mm:.2f} mm, shortest "
              f"{metrics.min_diameter_mm:.2f} mm")
    else:
        print("uncalibrated (pixels):")
        print(f"area {metrics.area_px:.0f} px², perimeter {metrics.perimeter_px:.1f} px")
        print(f"longest diameter {metrics.max_diameter_px:.1f} px, shortest "
              f"{metrics.min_diameter_px:.1f} px")
    a1, a2 = metrics.asymmetry
    print(f"asymmetry {a1:.3f} / {a2:.3f}, border irregularity "
          f"{metrics.border_irregularity:.3f}")
    present = ", ".join(f"{c} {metrics.colours[c]:.0%}" for c in metrics.colours_present)
    print(f"colours: {present or 'none of the six'}")
    if metrics.tds is not None:
        t = metrics.tds
        print(f"TDS {t.tds:.2f} (A {t.a}, B {t.b}, C {t.c}, D {t.d}) — {t.note}")
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    return 0
