"""Calibration of a photo to millimetres: pixels per millimetre, and how it was found.

In the order a clinician should prefer them:

1. :func:`detect_reference` — a circular reference of known diameter lying flat on
   the skin: a calibration sticker or a coin from :data:`REFERENCES`, or any disc of
   a custom diameter. Found automatically; the user confirms it.
2. :func:`from_ruler_line` — a line the user drew over a ruler of known length.
3. :func:`from_metadata` — only an explicit physical pixel spacing written by a
   measuring device (see there); phone EXIF never qualifies, so it returns ``None``.

How :func:`detect_reference` works (classical, no trained model):

* **Candidates.** On a working copy (long side :data:`WORK_SIDE` px) the CIELAB
  lightness is smoothed and its gradient taken; every strong edge pixel votes for
  circle centres along its gradient direction at every plausible radius (a
  gradient Hough transform, one 2-D accumulator). The strongest, well-separated
  peaks are candidate centres.
* **Shape check.** Around each candidate, rays are cast at :data:`N_RAYS` angles; on
  each ray the *outermost* strong colour edge (ΔE gradient in CIELAB, so a dark
  printed ring on dark skin still counts) near the candidate radius is taken, and an
  ellipse is fitted (direct least squares, Halir & Flusser) with outliers trimmed.
  A candidate is a reference when most rays agree with the ellipse to within a few
  per cent of its radius and its axis ratio is plausible (≤ :data:`MAX_AXIS_RATIO`);
  irregular lesions, hair and skin folds fail this. Among references the one with the
  best agreement wins; a disc overlapping the lesion (when one is given) is skipped.
* **Sub-pixel edge at full resolution.** The same ray search is repeated on the
  full-resolution photo around the chosen ellipse, with sub-pixel (parabolic) peak
  positions, and the ellipse is fitted again.
* **Scale.** A flat disc photographed at an angle is foreshortened only across the
  tilt, so the *major* axis keeps the true diameter: ``px_per_mm = 2 * rx / D``.

Warnings: the reference's axis ratio above 1.1 (the camera was not square to the
skin; sizes across the tilt are under-estimated), and, when the lesion's position is
known, a reference far from the lesion in a wide shot (more than
:data:`FAR_MM` mm apart in a photo wider than :data:`WIDE_MM` mm — the skin's
curvature and the perspective make the scale differ between the two places).

Measured on synthetic photos (``python -m benchmarks.analysis_speed
--calibration-sweep 88``: every built-in coin and a sticker, Fitzpatrick I-VI, with
blur, noise, uneven light or rotation, 600x450 to 1600x1200): 82 of 88 references
found, every one within 0.82% of the true px/mm (mean 0.10%); the 6 not found were
copper coins on Fitzpatrick VI skin with noise, and coins half surrounded by plaques
or by the dark corner of a rotated picture — reported as "no reference found", never
as a wrong scale. A printed ring narrower than about 3 px (a big sticker in a small
photo) is measured at its inner edge.

``confidence`` (0..1) is the share of rays that agree with the fitted ellipse,
lowered when the ellipse is markedly elliptical or small (under 12 px radius).

Ellipses are reported as ``(cx, cy, rx, ry, angle_deg)`` in image pixel coordinates
(pixel (c, r) covers ``[c, c+1) x [r, r+1)``), ``rx >= ry`` the semi-axes, and
``angle_deg`` the direction of the ``rx`` axis measured from the image x-axis towards
+y (clockwise on screen), in ``[0, 180)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage as ndi

from derm_workstation.core.errors import InputError
from derm_workstation.imaging.segmentation import rgb_to_lab

__all__ = [
    "FAR_MM",
    "MAX_AXIS_RATIO",
    "REFERENCES",
    "WIDE_MM",
    "Calibration",
    "Ellipse",
    "NoReferenceFound",
    "Reference",
    "detect_reference",
    "fit_ellipse",
    "from_metadata",
    "from_ruler_line",
    "reference_diameter",
    "with_lesion_check",
]

FloatArray = npt.NDArray[np.float64]

WORK_SIDE = 768
"""Long side (px) of the working copy used to find candidates."""
N_RAYS = 128
"""Rays cast from a candidate centre."""
MAX_AXIS_RATIO = 1.6
"""A more elongated outline is not taken for a flat disc."""
TILT_WARNING_RATIO = 1.1
"""Axis ratio above which the camera is reported as not square to the skin."""
FAR_MM = 50.0
"""Reference-to-lesion distance (mm) counted as far apart in a wide shot."""
WIDE_MM = 200.0
"""A photo whose long side covers more than this (mm) is a wide shot."""
REL_EDGE = 0.08
"""An edge counts on a ray when at least this fraction of the ray's strongest edge."""
MIN_SHARE = 0.7
"""Share of the rays whose edge lies within 2.5% of the fitted outline."""
MAX_RESIDUAL = 0.008
"""Median distance of the outline's edges from the fitted ellipse (x radius) above which
the outline is not a manufactured disc (lesions are rarely this regular)."""
MIN_RADIUS_FRACTION = 0.02
"""Smallest reference radius searched, as a fraction of the long side."""
MAX_RADIUS_FRACTION = 0.3
"""Largest reference radius searched, as a fraction of the long side."""


@dataclass(frozen=True)
class Reference:
    """A calibration reference: its CLI name, label and true diameter."""

    name: str
    label: str
    diameter_mm: float
    kind: str  # "coin" or "sticker"


def _refs(*items: tuple[str, str, float, str]) -> dict[str, Reference]:
    return {n: Reference(n, label, d, kind) for n, label, d, kind in items}


REFERENCES: dict[str, Reference] = _refs(
    ("us-1c", "US 1¢ (penny)", 19.05, "coin"),
    ("us-5c", "US 5¢ (nickel)", 21.21, "coin"),
    ("us-10c", "US 10¢ (dime)", 17.91, "coin"),
    ("us-25c", "US 25¢ (quarter)", 24.26, "coin"),
    ("eur-1c", "1 euro-cent", 16.25, "coin"),
    ("eur-1", "€1", 23.25, "coin"),
    ("eur-2", "€2", 25.75, "coin"),
    ("uk-1p", "UK 1p", 20.3, "coin"),
    ("uk-2p", "UK 2p", 25.9, "coin"),
    ("gbp-1", "UK £1", 23.43, "coin"),
    ("sticker-10mm", "calibration sticker 10 mm", 10.0, "sticker"),
    ("sticker-15mm", "calibration sticker 15 mm", 15.0, "sticker"),
    ("sticker-20mm", "calibration sticker 20 mm", 20.0, "sticker"),
)
"""Built-in references by CLI name. ``sticker-<N>mm`` with any N is accepted too."""

_STICKER = re.compile(r"^sticker-(\d+(?:\.\d+)?)mm$")


def reference_diameter(name: str) -> float:
    """The diameter (mm) of a built-in reference name; InputError if unknown."""
    key = name.strip().lower()
    if key in REFERENCES:
        return REFERENCES[key].diameter_mm
    m = _STICKER.match(key)
    if m and 1.0 <= float(m.group(1)) <= 100.0:
        return float(m.group(1))
    known = ", ".join(REFERENCES)
    raise InputError(f"Unknown reference '{name}'. Known references: {known} "
                     "(or sticker-<N>mm, or give the diameter in millimetres).")


class NoReferenceFound(InputError):
    """No circular calibration reference was found in the photo."""


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in image pixel coordinates; ``rx >= ry``; angle of rx in degrees."""

    cx: float
    cy: float
    rx: float
    ry: float
    angle_deg: float

    @property
    def axis_ratio(self) -> float:
        return self.rx / self.ry if self.ry > 0 else math.inf

    def as_json(self) -> dict[str, float]:
        return {"cx": round(self.cx, 3), "cy": round(self.cy, 3), "rx": round(self.rx, 3),
                "ry": round(self.ry, 3), "angle": round(self.angle_deg, 2)}


@dataclass(frozen=True)
class Calibration:
    """Pixels per millimetre of a photo, where it came from and how far to trust it."""

    px_per_mm: float
    method: str  # "reference", "ruler" or "metadata"
    confidence: float
    ellipse: Ellipse | None = None
    reference_mm: float | None = None
    warnings: tuple[str, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        return {
            "px_per_mm": round(self.px_per_mm, 4),
            "method": self.method,
            "confidence": round(self.confidence, 3),
            "reference_mm": self.reference_mm,
            "ellipse": self.ellipse.as_json() if self.ellipse is not None else None,
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------- ellipse fit


def fit_ellipse(x: npt.ArrayLike, y: npt.ArrayLike) -> Ellipse | None:
    """Direct least-squares ellipse fit (Halir & Flusser 1998); None if degenerate."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.size < 6:
        return None
    mx, my = xa.mean(), ya.mean()
    sc = max(float(np.std(xa - mx) + np.std(ya - my)), 1e-9)
    u, v = (xa - mx) / sc, (ya - my) / sc
    d1 = np.stack([u * u, u * v, v * v], axis=1)
    d2 = np.stack([u, v, np.ones_like(u)], axis=1)
    s1, s2, s3 = d1.T @ d1, d1.T @ d2, d2.T @ d2
    try:
        t = -np.linalg.solve(s3, s2.T)
    except np.linalg.LinAlgError:
        return None
    m = s1 + s2 @ t
    m = np.array([m[2] / 2, -m[1], m[0] / 2])
    try:
        _evals, evecs = np.linalg.eig(m)
    except np.linalg.LinAlgError:
        return None
    evecs = np.real(evecs)
    cond = 4 * evecs[0] * evecs[2] - evecs[1] ** 2
    ok = np.nonzero(cond > 0)[0]
    if ok.size == 0:
        return None
    a1 = evecs[:, ok[0]]
    a, b, c = a1
    d, e, f = t @ a1
    b, d, e = b / 2, d / 2, e / 2
    den = b * b - a * c
    if abs(den) < 1e-15:
        return None
    x0 = (c * d - b * e) / den
    y0 = (a * e - b * d) / den
    num = 2 * (a * e * e + c * d * d + f * b * b - 2 * b * d * e - a * c * f)
    root = math.sqrt((a - c) ** 2 + 4 * b * b)
    ax1 = num / (den * (root - (a + c)))
    ax2 = num / (den * (-root - (a + c)))
    if ax1 <= 0 or ax2 <= 0:
        return None
    r1, r2 = math.sqrt(ax1), math.sqrt(ax2)
    # angle of the r1 axis
    theta = ((0.0 if a < c else math.pi / 2) if abs(b) < 1e-15
             else 0.5 * math.atan2(-2 * b, c - a))
    if r1 < r2:
        r1, r2 = r2, r1
        theta += math.pi / 2
    ang = math.degrees(theta) % 180.0
    return Ellipse(cx=x0 * sc + mx, cy=y0 * sc + my, rx=r1 * sc, ry=r2 * sc, angle_deg=ang)


def _ellipse_radius(e: Ellipse, theta: FloatArray) -> FloatArray:
    """Distance from the centre to the ellipse along directions ``theta`` (radians)."""
    phi = theta - math.radians(e.angle_deg)
    c, s = np.cos(phi), np.sin(phi)
    out: FloatArray = 1.0 / np.sqrt((c / e.rx) ** 2 + (s / e.ry) ** 2)
    return out


# --------------------------------------------------------------------------- detection


def _log_chroma(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Per pixel (100 ln(R/G), 100 ln(B/G)) of the sRGB values: unchanged when only
    the strength of the light changes (a shadow, a vignette), changed by a material."""
    a = rgb.astype(np.float32) + 1.0
    lg = np.log(a[..., 1])
    out = np.empty((*a.shape[:2], 2), dtype=np.float32)
    out[..., 0] = 100.0 * (np.log(a[..., 0]) - lg)
    out[..., 1] = 100.0 * (np.log(a[..., 2]) - lg)
    return out


def _working_copy(rgb: npt.NDArray[np.uint8]
                  ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], float]:
    """(CIELAB, log-chromaticity, scale) of a copy with long side at most WORK_SIDE."""
    h, w = rgb.shape[:2]
    s = min(1.0, WORK_SIDE / max(h, w))
    if s < 1.0:
        im = Image.fromarray(rgb).resize((max(round(w * s), 1), max(round(h * s), 1)),
                                         Image.Resampling.BOX, reducing_gap=2.0)
        a = np.asarray(im)
    else:
        a = rgb
    return rgb_to_lab(a.astype(np.float32) * (1.0 / 255.0)), _log_chroma(a), s


def _candidates(lum: npt.NDArray[np.float32], rmin: float, rmax: float,
                per_band: int = 3) -> list[tuple[float, float]]:
    """Circle centres from a gradient Hough transform, a few per band of radii.

    Radii are split into bands growing by x1.5, each with its own accumulator, so a
    large coin is not out-voted by the many small textured shapes of the skin.
    """
    g = ndi.gaussian_filter(lum, 1.5)
    gx = ndi.sobel(g, axis=1)
    gy = ndi.sobel(g, axis=0)
    mag = np.hypot(gx, gy)
    h, w = lum.shape
    thr = max(float(np.percentile(mag, 93)), 1e-3)
    ys, xs = np.nonzero(mag > thr)
    if len(xs) == 0:
        return []
    if len(xs) > 25000:  # the strongest edges are enough
        keep = np.argsort(mag[ys, xs])[-25000:]
        ys, xs = ys[keep], xs[keep]
    ux = (gx[ys, xs] / mag[ys, xs]).astype(np.float32)
    uy = (gy[ys, xs] / mag[ys, xs]).astype(np.float32)
    xf = xs.astype(np.float32)
    yf = ys.astype(np.float32)
    out: list[tuple[float, float]] = []
    lo = max(rmin, 2.0)
    while lo < rmax:
        hi = min(lo * 1.5, rmax)
        radii = np.arange(lo, hi + 1.0, 1.0, dtype=np.float32)
        acc = np.zeros(h * w, dtype=np.float64)
        chunk = max(1, 3_000_000 // max(len(radii), 1))
        for sgn in (1.0, -1.0):
            for i in range(0, len(xs), chunk):
                sl = slice(i, i + chunk)
                ix = np.rint(xf[sl, None] + sgn * ux[sl, None] * radii[None, :]).astype(np.int32)
                iy = np.rint(yf[sl, None] + sgn * uy[sl, None] * radii[None, :]).astype(np.int32)
                ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
                acc += np.bincount(iy[ok] * w + ix[ok], minlength=h * w)
        acc2 = ndi.gaussian_filter(acc.reshape(h, w) / len(radii), 1.5)
        size = max(5, int(lo))
        peaks = (acc2 == ndi.maximum_filter(acc2, size=size)) & (acc2 > 0)
        py, px = np.nonzero(peaks)
        for k in np.argsort(-acc2[py, px])[:per_band]:
            out.append((float(px[k]), float(py[k])))
        lo = hi
    return out


def _ray_profiles(lab: npt.NDArray[np.float32], cx: float, cy: float, r_lo: float,
                  r_hi: float, n_rays: int, sigma: float, step: float
                  ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """ΔE change per sample along rays from (cx, cy) (array coordinates, pixel centres
    at integers): (theta, radii, diff[n_rays, n_radii])."""
    h, w = lab.shape[:2]
    pad = math.ceil(r_hi + 4 * sigma + 3)
    y0, y1 = max(int(cy) - pad, 0), min(int(cy) + pad + 1, h)
    x0, x1 = max(int(cx) - pad, 0), min(int(cx) + pad + 1, w)
    crop = lab[y0:y1, x0:x1]
    if sigma > 0:
        crop = ndi.gaussian_filter(crop, (sigma, sigma, 0))
    theta = np.linspace(0, 2 * math.pi, n_rays, endpoint=False)
    radii = np.arange(max(r_lo, 0.0), r_hi + step, step)
    xx = (cx - x0) + np.cos(theta)[:, None] * radii[None, :]
    yy = (cy - y0) + np.sin(theta)[:, None] * radii[None, :]
    prof = np.stack([ndi.map_coordinates(crop[..., c], [yy, xx], order=1, mode="nearest")
                     for c in range(3)], axis=-1)
    diff = np.zeros(prof.shape[:2])
    diff[:, 1:-1] = np.sqrt(((prof[:, 2:] - prof[:, :-2]) ** 2).sum(-1)) / (2 * step)
    inside = (xx >= 0) & (xx <= crop.shape[1] - 1) & (yy >= 0) & (yy <= crop.shape[0] - 1)
    diff[~inside] = 0.0
    return theta, radii, diff


def _subpixel(d: FloatArray, k: int) -> float:
    a, b, c = d[k - 1], d[k], d[k + 1]
    den = a - 2 * b + c
    off = 0.5 * (a - c) / den if abs(den) > 1e-12 else 0.0
    return float(np.clip(off, -0.5, 0.5))


def _peak_width(d: FloatArray, k: int) -> int:
    half = 0.5 * d[k]
    lo = k
    while lo > 0 and d[lo - 1] >= half:
        lo -= 1
    hi = k
    while hi < len(d) - 1 and d[hi + 1] >= half:
        hi += 1
    return hi - lo + 1


def _significant_edges(diff: FloatArray) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """(ray index, sample index) of every sharp, significant edge on the rays.

    Significant: a local maximum of the colour change at least :data:`REL_EDGE` of the
    ray's strongest and well above the rays' typical change; sharp: no wider than the
    ray's strongest edge (a soft shadow fading into the skin is left out).
    """
    n_rays, n = diff.shape
    peak = np.zeros_like(diff, dtype=bool)
    peak[:, 1:-1] = (diff[:, 1:-1] >= diff[:, :-2]) & (diff[:, 1:-1] > diff[:, 2:])
    kmax = np.argmax(diff, axis=1)
    top = diff[np.arange(n_rays), kmax]
    floor = 3.0 * float(np.median(diff)) + 0.05
    ray_i: list[int] = []
    ray_k: list[int] = []
    for i in range(n_rays):
        k0 = int(kmax[i])
        if top[i] <= floor or k0 <= 0 or k0 >= n - 1:
            continue
        w0 = _peak_width(diff[i], k0)
        for k in np.nonzero(peak[i] & (diff[i] >= max(REL_EDGE * top[i], floor)))[0]:
            if 0 < k < n - 1 and _peak_width(diff[i], int(k)) <= 1.6 * w0 + 2:
                ray_i.append(i)
                ray_k.append(int(k))
    return np.asarray(ray_i, dtype=np.intp), np.asarray(ray_k, dtype=np.intp)


def _band_chroma(chroma: npt.NDArray[np.float32], e: Ellipse, lo: float, hi: float,
                 n_rays: int = 64) -> npt.NDArray[np.float64]:
    """Median log-chromaticity per ray in the band lo..hi (x the outline's radius);
    NaN rows for rays that leave the image."""
    h, w = chroma.shape[:2]
    theta = np.linspace(0, 2 * math.pi, n_rays, endpoint=False)
    base = _ellipse_radius(e, theta)
    f = np.linspace(lo, hi, 6)
    rad = base[:, None] * f[None, :]
    xx = e.cx + np.cos(theta)[:, None] * rad
    yy = e.cy + np.sin(theta)[:, None] * rad
    inside = ((xx >= 0) & (xx <= w - 1) & (yy >= 0) & (yy <= h - 1)).all(axis=1)
    vals = np.stack([ndi.map_coordinates(chroma[..., c], [yy, xx], order=1, mode="nearest")
                     for c in range(2)], axis=-1)
    med = np.median(vals, axis=1).astype(np.float64)
    med[~inside] = np.nan
    return med


def _is_outline(chroma: npt.NDArray[np.float32], e: Ellipse, far_scale: float = 1.0
                ) -> tuple[bool, float]:
    """Does the material change at this outline, with skin just outside it?

    Compares the log-chromaticity just inside (0.9-0.98 x radius) and just outside
    (1.015-1.08) with the skin further out (1.3-1.5, times ``far_scale`` — beyond the
    outermost ring seen around the centre), ray by ray. A reference's edge:
    different inside, skin-like outside. A shadow's edge: skin-like on both sides
    (shadowed skin has the skin's chromaticity). A coin's rim or a bimetal coin's
    core: not skin-like outside. Returns (verdict, inside contrast).
    """
    far = _band_chroma(chroma, e, 1.3 * far_scale, 1.5 * far_scale)
    inner = _band_chroma(chroma, e, 0.9, 0.98)
    outer = _band_chroma(chroma, e, 1.015, 1.08)
    ok = ~(np.isnan(far).any(axis=1) | np.isnan(inner).any(axis=1)
           | np.isnan(outer).any(axis=1))
    if int(ok.sum()) < 8:
        return False, 0.0
    d_in = float(np.median(np.hypot(*(inner[ok] - far[ok]).T)))
    d_out = float(np.median(np.hypot(*(outer[ok] - far[ok]).T)))
    return d_in >= 4.0 and d_out <= 0.4 * d_in, d_in


def _refine_edges(lab: npt.NDArray[np.float32], e: Ellipse, delta: float, n_rays: int,
                  sigma: float, step: float = 0.25) -> tuple[FloatArray, FloatArray]:
    """The strongest edge within ``delta`` px of the outline ``e`` on each ray from its
    centre, with sub-pixel position: (theta, radius)."""
    h, w = lab.shape[:2]
    pad = math.ceil(e.rx + delta + 4 * sigma + 3)
    y0, y1 = max(int(e.cy) - pad, 0), min(int(e.cy) + pad + 1, h)
    x0, x1 = max(int(e.cx) - pad, 0), min(int(e.cx) + pad + 1, w)
    crop = ndi.gaussian_filter(lab[y0:y1, x0:x1], (sigma, sigma, 0))
    theta = np.linspace(0, 2 * math.pi, n_rays, endpoint=False)
    base = _ellipse_radius(e, theta)
    offs = np.arange(-delta, delta + step, step)
    rad = base[:, None] + offs[None, :]
    xx = (e.cx - x0) + np.cos(theta)[:, None] * rad
    yy = (e.cy - y0) + np.sin(theta)[:, None] * rad
    prof = np.stack([ndi.map_coordinates(crop[..., c], [yy, xx], order=1, mode="nearest")
                     for c in range(3)], axis=-1)
    diff: FloatArray = np.zeros((n_rays, len(offs)))
    diff[:, 1:-1] = np.sqrt(((prof[:, 2:] - prof[:, :-2]) ** 2).sum(-1)) / (2 * step)
    inside = (xx >= 0) & (xx <= crop.shape[1] - 1) & (yy >= 0) & (yy <= crop.shape[0] - 1)
    diff[~inside.all(axis=1)] = 0.0
    k = np.argmax(diff, axis=1)
    n_samples = len(offs)
    ok = (k > 0) & (k < n_samples - 1) & (diff[np.arange(n_rays), k] > 0.4)
    r = np.array([rad[i, k[i]] + _subpixel(diff[i], int(k[i])) * step if ok[i] else np.nan
                  for i in range(n_rays)])
    return theta[ok], r[ok]


def _ransac_shape(x: FloatArray, y: FloatArray, trials: int = 120) -> Ellipse | None:
    """The ellipse through most of the points (within 1.5 px), refitted on them; None if
    no ellipse holds a quarter of the points."""
    n = len(x)
    if n < 12:
        return None
    rng = np.random.default_rng(12345)  # deterministic: the same photo, the same answer
    best: tuple[int, Ellipse] | None = None
    for _ in range(trials):
        idx = rng.choice(n, size=6, replace=False)
        e = fit_ellipse(x[idx], y[idx])
        if e is None or e.ry < 2.0 or e.axis_ratio > MAX_AXIS_RATIO:
            continue
        ang = np.arctan2(y - e.cy, x - e.cx)
        res = np.abs(np.hypot(x - e.cx, y - e.cy) - _ellipse_radius(e, ang))
        count = int(np.count_nonzero(res <= 1.5))
        if best is None or count > best[0]:
            best = (count, e)
            if count >= 0.8 * n:
                break
    if best is None or best[0] < max(12, n // 4):
        return None
    e = best[1]
    ang = np.arctan2(y - e.cy, x - e.cx)
    inl = np.abs(np.hypot(x - e.cx, y - e.cy) - _ellipse_radius(e, ang)) <= 1.5
    refit = fit_ellipse(x[inl], y[inl])
    return refit if refit is not None and refit.axis_ratio <= MAX_AXIS_RATIO else e


def _robust_fit(cx: float, cy: float, theta: FloatArray, r: FloatArray,
                n_rays: int = N_RAYS) -> tuple[Ellipse | None, float, float]:
    """Ellipse through edge points with outliers trimmed.

    Returns (ellipse, share of rays within 2.5% of it, median residual of the kept
    points as a fraction of the radius).
    """
    if len(r) < 12:
        return None, 0.0, 1.0
    x = cx + r * np.cos(theta)
    y = cy + r * np.sin(theta)
    keep = np.ones(len(r), dtype=bool)
    e: Ellipse | None = None
    for _ in range(5):
        e = fit_ellipse(x[keep], y[keep])
        if e is None:
            return None, 0.0, 1.0
        ang = np.arctan2(y - e.cy, x - e.cx)
        dist = np.hypot(x - e.cx, y - e.cy)
        res = np.abs(dist - _ellipse_radius(e, ang))
        tol = max(0.02 * e.ry, 0.75)
        new = res <= max(tol, 2.5 * float(np.median(res[keep])))
        if int(new.sum()) < 12:
            return None, 0.0, 1.0
        if np.array_equal(new, keep):
            break
        keep = new
    if e is None:
        return None, 0.0, 1.0
    ang = np.arctan2(y - e.cy, x - e.cx)
    res = np.abs(np.hypot(x - e.cx, y - e.cy) - _ellipse_radius(e, ang))
    share = float(np.sum(res <= 0.025 * e.ry + 0.4)) / n_rays
    return e, share, float(np.median(res[keep])) / math.sqrt(e.rx * e.ry)


@dataclass
class _Found:
    ellipse: Ellipse  # array coordinates of the working copy
    share: float


def _examine(lab: npt.NDArray[np.float32], chroma: npt.NDArray[np.float32], cx: float,
             cy: float, rmin: float, rmax: float) -> _Found | None:
    """Is there a flat disc's outline around (cx, cy)? Looked at again from the centre
    of the best ring fitted, when the candidate centre was off."""
    best: _Found | None = None
    for _ in range(4):
        found, centre = _examine_at(lab, chroma, cx, cy, rmin, rmax)
        if found is not None:  # look again from its centre until that settles
            best = found
            centre = (found.ellipse.cx, found.ellipse.cy)
        if centre is None or math.hypot(centre[0] - cx, centre[1] - cy) < 0.5:
            break
        cx, cy = centre
    return best


def _examine_at(lab: npt.NDArray[np.float32], chroma: npt.NDArray[np.float32], cx: float,
                cy: float, rmin: float, rmax: float
                ) -> tuple[_Found | None, tuple[float, float] | None]:
    """One look for a flat disc's outline around (cx, cy).

    The sharp edges on rays from the candidate centre are grouped into concentric
    rings (radii where at least half of the rays, and a fair share in every quarter
    of directions, have an edge); each ring gets an ellipse fit; the innermost ring
    that is a material boundary with skin outside it (:func:`_is_outline`), fits an
    ellipse closely and is not too elongated is the reference's outline. Rings inside
    a coin (its rim, a bimetal coin's core) have metal outside them; a shadow's or a
    halo's edge lies outside the outline.
    """
    sigma = 1.5
    theta, radii, diff = _ray_profiles(lab, cx, cy, rmin, rmax, N_RAYS, sigma, 0.5)
    ri, rk = _significant_edges(diff)
    if len(ri) < N_RAYS // 3:
        return None, None
    rr = radii[rk] + np.array([_subpixel(diff[i], k) for i, k in zip(ri, rk, strict=True)]) * 0.5
    # the centre and shape: an ellipse through most of the strongest edges, found by
    # RANSAC (the Hough peak can be several px off; a coin's rings are concentric, so any
    # of them gives the centre and, for a tilted reference, the shape)
    kmax = np.argmax(diff, axis=1)
    strongest = rk == kmax[ri]
    shape = _ransac_shape(cx + rr[strongest] * np.cos(theta[ri[strongest]]),
                          cy + rr[strongest] * np.sin(theta[ri[strongest]]))
    if shape is None or math.hypot(shape.cx - cx, shape.cy - cy) > 0.3 * rmax:
        shape = Ellipse(cx, cy, 1.0, 1.0, 0.0)
    px = cx + rr * np.cos(theta[ri])
    py = cy + rr * np.sin(theta[ri])
    # distance from the centre in "equivalent radius" along the shape: rings of a tilted
    # disc are as sharp as those of a round one
    ang = np.arctan2(py - shape.cy, px - shape.cx)
    dist = (np.hypot(px - shape.cx, py - shape.cy) / _ellipse_radius(shape, ang)
            * math.sqrt(shape.rx * shape.ry))
    fits = _ring_fits(chroma, theta, ri, rr, dist, cx, cy, rmin, rmax)
    passing = [f for f in fits if f[4]]
    far_scale = max((math.sqrt(f[1].rx * f[1].ry) for f in fits), default=1.0)
    if passing:
        # the innermost outline, grown over a thin printed ring: when the band between
        # it and the next outline out is not skin, that band belongs to the reference
        chosen = passing[0]
        for f in passing[1:]:
            r_in = math.sqrt(chosen[1].rx * chosen[1].ry)
            r_out = math.sqrt(f[1].rx * f[1].ry)
            if r_out > 1.15 * r_in:
                break
            if _band_is_reference(chroma, chosen[1], r_out / r_in, chosen[3]):
                chosen = f
        grown = _extend_over_band(chroma, chosen[1],
                                  far_scale / math.sqrt(chosen[1].rx * chosen[1].ry))
        if grown is not None:
            return grown, None
        return _Found(chosen[1], chosen[2]), None
    for f in fits:  # an edge inside a thin ring that no ring fit resolved
        if f[2] >= MIN_SHARE:
            grown = _extend_over_band(chroma, f[1], far_scale / math.sqrt(f[1].rx * f[1].ry))
            if grown is not None:
                return grown, None
    best = max(fits, key=lambda f: f[2], default=None)
    if best is not None and best[2] >= 0.3:
        return None, (best[1].cx, best[1].cy)
    return None, None


def _ring_fits(chroma: npt.NDArray[np.float32], theta: FloatArray, ri: npt.NDArray[np.intp],
               rr: FloatArray, dist: FloatArray, cx: float, cy: float, rmin: float,
               rmax: float) -> list[tuple[float, Ellipse, float, float, bool]]:
    """Concentric rings of edges and their ellipses, innermost first:
    (ring radius, ellipse, share, inside contrast, is an outline)."""
    grid = np.arange(rmin, rmax, 0.5)
    # which rays have an edge within +-max(3%, 2 px) of each grid radius: intervals
    # marked in a difference array, one row per ray
    tol = np.maximum(0.03 * dist, 2.0)
    lo = np.clip(np.ceil((dist - tol - rmin) / 0.5), 0, len(grid)).astype(np.intp)
    hi = np.clip(np.floor((dist + tol - rmin) / 0.5) + 1, 0, len(grid)).astype(np.intp)
    marks = np.zeros((N_RAYS, len(grid) + 1), dtype=np.int32)
    np.add.at(marks, (ri, lo), 1)
    np.add.at(marks, (ri, hi), -1)
    cover = np.cumsum(marks, axis=1)[:, : len(grid)] > 0
    quarters = cover.reshape(4, N_RAYS // 4, len(grid)).sum(axis=1)
    support = np.minimum(cover.sum(axis=0) / N_RAYS, 2.5 * quarters.min(axis=0) * 4 / N_RAYS)
    rings = [float(grid[j]) for j in range(len(grid))
             if support[j] >= 0.45 and support[j] == support[max(j - 6, 0):j + 7].max()]
    out: list[tuple[float, Ellipse, float, float, bool]] = []
    for r0 in sorted(rings):
        # the ring's edges: on each ray the outermost edge within 4% of it
        picks: list[int] = []
        for i in np.unique(ri):
            sel = np.nonzero((ri == i) & (np.abs(dist - r0) <= 0.04 * r0 + 1.0))[0]
            if sel.size:
                picks.append(int(sel[int(np.argmax(dist[sel]))]))
        if len(picks) < N_RAYS // 3:
            continue
        chosen = np.asarray(picks, dtype=np.intp)
        e, share, res = _robust_fit(cx, cy, theta[ri[chosen]], rr[chosen])
        if e is None:
            continue
        ok = not (share < MIN_SHARE or res > MAX_RESIDUAL or e.axis_ratio > MAX_AXIS_RATIO
                  or e.ry < rmin)
        outline, contrast = _is_outline(chroma, e, max(rings) / r0) if ok else (False, 0.0)
        if out and abs(math.sqrt(e.rx * e.ry) - math.sqrt(out[-1][1].rx * out[-1][1].ry)) < 0.5:
            continue  # the same ring twice
        out.append((r0, e, share, contrast, outline))
    return out


def _extend_over_band(chroma: npt.NDArray[np.float32], e: Ellipse, far_scale: float
                      ) -> _Found | None:
    """The outline just outside ``e`` when a thin band of reference (a printed ring)
    lies beyond it: on each ray, where the colour turns to skin within 12% of the
    radius (half-way between the band's colour and the skin's, sub-pixel)."""
    h, w = chroma.shape[:2]
    n = N_RAYS
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    base = _ellipse_radius(e, theta)
    steps = np.arange(0.0, 0.12 + 1e-9, 0.0025)
    rad = base[:, None] * (1.0 + steps[None, :])
    xx = e.cx + np.cos(theta)[:, None] * rad
    yy = e.cy + np.sin(theta)[:, None] * rad
    prof = np.stack([ndi.map_coordinates(chroma[..., c], [yy, xx], order=1, mode="nearest")
                     for c in range(2)], axis=-1)
    far = _band_chroma(chroma, e, 1.3 * max(far_scale, 1.0), 1.5 * max(far_scale, 1.0), n)
    inside = ((xx >= 0) & (xx <= w - 1) & (yy >= 0) & (yy <= h - 1)).all(axis=1)
    ok = inside & ~np.isnan(far).any(axis=1)
    if int(ok.sum()) < n // 2:
        return None
    d = np.hypot(prof[..., 0] - far[:, None, 0], prof[..., 1] - far[:, None, 1])
    start = np.median(d[:, 2:6], axis=1)  # just outside the edge: 0.5-1.25% out
    inner = _band_chroma(chroma, e, 0.9, 0.98, n)
    contrast = float(np.nanmedian(np.hypot(*(inner - far).T)))
    band_rays = ok & (start >= 0.5 * contrast)
    if int(band_rays.sum()) < 0.6 * n:
        return None
    t_out: list[float] = []
    r_out: list[float] = []
    for i in np.nonzero(band_rays)[0]:
        half = 0.5 * start[i]
        below = np.nonzero(d[i, 2:] < half)[0]
        if below.size == 0:
            continue
        k = int(below[0]) + 2
        d0, d1 = d[i, k - 1], d[i, k]
        f = (d0 - half) / (d0 - d1) if d0 != d1 else 0.0
        t_out.append(float(theta[i]))
        r_out.append(float(rad[i, k - 1] + f * (rad[i, k] - rad[i, k - 1])))
    if len(r_out) < 0.6 * n:
        return None
    e2, share, res = _robust_fit(e.cx, e.cy, np.asarray(t_out), np.asarray(r_out), n)
    if e2 is None or share < MIN_SHARE or res > MAX_RESIDUAL:
        return None
    if not _is_outline(chroma, e2, far_scale * math.sqrt(e.rx * e.ry)
                       / math.sqrt(e2.rx * e2.ry))[0]:
        return None
    return _Found(e2, share)


def _band_is_reference(chroma: npt.NDArray[np.float32], e: Ellipse, outer: float,
                       contrast: float) -> bool:
    """Is the band between outline ``e`` and ``outer`` x its radius unlike the skin?"""
    if outer <= 1.01:
        return False
    band = _band_chroma(chroma, e, 1.0 + 0.25 * (outer - 1.0), 1.0 + 0.75 * (outer - 1.0))
    far = _band_chroma(chroma, e, 1.3 * outer, 1.5 * outer)
    ok = ~(np.isnan(band).any(axis=1) | np.isnan(far).any(axis=1))
    if int(ok.sum()) < 8:
        return False
    gap = float(np.median(np.hypot(*(band[ok] - far[ok]).T)))
    return gap >= 0.5 * contrast


def _overlaps(e: Ellipse, lesion: npt.NDArray[np.bool_] | None, scale: float) -> bool:
    if lesion is None:
        return False
    h, w = lesion.shape
    cx, cy = (e.cx + 0.5) / scale, (e.cy + 0.5) / scale
    r = e.ry / scale
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, h)
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, w)
    if y1 <= y0 or x1 <= x0:
        return False
    yy, xx = np.ogrid[y0:y1, x0:x1]
    disc = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
    inter = int(np.count_nonzero(lesion[y0:y1, x0:x1] & disc))
    return inter > 0.5 * min(int(disc.sum()), int(lesion.sum()))


def detect_reference(rgb: npt.ArrayLike, diameter_mm: float, *,
                     lesion: npt.ArrayLike | tuple[float, float] | None = None
                     ) -> Calibration:
    """Find a flat circular reference of ``diameter_mm`` and calibrate the photo.

    ``rgb``: the photo as displayed (HxWx3 uint8, sRGB). ``lesion``: optionally the
    lesion's mask (HxW bool) or centre (x, y), to skip a disc that is the lesion and
    to warn when the reference is far from it in a wide shot. Raises
    :class:`NoReferenceFound` when no reference is found.
    """
    if not (isinstance(diameter_mm, (int, float)) and math.isfinite(diameter_mm)
            and 1.0 <= diameter_mm <= 200.0):
        raise InputError(f"The reference diameter must be between 1 and 200 mm, "
                         f"not {diameter_mm}.")
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] < 3 or a.shape[0] < 16 or a.shape[1] < 16:
        raise InputError("The image must be an RGB picture of at least 16 x 16 pixels.")
    a = np.ascontiguousarray(a[..., :3].astype(np.uint8, copy=False))
    H, W = a.shape[:2]
    lesion_mask: npt.NDArray[np.bool_] | None = None
    lesion_xy: tuple[float, float] | None = None
    if isinstance(lesion, tuple):
        lesion_xy = (float(lesion[0]), float(lesion[1]))
    elif lesion is not None:
        lesion_mask = np.asarray(lesion, dtype=bool)
        if lesion_mask.shape != (H, W):
            raise InputError("The lesion mask must have the image's size.")
        if lesion_mask.any():
            ys, xs = np.nonzero(lesion_mask)
            lesion_xy = (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)
        else:
            lesion_mask = None

    lab, chroma, s = _working_copy(a)
    h, w = lab.shape[:2]
    rmin = max(4.0, MIN_RADIUS_FRACTION * max(h, w))
    rmax = min(MAX_RADIUS_FRACTION * max(h, w), 0.5 * min(h, w))
    found: list[_Found] = []
    seen: list[tuple[float, float]] = []
    for cx, cy in _candidates(lab[..., 0], rmin, rmax):
        if any(math.hypot(cx - a, cy - b) < 2.0 for a, b in seen):
            continue
        seen.append((cx, cy))
        f = _examine(lab, chroma, cx, cy, rmin, rmax)
        if f is None or _overlaps(f.ellipse, lesion_mask, s):
            continue
        if any(math.hypot(f.ellipse.cx - g.ellipse.cx, f.ellipse.cy - g.ellipse.cy) < 1.0
               and abs(f.ellipse.rx - g.ellipse.rx) < 1.0 for g in found):
            continue
        found.append(f)
    best: _Found | None = None
    for f in found:
        # two looks at one reference can settle on its edge or on a shadow's edge
        # just outside it: the inner of two near-identical outlines is the edge
        e = f.ellipse
        if any(g.ellipse.rx < e.rx and g.ellipse.rx > 0.88 * e.rx
               and math.hypot(g.ellipse.cx - e.cx, g.ellipse.cy - e.cy) < 0.1 * e.rx
               for g in found):
            continue
        if best is None or f.share > best.share + 0.02 or (
                abs(f.share - best.share) <= 0.02 and e.rx > best.ellipse.rx):
            best = f
    if best is None:
        raise NoReferenceFound(
            "No calibration reference was found in the photo. Place a coin or a "
            "calibration sticker flat on the skin next to the lesion and take the photo "
            "square to the skin, or draw a line over a ruler of known length.")
    e = best.ellipse
    share = best.share
    if s < 1.0:  # refine on the full-resolution photo
        inv = 1.0 / s
        cx, cy = (e.cx + 0.5) * inv - 0.5, (e.cy + 0.5) * inv - 0.5
        full = _lab_crop(a, cx, cy, 1.25 * e.rx * inv + 8)
        lab_c, ox, oy = full
        ew = Ellipse(cx - ox, cy - oy, e.rx * inv, e.ry * inv, e.angle_deg)
        theta, r = _refine_edges(lab_c, ew, delta=max(0.02 * ew.rx, 1.5 * inv),
                                 n_rays=2 * N_RAYS, sigma=max(1.0, 0.5 * inv, 0.01 * ew.ry))
        ef, sh, _res = _robust_fit(cx - ox, cy - oy, theta, r, 2 * N_RAYS)
        if ef is not None and sh >= 0.5 * share:
            e = replace(ef, cx=ef.cx + ox + 0.5, cy=ef.cy + oy + 0.5)
            share = sh
        else:
            e = replace(e, cx=cx + 0.5, cy=cy + 0.5, rx=e.rx * inv, ry=e.ry * inv)
    else:
        e = replace(e, cx=e.cx + 0.5, cy=e.cy + 0.5)
    px_per_mm = 2.0 * e.rx / diameter_mm
    warnings: list[str] = []
    conf = share
    t = np.linspace(0, 2 * math.pi, 90, endpoint=False)
    tilt = math.radians(e.angle_deg)
    ex = e.cx + e.rx * np.cos(t) * math.cos(tilt) - e.ry * np.sin(t) * math.sin(tilt)
    ey = e.cy + e.rx * np.cos(t) * math.sin(tilt) + e.ry * np.sin(t) * math.cos(tilt)
    visible = float(np.mean((ex >= 0) & (ex <= W) & (ey >= 0) & (ey <= H)))
    if visible < 0.98:
        warnings.append("The reference is partly outside the photo; the calibration is "
                        "less reliable. Keep the whole reference in the picture.")
        conf *= visible
    if e.axis_ratio > TILT_WARNING_RATIO:
        warnings.append(
            f"The reference looks elliptical (axis ratio {e.axis_ratio:.2f}): the camera "
            "was not square to the skin, so sizes across the tilt are under-estimated.")
        conf *= 0.7
    if e.ry < 12:
        warnings.append("The reference is small in the photo; the calibration is less "
                        "precise. Take the photo closer.")
        conf *= 0.7
    cal = Calibration(px_per_mm=px_per_mm, method="reference", confidence=round(conf, 3),
                      ellipse=e, reference_mm=float(diameter_mm), warnings=tuple(warnings))
    if lesion_xy is not None:
        cal = with_lesion_check(cal, lesion_xy, (H, W))
    return cal


def _lab_crop(rgb: npt.NDArray[np.uint8], cx: float, cy: float, r: float
              ) -> tuple[npt.NDArray[np.float32], int, int]:
    h, w = rgb.shape[:2]
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, h)
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, w)
    crop = rgb[y0:y1, x0:x1].astype(np.float32) * (1.0 / 255.0)
    return rgb_to_lab(crop), x0, y0


def with_lesion_check(cal: Calibration, lesion_xy: tuple[float, float],
                      image_size: tuple[int, int]) -> Calibration:
    """Add the "far from the lesion in a wide shot" warning when it applies.

    ``image_size`` is (height, width) in pixels.
    """
    if cal.ellipse is None or cal.px_per_mm <= 0:
        return cal
    dist_mm = math.hypot(cal.ellipse.cx - lesion_xy[0],
                         cal.ellipse.cy - lesion_xy[1]) / cal.px_per_mm
    span_mm = max(image_size) / cal.px_per_mm
    if dist_mm > FAR_MM and span_mm > WIDE_MM:
        text = (f"The reference is {dist_mm:.0f} mm from the lesion in a wide shot "
                f"({span_mm:.0f} mm across): the scale may differ at the lesion. Put the "
                "reference next to the lesion and take a close-up.")
        return replace(cal, warnings=(*cal.warnings, text),
                       confidence=round(cal.confidence * 0.7, 3))
    return cal


# --------------------------------------------------------------------------- other sources


def from_ruler_line(p1: tuple[float, float], p2: tuple[float, float],
                    length_mm: float) -> Calibration:
    """Calibrate from a line drawn over a ruler: ``length_mm`` between p1 and p2 (x, y)."""
    if not (math.isfinite(length_mm) and length_mm > 0):
        raise InputError("The ruler length must be a positive number of millimetres.")
    d = math.hypot(float(p2[0]) - float(p1[0]), float(p2[1]) - float(p1[1]))
    if not math.isfinite(d) or d < 5.0:
        raise InputError("The ruler line is too short; draw it over at least 5 pixels, "
                         "ideally over most of the ruler.")
    warnings: tuple[str, ...] = ()
    conf = 1.0
    if d < 50.0:
        warnings = (f"The ruler line is only {d:.0f} pixels long; a one-pixel error is "
                    f"{100.0 / d:.0f}% of the scale. Draw it over a longer stretch.",)
        conf = round(max(0.2, 1.0 - 10.0 / d), 3)
    return Calibration(px_per_mm=d / length_mm, method="ruler", confidence=conf,
                       warnings=warnings)


def from_metadata(meta: Mapping[str, Any]) -> Calibration | None:
    """Calibration from image metadata, only when it is trustworthy; else ``None``.

    Trustworthy means an explicit physical pixel spacing of the *object plane*
    written by a measuring device — e.g. a DICOM ``PixelSpacing`` of a dermatoscope
    or whole-body imaging system, passed as ``meta["pixel_spacing_mm"]`` (one number,
    or (row, column) spacings that agree within 1%). Everything a phone or an
    ordinary camera writes is ignored: EXIF ``XResolution``/``YResolution`` (a print
    hint, usually 72 dpi), ``FocalLength`` with ``SubjectDistance`` (autofocus
    distance is approximate and the skin is not flat) — for those ``None`` is
    returned and the photo stays uncalibrated.
    """
    raw = meta.get("pixel_spacing_mm")
    if raw is None:
        return None
    vals: list[float]
    if isinstance(raw, (int, float)):
        vals = [float(raw)]
    elif isinstance(raw, (list, tuple)) and 1 <= len(raw) <= 2:
        try:
            vals = [float(v) for v in raw]
        except (TypeError, ValueError):
            return None
    else:
        return None
    if not all(math.isfinite(v) and 0.0005 <= v <= 10.0 for v in vals):
        return None
    if len(vals) == 2 and abs(vals[0] - vals[1]) > 0.01 * max(vals):
        return None
    spacing = sum(vals) / len(vals)
    return Calibration(px_per_mm=1.0 / spacing, method="metadata", confidence=0.9)
