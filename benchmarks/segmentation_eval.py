"""Automatic lesion segmentation scored by the Jaccard index (intersection over union).

Two kinds of data:

* **Real dermoscopic images with expert masks**, when present: every set under
  ``../shared/data/lesions`` (relative to the repository; or ``$DERM_LESION_DATA``)
  with a ``manifest.csv`` (``image``, ``mask`` columns). Masks are thresholded at
  128 (some are lossy JPEG). These files are not part of the project and are never
  copied into it; without them the real-data rows are skipped.
* **Synthetic photos with exact masks** (``imaging.synthetic``): Fitzpatrick I-VI,
  clinical close-ups of a pigmented lesion with a calibration sticker, dermoscopic
  photos (dark round field, hair, vignette) and psoriasis plaques. For multi-plaque
  renders the score is against the largest true piece (segmentation proposes one
  lesion).

Per set: mean, median, share of images under 0.65 (the ISIC 2018 "thresholded
Jaccard" counts those as 0) and the worst image, for the automatic mode and for one
click at the most interior point of the true mask. No parameter is tuned per image.

With ``--split`` every real set of at least 10 images is also reported in two halves
by sorted file name: even indices (the half used while developing a change) and odd
indices (held out: looked at only to report, never to decide).

With ``--dev`` only what a change may be decided on is scored: real sets of fewer than
10 images whole, the even half of larger ones, and the synthetic sets (the held-out half
is not scored at all); ``--auto-only`` skips the one-click runs (about half the time).
Together they give a quick check of a candidate change before the full run.

With ``--transforms`` every real set is also scored mirrored, turned by 90 degrees
and resized (x4 for images under 400 px, x0.5 otherwise), automatic mode only: a
method that generalises scores about the same on each copy.

    python -m benchmarks.segmentation_eval [--synthetic-per-cell 3] [--per-image]
                                           [--transforms] [--split] [--dev]
                                           [--auto-only]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from derm_workstation.imaging.segmentation import NoLesionFound, segment
from derm_workstation.imaging.synthetic import PhotoSpec, render_rgb

from ._common import report

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "lesions"


#: Named image sets: set name -> [(file name, RGB image, true mask)].
Sets = dict[str, list[tuple[str, np.ndarray, np.ndarray]]]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))


def _interior_point(mask: np.ndarray) -> tuple[float, float]:
    d = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    return x + 0.5, y + 0.5


def _score(rgb: np.ndarray, truth: np.ndarray, click: bool = True
           ) -> tuple[float, float, float]:
    """(automatic Jaccard, one-click Jaccard (NaN without ``click``), seconds for the
    automatic run)."""
    t0 = time.perf_counter()
    try:
        auto = segment(rgb).mask
    except NoLesionFound:
        auto = np.zeros_like(truth)
    dt = time.perf_counter() - t0
    if not click:
        return jaccard(auto, truth), float("nan"), dt
    try:
        seeded = segment(rgb, _interior_point(truth)).mask
    except NoLesionFound:
        seeded = np.zeros_like(truth)
    return jaccard(auto, truth), jaccard(seeded, truth), dt


def real_sets(root: Path) -> Sets:
    sets: Sets = {}
    if not root.is_dir():
        return sets
    for manifest in sorted(root.glob("*/manifest.csv")):
        folder = manifest.parent
        items = []
        with manifest.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                rgb = np.asarray(Image.open(folder / row["image"]).convert("RGB"))
                mask = np.asarray(Image.open(folder / row["mask"]).convert("L")) >= 128
                if mask.shape != rgb.shape[:2]:
                    mask = np.asarray(Image.fromarray(mask).resize(
                        (rgb.shape[1], rgb.shape[0]), Image.Resampling.NEAREST))
                items.append((Path(row["image"]).name, rgb, mask))
        if items:
            sets[folder.name] = items
    return sets


def _resize(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = mask.shape
    f = 4.0 if max(h, w) < 400 else 0.5
    size = (round(w * f), round(h * f))
    method = Image.Resampling.BICUBIC if f > 1 else Image.Resampling.BOX
    return (np.asarray(Image.fromarray(rgb).resize(size, method)),
            np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST)))


TRANSFORMS = {
    "mirrored": lambda rgb, m: (np.ascontiguousarray(rgb[:, ::-1]), m[:, ::-1]),
    "turned 90": lambda rgb, m: (np.ascontiguousarray(np.rot90(rgb)), np.rot90(m)),
    "resized": _resize,
}


def transformed_sets(sets: Sets) -> Sets:
    out: Sets = {}
    for name, items in sets.items():
        for tname, fn in TRANSFORMS.items():
            out[f"{name} ({tname})"] = [(n, *fn(rgb, m)) for n, rgb, m in items]
    return out


def split_sets(sets: Sets) -> Sets:
    """Each set of 10 or more images, halved by sorted file name: even and odd indices."""
    out: Sets = {}
    for name, items in sets.items():
        if len(items) >= 10:
            ordered = sorted(items, key=lambda item: item[0])
            out[f"{name} (even: dev)"] = ordered[0::2]
            out[f"{name} (odd: held-out)"] = ordered[1::2]
    return out


def dev_sets(sets: Sets) -> Sets:
    """What a change may be decided on: small sets whole, the even half of larger ones."""
    out: Sets = {}
    for name, items in sets.items():
        if len(items) >= 10:
            out[f"{name} (even: dev)"] = sorted(items, key=lambda item: item[0])[0::2]
        else:
            out[name] = items
    return out


def synthetic_sets(per_cell: int) -> Sets:
    cells = (
        ("synthetic clinical mole + sticker", dict(kind="pigmented", px_per_mm=10.0,
                                                   with_reference=True)),
        ("synthetic dermoscopic", dict(kind="pigmented", px_per_mm=20.0, dermoscopic=True)),
        ("synthetic psoriasis plaque", dict(kind="psoriasis", px_per_mm=5.5)),
    )
    out: Sets = {}
    for name, kw in cells:
        items = []
        for fz in range(1, 7):
            for k in range(per_cell):
                seed = 10_000 + 97 * fz + 7 * k + len(name)
                spec = PhotoSpec(seed=seed, fitzpatrick=fz, severity=(0.2, 0.5, 0.8)[k % 3],
                                 width=800, height=600, **kw)  # type: ignore[arg-type]
                rgb, mask, _ref = render_rgb(spec)
                items.append((f"fz{fz}-seed{seed}", rgb, _largest(mask)))
        out[name] = items
    return out


def summarise(name: str, scores: list[tuple[str, float, float, float]]) -> dict[str, Any]:
    auto = [s[1] for s in scores]
    seeded = [s[2] for s in scores]
    clicked = None if any(math.isnan(c) for c in seeded) else seeded
    worst = min(scores, key=lambda s: s[1])
    return {
        "set": name,
        "n": len(scores),
        "mean": round(statistics.fmean(auto), 3),
        "median": round(statistics.median(auto), 3),
        "share<0.65": round(sum(a < 0.65 for a in auto) / len(auto), 3),
        "worst": f"{worst[1]:.2f} {worst[0]}",
        "click mean": None if clicked is None else round(statistics.fmean(clicked), 3),
        "click median": None if clicked is None else round(statistics.median(clicked), 3),
        "s/image": round(statistics.fmean(s[3] for s in scores), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("DERM_LESION_DATA", DEFAULT_DATA)))
    ap.add_argument("--synthetic-per-cell", type=int, default=3,
                    help="synthetic photos per Fitzpatrick type and kind (default 3)")
    ap.add_argument("--per-image", action="store_true", help="also print every image")
    ap.add_argument("--transforms", action="store_true",
                    help="also score mirrored, turned and resized copies of the real sets")
    ap.add_argument("--split", action="store_true",
                    help="also score each real set's even and odd halves (by file name)")
    ap.add_argument("--dev", action="store_true",
                    help="score only the development data: small real sets, the even "
                         "half of larger ones, synthetic (never the held-out half)")
    ap.add_argument("--auto-only", action="store_true",
                    help="automatic mode only (skip the one-click runs)")
    args = ap.parse_args()

    sets = real_sets(args.data)
    if not sets:
        print(f"(no real lesion data at {args.data}: real-image rows skipped)")
    real = dict(sets)
    if args.dev:
        sets = dev_sets(real)
    elif args.split:
        sets.update(split_sets(real))
    if args.transforms:
        sets.update(transformed_sets(dev_sets(real) if args.dev else real))
    sets.update(synthetic_sets(args.synthetic_per_cell))
    rows = []
    per_image: dict[str, list[dict[str, Any]]] = {}
    for name, items in sets.items():
        scores = []
        for image_name, rgb, truth in items:
            auto, seeded, dt = _score(rgb, truth, click=not args.auto_only)
            scores.append((image_name, auto, seeded, dt))
            if args.per_image:
                print(f"{name:36s} {image_name:32s} auto {auto:.3f}  click {seeded:.3f}")
        per_image[name] = [{"image": s[0], "auto": round(s[1], 4),
                            "click": None if math.isnan(s[2]) else round(s[2], 4)}
                           for s in scores]
        rows.append(summarise(name, scores))
    report("segmentation_eval", rows, {"per_image": per_image,
                                       "real_data": str(args.data) if sets else None})


if __name__ == "__main__":
    main()
