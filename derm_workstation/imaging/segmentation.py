"""Assisted lesion segmentation: automatic, or from one click inside the lesion.

:func:`segment` proposes a lesion boundary on an sRGB photo (the image as displayed,
i.e. after EXIF orientation — see :func:`derm_workstation.imaging.decode.decode_image`).
It returns a full-resolution mask and the same boundary as a polygon the clinician
can edit. It never decides anything: it is a proposal to be checked.

How it works (all classical image analysis, no trained model; few parameters, all
module constants below, none tuned per image):

1. **Working copy.** The photo is resized so its long side is :data:`WORK_SIDE` px
   (down for camera photos, up for small images), so every size below is a fraction
   of the field of view rather than of the sensor.
2. **Field of view.** A dermatoscope's black surround and black corners of rotated
   scans (very dark regions connected to the image edge) are excluded.
3. **Hair, ruler marks, pen lines.** Thin dark structures are found with a
   morphological black-hat (closing minus image); only *elongated* connected
   pieces count (so dots, globules and small moles are kept). They are filled from
   their surroundings by normalised convolution (a cheap inpainting).
4. **Skin model.** Colours are converted to CIELAB. The skin colour is estimated in
   the outer band of the field of view (where the photographer did not centre the
   lesion) as a local mode with its covariance: several starts from the lighter
   half of that band, each refined by trimmed mean/covariance steps; the lightest
   mode that holds at least :data:`MIN_SKIN_SUPPORT` of the band wins, so a lesion
   that fills most of the frame, a white reference sticker or a hair does not
   become "skin".
5. **Uneven light.** A quadratic surface is fitted to the L* of the pixels that match
   the skin model and subtracted (flash fall-off, vignetting), then the skin model
   is estimated again.
6. **Lesion evidence.** Every pixel's Mahalanobis distance *S* (in units of skin
   variation) from the skin model: darker, redder, bluer or greyer than the
   surrounding skin all count.
7. **Region.** Cores are pixels with ``S > STRONG``. *Automatic*: the core
   component with the best ``area x centre prior x solidity²`` wins, where pieces
   lying along the edge of the field (a vignette, a grey dermatoscope rim) count
   less, a ring or a streak (low solidity: area over convex-hull area) counts less
   than a blob, and a near-perfect disc (a calibration sticker or coin) is skipped.
   *One click*: the core under or nearest the click. The region then grows to the
   connected pixels with ``S > max(S_MIN, BETA x median S of the region)`` (twice),
   i.e. the border is placed at a fixed fraction of the lesion's own contrast, which
   works for faint and for dark lesions alike.
8. **Tidy outline.** Holes are filled; an opening with a disc of
   :data:`OPEN_FRACTION` of the region's equivalent radius cuts thin bridges into
   the skin (along a ruler, a hair or a dark corner; the part holding the core is
   kept) and a closing with :data:`CLOSE_FRACTION` of it fills notches, the way a
   clinician draws one smooth line round a lesion with a broken border. Both are
   relative to the region's size, so small and large lesions are treated alike.
9. **Second opinion (automatic mode).** Lesion and skin as two colour classes: the
   CIELAB direction that best separates the region from the skin around it
   (Fisher's discriminant) is found, the image projected on it and split at Otsu's
   threshold, the piece with the most centre prior kept; three rounds. This finds
   faint lesions, wide light-brown or pink parts and halos that the skin-distance
   threshold leaves out. It replaces the first outline only when the two disagree
   (Jaccard below :data:`AGREEMENT`), it is one compact piece (solidity at least
   :data:`MIN_SOLIDITY`) and it stands out from the skin at least
   :data:`CONTRAST_SHARE` as much as the first outline (so a patch of lighter or
   shadowed skin is never taken).
10. **Periphery (faint lesions).** :data:`S_MIN` is a global guess of how far skin
    strays from its model. When the lesion's own border rule (``BETA`` x its median
    skin distance) falls below that floor, i.e. the border of a faint lesion was set
    by the floor and not by the lesion, the skin right round this lesion is measured
    instead: in a ring :data:`PERIPHERY_RING` lesion radii outside the outline, the
    skin distance that :data:`PERIPHERY_QUANTILE` of that skin stays under. Connected
    pixels between the outline and the ring above that level (and above the lesion's
    own border rule) are the pale periphery an expert includes. Red or uneven skin
    round the lesion raises the level above the floor, and nothing is added.
11. **One smooth line.** Experts draw one smooth, nearly convex line round the whole
    lesion, across the bays of a ragged or broken border (regression, a pale sector,
    gaps in a network). A closing with a disc of :data:`OUTLINE_FRACTION` of the
    region's equivalent radius does the same at every size; bays wider than the disc
    (a lesion concave on a large scale) stay, and nothing outside the field of view is
    added. Both steps are the same with a click.
12. **Full resolution.** The smooth working-resolution outline is upsampled to the
    photo's size; within a narrow band around it (:data:`REFINE_BAND` working
    pixels) the decision that made it (skin distance, the two-class projection, or
    skin distance at the periphery's level) is remade from the photo's own
    full-resolution pixels, so the border follows the real edge.

Accuracy, measured by ``benchmarks/segmentation_eval.py`` (Jaccard index, automatic
mode; none of these images is used by the tests): real dermoscopic images with
expert masks — ISIC 2017 test images (30, resized to 256x192) mean 0.76, median
0.84, 17% under 0.65 (steps 10-11 were decided on the even-numbered half
and HAM10000; the held-out odd half went from 0.785 to 0.798); HAM10000 (5)
mean 0.86, median 0.91; synthetic photos with exact masks, Fitzpatrick
I-VI — clinical mole with a sticker 0.92, dermoscopic 0.91, psoriasis plaque
0.94; one click at the lesion's centre scores the same. Mirrored, turned and resized
copies of the real images score within 0.01 of the originals on ISIC and within 0.04 on
HAM10000, where one image (ISIC_0027533) scores 0.46-0.67 by copy (``--transforms``).
Typical failures: lesions barely different from the skin (faint pink or light-brown
macules, dense hair over a pink lesion), where the expert outline follows a change the
colour model cannot see; expert outlines drawn far outside the visible pigment; a
lesion filling the whole field, so that the outer band holds no skin; and red skin
(erythema) round a lesion taken as part of it.

``confidence`` is a heuristic in 0..1 from the lesion's contrast to skin, whether
the region touches the edge of the field of view and its size; below about 0.4 the
proposal should be looked at with particular care.

Coordinates: the polygon is in continuous image pixel coordinates (x to the right,
y down), where pixel (col, row) covers ``[col, col+1) x [row, row+1)``; the seed is
given the same way (``(x, y)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage as ndi

from derm_workstation.core.errors import InputError

__all__ = [
    "BETA",
    "STRONG",
    "WORK_SIDE",
    "NoLesionFound",
    "Segmentation",
    "looks_dermoscopic",
    "mask_to_polygon",
    "segment",
]

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

WORK_SIDE = 512
"""Long side (px) of the working copy."""
HAIR_SIZE = 11
"""Closing window (working px) of the hair black-hat: structures thinner than this."""
HAIR_CONTRAST = 0.05
"""Black-hat depth (luminance 0..1) that counts as a thin dark line."""
SMOOTH_SIGMA = 1.5
"""Gaussian smoothing (working px) of the colour image before the colour analysis."""
SKIN_BAND = 0.1
"""Width of the outer band of the field of view used for the skin model (x long side)."""
MIN_SKIN_SUPPORT = 0.15
"""Share of the outer band a colour mode needs to be taken as skin."""
SKIN_CHROMA = 6.0
"""CIELAB chroma below which a colour mode is near-neutral (white, grey): such a mode
is taken as skin only when no coloured one qualifies."""
STRONG = math.sqrt(30.0)
"""Skin-distance (skin standard deviations) of the lesion cores."""
S_MIN = 3.0
"""Lowest skin-distance the region may grow into."""
BETA = 0.38
"""The border sits at this fraction of the lesion's median skin-distance."""
OPEN_FRACTION = 0.15
"""Opening radius (x the region's equivalent radius) that cuts thin bridges to skin."""
CLOSE_FRACTION = 0.3
"""Closing radius (x the region's equivalent radius) that fills notches of the outline."""
PERIPHERY_RING = (0.5, 1.0)
"""The skin round a lesion: a ring from this much to this much (x the lesion's
equivalent radius) outside its outline. The periphery may grow up to the ring."""
PERIPHERY_QUANTILE = 0.95
"""Periphery pixels are further from the skin model than this share of that skin ring."""
OUTLINE_FRACTION = 0.75
"""Closing radius (x the equivalent radius) of the final outline: bays narrower than
this are bridged, the way an expert draws one smooth line round the whole lesion."""
MIN_SOLIDITY = 0.7
"""Area / convex-hull area a two-class outline needs to be trusted as one lesion."""
CONTRAST_SHARE = 0.5
"""A two-class outline must be, as a whole, at least this share as far from the skin
(median skin-distance) as the skin-distance outline."""
AGREEMENT = 0.85
"""Jaccard between the two proposals above which the skin-distance one is kept."""
POST_SIGMA = 2.0
"""Final smoothing (working px) of the outline."""
REFINE_BAND = 1.5
"""Half-width (working px) of the band re-decided at full resolution."""

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class NoLesionFound(InputError):
    """No region that differs from the surrounding skin was found."""


@dataclass(frozen=True, eq=False)
class Segmentation:
    """A proposed lesion boundary.

    ``mask`` is HxW bool at the photo's full resolution; ``polygon`` is the outer
    boundary as an Nx2 float array of (x, y) image pixel coordinates (not repeated
    at the end); ``method`` is ``"automatic"`` or ``"seed"``.
    """

    mask: BoolArray
    polygon: FloatArray
    method: str
    confidence: float
    dermoscopic: bool
    warnings: tuple[str, ...] = field(default=())

    @property
    def area_px(self) -> int:
        return int(np.count_nonzero(self.mask))

    def as_json(self) -> dict[str, Any]:
        h, w = self.mask.shape
        return {
            "method": self.method,
            "confidence": round(float(self.confidence), 3),
            "dermoscopic": self.dermoscopic,
            "width": w,
            "height": h,
            "area_px": self.area_px,
            "polygon": [[round(float(x), 2), round(float(y), 2)] for x, y in self.polygon],
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------- helpers


def _as_rgb8(rgb: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    a = np.asarray(rgb)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] < 3:
        raise InputError("The image must be an RGB picture (height x width x 3).")
    a = a[..., :3]
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and float(np.nanmax(a)) <= 1.0:
            a = a * 255.0
        a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
    if a.shape[0] < 16 or a.shape[1] < 16:
        raise InputError("The image is too small to analyse (under 16 pixels).")
    return np.ascontiguousarray(a)


def _reduce(rgb: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float32], float]:
    """Working copy (float 0..1) with long side WORK_SIDE; returns it and its scale."""
    h, w = rgb.shape[:2]
    s = WORK_SIDE / max(h, w)
    nw, nh = max(round(w * s), 1), max(round(h * s), 1)
    im = Image.fromarray(rgb)
    if s < 1:
        im = im.resize((nw, nh), Image.Resampling.BOX, reducing_gap=2.0)
    elif s > 1:
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    out = np.asarray(im, dtype=np.float32)
    out *= 1.0 / 255.0
    return out, s


def _field_of_view(img: npt.NDArray[np.float32]) -> tuple[BoolArray, bool]:
    """Usable pixels (not the dark surround of a dermatoscope) and whether one was found."""
    v = ndi.gaussian_filter(img.max(axis=2), 2.0)
    ref = float(np.percentile(v, 90))
    dark = v < 0.3 * ref
    lab, n = ndi.label(dark)
    if n == 0:
        return np.ones(v.shape, dtype=bool), False
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    border = border[border > 0]
    outside = np.isin(lab, border)
    share = float(outside.mean())
    if share < 0.01 or share > 0.8:
        return np.ones(v.shape, dtype=bool), False
    fov = ndi.binary_erosion(~outside, iterations=4, border_value=1)
    # a dermatoscope's round field leaves all four corners dark
    corners = [outside[0, 0], outside[0, -1], outside[-1, 0], outside[-1, -1]]
    return fov, bool(sum(corners) >= 3 and share > 0.05)


def _hair_mask(lum: npt.NDArray[np.float32], fov: BoolArray) -> BoolArray:
    """Thin, elongated dark structures: hairs, ruler ticks, pen lines."""
    closed = ndi.minimum_filter(ndi.maximum_filter(lum, HAIR_SIZE), HAIR_SIZE)
    cand = ((closed - lum) > HAIR_CONTRAST) & fov
    lab, n = ndi.label(cand, structure=np.ones((3, 3)))
    if n == 0:
        return cand
    idx = np.arange(1, n + 1)
    rows, cols = np.indices(lum.shape)
    r0 = ndi.minimum(rows, lab, idx)
    r1 = ndi.maximum(rows, lab, idx)
    c0 = ndi.minimum(cols, lab, idx)
    c1 = ndi.maximum(cols, lab, idx)
    area = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.float64)
    diag2 = (np.asarray(r1) - np.asarray(r0) + 1.0) ** 2 + (np.asarray(c1) - np.asarray(c0)
                                                             + 1.0) ** 2
    # a line of length l and width w: diag^2/area ~ l/w; a round blob: ~2.5
    keep = np.concatenate([[False], (diag2 >= 15.0 ** 2) & (diag2 / area >= 6.0)])
    return ndi.binary_dilation(keep[lab], iterations=1)


def _inpaint(img: npt.NDArray[np.float32], hole: BoolArray, sigma: float = 4.0) -> None:
    """Fill ``hole`` pixels in place from their surroundings (normalised convolution)."""
    if not hole.any():
        return
    wgt = (~hole).astype(np.float32)
    den = ndi.gaussian_filter(wgt, sigma)
    np.maximum(den, 1e-6, out=den)
    for c in range(3):
        ch = img[..., c]
        fill = ndi.gaussian_filter(ch * wgt, sigma) / den
        ch[hole] = fill[hole]


_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]], dtype=np.float32)
_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)


def rgb_to_lab(rgb01: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """sRGB (0..1 floats, ...x3) to CIELAB (D65), float32. Same formulas as skimage."""
    a = np.asarray(rgb01, dtype=np.float32)
    lin = np.where(a <= 0.04045, a / 12.92, ((a + 0.055) / 1.055) ** 2.4)
    xyz = lin @ (_XYZ_FROM_RGB.T / _WHITE[:, None].T)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    out = np.empty(a.shape, dtype=np.float32)
    out[..., 0] = 116.0 * f[..., 1] - 16.0
    out[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    out[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return out


def _local_mode(x: FloatArray, mu0: FloatArray, c0: float = 16.0
                ) -> tuple[FloatArray, FloatArray]:
    """Mean and covariance of the colour mode nearest ``mu0`` (trimmed at chi2 90%)."""
    t, corr = 6.2514, 0.9 / 0.7706  # chi2.ppf(0.9, 3); 0.9 / chi2.cdf(t, 5)
    mu = np.asarray(mu0, dtype=np.float64)
    cov = np.eye(3) * c0
    for _ in range(10):
        z = (x - mu) @ np.linalg.inv(np.linalg.cholesky(cov)).T
        sel = (z * z).sum(axis=1) < t
        if int(sel.sum()) < 30:
            break
        mu = x[sel].mean(axis=0)
        cov = np.cov(x[sel].T) * corr + np.eye(3) * 0.25
    return mu, cov


def _mahalanobis(lab: npt.NDArray[np.float32], mu: FloatArray, cov: FloatArray
                 ) -> npt.NDArray[np.float32]:
    # whiten with the Cholesky factor: |L^-1 d|^2 == d' C^-1 d
    white = np.linalg.inv(np.linalg.cholesky(cov)).T.astype(np.float32)
    z = (lab - mu.astype(np.float32)) @ white
    z *= z
    out: npt.NDArray[np.float32] = z.sum(axis=-1)
    return out


def _skin_model(lab: npt.NDArray[np.float32], fov: BoolArray
                ) -> tuple[FloatArray, FloatArray]:
    h, w = fov.shape
    width = max(1, int(SKIN_BAND * max(h, w)))
    band = fov & (_inner_distance(fov) <= width)
    if int(band.sum()) < 200:
        band = fov
    x = lab[band].astype(np.float64)
    if len(x) > 8000:
        x = x[:: len(x) // 8000]
    lum = x[:, 0]
    best: tuple[FloatArray, FloatArray] | None = None
    best_rank: tuple[bool, float] = (False, -math.inf)
    fallback: tuple[FloatArray, FloatArray] | None = None
    for q in (0.3, 0.6, 0.8):
        lo, hi = np.quantile(lum, [q, min(q + 0.2, 0.97)])
        sel = (lum >= lo) & (lum <= hi)
        if not sel.any():
            continue
        mu, cov = _local_mode(x, np.median(x[sel], axis=0))
        support = float(np.mean(_mahalanobis(x.astype(np.float32), mu, cov) < 11.34))
        if fallback is None:
            fallback = (mu, cov)
        # skin has some colour: a white ruler, paper or sticker in the band does not
        # win over a skin-coloured mode (grey-looking skin still can, when alone)
        rank = (math.hypot(mu[1], mu[2]) >= SKIN_CHROMA, mu[0])
        if support >= MIN_SKIN_SUPPORT and (best is None or rank > best_rank):
            best, best_rank = (mu, cov), rank
    if best is None:
        best = fallback or (x.mean(axis=0), np.cov(x.T) + np.eye(3))
    return best


def _inner_distance(m: BoolArray) -> npt.NDArray[np.float64]:
    """Distance of each pixel of ``m`` to the nearest pixel outside it or the image edge."""
    d: npt.NDArray[np.float64] = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    return d


def _quadratic_basis(h: int, w: int, rows: FloatArray, cols: FloatArray) -> FloatArray:
    x = cols / w - 0.5
    y = rows / h - 0.5
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)


def _disc_like(comp: BoolArray) -> bool:
    """A near-perfect filled disc: a sticker or a coin rather than a lesion."""
    edge = comp & ~ndi.binary_erosion(comp)
    ys, xs = np.nonzero(edge)
    if len(xs) < 20:
        return False
    r = np.hypot(xs - xs.mean(), ys - ys.mean())
    rm = float(r.mean())
    return float(r.std()) / rm < 0.02 and comp.sum() > 0.8 * math.pi * rm * rm


def _off_rim(m: BoolArray, lab: npt.NDArray[np.int32], idx: npt.NDArray[np.intp],
             fov: BoolArray) -> FloatArray:
    """Per labelled piece: 1 minus twice the share of its outline on the field's edge."""
    rim = ~ndi.binary_erosion(fov, iterations=3, border_value=0)
    outline = m & ~ndi.binary_erosion(m, border_value=1)
    total = np.asarray(ndi.sum(outline | (m & rim), lab, idx), dtype=np.float64)
    on = np.asarray(ndi.sum(m & rim, lab, idx), dtype=np.float64)
    out: FloatArray = 1.0 - np.clip(2.0 * on / np.maximum(total, 1.0), 0.0, 0.9)
    return out


def _jaccard(a: BoolArray, b: BoolArray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def _solidity(m: BoolArray) -> float:
    """Area over convex-hull area (1 for a convex blob, small for a ring or a streak)."""
    from skimage.morphology import convex_hull_image

    ys, xs = np.nonzero(m)
    if len(ys) < 3:
        return 0.0
    crop = m[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    hull = convex_hull_image(crop)
    return float(crop.sum()) / max(1.0, float(hull.sum()))


def _grow(core: BoolArray, allowed: BoolArray) -> BoolArray:
    lab, _ = ndi.label(allowed | core)
    ids = np.unique(lab[core])
    ids = ids[ids > 0]
    out: BoolArray = np.isin(lab, ids)
    return out


# --------------------------------------------------------------------------- analysis


@dataclass
class _Analysis:
    scale: float            # working px per image px
    shape: tuple[int, int]  # full-resolution (h, w)
    fov: BoolArray
    dermoscopic: bool
    skin_mu: FloatArray
    skin_cov: FloatArray
    l_coef: FloatArray | None   # quadratic L* correction (coefficients), None if unused
    l_ref: float
    s: npt.NDArray[np.float32]  # skin distance, working resolution
    lab: npt.NDArray[np.float32]  # smoothed, light-corrected CIELAB, working resolution


def _analyse(rgb: npt.NDArray[np.uint8], dermoscopic: bool | None,
             exclude: BoolArray | None) -> _Analysis:
    img, scale = _reduce(rgb)
    h, w = img.shape[:2]
    fov, scope = _field_of_view(img)
    if exclude is not None:
        ex = np.asarray(Image.fromarray(exclude.astype(np.uint8) * 255).resize(
            (w, h), Image.Resampling.BILINEAR)) > 0
        fov &= ~ndi.binary_dilation(ex, iterations=2)
    lum = img @ _LUMA
    hair = _hair_mask(lum, fov)
    _inpaint(img, hair | ~fov)
    img = ndi.gaussian_filter(img, (SMOOTH_SIGMA, SMOOTH_SIGMA, 0))
    lab = rgb_to_lab(img)
    mu, cov = _skin_model(lab, fov)
    dist = _mahalanobis(lab, mu, cov)
    coef: FloatArray | None = None
    l_ref = 0.0
    skin = fov & (dist < 8.0)
    if int(skin.sum()) > 0.05 * int(fov.sum()):
        rows, cols = np.nonzero(skin)
        step = max(1, len(rows) // 30000)
        basis = _quadratic_basis(h, w, rows[::step].astype(np.float64),
                                 cols[::step].astype(np.float64))
        fitted = np.asarray(np.linalg.lstsq(
            basis, lab[..., 0][skin][::step].astype(np.float64), rcond=None)[0],
            dtype=np.float64)
        coef = fitted
        rr, cc = np.mgrid[0:h, 0:w]
        fit = (_quadratic_basis(h, w, rr.astype(np.float64), cc.astype(np.float64))
               @ fitted).astype(np.float32)
        l_ref = float(np.median(fit[skin]))
        lab[..., 0] += l_ref - fit
        mu, cov = _skin_model(lab, fov)
        dist = _mahalanobis(lab, mu, cov)
    s = np.sqrt(np.maximum(dist, 0.0))
    s[~fov] = 0.0
    return _Analysis(scale=scale, shape=(rgb.shape[0], rgb.shape[1]), fov=fov,
                     dermoscopic=scope if dermoscopic is None else bool(dermoscopic),
                     skin_mu=mu, skin_cov=cov, l_coef=coef, l_ref=l_ref, s=s, lab=lab)


def _choose_core(an: _Analysis, seed: tuple[float, float] | None) -> BoolArray | None:
    s, fov = an.s, an.fov
    h, w = s.shape
    strong = ndi.binary_opening((s > STRONG) & fov, iterations=1)
    lab, n = ndi.label(strong)
    if seed is not None:
        sx = min(max(int(seed[0] * an.scale), 0), w - 1)
        sy = min(max(int(seed[1] * an.scale), 0), h - 1)
        r = max(2, round(0.01 * max(h, w)))
        y0, y1, x0, x1 = max(sy - r, 0), min(sy + r + 1, h), max(sx - r, 0), min(sx + r + 1, w)
        ids = np.unique(lab[y0:y1, x0:x1])
        ids = ids[ids > 0]
        if ids.size:  # a lesion core under the click
            on_core: BoolArray = np.isin(lab, ids)
            return on_core
        level = float(np.median(s[y0:y1, x0:x1]))
        if level >= S_MIN:
            # a fainter lesion: its own contrast where clicked sets the threshold
            rl, _ = ndi.label(fov & (s > max(S_MIN, BETA * level)))
            ids = np.unique(rl[y0:y1, x0:x1])
            ids = ids[ids > 0]
            if ids.size:
                near: BoolArray = np.isin(rl, ids)
                return near
        # faint where clicked: nearest strong core within a tenth of the frame
        if n:
            dt, (iy, ix) = ndi.distance_transform_edt(lab == 0, return_indices=True)
            if dt[sy, sx] <= 0.1 * max(h, w):
                out: BoolArray = lab == lab[iy[sy, sx], ix[sy, sx]]
                return out
        # no core at all: everything around the click that is off-skin at all
        rl, _ = ndi.label(fov & (s > S_MIN))
        if rl[sy, sx] > 0:
            return rl == rl[sy, sx]
        return None
    if n == 0:
        return None
    idx = np.arange(1, n + 1)
    area = np.asarray(ndi.sum(strong, lab, idx), dtype=np.float64)
    cy, cx = np.asarray(ndi.center_of_mass(strong, lab, idx), dtype=np.float64).reshape(-1, 2).T
    d = np.hypot((cx - w / 2) / w, (cy - h / 2) / h)
    width = 0.25 if an.dermoscopic else 0.3
    score = area * np.exp(-((d / width) ** 2))
    # pieces whose outline runs along the edge of the field (a vignette, a
    # dermatoscope's rim, a ruler at the edge of the photo) count less
    score *= _off_rim(strong, lab, idx, fov)
    top = np.argsort(-score)[:6]
    adjusted = np.zeros_like(score)
    for i in top:
        comp = lab == i + 1
        # a sticker or coin is skipped; rings and ragged streaks weigh less than blobs
        adjusted[i] = score[i] * (0.01 if _disc_like(comp) else _solidity(comp) ** 2)
    best: BoolArray = lab == int(np.argmax(adjusted)) + 1
    return best


def _region(an: _Analysis, core: BoolArray) -> tuple[BoolArray, float]:
    s, fov = an.s, an.fov
    m = core
    t = S_MIN
    for _ in range(2):
        if not m.any():
            break
        t = max(S_MIN, BETA * float(np.median(s[m])))
        m = _grow(m, fov & (s > t))
    return m, t


def _tidy(an: _Analysis, core: BoolArray, m: BoolArray) -> BoolArray:
    """Cut thin bridges into the skin and fill notches, both relative to the region's size.

    An opening with a disc of :data:`OPEN_FRACTION` of the region's equivalent radius
    removes leaks along hairs, ruler marks or a vignette (the part holding the core is
    kept); a closing with :data:`CLOSE_FRACTION` of it gives the smooth outline a
    clinician draws around a lesion with a notched or broken border.
    """
    m = ndi.binary_fill_holes(m)
    area = float(m.sum())
    if area < 30:
        return m
    r_eq = math.sqrt(area / math.pi)
    r_open = OPEN_FRACTION * r_eq
    if r_open >= 1:
        opened = _dilate(_erode(m, r_open), r_open)
        kept = _grow(opened & core, opened) if (opened & core).any() else _largest(opened)
        if kept.any():
            m = kept
    r_close = CLOSE_FRACTION * math.sqrt(float(m.sum()) / math.pi)
    if r_close >= 1:
        pad = math.ceil(r_close) + 2
        closed = _erode(_dilate(np.pad(m, pad), r_close), r_close)[pad:-pad, pad:-pad]
        m = (ndi.binary_fill_holes(closed) & an.fov) | m
    return m


def _periphery(an: _Analysis, m: BoolArray) -> tuple[BoolArray, float | None]:
    """Add the lesion's pale periphery: what lies between it and its own skin.

    An expert outlines the whole lesion, including the faint light-brown or pink
    periphery round a darker centre; the thresholds above stop where the evidence
    falls to a fixed fraction of the lesion's contrast or to the global floor
    :data:`S_MIN`. The skin right round this lesion is measured instead: a ring
    :data:`PERIPHERY_RING` lesion radii outside the outline. Connected pixels between
    the outline and that ring whose skin distance exceeds what
    :data:`PERIPHERY_QUANTILE` of the ring's skin shows are part of the lesion. The
    level is never below the region's own border rule (``BETA`` x its median skin
    distance), so a lesion with a sharp, high-contrast border keeps it, and in a ring
    of red or uneven skin (erythema, a vignette) the level rises and nothing is added.
    Returns the region and the level used (``None`` when nothing was added).
    """
    area = float(m.sum())
    if area < 30:
        return m, None
    r_eq = math.sqrt(area / math.pi)
    near = _dilate(m, PERIPHERY_RING[0] * r_eq)
    ring = an.fov & _dilate(m, PERIPHERY_RING[1] * r_eq) & ~near
    if int(ring.sum()) < 50:
        return m, None
    level = max(float(np.quantile(an.s[ring], PERIPHERY_QUANTILE)),
                BETA * float(np.median(an.s[m])))
    if level >= S_MIN:
        return m, None
    grown = _grow(m, an.fov & near & (an.s > level)) | m
    if int(grown.sum()) == int(area):
        return m, None
    return grown, level


def _smooth_outline(an: _Analysis, m: BoolArray) -> BoolArray:
    """One smooth line round the lesion: a closing relative to the lesion's size.

    Expert outlines are drawn as one smooth, nearly convex line that bridges the bays
    of a lesion's ragged or broken border (regression areas, a pale sector, gaps in a
    pigment network). A closing with a disc of :data:`OUTLINE_FRACTION` of the
    region's equivalent radius does the same at every size; pixels outside the field
    of view are never added, and a lesion whose shape is genuinely concave on a larger
    scale (a bay wider than the disc) keeps its shape.
    """
    area = float(m.sum())
    r = OUTLINE_FRACTION * math.sqrt(area / math.pi)
    if area < 30 or r < 1:
        return m
    pad = math.ceil(r) + 2
    closed = _erode(_dilate(np.pad(m, pad), r), r)[pad:-pad, pad:-pad]
    return _largest(ndi.binary_fill_holes((closed & an.fov) | m))


def _erode(m: BoolArray, r: float) -> BoolArray:
    """Erosion by a Euclidean disc of radius ``r`` (a distance transform: any radius)."""
    out: BoolArray = ndi.distance_transform_edt(m) > r
    return out


def _dilate(m: BoolArray, r: float) -> BoolArray:
    """Dilation by a Euclidean disc of radius ``r``."""
    out: BoolArray = ndi.distance_transform_edt(~m) <= r
    return out


def _two_class(an: _Analysis, init: BoolArray | None,
               seed: tuple[int, int] | None = None
               ) -> tuple[BoolArray, FloatArray, float] | None:
    """Lesion against skin as two colour classes, for faint lesions and wide halos.

    The colour direction that best separates the current lesion estimate from the
    skin around it (Fisher's linear discriminant in CIELAB) is found; the image is
    projected on it and split at Otsu's threshold; the piece with the most centre
    prior (pieces on the edge of the field count less) is the new estimate. Three
    rounds. Starts from ``init`` (the skin-distance proposal) or, without one, from
    the centre of the photo against the outer band. Returns the region, the
    direction and the threshold (for the full-resolution border), or ``None``.
    """
    from skimage.filters import threshold_otsu

    fov, lab = an.fov, an.lab
    h, w = fov.shape
    rows, cols = np.ogrid[0:h, 0:w]
    prior = np.exp(-(((cols - w / 2) / w) ** 2 + ((rows - h / 2) / h) ** 2)
                   / (0.25 if an.dermoscopic else 0.3) ** 2)
    band = fov & (_inner_distance(fov) <= max(1, int(SKIN_BAND * max(h, w))))
    m = init if init is not None and int(init.sum()) > 50 else fov & (prior > 0.5)
    outside = band & ~ndi.binary_dilation(m, iterations=5)
    if int(outside.sum()) < 50:
        outside = band
    direction = np.zeros(3)
    t = 0.0
    for _round in range(3):
        if int(m.sum()) < 30 or int(outside.sum()) < 30:
            return None
        a, b = lab[m].astype(np.float64), lab[outside].astype(np.float64)
        within = np.cov(a.T) + np.cov(b.T) + np.eye(3) * 0.5
        direction = np.linalg.solve(within, a.mean(axis=0) - b.mean(axis=0))
        direction /= max(float(np.linalg.norm(direction)), 1e-9)
        f = ndi.gaussian_filter(lab @ direction.astype(np.float32), 1.0)
        vals = f[fov]
        t = float(threshold_otsu(vals[:: max(1, vals.size // 20000)]))
        cand = ndi.binary_opening(fov & (f > t), iterations=1)
        pieces, n = ndi.label(cand)
        if n == 0:
            return None
        idx = np.arange(1, n + 1)
        weight = np.asarray(ndi.sum(prior, pieces, idx), dtype=np.float64)
        weight *= _off_rim(cand, pieces, idx, fov)
        if seed is not None:  # one click: the piece under the click, if any
            weight[:] = 0.0
            if pieces[seed[1], seed[0]] > 0:
                weight[pieces[seed[1], seed[0]] - 1] = 1.0
        if not weight.any():
            return None
        m = ndi.binary_fill_holes(pieces == int(np.argmax(weight)) + 1)
        outside = fov & ~ndi.binary_dilation(m, iterations=5)
    return m, direction, t


def _clean(m: BoolArray) -> BoolArray:
    m = ndi.binary_fill_holes(m)
    disk = _disk(2)
    m = ndi.binary_opening(m, structure=disk)
    m = ndi.binary_fill_holes(m)
    m = ndi.gaussian_filter(m.astype(np.float32), POST_SIGMA) > 0.5
    return _largest(m)


def _disk(r: int) -> BoolArray:
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    out: BoolArray = (x * x + y * y) <= r * r
    return out


def _largest(m: BoolArray) -> BoolArray:
    lab, n = ndi.label(m)
    if n <= 1:
        return m
    sizes = np.bincount(lab.ravel())[1:]
    out: BoolArray = lab == int(np.argmax(sizes)) + 1
    return out


def _full_resolution(an: _Analysis, low: BoolArray, rgb: npt.NDArray[np.uint8],
                     threshold: float, direction: FloatArray | None = None) -> BoolArray:
    """Upsample the working mask; re-decide a thin band around it from full-res pixels.

    The decision is the one that made the working outline: skin distance above
    ``threshold``, or, with ``direction``, the CIELAB projection on it above it.
    """
    H, W = an.shape
    h, w = low.shape
    inv = 1.0 / an.scale
    phi = ndi.gaussian_filter(low.astype(np.float32), 0.7) - 0.5
    ys, xs = np.nonzero(np.abs(phi) < 0.5)
    if len(ys) == 0:
        return np.zeros((H, W), dtype=bool)
    pad = 3
    r0, r1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, h)
    c0, c1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, w)
    # full-res box covering the working box
    R0, R1 = math.floor(r0 * inv), min(math.ceil(r1 * inv), H)
    C0, C1 = math.floor(c0 * inv), min(math.ceil(c1 * inv), W)
    bh, bw = R1 - R0, C1 - C0
    # bilinear upsample of the signed field, pixel centres aligned
    sub = phi[r0:r1, c0:c1]
    yy = (np.arange(R0, R1, dtype=np.float32) + 0.5) * an.scale - 0.5 - r0
    xx = (np.arange(C0, C1, dtype=np.float32) + 0.5) * an.scale - 0.5 - c0
    up = _bilinear(sub, yy, xx)
    out = np.zeros((H, W), dtype=bool)
    box = up > 0
    if an.scale < 0.999:
        band_px = REFINE_BAND
        band = np.abs(_bilinear(
            ndi.distance_transform_edt(low[r0:r1, c0:c1]).astype(np.float32)
            - ndi.distance_transform_edt(~low[r0:r1, c0:c1]).astype(np.float32),
            yy, xx)) < band_px
        if band.any():
            px = rgb[R0:R1, C0:C1][band].astype(np.float32) * (1.0 / 255.0)
            # the same light smoothing as the working copy, in full-res pixels
            lab = rgb_to_lab(px)
            if an.l_coef is not None:
                by, bx = np.nonzero(band)
                basis = _quadratic_basis(
                    h, w, ((by + R0 + 0.5) * an.scale - 0.5).astype(np.float64),
                    ((bx + C0 + 0.5) * an.scale - 0.5).astype(np.float64))
                lab[:, 0] += an.l_ref - (basis @ an.l_coef).astype(np.float32)
            if direction is None:
                dist = np.sqrt(np.maximum(_mahalanobis(lab, an.skin_mu, an.skin_cov), 0.0))
            else:
                dist = lab @ direction.astype(np.float32)
            field_ = np.zeros((bh, bw), dtype=np.float32)
            field_[band] = dist
            # average over about one working pixel so texture and noise do not decide
            sig = 0.5 * inv
            num = ndi.gaussian_filter(field_, sig)
            den = ndi.gaussian_filter(band.astype(np.float32), sig)
            ok = band & (den > 0.2)
            smooth = np.zeros_like(num)
            smooth[ok] = num[ok] / den[ok]
            box = np.where(ok, smooth > threshold, box)
            box = ndi.binary_fill_holes(box)
            box = ndi.binary_opening(box, structure=_disk(max(1, int(0.5 * inv))))
    out[R0:R1, C0:C1] = _largest(ndi.binary_fill_holes(box))
    return out


def _bilinear(a: npt.NDArray[np.float32], yy: npt.NDArray[np.floating[Any]],
              xx: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """Sample ``a`` at the outer grid of row coordinates yy and column coordinates xx."""
    h, w = a.shape
    yy = np.clip(yy, 0, h - 1)
    xx = np.clip(xx, 0, w - 1)
    y0 = np.minimum(yy.astype(np.int32), h - 2 if h > 1 else 0)
    x0 = np.minimum(xx.astype(np.int32), w - 2 if w > 1 else 0)
    fy = (yy - y0)[:, None]
    fx = (xx - x0)[None, :]
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bot = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    out: npt.NDArray[np.float32] = (top * (1 - fy) + bot * fy).astype(np.float32)
    return out


def looks_dermoscopic(rgb: npt.ArrayLike) -> bool:
    """Whether the photo shows a dermatoscope's round field (dark surround, all corners)."""
    img, _scale = _reduce(_as_rgb8(rgb))
    return _field_of_view(img)[1]


def _shoelace(p: FloatArray) -> float:
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def mask_to_polygon(mask: BoolArray, max_points: int = 400) -> FloatArray:
    """Outer boundary of the largest region of ``mask`` as an Nx2 (x, y) float array.

    Continuous coordinates (pixel (c, r) covers ``[c, c+1) x [r, r+1)``): the
    marching-squares boundary, averaged over 7 vertices so that it follows the
    border rather than the pixel staircase (its length is then within about 1 % of
    the true perimeter), simplified to at most about ``max_points`` vertices, and
    scaled about its centre to keep the traced outline's area (averaging and the
    simplification's chords would shave a little off a convex border). Rasterising
    the polygon gives the mask back up to the simplification.
    """
    from skimage import measure

    m = _largest(np.asarray(mask, dtype=bool))
    if not m.any():
        return np.zeros((0, 2), dtype=np.float64)
    ys, xs = np.nonzero(m)
    r0, r1, c0, c1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    step = max(1, math.ceil(max(r1 - r0, c1 - c0) / 1024))
    crop = np.pad(m[r0:r1, c0:c1], 1)
    if step > 1:  # very large outline: trace a reduced copy (sub-pixel anyway)
        hh = math.ceil(crop.shape[0] / step) * step
        ww = math.ceil(crop.shape[1] / step) * step
        padded = np.zeros((hh, ww), dtype=np.float32)
        padded[: crop.shape[0], : crop.shape[1]] = crop
        small = padded.reshape(hh // step, step, ww // step, step).mean(axis=(1, 3))
    else:
        small = crop.astype(np.float32)
    contours = measure.find_contours(small, 0.5)
    if not contours:
        return np.zeros((0, 2), dtype=np.float64)
    c = max(contours, key=len)
    if len(c) > 1 and np.allclose(c[0], c[-1]):
        c = c[:-1]
    traced = _shoelace(c)
    if len(c) >= 7:
        # average over 7 vertices, so the polygon follows the border and not the
        # pixel staircase (which adds up to ~5 % to the perimeter); closed again after
        c = sum(np.roll(c, k, axis=0) for k in range(-3, 4)) / 7.0
    c = np.vstack([c, c[:1]])
    tol = 0.3
    simp = c if len(c) <= max_points + 1 else measure.approximate_polygon(c, tolerance=tol)
    while len(simp) > max_points + 1:
        tol *= 1.5
        simp = measure.approximate_polygon(c, tolerance=tol)
    if len(simp) > 1 and np.allclose(simp[0], simp[-1]):
        simp = simp[:-1]
    # averaging and each chord of the simplification cut a little off a convex
    # border: scaled about its centre, the polygon keeps the traced outline's area
    kept = _shoelace(simp)
    if len(simp) >= 3 and kept > 0 and traced > 0:
        centre = simp.mean(axis=0)
        simp = centre + (simp - centre) * math.sqrt(traced / kept)
    # small-array (row, col) at pixel centres -> image continuous (x, y)
    y = (simp[:, 0] + 0.5) * step - 1 + r0
    x = (simp[:, 1] + 0.5) * step - 1 + c0
    return np.stack([x, y], axis=1).astype(np.float64)


def _confidence(an: _Analysis, low: BoolArray, threshold: float) -> tuple[float, list[str]]:
    warnings: list[str] = []
    level = float(np.median(an.s[low])) if low.any() else 0.0
    conf = float(np.clip((level - S_MIN) / (4.0 * STRONG - S_MIN), 0.0, 1.0)) ** 0.5
    edge = low & ~ndi.binary_erosion(an.fov, iterations=2, border_value=0)
    if edge.any():
        share = float(edge.sum()) / max(1.0, float((low & ~ndi.binary_erosion(low)).sum()))
        if share > 0.05:
            conf *= 0.6
            warnings.append("The lesion reaches the edge of the photo; it may be larger "
                            "than the outline.")
    frac = float(low.sum()) / max(1.0, float(an.fov.sum()))
    if frac < 0.0005:
        conf *= 0.5
        warnings.append("The outlined area is very small; check it is the lesion.")
    if frac > 0.6:
        conf *= 0.6
        warnings.append("The outline covers most of the photo; check it is the lesion.")
    return round(conf, 3), warnings


def segment(rgb: npt.ArrayLike, seed: tuple[float, float] | None = None, *,
            dermoscopic: bool | None = None,
            exclude: npt.ArrayLike | None = None) -> Segmentation:
    """Propose the lesion's boundary on an sRGB photo (HxWx3, uint8 or 0..1 floats).

    ``seed``: an (x, y) point inside the lesion (image pixels), e.g. where the user
    clicked; ``None`` for automatic. ``dermoscopic``: ``None`` detects a dermatoscope's
    round field. ``exclude``: an optional HxW mask never to include (e.g. a detected
    calibration reference). Raises :class:`NoLesionFound` when nothing stands out
    from the skin, :class:`InputError` for a seed outside the image.
    """
    a = _as_rgb8(rgb)
    H, W = a.shape[:2]
    if seed is not None:
        sx, sy = float(seed[0]), float(seed[1])
        if not (0 <= sx < W and 0 <= sy < H) or not (math.isfinite(sx) and math.isfinite(sy)):
            raise InputError(f"The seed point ({sx:g}, {sy:g}) is outside the image "
                             f"({W} x {H} pixels).")
        seed = (sx, sy)
    ex = None
    if exclude is not None:
        ex = np.asarray(exclude, dtype=bool)
        if ex.shape != (H, W):
            raise InputError("The exclusion mask must have the image's size.")
    an = _analyse(a, dermoscopic, ex)
    core = _choose_core(an, seed)
    if core is None or not core.any():
        where = "at the point clicked" if seed is not None else "in the photo"
        raise NoLesionFound(f"No lesion was found {where}: nothing stands out clearly "
                            "from the surrounding skin. Draw the outline by hand.")
    region, threshold = _region(an, core)
    low = _clean(_tidy(an, core, region))
    direction: FloatArray | None = None
    # a second opinion for faint lesions and wide halos: two colour classes (with a
    # click, the piece under the click)
    h, w = low.shape
    at = None if seed is None else (min(max(int(seed[0] * an.scale), 0), w - 1),
                                    min(max(int(seed[1] * an.scale), 0), h - 1))
    alt = _two_class(an, low, at)
    if alt is not None:
        other = _clean(alt[0])
        # taken when it is one compact blob, differs from the first proposal, and
        # is, as a whole, off the skin colour (not a patch of lighter skin)
        if (other.any() and _solidity(other) >= MIN_SOLIDITY
                and _jaccard(low, other) < AGREEMENT
                and float(np.median(an.s[other]))
                >= CONTRAST_SHARE * (float(np.median(an.s[low])) if low.any() else 0.0)):
            low, direction, threshold = other, alt[1], alt[2]
    if not low.any():
        raise NoLesionFound("No lesion was found: the region found was too small to "
                            "outline. Draw the outline by hand.")
    low, level = _periphery(an, low)
    if level is not None:  # the border now sits at a skin-distance level
        direction, threshold = None, level
    low = _smooth_outline(an, low)
    full = _full_resolution(an, low, a, threshold, direction)
    if not full.any():
        raise NoLesionFound("No lesion was found: the region found was too small to "
                            "outline. Draw the outline by hand.")
    conf, warnings = _confidence(an, low, threshold)
    return Segmentation(mask=full, polygon=mask_to_polygon(full),
                        method="seed" if seed is not None else "automatic",
                        confidence=conf, dermoscopic=an.dermoscopic,
                        warnings=tuple(warnings))
