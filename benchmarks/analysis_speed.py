"""Speed of the analysis core on a 12-megapixel photo (4000 x 3000).

* segmentation of the photo (automatic, and from one click) — target ≤ 1 s;
* metrics on the 12 MP lesion mask, with and without the dermoscopy score —
  target ≤ 200 ms;
* calibration (finding the coin) on the same photo — no target, reported;
* decoding the 12 MP JPEG, for scale.

The photo is a synthetic clinical close-up (a mole and a US quarter at 40 px/mm).

With ``--calibration-sweep N``, also the accuracy of automatic calibration on N
synthetic photos (every built-in coin and a sticker, Fitzpatrick I-VI, with blur,
noise, uneven light or rotation, at 600x450 to 1600x1200): detection rate and the
error of px/mm against the truth.

    python -m benchmarks.analysis_speed [--repeat 5] [--calibration-sweep 0]
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

from derm_workstation.imaging.calibration import NoReferenceFound, detect_reference
from derm_workstation.imaging.decode import decode_image
from derm_workstation.imaging.metrics import measure
from derm_workstation.imaging.segmentation import segment
from derm_workstation.imaging.synthetic import PhotoSpec, render_rgb

from ._common import median_ms, report

_SWEEP_REFS = (("UK 1p", 20.3), ("€1", 23.25), ("US 25¢", 24.26), ("UK 2p", 25.9),
               ("€2", 25.75), ("sticker-10mm", 10.0), ("US 1¢", 19.05),
               ("1 euro-cent", 16.25), ("US 10¢", 17.91), ("£1", 23.43), ("US 5¢", 21.21))
_SIZES = ((600, 450), (800, 600), (1200, 900), (1600, 1200))


def calibration_sweep(n: int) -> dict[str, object]:
    from scipy import ndimage

    rng = np.random.default_rng(2026)
    errors: list[float] = []
    missed: list[str] = []
    for i in range(n):
        name, mm = _SWEEP_REFS[i % len(_SWEEP_REFS)]
        fz = 1 + i % 6
        w, h = _SIZES[(i // 7) % len(_SIZES)]
        ppm = float(rng.uniform(0.22, 0.55) * min(w, h) / mm)
        kind = ("pigmented", "psoriasis", "eczema")[i % 3]
        change = ("none", "blur", "noise", "uneven light", "rotation")[i % 5]
        spec = PhotoSpec(seed=50_000 + i, kind=kind, fitzpatrick=fz, severity=0.5, width=w,
                         height=h, px_per_mm=ppm, with_reference=True, reference_mm=mm,
                         reference_name=name)
        rgb, _m, ref = render_rgb(spec)
        assert ref is not None
        img = rgb.astype(np.float32)
        if change == "blur":
            img = ndimage.gaussian_filter(img, (1.5, 1.5, 0))
        elif change == "noise":
            img = img + rng.normal(0.0, 8.0, img.shape)
        elif change == "uneven light":
            img = img * (0.55 + 0.6 * np.arange(w, dtype=np.float32) / w)[None, :, None]
        out = np.clip(img, 0, 255).astype(np.uint8)
        if change == "rotation":
            out = np.asarray(Image.fromarray(out).rotate(
                23, resample=Image.Resampling.BICUBIC, center=(ref.cx, ref.cy),
                fillcolor=(40, 40, 40)))
        try:
            cal = detect_reference(out, mm)
        except NoReferenceFound:
            missed.append(f"{name} Fitzpatrick {fz} {change} {w}x{h}")
            continue
        errors.append(abs(cal.px_per_mm - ppm) / ppm * 100)
    return {
        "photos": n,
        "found": len(errors),
        "not_found": missed,
        "max_error_pct": round(max(errors), 3) if errors else None,
        "mean_error_pct": round(float(np.mean(errors)), 3) if errors else None,
        "within_2pct": sum(e <= 2.0 for e in errors),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--calibration-sweep", type=int, default=0, metavar="N",
                    help="also measure calibration accuracy on N synthetic photos")
    args = ap.parse_args()
    spec = PhotoSpec(seed=3, kind="pigmented", fitzpatrick=3, severity=0.6, width=4000,
                     height=3000, px_per_mm=40.0, with_reference=True, reference_mm=24.26,
                     reference_name="US 25¢")
    rgb, truth, _ref = render_rgb(spec)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    seg = segment(rgb)
    iou = float((seg.mask & truth).sum()) / float((seg.mask | truth).sum())
    ys, xs = np.nonzero(truth)
    click = (float(xs.mean()), float(ys.mean()))
    n = args.repeat
    rows = [
        {"operation": "segment 12 MP (automatic)",
         "median_ms": median_ms(lambda: segment(rgb), repeat=n), "target_ms": 1000},
        {"operation": "segment 12 MP (one click)",
         "median_ms": median_ms(lambda: segment(rgb, click), repeat=n), "target_ms": 1000},
        {"operation": "metrics 12 MP mask",
         "median_ms": median_ms(lambda: measure(seg.mask, rgb, 40.0), repeat=n),
         "target_ms": 200},
        {"operation": "metrics 12 MP mask + TDS",
         "median_ms": median_ms(lambda: measure(seg.mask, rgb, 40.0, dermoscopic=True),
                                repeat=n),
         "target_ms": 200},
        {"operation": "calibrate 12 MP (find the coin)",
         "median_ms": median_ms(lambda: detect_reference(rgb, 24.26), repeat=max(1, n // 2)),
         "target_ms": "-"},
        {"operation": "decode 12 MP JPEG (context)",
         "median_ms": median_ms(lambda: decode_image(jpeg), repeat=n), "target_ms": "-"},
    ]
    for r in rows:
        r["median_ms"] = round(r["median_ms"], 1)
        t = r["target_ms"]
        r["ok"] = "-" if t == "-" else ("yes" if r["median_ms"] <= t else "NO")
    cal = detect_reference(rgb, 24.26)
    sweep = calibration_sweep(args.calibration_sweep) if args.calibration_sweep else None
    if sweep:
        print("calibration sweep:", sweep)
    report("analysis_speed", rows, {
        "calibration_sweep": sweep,
        "photo": "synthetic 4000x3000, mole + US quarter, 40 px/mm",
        "segmentation_jaccard": round(iou, 4),
        "calibration_px_per_mm": round(cal.px_per_mm, 4),
        "calibration_error_pct": round(100 * (cal.px_per_mm - 40.0) / 40.0, 3),
    })


if __name__ == "__main__":
    main()
