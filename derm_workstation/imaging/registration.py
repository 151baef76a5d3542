"""Aligning a follow-up photo to its baseline: automatic (features + RANSAC) or by hand.

The result is an :class:`Alignment`: a 3x3 matrix that maps **follow-up** pixel
coordinates ``(x, y, 1)`` to **base** pixel coordinates, in full-resolution *displayed*
pixels (after EXIF orientation, i.e. exactly the pixels :func:`decode_image` returns).

Pixel convention: the centre of pixel ``(col, row)`` is at ``(x, y) = (col, row)``, as in
numpy and scikit-image (``skimage.transform.warp(follow, inverse_map=...)`` style). Qt
and most drawing APIs put pixel centres at ``+0.5``; there use
``T(+0.5) @ matrix @ T(-0.5)`` (``T`` a translation), which only matters below a pixel.
To draw the follow-up over the base, map follow-up points with ``matrix``; to find what
the follow-up shows at a base point, use ``inv(matrix)``.

How :func:`align` works (all on reduced copies, longest side ``max_side``; the matrix is
then scaled back exactly, pixel centres included):

1. **Luminance.** Grey (Rec. 601 luma), reduced with an antialiasing filter. No
   contrast equalisation: the corner ranking below is relative and BRIEF bits compare
   pixel pairs, so both are unaffected by brightness, contrast or gamma changes between
   visits; CLAHE was tried and made matching worse (it amplifies noise and, being
   tile-based, treats a zoomed view differently from the overview).
2. **Oriented corners on a scale pyramid.** Harris corners on an 8-level pyramid
   (x1.2 per level, so features match across 0.5-2x zoom), refined to sub-pixel
   position and spread over the picture with a grid (low-texture skin would otherwise
   give all its corners to one hair or one lesion border); each gets the
   intensity-centroid orientation (``skimage.feature.corner_orientations``: rotation
   invariance, any angle up to 180 degrees) and a 256-bit rotated BRIEF descriptor, as
   in ORB. scikit-image's ``ORB`` class is not used: it describes every candidate before
   keeping the best (1-3 s per image on skin) and its keypoints are whole pixels of each
   pyramid level, which costs accuracy at full resolution.
   No keypoint may see the picture's **dark surround** (a large, nearly black region
   touching the frame: a contact dermoscope's black field, a dark background, the fill
   of a rotated scan; see :func:`_surround_distance`). It and anything burnt into it (a
   ruler, a date, a device name) stay put in the frame while the skin moves, and would
   otherwise out-vote the skin and report "no movement" with full confidence.
3. **Matching** by Hamming distance with a cross-check (mutual nearest neighbours) and
   Lowe's ratio test (``RATIO``); the popcount distance matrix is computed here, as
   ``skimage.feature.match_descriptors`` gives the same result 5x slower on bit vectors.
4. **Seeded RANSAC** (``skimage.measure.ransac``; ``SimilarityTransform`` or
   ``AffineTransform``; residual threshold ``RESIDUAL_PX`` working pixels; implausible
   models — scale outside 1/4..4, mirror images, strong shear — are refused), then the
   inlier set is re-estimated by least squares until it is stable.
5. **Checks.** At least ``MIN_INLIERS`` inliers and an inlier ratio of at least
   ``MIN_INLIER_RATIO``, else :class:`AlignmentFailed` with the reason.

**Confidence** (0..1) = ``count_term * ratio_term`` where

* ``count_term = 1 - exp(-(inliers - MIN_INLIERS + 1) / 25)``: 0.04 at the minimum
  count, 0.55 at 31 inliers, 0.86 at 60, 0.98 at 110;
* ``ratio_term = min(1, inlier_ratio / 0.4)`` with ``inlier_ratio = inliers / matches``:
  pairs of the same site usually keep 40 % or more of the mutual matches; unrelated
  photos keep a few per cent.

So a confident alignment has many inliers *and* most matches agree. As a rough guide:
above 0.6 the overlay can be trusted; 0.2-0.6, check it by eye (blend/flicker); below,
use the manual three-point alignment. A manual alignment has confidence 1.0 (the
clinician placed the points); its ``rms_px`` shows how consistently they were placed.

Everything is deterministic: the BRIEF pattern comes from a fixed seed, RANSAC from
``seed``; the same inputs give the same matrix on every run and machine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from derm_workstation.core.errors import InputError

__all__ = [
    "MODELS",
    "Alignment",
    "AlignmentFailed",
    "align",
    "align_bytes",
    "align_files",
    "manual_alignment",
]

MODELS: tuple[str, ...] = ("similarity", "affine")

FloatArray = npt.NDArray[np.float64]
Grey = npt.NDArray[np.float32]

DEFAULT_MAX_SIDE = 1024
N_KEYPOINTS = 2000
"""Keypoints kept per image (over all pyramid levels)."""
N_LEVELS = 8
LEVEL_SCALE = 1.2
QUOTA_POWER = 0.5
RATIO = 0.85
"""Lowe's ratio test on Hamming distances: best must be below ``RATIO`` x second best."""
MAX_HAMMING = 80
"""Matches farther apart than this (of 256 bits) are not considered."""
RESIDUAL_PX = 2.0
"""RANSAC inlier threshold, in working (reduced) pixels."""
MAX_TRIALS = 3000
MIN_INLIERS = 10
MIN_INLIER_RATIO = 0.08
MIN_SIDE = 48
DARK_LEVEL = 0.06
"""Luminance (0..1) below which a region touching the frame may be a dark surround."""
SURROUND_MIN_AREA = 0.01
"""A dark region touching the frame is a surround from this fraction of the picture."""
"""A photo smaller than this (either side) cannot be aligned."""
SCALE_RANGE = (0.25, 4.0)
"""Plausible relative zoom between two photos of the same site."""
MAX_ANISOTROPY = 2.0
"""Affine: the ratio of the two singular values may not exceed this (strong shear)."""

_PATCH_RADIUS = 15
_BORDER = _PATCH_RADIUS + 2
_BRIEF_PAIRS = 256
_BRIEF_SEED = 20240531


# ------------------------------------------------------------------------- results


class AlignmentFailed(InputError):
    """No trustworthy alignment; ``reason`` is one user-facing sentence (exit code 2)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, eq=False)
class Alignment:
    """Follow-up -> base transform; see the module docstring for conventions.

    (``==`` is identity, as the matrix is an array; compare ``as_json()`` instead.)"""

    matrix: np.ndarray  # 3x3 float; follow-up (x, y, 1) -> base (x, y, 1), full-res px
    model: str  # "similarity" | "affine" | "manual"
    inliers: int
    matches: int
    confidence: float  # 0..1, see module docstring
    rms_px: float  # RMS residual of the inliers, in full-resolution base pixels

    def map_points(self, points: Sequence[tuple[float, float]] | np.ndarray) -> FloatArray:
        """Follow-up (x, y) points -> base (x, y) points, as an (N, 2) array."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return _apply(np.asarray(self.matrix, dtype=np.float64), pts)

    @property
    def inverse(self) -> FloatArray:
        """Base -> follow-up matrix."""
        return np.asarray(np.linalg.inv(np.asarray(self.matrix, dtype=np.float64)))

    def as_json(self) -> dict[str, Any]:
        return {
            "matrix": [[float(v) for v in row] for row in np.asarray(self.matrix)],
            "model": self.model,
            "inliers": int(self.inliers),
            "matches": int(self.matches),
            "confidence": round(float(self.confidence), 4),
            "rms_px": round(float(self.rms_px), 4),
        }


# ------------------------------------------------------------------------- helpers


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence warnings (numpy's degenerate-sample RuntimeWarnings, RANSAC's "No inliers
    found") raised on this thread while inside; other threads are untouched."""
    from derm_workstation.imaging.decode import _SCOPE

    with _SCOPE.active():
        yield


def _apply(m: FloatArray, pts: FloatArray) -> FloatArray:
    h = np.hstack([pts, np.ones((len(pts), 1))]) @ m.T
    w = h[:, 2:3]
    w = np.where(np.abs(w) < 1e-12, 1e-12, w)
    return np.asarray(h[:, :2] / w)


def _check_model(model: str) -> str:
    if model not in MODELS:
        raise InputError(f"Unknown alignment model '{model}'; use one of: {', '.join(MODELS)}.")
    return model


def _transform_class(model: str) -> Any:
    from skimage.transform import AffineTransform, SimilarityTransform

    return SimilarityTransform if model == "similarity" else AffineTransform


def _estimate(model: str, src: FloatArray, dst: FloatArray) -> FloatArray | None:
    """Least-squares matrix src -> dst (linear; 4 parameters for a similarity, 6 for an
    affine), or None when the points cannot determine it."""
    n = len(src)
    if n < (2 if model == "similarity" else 3):
        return None
    # centre and normalise for conditioning
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    ss = float(np.sqrt(np.mean(np.sum((src - cs) ** 2, axis=1)))) or 1.0
    s0 = (src - cs) / ss
    d0 = dst - cd
    if model == "similarity":
        x, y = s0[:, 0], s0[:, 1]
        a_mat = np.zeros((2 * n, 2))
        a_mat[0::2, 0], a_mat[0::2, 1] = x, -y
        a_mat[1::2, 0], a_mat[1::2, 1] = y, x
        sol, _, rank, _ = np.linalg.lstsq(a_mat, d0.ravel(), rcond=None)
        if rank < 2:
            return None
        a, b = sol
        lin = np.array([[a, -b], [b, a]])
    else:
        sol, _, rank, _ = np.linalg.lstsq(s0, d0, rcond=None)
        if rank < 2:
            return None
        lin = sol.T
    lin = lin / ss
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = cd - lin @ cs
    return m if np.all(np.isfinite(m)) else None


def _plausible(m: FloatArray) -> bool:
    """Not a mirror image, zoom within SCALE_RANGE, no strong shear."""
    a = m[:2, :2]
    if not np.all(np.isfinite(m)) or np.linalg.det(a) <= 0:
        return False
    s = np.linalg.svd(a, compute_uv=False)
    lo, hi = SCALE_RANGE
    return bool(lo <= s[1] and s[0] <= hi and s[0] <= MAX_ANISOTROPY * s[1])


def _to_grey(rgb: np.ndarray, max_side: int) -> tuple[Grey, tuple[float, float]]:
    """Reduced float luminance copy and its (sx, sy) = reduced / full size per axis."""
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[:, :, :3]
    elif arr.ndim != 2:
        raise InputError(f"Expected an H x W x 3 RGB image, got an array of shape {arr.shape}.")
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise AlignmentFailed(
            f"A photo of {w} x {h} pixels is too small to align (at least {MIN_SIDE} pixels "
            "per side are needed)."
        )
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    im = Image.fromarray(np.ascontiguousarray(arr))
    if im.mode != "L":
        im = im.convert("L")
    scale = min(1.0, max_side / max(w, h))
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    if (tw, th) != (w, h):
        im = im.resize((tw, th), Image.Resampling.BILINEAR, reducing_gap=2.0)
    grey = np.asarray(im, dtype=np.float32) * np.float32(1 / 255)
    return grey, (tw / w, th / h)


def _scale_matrix(sx: float, sy: float) -> FloatArray:
    """Full-res -> reduced coordinates with pixel centres kept: x' = (x + .5) sx - .5."""
    return np.array(
        [[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]]
    )


# ------------------------------------------------------------------------ features


def _brief_pattern() -> npt.NDArray[np.float64]:
    """(256, 4) sample pairs (x1, y1, x2, y2) within the patch disc; fixed seed."""
    rng = np.random.default_rng(_BRIEF_SEED)
    out = np.empty((0, 4))
    r = _PATCH_RADIUS
    while len(out) < _BRIEF_PAIRS:
        cand = np.round(rng.normal(0.0, 31.0 / 5.0, size=(4 * _BRIEF_PAIRS, 4)))
        ok = (np.hypot(cand[:, 0], cand[:, 1]) <= r) & (np.hypot(cand[:, 2], cand[:, 3]) <= r)
        ok &= np.any(cand[:, :2] != cand[:, 2:], axis=1)
        out = np.vstack([out, cand[ok]])
    return out[:_BRIEF_PAIRS]


_PATTERN = _brief_pattern()


def _disc(radius: int) -> npt.NDArray[np.uint8]:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


_DISC = _disc(_PATCH_RADIUS)


@dataclass
class _Features:
    xy: FloatArray  # (N, 2) sub-pixel (x, y) in the working image
    bits: npt.NDArray[np.uint64]  # (N, 4) packed 256-bit descriptors


def _harris(level: Grey) -> Grey:
    """Harris corner response (k = 0.04, integration scale sigma = 1), float32."""
    from scipy import ndimage

    gx = ndimage.sobel(level, axis=1, mode="nearest")
    gy = ndimage.sobel(level, axis=0, mode="nearest")
    axx = ndimage.gaussian_filter(gx * gx, 1.0, truncate=3.0, mode="nearest")
    ayy = ndimage.gaussian_filter(gy * gy, 1.0, truncate=3.0, mode="nearest")
    axy = ndimage.gaussian_filter(gx * gy, 1.0, truncate=3.0, mode="nearest")
    trace = axx + ayy
    return np.asarray(axx * ayy - axy * axy - np.float32(0.04) * trace * trace)


def _level_keypoints(
    level: Grey, n_target: int, allowed: npt.NDArray[np.bool_] | None = None
) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """(row, col) integer positions and sub-pixel offsets (dy, dx) of spread-out corners,
    only where ``allowed`` (if given)."""
    from scipy import ndimage

    h, w = level.shape
    resp = _harris(level)
    peaks = (resp == ndimage.maximum_filter(resp, size=5, mode="nearest")) & (resp > 0)
    if allowed is not None:
        peaks &= allowed
    peaks[:_BORDER] = peaks[-_BORDER:] = False
    peaks[:, :_BORDER] = peaks[:, -_BORDER:] = False
    rc = np.argwhere(peaks)
    if len(rc) == 0:
        return np.zeros((0, 2), np.intp), np.zeros((0, 2))
    r = resp[rc[:, 0], rc[:, 1]].astype(np.float64)
    # drop noise-level peaks: far below the typical corner of this level
    keep = r > 1e-3 * np.percentile(r, 90)
    rc, r = rc[keep], r[keep]
    # spread: at most one corner per grid cell (the strongest), then the strongest cells
    cell = max(6, int(math.sqrt(h * w / max(1, n_target * 1.5))))
    cid = (rc[:, 0] // cell) * (w // cell + 1) + rc[:, 1] // cell
    order = np.lexsort((-r, cid))
    first = np.ones(len(order), dtype=bool)
    first[1:] = cid[order][1:] != cid[order][:-1]
    sel = order[first]
    sel = sel[np.argsort(-r[sel], kind="stable")][:n_target]
    rc = rc[sel]
    # sub-pixel: vertex of a parabola through the response and its two neighbours
    y, x = rc[:, 0], rc[:, 1]
    c = resp[y, x].astype(np.float64)
    offs = np.zeros((len(rc), 2))
    for axis, (lo, hi) in enumerate(((resp[y - 1, x], resp[y + 1, x]),
                                     (resp[y, x - 1], resp[y, x + 1]))):
        lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
        den = lo64 - 2 * c + hi64
        safe = np.where(den < 0, den, -1.0)
        offs[:, axis] = np.where(den < 0, np.clip(0.5 * (lo64 - hi64) / safe, -0.5, 0.5), 0.0)
    return rc.astype(np.intp), offs


def _describe(level: Grey, rc: npt.NDArray[np.intp]) -> npt.NDArray[np.uint64]:
    """Oriented BRIEF bits for keypoints at integer (row, col) of ``level``."""
    from scipy import ndimage
    from skimage.feature import corner_orientations

    smooth = ndimage.gaussian_filter(level, 1.2, mode="nearest")
    theta = np.asarray(corner_orientations(level, rc, _DISC), dtype=np.float64)
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    px1, py1, px2, py2 = (_PATTERN[:, i][None, :] for i in range(4))
    x0, y0 = rc[:, 1:2].astype(np.float64), rc[:, 0:1].astype(np.float64)
    h, w = level.shape

    def sample(px: FloatArray, py: FloatArray) -> Grey:
        xs = np.clip(np.rint(x0 + px * cos - py * sin), 0, w - 1).astype(np.intp)
        ys = np.clip(np.rint(y0 + px * sin + py * cos), 0, h - 1).astype(np.intp)
        return np.asarray(smooth[ys, xs])

    bits = sample(px1, py1) < sample(px2, py2)
    return np.packbits(bits, axis=1).view(np.uint64)


def _surround_distance(grey: Grey) -> FloatArray | None:
    """Distance (working pixels) from each pixel to the dark surround of the picture, or
    None when there is none.

    The surround is a dark region touching the frame that covers a noticeable part of
    it: the black field around a contact dermoscope's round view, a dark background, the
    fill outside a rotated scan. It moves with the camera, not with the skin, so corners
    on its edge would pull the alignment towards "no movement"; no keypoint may see it.
    "Dark" is relative (``DARK_LEVEL`` or 25 % of the 95th percentile, whichever is
    lower), so an under-exposed photo of dark skin is not mistaken for a surround."""
    from scipy import ndimage

    smooth = ndimage.uniform_filter(grey, 5, mode="nearest")
    threshold = min(DARK_LEVEL, 0.25 * float(np.percentile(smooth, 95)))
    dark = smooth < threshold
    if not dark.any():
        return None
    labels, _ = ndimage.label(dark)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    ids, counts = np.unique(labels, return_counts=True)
    big = set(ids[(ids > 0) & (counts >= SURROUND_MIN_AREA * grey.size)].tolist())
    keep = sorted(big & set(np.unique(edge).tolist()))
    if not keep:
        return None
    surround = np.isin(labels, keep)
    if surround.mean() > 0.9:  # nearly all dark: no usable notion of a surround
        return None
    return np.asarray(ndimage.distance_transform_edt(~surround), dtype=np.float64)


def _pyramid(img: Grey) -> list[Grey]:
    """Levels scaled by 1 / LEVEL_SCALE**k (antialiased, pixel centres kept), while they
    are big enough to hold a descriptor patch."""
    from PIL import Image

    h, w = img.shape
    src = Image.fromarray(img)  # float32 -> mode "F"
    levels = [img]
    for k in range(1, N_LEVELS):
        f = LEVEL_SCALE**k
        lw, lh = round(w / f), round(h / f)
        if min(lw, lh) < 2 * _BORDER + 8:
            break
        levels.append(np.array(src.resize((lw, lh), Image.Resampling.BILINEAR), np.float32))
    return levels


def _features(grey: Grey, n_keypoints: int | None = None) -> _Features:
    n_keypoints = n_keypoints or N_KEYPOINTS
    levels = _pyramid(np.ascontiguousarray(grey, dtype=np.float32))
    areas = np.array([lv.shape[0] * lv.shape[1] for lv in levels], dtype=np.float64)
    weights = areas**QUOTA_POWER
    quota = np.maximum(20, np.round(n_keypoints * weights / weights.sum())).astype(int)
    xy_all: list[FloatArray] = []
    bits_all: list[npt.NDArray[np.uint64]] = []
    h0, w0 = grey.shape
    dist = _surround_distance(grey)
    for lv, n in zip(levels, quota, strict=True):
        lh, lw = lv.shape
        sx, sy = w0 / lw, h0 / lh  # level -> working pixels, centres kept
        allowed = None
        if dist is not None:  # the descriptor patch (radius in level px) must not see it
            ys = np.clip(np.rint((np.arange(lh) + 0.5) * sy - 0.5), 0, h0 - 1).astype(np.intp)
            xs = np.clip(np.rint((np.arange(lw) + 0.5) * sx - 0.5), 0, w0 - 1).astype(np.intp)
            allowed = dist[np.ix_(ys, xs)] > (_PATCH_RADIUS + 3) * max(sx, sy)
        rc, offs = _level_keypoints(lv, int(n), allowed)
        if len(rc) == 0:
            continue
        bits_all.append(_describe(lv, rc))
        x = (rc[:, 1] + offs[:, 1] + 0.5) * sx - 0.5
        y = (rc[:, 0] + offs[:, 0] + 0.5) * sy - 0.5
        xy_all.append(np.column_stack([x, y]))
    if not xy_all:
        return _Features(np.zeros((0, 2)), np.zeros((0, 4), np.uint64))
    return _Features(np.vstack(xy_all), np.vstack(bits_all))


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def _hamming(a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint16]:
    """(len(a), len(b)) Hamming distances between packed 256-bit descriptors."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: hardware popcount
        return np.asarray(np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(
            axis=2, dtype=np.uint16))
    xor = (a[:, None, :] ^ b[None, :, :]).view(np.uint8)  # numpy 1.x: table lookup
    return np.asarray(_POPCOUNT8[xor].sum(axis=2, dtype=np.uint16))


def _match(a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]) -> npt.NDArray[np.intp]:
    """(K, 2) index pairs: mutual nearest neighbours passing the ratio test."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.intp)
    dist = np.empty((len(a), len(b)), dtype=np.uint16)
    step = max(1, 2_000_000 // (len(b) * 4))
    for i in range(0, len(a), step):
        dist[i : i + step] = _hamming(a[i : i + step], b)
    best_b = np.argmin(dist, axis=1)
    best_a = np.argmin(dist, axis=0)
    ia = np.arange(len(a))
    mutual = best_a[best_b] == ia
    d1 = dist[ia, best_b].astype(np.float64)
    part = np.partition(dist, 1, axis=1)
    d2 = part[:, 1].astype(np.float64)
    ok = mutual & (d1 <= MAX_HAMMING) & (d1 < RATIO * np.maximum(d2, 1))
    return np.column_stack([ia[ok], best_b[ok]]).astype(np.intp)


# ------------------------------------------------------------------------- fitting


def _residuals(m: FloatArray, src: FloatArray, dst: FloatArray) -> FloatArray:
    return np.asarray(np.hypot(*(_apply(m, src) - dst).T))


def _robust_fit(
    model: str, src: FloatArray, dst: FloatArray, seed: int
) -> tuple[FloatArray, npt.NDArray[np.bool_]] | None:
    from skimage.measure import ransac

    cls = _transform_class(model)
    min_samples = 2 if model == "similarity" else 3

    def valid(tf: Any, *_: Any) -> bool:
        return _plausible(np.asarray(tf.params, dtype=np.float64))

    with _quiet():
        tf, inl = ransac(
            (src, dst),
            cls,
            min_samples=min_samples,
            residual_threshold=RESIDUAL_PX,
            max_trials=MAX_TRIALS,
            is_model_valid=valid,
            stop_probability=0.9999,
            rng=np.random.default_rng(seed),
        )
    if not tf or inl is None or not np.any(inl):
        return None
    m = np.asarray(tf.params, dtype=np.float64)
    inliers = np.asarray(inl, dtype=bool)
    # least-squares polish: re-estimate on the consensus set until it stops changing
    for _ in range(5):
        if inliers.sum() < min_samples:
            return None
        refit = _estimate(model, src[inliers], dst[inliers])
        if refit is None:
            break
        new = _residuals(refit, src, dst) < RESIDUAL_PX
        m = refit
        if np.array_equal(new, inliers):
            break
        inliers = new
    inliers = _residuals(m, src, dst) < RESIDUAL_PX
    if not _plausible(m) or inliers.sum() < min_samples:
        return None
    return m, inliers


def _confidence(inliers: int, matches: int) -> float:
    if matches <= 0:
        return 0.0
    count_term = 1.0 - math.exp(-max(0, inliers - MIN_INLIERS + 1) / 25.0)
    ratio_term = min(1.0, (inliers / matches) / 0.4)
    return float(max(0.0, min(1.0, count_term * ratio_term)))


def _solve(
    base_grey: Grey, follow_grey: Grey, model: str, seed: int
) -> tuple[FloatArray, int, int, FloatArray, FloatArray]:
    """Working-resolution matrix follow -> base, inliers, matches, inlier src/dst."""
    fb = _features(base_grey)
    ff = _features(follow_grey)
    if len(fb.xy) < MIN_INLIERS:
        raise AlignmentFailed(
            "Too few distinct features in the base photo to align automatically "
            "(is it blurred, over-exposed or blank?); use manual alignment."
        )
    if len(ff.xy) < MIN_INLIERS:
        raise AlignmentFailed(
            "Too few distinct features in the follow-up photo to align automatically "
            "(is it blurred, over-exposed or blank?); use manual alignment."
        )
    pairs = _match(ff.bits, fb.bits)
    n = len(pairs)
    if n < MIN_INLIERS:
        raise AlignmentFailed(
            f"Too few matching features between the photos ({n}); they may not show the "
            "same area. Use manual alignment."
        )
    src, dst = ff.xy[pairs[:, 0]], fb.xy[pairs[:, 1]]
    fit = _robust_fit(model, src, dst, seed)
    if fit is None:
        raise AlignmentFailed(
            f"No consistent {model} transform fits the {n} matching features; the photos "
            "may not show the same area. Use manual alignment."
        )
    m, inl = fit
    k = int(inl.sum())
    if k < MIN_INLIERS or k < MIN_INLIER_RATIO * n:
        raise AlignmentFailed(
            f"Only {k} of {n} matching features agree on one {model} transform, too few "
            "to trust; the photos may not show the same area. Use manual alignment."
        )
    return m, k, n, src[inl], dst[inl]


# ------------------------------------------------------------------------- public


def align(
    base: np.ndarray,
    follow: np.ndarray,
    model: str = "similarity",
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    seed: int = 0,
) -> Alignment:
    """Align ``follow`` to ``base`` (both H x W x 3 uint8 RGB, full resolution, as
    displayed). Works on reduced copies (longest side ``max_side``) and returns the
    full-resolution follow-up -> base matrix. Raises :class:`AlignmentFailed`."""
    _check_model(model)
    if max_side < 2 * MIN_SIDE:
        raise ValueError(f"max_side must be at least {2 * MIN_SIDE}")
    gb, sb = _to_grey(base, max_side)
    gf, sf = _to_grey(follow, max_side)
    return _align_grey(gb, sb, gf, sf, model, seed)


def _align_grey(
    gb: Grey,
    sb: tuple[float, float],
    gf: Grey,
    sf: tuple[float, float],
    model: str,
    seed: int,
) -> Alignment:
    m_small, k, n, src, dst = _solve(gb, gf, model, seed)
    to_base = _scale_matrix(*sb)
    to_follow = _scale_matrix(*sf)
    from_base = np.asarray(np.linalg.inv(to_base), dtype=np.float64)
    from_follow = np.asarray(np.linalg.inv(to_follow), dtype=np.float64)
    full = from_base @ m_small @ to_follow
    full /= full[2, 2]
    full[2, :2] = 0.0
    # residuals in full-resolution base pixels
    src_full = _apply(from_follow, src)
    dst_full = _apply(from_base, dst)
    res = _residuals(full, src_full, dst_full)
    rms = float(np.sqrt(np.mean(res**2))) if len(res) else 0.0
    return Alignment(
        matrix=full,
        model=model,
        inliers=k,
        matches=n,
        confidence=_confidence(k, n),
        rms_px=rms,
    )


def manual_alignment(
    base_pts: Sequence[tuple[float, float]],
    follow_pts: Sequence[tuple[float, float]],
    model: str = "similarity",
) -> Alignment:
    """Alignment from 3 or more clicked point pairs: ``follow_pts[i]`` (follow-up pixels)
    shows the same anatomy as ``base_pts[i]`` (base pixels). Least squares with
    ``model`` ("similarity" or "affine"); ``Alignment.model`` is "manual".

    Raises :class:`AlignmentFailed` for fewer than 3 pairs, points that coincide or lie
    on one line, or a result that would mirror the photo or zoom beyond 1/4..4x."""
    _check_model(model)
    try:
        dst = np.asarray(base_pts, dtype=np.float64).reshape(-1, 2)
        src = np.asarray(follow_pts, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError) as exc:
        raise AlignmentFailed("The alignment points must be (x, y) pairs of numbers.") from exc
    if len(src) != len(dst):
        raise AlignmentFailed(
            f"Each base point needs its follow-up point ({len(dst)} base, {len(src)} "
            "follow-up points given)."
        )
    if len(src) < 3:
        raise AlignmentFailed(f"Manual alignment needs at least 3 point pairs, not {len(src)}.")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise AlignmentFailed("The alignment points must be finite numbers.")
    for pts, which in ((dst, "base"), (src, "follow-up")):
        centred = pts - pts.mean(axis=0)
        sv = np.linalg.svd(centred, compute_uv=False)
        spread = float(np.sqrt(np.mean(np.sum(centred**2, axis=1))))
        if spread < 2.0 or sv[1] < 0.05 * sv[0]:
            raise AlignmentFailed(
                f"The {which} points are too close together or lie on one line; place "
                "three points far apart around the area to compare."
            )
    m = _estimate(model, src, dst)
    if m is None:
        raise AlignmentFailed("No transform fits these points; place them again.")
    if not _plausible(m):
        raise AlignmentFailed(
            "These points would mirror the photo or zoom it by more than 4x; check that "
            "each pair marks the same spot in both photos."
        )
    res = _residuals(m, src, dst)
    return Alignment(
        matrix=m,
        model="manual",
        inliers=len(src),
        matches=len(src),
        confidence=1.0,
        rms_px=float(np.sqrt(np.mean(res**2))),
    )


def align_files(
    base_path: str | PathLike[str],
    follow_path: str | PathLike[str],
    model: str = "similarity",
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    seed: int = 0,
) -> Alignment:
    """:func:`align` two photo files, decoded through :mod:`~derm_workstation.imaging.decode`
    (every safety rule applies; a rejected file raises
    :class:`~derm_workstation.imaging.decode.ImageRejected` naming which photo it is).
    JPEGs are decoded directly at reduced size (DCT scaling), so two 12 MP photos never
    exist at full size."""
    from derm_workstation.imaging.decode import read_image_file

    _check_model(model)
    data = []
    for path, label in ((base_path, "Base photo"), (follow_path, "Follow-up photo")):
        with _naming(label, path):
            data.append(read_image_file(path))
    return _align_encoded(data[0], data[1], model, max_side, seed,
                          (Path(base_path).name, Path(follow_path).name))


def align_bytes(
    base_data: bytes,
    follow_data: bytes,
    model: str = "similarity",
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    seed: int = 0,
) -> Alignment:
    """:func:`align_files` for encoded photos already in memory (e.g. from the image
    store): the matrix is in full-resolution displayed pixels of the encoded photos,
    although they are only decoded at reduced size."""
    _check_model(model)
    return _align_encoded(base_data, follow_data, model, max_side, seed, ("", ""))


@contextmanager
def _naming(label: str, name: str | PathLike[str]) -> Iterator[None]:
    """Prefix an ImageRejected reason with which photo it is about."""
    from derm_workstation.imaging.decode import ImageRejected

    try:
        yield
    except ImageRejected as exc:
        shown = Path(name).name if str(name) else ""
        prefix = f"{label} {shown}".strip()
        raise ImageRejected(f"{prefix}: {exc.reason}", code=exc.code) from exc


def _align_encoded(
    base_data: bytes,
    follow_data: bytes,
    model: str,
    max_side: int,
    seed: int,
    names: tuple[str, str],
) -> Alignment:
    if max_side < 2 * MIN_SIDE:
        raise ValueError(f"max_side must be at least {2 * MIN_SIDE}")
    with _naming("Base photo", names[0]):
        gb, sb = _decode_grey(base_data, max_side)
    with _naming("Follow-up photo", names[1]):
        gf, sf = _decode_grey(follow_data, max_side)
    return _align_grey(gb, sb, gf, sf, model, seed)


def _decode_grey(data: bytes, max_side: int) -> tuple[Grey, tuple[float, float]]:
    from derm_workstation.imaging.decode import decode_image, inspect_image

    info = inspect_image(data, verify_pixels=False)
    img = decode_image(data, max_size=max_side)
    grey, (sx, sy) = _to_grey(np.asarray(img), max_side)
    w, h = img.size
    # the decoded copy is already reduced: scale relative to the full displayed size
    return grey, (sx * w / info.width, sy * h / info.height)
