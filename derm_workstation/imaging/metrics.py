"""Lesion metrics from a boundary: size, shape, colour and the dermoscopy ABCD score.

:func:`measure` takes a lesion mask (HxW bool, the photo's full resolution), the
photo (HxWx3 sRGB, as displayed) and, when known, the calibration in pixels per
millimetre. Sizes are in mm / mm² when calibrated; otherwise the same figures are
given in pixels and ``calibrated`` is false — never a millimetre value guessed.

Definitions (all documented so a figure can be checked by hand):

* **Area**: the number of mask pixels (px²), divided by ``px_per_mm²``.
* **Perimeter**: the length of every boundary of the mask (outer outlines and the
  edges of holes), traced at sub-pixel precision by marching squares and smoothed
  along the outline (a 7-vertex moving average) so the pixel staircase does not add
  length: within about 0.5 % of the true length for discs and ellipses from ~30 px
  radius (about 1 % at 10 px), and about 0.7 % short on a square's sharp corners.
* **Feret diameters**: the longest and the shortest caliper width of the mask's
  outline (on its convex hull; the shortest by rotating calipers), within about
  0.6 % (the pixel staircase of a slanted edge adds up to half a pixel).
* **Asymmetry about two perpendicular axes**: the axes are the principal axes of
  the mask through its centroid (for a nearly isotropic shape — a disc, a square —
  the pair of perpendicular axes with the least asymmetry). About each axis, the
  share of the lesion's area not covered by its mirror image: 0 for a perfectly
  symmetric shape, up to 1.
* **Border irregularity (compactness)**: ``perimeter² / (4π · area)``: 1 for a disc,
  4/π ≈ 1.27 for a square, larger for a ragged border.
* **Colours**: each lesion pixel's CIELAB (D65) value is put into one of the six
  dermoscopic colours, tested in this order, or none (thresholds: L* lightness,
  C* = √(a*²+b*²) chroma):

  - black: L* < 25;
  - white: L* ≥ 80 and C* ≤ 10 (paler than fair skin, which has C* ≈ 12-20);
  - blue-grey: L* < 70 and (b* < 2 or C* < 12);
  - red: a* ≥ 20 and a* ≥ 1.2 · b*;
  - dark brown: L* < 48 and b* ≥ 2;
  - light brown: L* < 80 and b* ≥ 10 and C* ≥ 15;

  a colour is *present* when it covers at least :data:`COLOUR_PRESENT` (5 %) of the
  lesion. These absolute thresholds assume a white-balanced photo; a strong colour
  cast shifts them.
* **Several pieces** (e.g. two blobs): the mask is measured as *one* lesion: area
  and perimeter are the sums over the pieces, the Feret diameters span all pieces
  (their joint convex hull), asymmetry and colours are of the union;
  ``components`` says how many pieces there were.

**Total dermoscopy score** (Stolz ABCD rule, only for dermoscopic photos):
``TDS = 1.3·A + 0.1·B + 0.5·C + 0.5·D``, each component *approximated* from the
image — decision support only, not a diagnosis:

* A (0–2): the number of the two axes about which the lesion is asymmetric: shape
  asymmetry above :data:`ASYMMETRY_AXIS` (0.10), or the two halves' mean colours
  more than :data:`COLOUR_ASYMMETRY_DE` (ΔE 10) apart.
* B (0–8): the border is cut into eight equal sectors around the centroid; a
  sector counts when the lightness changes from lesion to skin within less than
  :data:`ABRUPT_WIDTH` (4 %) of the lesion's radius (an abrupt cut-off, not a
  gradual fading) by at least 4 L* units.
* C (1–6): the number of dermoscopic colours present (at least 1).
* D (1–5): the number of structures found among: pigment network (a lattice of
  thin dark lines), dots (many small dark spots), globules (several larger dark
  spots), structureless areas (a fifth of the lesion or more without texture).
  Branched streaks are not detected. At least 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from derm_workstation.core.errors import InputError
from derm_workstation.imaging.segmentation import rgb_to_lab

__all__ = [
    "ABRUPT_WIDTH",
    "ASYMMETRY_AXIS",
    "COLOUR_ASYMMETRY_DE",
    "COLOUR_PRESENT",
    "DERMOSCOPIC_COLOURS",
    "TDS_NOTE",
    "DermoscopyScore",
    "LesionMetrics",
    "classify_colours",
    "feret_diameters",
    "measure",
]

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

DERMOSCOPIC_COLOURS: tuple[str, ...] = (
    "white", "red", "light brown", "dark brown", "blue-grey", "black")
COLOUR_PRESENT = 0.05
"""Share of the lesion a colour must cover to count as present."""
ASYMMETRY_AXIS = 0.10
"""Shape asymmetry above which an axis counts as asymmetric in the A score."""
COLOUR_ASYMMETRY_DE = 10.0
"""ΔE between the two halves' mean colours above which an axis counts as asymmetric."""
ABRUPT_WIDTH = 0.04
"""A border sector is abrupt when lesion-to-skin happens within this x the radius."""
TDS_NOTE = ("Decision support only, not a diagnosis: an automatic approximation of the "
            "ABCD rule of dermoscopy. Check every component against the image.")

_MAX_SHAPE_SIDE = 1024   # outlines of larger masks are traced on a reduced copy
_MAX_SYM_SIDE = 400      # asymmetry is computed on a copy at most this size
_MAX_COLOUR_PIXELS = 150_000


@dataclass(frozen=True)
class DermoscopyScore:
    """The ABCD rule's components and total dermoscopy score (an approximation)."""

    a: int
    b: int
    c: int
    d: int
    structures: tuple[str, ...]
    note: str = TDS_NOTE

    @property
    def tds(self) -> float:
        return round(1.3 * self.a + 0.1 * self.b + 0.5 * self.c + 0.5 * self.d, 2)

    def as_json(self) -> dict[str, Any]:
        return {"tds": self.tds, "a": self.a, "b": self.b, "c": self.c, "d": self.d,
                "structures": list(self.structures), "note": self.note}


@dataclass(frozen=True)
class LesionMetrics:
    """Measurements of one lesion. Pixel figures always; mm figures when calibrated."""

    px_per_mm: float | None
    area_px: float
    perimeter_px: float
    max_diameter_px: float
    min_diameter_px: float
    asymmetry: tuple[float, float]
    axis_angle_deg: float
    border_irregularity: float
    colours: dict[str, float]
    mean_lab: tuple[float, float, float]
    centroid: tuple[float, float]
    components: int
    dermoscopic: bool
    tds: DermoscopyScore | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def calibrated(self) -> bool:
        return self.px_per_mm is not None

    def _mm(self, px: float, power: int = 1) -> float | None:
        if self.px_per_mm is None:
            return None
        return px / self.px_per_mm ** power

    @property
    def area_mm2(self) -> float | None:
        return self._mm(self.area_px, 2)

    @property
    def perimeter_mm(self) -> float | None:
        return self._mm(self.perimeter_px)

    @property
    def max_diameter_mm(self) -> float | None:
        return self._mm(self.max_diameter_px)

    @property
    def min_diameter_mm(self) -> float | None:
        return self._mm(self.min_diameter_px)

    @property
    def colours_present(self) -> tuple[str, ...]:
        return tuple(c for c in DERMOSCOPIC_COLOURS if self.colours[c] >= COLOUR_PRESENT)

    def as_json(self) -> dict[str, Any]:
        def r(v: float | None, n: int = 3) -> float | None:
            return None if v is None else round(float(v), n)

        return {
            "calibrated": self.calibrated,
            "px_per_mm": r(self.px_per_mm, 4),
            "area_mm2": r(self.area_mm2),
            "perimeter_mm": r(self.perimeter_mm),
            "max_diameter_mm": r(self.max_diameter_mm),
            "min_diameter_mm": r(self.min_diameter_mm),
            "area_px": r(self.area_px, 1),
            "perimeter_px": r(self.perimeter_px, 2),
            "max_diameter_px": r(self.max_diameter_px, 2),
            "min_diameter_px": r(self.min_diameter_px, 2),
            "asymmetry": {"axis_1": r(self.asymmetry[0]), "axis_2": r(self.asymmetry[1]),
                          "axis_1_angle_deg": r(self.axis_angle_deg, 1)},
            "border_irregularity": r(self.border_irregularity),
            "colours": {c: r(self.colours[c]) for c in DERMOSCOPIC_COLOURS},
            "colours_present": list(self.colours_present),
            "mean_lab": [r(v, 2) for v in self.mean_lab],
            "centroid": [r(v, 2) for v in self.centroid],
            "components": self.components,
            "dermoscopic": self.dermoscopic,
            "tds": self.tds.as_json() if self.tds is not None else None,
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------- geometry


def _bbox(mask: BoolArray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _occupancy(crop: BoolArray, max_side: int) -> tuple[npt.NDArray[np.float32], int]:
    """The crop, block-averaged by an integer factor so its long side <= max_side."""
    f = max(1, math.ceil(max(crop.shape) / max_side))
    if f == 1:
        return crop.astype(np.float32), 1
    h = math.ceil(crop.shape[0] / f) * f
    w = math.ceil(crop.shape[1] / f) * f
    pad = np.zeros((h, w), dtype=np.float32)
    pad[: crop.shape[0], : crop.shape[1]] = crop
    return pad.reshape(h // f, f, w // f, f).mean(axis=(1, 3)), f


def _outlines(crop: BoolArray, smooth: bool = True) -> list[FloatArray]:
    """Closed outlines (x, y in crop pixel-edge coordinates) of every boundary, traced
    by marching squares and, when ``smooth``, averaged over 7 vertices."""
    from skimage import measure as skm

    occ, f = _occupancy(crop, _MAX_SHAPE_SIDE)
    contours = skm.find_contours(np.pad(occ, 1), 0.5)
    out: list[FloatArray] = []
    for c in contours:
        pts = c[:-1] if len(c) > 1 and np.allclose(c[0], c[-1]) else c
        if smooth and len(pts) >= 7:
            pts = sum(np.roll(pts, k, axis=0) for k in range(-3, 4)) / 7.0
        # padded small-array (row, col) at pixel centres -> crop continuous (x, y)
        xy = np.stack([(pts[:, 1] - 1 + 0.5) * f, (pts[:, 0] - 1 + 0.5) * f], axis=1)
        out.append(xy.astype(np.float64))
    return out


def _closed_length(p: FloatArray) -> float:
    if len(p) < 2:
        return 0.0
    d = np.diff(np.vstack([p, p[:1]]), axis=0)
    return float(np.hypot(d[:, 0], d[:, 1]).sum())


def _hull(points: FloatArray) -> FloatArray:
    """Convex hull (monotone chain), counter-clockwise, no repeated end point."""
    pts = np.unique(np.round(points, 6), axis=0)
    if len(pts) < 3:
        return pts
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]

    def half(seq: FloatArray) -> list[FloatArray]:
        out: list[FloatArray] = []
        for p in seq:
            while len(out) >= 2:
                a, b = out[-2], out[-1]
                if (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]) <= 0:
                    out.pop()
                else:
                    break
            out.append(p)
        return out

    lower = half(pts)
    upper = half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1], dtype=np.float64)


def feret_diameters(points: FloatArray) -> tuple[float, float]:
    """(longest, shortest) caliper width of a point set."""
    hull = _hull(points)
    if len(hull) < 2:
        return 0.0, 0.0
    if len(hull) == 2:
        return float(np.hypot(*(hull[1] - hull[0]))), 0.0
    d = hull[:, None, :] - hull[None, :, :]
    longest = float(np.sqrt((d * d).sum(-1)).max())
    edges = np.roll(hull, -1, axis=0) - hull
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    ok = lengths > 1e-9
    normals = np.stack([-edges[ok, 1], edges[ok, 0]], axis=1) / lengths[ok, None]
    proj = hull @ normals.T  # (n_points, n_edges)
    widths = proj.max(axis=0) - proj.min(axis=0)
    return longest, float(widths.min())


def _reflect(occ: npt.NDArray[np.float32], cy: float, cx: float, angle: float
             ) -> npt.NDArray[np.float32]:
    """Mirror image of ``occ`` about the line through (cy, cx) at ``angle`` (radians,
    from the x-axis towards +y), sampled on the same grid."""
    c2, s2 = math.cos(2 * angle), math.sin(2 * angle)
    # reflection in (x, y): [[c2, s2], [s2, -c2]]; in (row, col) = (y, x): swap
    mat = np.array([[-c2, s2], [s2, c2]])
    centre = np.array([cy, cx])
    offset = centre - mat @ centre
    out: npt.NDArray[np.float32] = ndi.affine_transform(occ, mat, offset=offset, order=1,
                                                        mode="constant", cval=0.0)
    return out


def _asymmetry(occ: npt.NDArray[np.float32]) -> tuple[float, float, float, float, float]:
    """(asymmetry about axis 1, about axis 2, axis-1 angle (rad), centroid row, col)."""
    total = float(occ.sum())
    rows, cols = np.indices(occ.shape, dtype=np.float64)
    cy = float((occ * rows).sum() / total)
    cx = float((occ * cols).sum() / total)
    dy, dx = rows - cy, cols - cx
    cov = np.array([[(occ * dx * dx).sum(), (occ * dx * dy).sum()],
                    [(occ * dx * dy).sum(), (occ * dy * dy).sum()]]) / total
    evals, evecs = np.linalg.eigh(cov)
    major = evecs[:, 1]
    angle = math.atan2(major[1], major[0])

    def score(a: float) -> float:
        return float(np.abs(occ - _reflect(occ, cy, cx, a)).sum()) / (2.0 * total)

    if evals[0] > 0 and evals[1] / evals[0] < 1.05:
        # no preferred direction: the perpendicular pair with the least asymmetry
        best = min((score(a) + score(a + math.pi / 2), a)
                   for a in np.radians(np.arange(0.0, 90.0, 3.0)))
        angle = best[1]
    return score(angle), score(angle + math.pi / 2), angle, cy, cx


# --------------------------------------------------------------------------- colour


def classify_colours(lab: npt.NDArray[np.floating]) -> npt.NDArray[np.int8]:
    """Index into :data:`DERMOSCOPIC_COLOURS` for each CIELAB value (...x3), -1 for none.

    The thresholds are those in the module documentation, tested in that order.
    """
    lum, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    chroma = np.hypot(a, b)
    out = np.full(lum.shape, -1, dtype=np.int8)
    rules = (
        ("black", lum < 25),
        ("white", (lum >= 80) & (chroma <= 10)),
        ("blue-grey", (lum < 70) & ((b < 2) | (chroma < 12))),
        ("red", (a >= 20) & (a >= 1.2 * b)),
        ("dark brown", (lum < 48) & (b >= 2)),
        ("light brown", (lum < 80) & (b >= 10) & (chroma >= 15)),
    )
    for name, cond in rules:
        out[(out < 0) & cond] = DERMOSCOPIC_COLOURS.index(name)
    return out


# --------------------------------------------------------------------------- ABCD


def _border_score(lum: npt.NDArray[np.float32], crop: BoolArray, cy: float, cx: float,
                  radius: float, angle: float) -> int:
    """B: sectors (of 8) whose lesion-to-skin lightness change is abrupt."""
    sig = max(1.0, 0.01 * radius)
    g = ndi.gaussian_filter(lum, sig)
    grad = np.hypot(ndi.sobel(g, 0), ndi.sobel(g, 1)) / 8.0
    inside = ndi.distance_transform_edt(crop)
    outside = ndi.distance_transform_edt(~crop)
    edge = crop & (inside <= 1.5)
    band_in = crop & (inside > 0.02 * radius) & (inside <= 0.06 * radius + 1)
    band_out = ~crop & (outside > 0.02 * radius) & (outside <= 0.06 * radius + 1)
    rows, cols = np.indices(crop.shape)
    sector = (((np.arctan2(rows - cy, cols - cx) - angle) % (2 * math.pi))
              // (math.pi / 4)).astype(int)
    count = 0
    for k in range(8):
        e = edge & (sector == k)
        bi = band_in & (sector == k)
        bo = band_out & (sector == k)
        if not (e.any() and bi.any() and bo.any()):
            continue
        step = abs(float(np.median(g[bo])) - float(np.median(g[bi])))
        slope = float(np.median(grad[e]))
        if step >= 4.0 and slope > 0 and step / slope < ABRUPT_WIDTH * radius:
            count += 1
    return count


def _structures(lum: npt.NDArray[np.float32], crop: BoolArray, radius: float) -> list[str]:
    """D: structures approximated from the lightness texture inside the lesion."""
    found: list[str] = []
    area = float(crop.sum())
    inner = ndi.binary_erosion(crop, iterations=max(1, int(0.05 * radius)))
    if inner.sum() < 50:
        return found
    # pigment network: thin dark lines (black-hat at ~2% of the radius) over much of it
    line = max(3, int(0.04 * radius) | 1)
    closed = ndi.grey_closing(lum, size=(line, line))
    bh = closed - lum
    lines = inner & (bh > 6.0)
    if lines.sum() > 0.15 * inner.sum():
        skel_like = lines & ~ndi.binary_erosion(lines)
        if skel_like.sum() > 0.6 * lines.sum():  # thin, not blobs
            found.append("pigment network")
    # dots and globules: small dark blobs, much darker than their surroundings
    blob = max(5, int(0.12 * radius) | 1)
    bh2 = ndi.grey_closing(lum, size=(blob, blob)) - lum
    spots = inner & (bh2 > 12.0)
    lab, n = ndi.label(spots)
    if n:
        sizes = np.bincount(lab.ravel())[1:]
        d_eq = 2 * np.sqrt(sizes / math.pi)
        small = int(np.sum((d_eq >= 1.5) & (d_eq < 0.06 * radius)))
        large = int(np.sum(d_eq >= 0.06 * radius))
        if small >= 5:
            found.append("dots")
        if large >= 3:
            found.append("globules")
    # structureless: low local texture over a fifth of the lesion
    win = max(5, int(0.1 * radius) | 1)
    mean = ndi.uniform_filter(lum, win)
    var = ndi.uniform_filter(lum * lum, win) - mean * mean
    calm = inner & (var < 4.0)
    if calm.sum() >= 0.2 * area:
        found.append("structureless areas")
    return found


# --------------------------------------------------------------------------- public


def measure(mask: npt.ArrayLike, rgb: npt.ArrayLike, px_per_mm: float | None, *,
            dermoscopic: bool = False) -> LesionMetrics:
    """Measure the lesion in ``mask`` on the photo ``rgb`` (same height and width).

    ``px_per_mm``: the calibration, or ``None`` for pixel figures only.
    ``dermoscopic``: also compute the ABCD total dermoscopy score.
    Raises InputError for an empty mask, a size mismatch or a bad calibration.
    """
    m = np.asarray(mask)
    img = np.asarray(rgb)
    if m.ndim != 2:
        raise InputError("The lesion mask must be a single-channel image.")
    if img.ndim != 3 or img.shape[2] < 3:
        raise InputError("The photo must be an RGB image.")
    if img.shape[:2] != m.shape:
        raise InputError(f"The mask ({m.shape[1]} x {m.shape[0]}) does not have the "
                         f"photo's size ({img.shape[1]} x {img.shape[0]}).")
    if px_per_mm is not None and not (math.isfinite(px_per_mm) and px_per_mm > 0):
        raise InputError("The calibration must be a positive number of pixels per mm.")
    m = m.astype(bool, copy=False)
    box = _bbox(m)
    if box is None:
        raise InputError("The lesion mask is empty: there is nothing to measure.")
    r0, r1, c0, c1 = box
    pad = 4
    R0, R1 = max(r0 - pad, 0), min(r1 + pad, m.shape[0])
    C0, C1 = max(c0 - pad, 0), min(c1 + pad, m.shape[1])
    crop = m[R0:R1, C0:C1]
    area = float(np.count_nonzero(crop))
    _lab, components = ndi.label(crop)

    perimeter = sum(_closed_length(p) for p in _outlines(crop))
    raw = _outlines(crop, smooth=False)  # calipers touch the outline's extreme points
    longest, shortest = feret_diameters(np.vstack(raw) if raw else np.zeros((0, 2)))

    occ, f = _occupancy(crop, _MAX_SYM_SIDE)
    a1, a2, angle, ocy, ocx = _asymmetry(np.pad(occ, 2))
    cy = (ocy - 2 + 0.5) * f + R0
    cx = (ocx - 2 + 0.5) * f + C0

    # colours from (at most) a regular sample of the lesion's pixels
    rows, cols = np.nonzero(crop)
    step = max(1, len(rows) // _MAX_COLOUR_PIXELS)
    rows, cols = rows[::step], cols[::step]
    pix = img[R0:R1, C0:C1][rows, cols, :3].astype(np.float32) * (1.0 / 255.0)
    lab = rgb_to_lab(pix)
    cls = classify_colours(lab)
    n = max(len(cls), 1)
    colours = {name: float(np.count_nonzero(cls == i)) / n
               for i, name in enumerate(DERMOSCOPIC_COLOURS)}
    mean_lab = tuple(float(v) for v in lab.mean(axis=0))
    compact = perimeter ** 2 / (4 * math.pi * area) if area > 0 else 0.0

    warnings: list[str] = []
    if area < 50:
        warnings.append("The outlined lesion is under 50 pixels; its measurements are "
                        "imprecise.")
    if r0 == 0 or c0 == 0 or r1 == m.shape[0] or c1 == m.shape[1]:
        warnings.append("The outline touches the edge of the photo; the lesion may be "
                        "larger than measured.")

    score = None
    if dermoscopic:
        score = _abcd(img, crop, (R0, C0), (rows, cols), lab, colours, a1, a2, angle,
                      cy - R0, cx - C0, math.sqrt(area / math.pi))
    return LesionMetrics(
        px_per_mm=float(px_per_mm) if px_per_mm is not None else None,
        area_px=area, perimeter_px=perimeter, max_diameter_px=longest,
        min_diameter_px=shortest, asymmetry=(a1, a2),
        axis_angle_deg=math.degrees(angle) % 180.0, border_irregularity=compact,
        colours=colours, mean_lab=(mean_lab[0], mean_lab[1], mean_lab[2]),
        centroid=(cx, cy), components=int(components), dermoscopic=dermoscopic,
        tds=score, warnings=tuple(warnings))


def _abcd(img: npt.NDArray[Any], crop: BoolArray, origin: tuple[int, int],
          sample: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]],
          lab: npt.NDArray[np.float32], colours: dict[str, float], a1: float, a2: float,
          angle: float, cy: float, cx: float, radius: float) -> DermoscopyScore:
    R0, C0 = origin
    # the photo around the lesion (a margin for the skin outside the border)
    margin = int(0.15 * radius) + 4
    H, W = img.shape[:2]
    y0, x0 = max(R0 - margin, 0), max(C0 - margin, 0)
    y1 = min(R0 + crop.shape[0] + margin, H)
    x1 = min(C0 + crop.shape[1] + margin, W)
    big = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    big[R0 - y0:R0 - y0 + crop.shape[0], C0 - x0:C0 - x0 + crop.shape[1]] = crop
    sub = img[y0:y1, x0:x1, :3]
    scale = 1
    if max(big.shape) > 600:  # texture measures on a reduced copy of a large lesion
        scale = math.ceil(max(big.shape) / 600)
        sub = sub[::scale, ::scale]
        big = big[::scale, ::scale]
    lum = rgb_to_lab(sub.astype(np.float32) * (1.0 / 255.0))[..., 0]
    r = radius / scale
    ccy, ccx = (cy + R0 - y0) / scale, (cx + C0 - x0) / scale

    # A: shape asymmetry or differently coloured halves, about each axis
    rows, cols = sample  # crop coordinates of the pixels whose colours are ``lab``
    a_score = 0
    for k, shape_asym in enumerate((a1, a2)):
        ax = angle + k * math.pi / 2
        nx, ny = -math.sin(ax), math.cos(ax)  # normal of the axis
        side = (cols + 0.5 - cx) * nx + (rows + 0.5 - cy) * ny > 0
        colour_gap = 0.0
        if side.any() and (~side).any():
            colour_gap = float(np.linalg.norm(lab[side].mean(axis=0) - lab[~side].mean(axis=0)))
        if shape_asym > ASYMMETRY_AXIS or colour_gap > COLOUR_ASYMMETRY_DE:
            a_score += 1
    b_score = _border_score(lum, big, ccy, ccx, r, angle)
    c_score = max(1, sum(1 for v in colours.values() if v >= COLOUR_PRESENT))
    structures = _structures(lum, big, r)
    d_score = min(5, max(1, len(structures)))
    return DermoscopyScore(a=a_score, b=b_score, c=c_score, d=d_score,
                           structures=tuple(structures))
