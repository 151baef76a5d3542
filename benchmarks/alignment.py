"""Automatic alignment of two 12 MP photos, decode included. Target: <= 2 s.

The base is a synthetic 4000 x 3000 skin photo (JPEG q90, see
``benchmarks.thumbnails.photo_set``); each follow-up is the same skin photographed
"again": rotated, zoomed, shifted, re-exposed, with fresh sensor noise, re-encoded as
JPEG q90 at 4000 x 3000 (one pair stored as portrait with EXIF orientation 6, so the
oriented path is timed too). Timed: ``align_files(base, follow)`` — reading both files,
the safe decode (DCT-scaled to the working size), features, matching, RANSAC — median of
``--repeat`` runs, after one warm-up. Accuracy: RMS distance, over a grid of follow-up
points that land inside the base, between the recovered and the true mapping, in
full-resolution base pixels. Peak memory (max RSS) of one ``align_files`` call is
measured in a fresh child process (this process also made the test photos).

    python -m benchmarks.alignment [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from derm_workstation.imaging.registration import align_files

from ._common import report
from .thumbnails import photo_set

W, H = 4000, 3000
TARGET_S = 2.0

# name, rotation (deg), zoom of the follow-up, shift (px), brightness, EXIF orientation
PAIRS: list[tuple[str, float, float, tuple[float, float], float, int]] = [
    ("rot 25, zoom 1.2, darker", 25.0, 1.2, (120.0, -80.0), 0.85, 1),
    ("rot -100, zoom 0.8, brighter", -100.0, 0.8, (-60.0, 40.0), 1.15, 1),
    ("rot 8, zoom 1.0, portrait EXIF 6", 8.0, 1.0, (30.0, 50.0), 1.0, 6),
]


def truth_matrix(rot: float, zoom: float, shift: tuple[float, float]) -> np.ndarray:
    """Follow-up -> base, pixel centres at integers: rotate/zoom about the centre."""
    c = np.array([(W - 1) / 2, (H - 1) / 2])
    a = math.radians(rot)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) / zoom
    m = np.eye(3)
    m[:2, :2] = r
    m[:2, 2] = c + np.asarray(shift) - r @ c
    return m


def make_follow(base: Path, out: Path, rot: float, zoom: float, shift: tuple[float, float],
                gain: float, orientation: int, seed: int) -> np.ndarray:
    """Write the follow-up JPEG; return the true follow -> base matrix (displayed px)."""
    m = truth_matrix(rot, zoom, shift)
    # Pillow's transform samples with pixel centres at +0.5: conjugate the matrix
    t = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    mp = t @ m @ np.linalg.inv(t)
    with Image.open(base) as im:
        warped = im.convert("RGB").transform(
            (W, H), Image.Transform.AFFINE, tuple(mp[:2].ravel()),
            resample=Image.Resampling.BICUBIC, fillcolor=(20, 20, 20))
    arr = np.asarray(warped, dtype=np.float32) * gain
    arr += np.random.default_rng(seed).normal(0, 3.0, arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    exif = None
    if orientation == 6:  # stored turned left; the viewer turns it back (90 deg clockwise)
        img = img.transpose(Image.Transpose.ROTATE_90)
        e = Image.Exif()
        e[0x0112] = 6
        exif = e.tobytes()
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **({"exif": exif} if exif else {}))
    out.write_bytes(buf.getvalue())
    return m


def grid_rms(est: np.ndarray, true: np.ndarray) -> float:
    ys, xs = np.mgrid[0:H:50, 0:W:50]
    pts = np.column_stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    bt = pts @ true.T
    inside = (bt[:, 0] >= 0) & (bt[:, 0] < W) & (bt[:, 1] >= 0) & (bt[:, 1] < H)
    d = (pts[inside] @ est.T)[:, :2] - bt[inside, :2]
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))


# VmHWM (Linux) is the peak of this process image only; ru_maxrss would also count the
# parent's pages at fork time.
CHILD = r"""
import resource, sys
from derm_workstation.imaging.registration import align_files
align_files(sys.argv[1], sys.argv[2])
try:
    with open("/proc/self/status") as fh:
        hwm = [ln for ln in fh if ln.startswith("VmHWM:")][0]
    print(int(hwm.split()[1]) / 1024)
except OSError:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(kb / 1024 if sys.platform != "darwin" else kb / 1024 / 1024)
"""


def child_peak_mb(base: Path, follow: Path) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(base), str(follow)],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "derm-bench-12mp")
    args = ap.parse_args()
    base = photo_set(args.cache, 1)[0]
    rows = []
    peak_mb = float("nan")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for i, (name, rot, zoom, shift, gain, orientation) in enumerate(PAIRS):
            follow = tmp / f"follow-{i}.jpg"
            true = make_follow(base, follow, rot, zoom, shift, gain, orientation, seed=i)
            for model in ("similarity", "affine"):
                result = align_files(base, follow, model)  # warm-up
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    result = align_files(base, follow, model)
                    times.append(time.perf_counter() - t0)
                rows.append({
                    "pair": name, "model": model,
                    "median_s": statistics.median(times), "max_s": max(times),
                    "inliers": result.inliers, "matches": result.matches,
                    "confidence": round(result.confidence, 3),
                    "grid_rms_px": grid_rms(result.matrix, true),
                    "inlier_rms_px": result.rms_px,
                })
            if i == 0:
                peak_mb = child_peak_mb(base, follow)
    worst = max(r["median_s"] for r in rows)
    print(f"two 12 MP photos, decode included: slowest median {worst:.2f} s "
          f"(target <= {TARGET_S} s); peak memory of one align_files call in a fresh "
          f"process: {peak_mb:.0f} MB\n")
    report("alignment", rows, {"repeat": args.repeat, "target_s": TARGET_S,
                               "slowest_median_s": worst, "peak_rss_mb": round(peak_mb)})


if __name__ == "__main__":
    main()
