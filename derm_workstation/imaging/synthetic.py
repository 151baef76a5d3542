"""Deterministic synthetic skin photographs with ground truth, for demos and tests.

The demo workspace, the measurement tools and their tests need clinical-looking
photos whose truth is known: where the lesion is (a pixel mask), how many pixels
make a millimetre, and where a calibration reference of known size lies. No
real patient image may ever be shipped, so this module paints them.

The renderer is a small physically inspired model, all in numpy and Pillow:

* Skin is a base Fitzpatrick tone (``SKIN_TONES``) in linear light, modulated by
  smooth melanin/haemoglobin mottling, uneven flash illumination, vignetting and
  limb curvature (all computed on a coarse grid and upsampled), then by a
  full-resolution micro texture: crossing skin furrows, pores and sensor grain.
* Lesions are absorption maps (Beer-Lambert: melanin absorbs blue most, blood
  absorbs green most) plus opaque overlays (scale, pus, crust) and a height map
  that is lit from the same side as the scene. Erythema on darker skin is made
  duskier and more violaceous, with some post-inflammatory pigment, as it looks
  clinically.
* A calibration reference (sticker or coin) is drawn flat, square to the camera,
  at a spot free of lesion, and reported as ``ReferenceTruth``.

Everything random comes from ``np.random.default_rng(spec.seed)``, and nothing
reads the clock, so a spec always renders to the same pixels and JPEG bytes.
Sizes in a spec are in millimetres through ``px_per_mm``; a render of 1200x900
takes well under a quarter of a second.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

__all__ = [
    "KINDS",
    "SKIN_TONES",
    "PhotoSpec",
    "ReferenceTruth",
    "SyntheticPhoto",
    "render_photo",
    "render_rgb",
]

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
ByteArray = npt.NDArray[np.uint8]

KINDS: tuple[str, ...] = ("pigmented", "psoriasis", "eczema", "acne", "overview")

#: Base sRGB skin tones for Fitzpatrick types I..VI, as an evenly lit camera sees them.
SKIN_TONES: dict[int, tuple[int, int, int]] = {
    1: (234, 200, 182),
    2: (224, 182, 154),
    3: (203, 158, 122),
    4: (168, 121, 86),
    5: (122, 84, 59),
    6: (80, 55, 42),
}

_JPEG_QUALITY = 90
_AA_KERNEL = ImageFilter.Kernel((3, 3), [1, 2, 1, 2, 4, 2, 1, 2, 1], 16)
_CAMERA_MAKE = "DermDemo"
_CAMERA_MODEL = "Synthetic Camera"
_EXIF_IFD = 0x8769

# Relative absorbance per linear R, G, B channel.
_K_MELANIN = np.array([1.0, 1.55, 2.1], dtype=np.float32)
# Oxy-haemoglobin: little red absorption, strong green, moderate blue (salmon red).
_K_BLOOD_LIGHT = np.array([0.08, 1.0, 0.98], dtype=np.float32)
# The same blood seen through a melanin-rich epidermis reads dusky/violaceous.
_K_BLOOD_DARK = np.array([0.4, 0.9, 0.45], dtype=np.float32)


@dataclass(frozen=True)
class ReferenceTruth:
    """A calibration reference in the photo: known diameter, where it was drawn."""

    name: str
    diameter_mm: float
    cx: float
    cy: float
    radius_px: float


@dataclass(frozen=True)
class PhotoSpec:
    """Everything a synthetic photo depends on; equal specs render equal photos."""

    seed: int
    kind: str
    fitzpatrick: int
    severity: float
    width: int = 1200
    height: int = 900
    px_per_mm: float = 12.0
    with_reference: bool = False
    reference_mm: float = 10.0
    reference_name: str = "sticker-10mm"
    dermoscopic: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; expected one of {KINDS}")
        if self.fitzpatrick not in SKIN_TONES:
            raise ValueError(f"fitzpatrick must be 1..6, not {self.fitzpatrick}")
        if not 0.0 <= self.severity <= 1.0:
            raise ValueError(f"severity must be within 0..1, not {self.severity}")
        if not (32 <= self.width <= 8000 and 32 <= self.height <= 8000):
            raise ValueError(f"unsupported size {self.width}x{self.height}")
        if not 0.5 <= self.px_per_mm <= 200.0:
            raise ValueError(f"px_per_mm out of range: {self.px_per_mm}")
        if self.with_reference:
            if not 1.0 <= self.reference_mm <= 60.0:
                raise ValueError(f"reference_mm out of range: {self.reference_mm}")
            if self.reference_mm * self.px_per_mm > min(self.width, self.height) - 16:
                raise ValueError("the calibration reference does not fit in the frame")


@dataclass(frozen=True, eq=False)
class SyntheticPhoto:
    """An encoded synthetic photo and its ground truth."""

    spec: PhotoSpec
    jpeg: bytes
    width: int
    height: int
    lesion_mask: BoolArray
    px_per_mm: float
    reference: ReferenceTruth | None


# --------------------------------------------------------------------------- colour helpers


def _srgb_to_linear(rgb: tuple[float, float, float]) -> FloatArray:
    a = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(a <= 0.04045, a / 12.92, ((a + 0.055) / 1.055) ** 2.4)
    return lin.astype(np.float32)


def _build_lut(size: int) -> ByteArray:
    x = np.linspace(0.0, 1.0, size)
    s = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.clip(np.round(s * 255.0), 0, 255).astype(np.uint8)


_LUT_SIZE = 8192
_LIN_TO_SRGB = _build_lut(_LUT_SIZE)


def _to_srgb8(img: FloatArray) -> ByteArray:
    """Linear float RGB (modified in place) to 8-bit sRGB through a lookup table."""
    np.clip(img, 0.0, 1.0, out=img)
    img *= _LUT_SIZE - 1
    img += 0.5
    idx = img.astype(np.uint16)
    out: ByteArray = _LIN_TO_SRGB[idx]
    return out


def _smoothstep(edge0: float, edge1: float, x: FloatArray) -> FloatArray:
    """Hermite step from 0 at edge0 to 1 at edge1 (edges may be descending)."""
    t = np.clip((x - edge0) * (1.0 / (edge1 - edge0)), 0.0, 1.0)
    out: FloatArray = (t * t * (3.0 - 2.0 * t)).astype(np.float32, copy=False)
    return out


# --------------------------------------------------------------------------- noise helpers


def _upsample(a: FloatArray, w: int, h: int) -> FloatArray:
    """Bicubic resize of a smooth float field to (h, w); returns a writable float32 array.

    The field goes through Pillow as 8 bits spread over its own value range: smooth
    fields need no more, and this is several times faster than Pillow's float mode.
    """
    lo, hi = float(a.min()), float(a.max())
    if hi - lo < 1e-12:
        return np.full((h, w), lo, dtype=np.float32)
    q = np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    big = Image.fromarray(q).resize((w, h), Image.Resampling.BICUBIC)
    out: FloatArray = np.asarray(big).astype(np.float32)
    out *= (hi - lo) / 255.0
    out += lo
    return out


def _normalise(g: FloatArray) -> FloatArray:
    sd = float(g.std())
    if sd > 1e-6:
        g -= float(g.mean())
        g /= sd
    return g


def _noise(rng: np.random.Generator, h: int, w: int, feature_px: float) -> FloatArray:
    """Smooth, roughly unit-variance noise of shape (h, w) with blobs of about feature_px."""
    cell = feature_px / 2.0
    if cell <= 1.0:
        g = rng.standard_normal((h, w), dtype=np.float32)
        sigma = max(feature_px / 3.0, 0.5)
        return _normalise(np.asarray(ndimage.gaussian_filter(g, sigma), dtype=np.float32))
    gh = max(math.ceil(h / cell) + 1, 3)
    gw = max(math.ceil(w / cell) + 1, 3)
    g = rng.standard_normal((gh, gw), dtype=np.float32)
    g = _normalise(np.asarray(ndimage.gaussian_filter(g, 0.8), dtype=np.float32))
    return _upsample(g, w, h)


def _noise_sum(rng: np.random.Generator, h: int, w: int,
               octaves: tuple[tuple[float, float], ...]) -> FloatArray:
    """Sum of ``amp * _noise(feature_px)`` octaves, built small and upsampled once."""
    cell = min(f for f, _ in octaves) / 2.0
    if cell <= 1.0:
        total = np.zeros((h, w), dtype=np.float32)
        for f, a in octaves:
            total += a * _noise(rng, h, w, f)
        return total
    gh = max(math.ceil(h / cell) + 1, 3)
    gw = max(math.ceil(w / cell) + 1, 3)
    acc = np.zeros((gh, gw), dtype=np.float32)
    for f, a in octaves:
        acc += a * _noise(rng, gh, gw, f / cell)
    return _upsample(acc, w, h)


def _ridges(f: FloatArray, width: float) -> FloatArray:
    """Thin lines along the zero crossings of a smooth field: a furrow/network pattern."""
    v: FloatArray = np.abs(f).astype(np.float32, copy=False)
    v *= -1.0 / width
    v += 1.0
    np.clip(v, 0.0, 1.0, out=v)
    v *= v
    return v


# --------------------------------------------------------------------------- the scene


@dataclass
class _Box:
    """A clipped rectangle of the image, with a local coordinate grid around a centre."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def sl(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def grid(self, cx: float, cy: float) -> tuple[FloatArray, FloatArray]:
        dx = (np.arange(self.x0, self.x1, dtype=np.float32) + 0.5 - cx)[None, :]
        dy = (np.arange(self.y0, self.y1, dtype=np.float32) + 0.5 - cy)[:, None]
        return dx, dy


class _Scene:
    """Working state of one render: linear RGB image, illumination, truth."""

    def __init__(self, spec: PhotoSpec) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.h, self.w = spec.height, spec.width
        self.ppm = float(spec.px_per_mm)
        self.t = (spec.fitzpatrick - 1) / 5.0
        rng = self.rng
        self.base = _srgb_to_linear(SKIN_TONES[spec.fitzpatrick]) * np.exp(
            rng.normal(0.0, 0.025, 3)
        ).astype(np.float32)
        mix = self.t**1.3
        self.k_blood = (_K_BLOOD_LIGHT * (1 - mix) + _K_BLOOD_DARK * mix).astype(np.float32)
        ang = rng.uniform(0, 2 * math.pi)
        self.light = (math.cos(ang), math.sin(ang))
        self.mask: BoolArray = np.zeros((self.h, self.w), dtype=bool)
        self.line_gain: FloatArray | None = None
        self.pore_gain = 1.0
        self.body: FloatArray | None = None
        self.body_sdf: FloatArray | None = None  # coarse grid, mm, positive on skin
        self.body_step = 1.0
        fov_mm = max(self.w, self.h) / self.ppm
        self.wide = spec.kind == "overview" or fov_mm > 230.0
        self.scope: tuple[float, float, float] | None = None
        if spec.dermoscopic:
            r = 0.5 * min(self.w, self.h) * rng.uniform(0.98, 1.1)
            self.scope = (
                self.w / 2 + rng.uniform(-0.02, 0.02) * self.w,
                self.h / 2 + rng.uniform(-0.02, 0.02) * self.h,
                r,
            )
        self.img: FloatArray = np.zeros((self.h, self.w, 3), dtype=np.float32)
        self.illum: FloatArray = np.ones((self.h, self.w), dtype=np.float32)
        self.reference: ReferenceTruth | None = None
        self.ref_side: tuple[float, float] | None = None  # where the reference will go

    # ---- geometry helpers

    def box(self, cx: float, cy: float, rx: float, ry: float | None = None) -> _Box | None:
        ry = rx if ry is None else ry
        x0 = max(math.floor(cx - rx), 0)
        x1 = min(math.ceil(cx + rx) + 1, self.w)
        y0 = max(math.floor(cy - ry), 0)
        y1 = min(math.ceil(cy + ry) + 1, self.h)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None
        return _Box(y0, y1, x0, x1)

    def skin_depth_mm(self, x: float, y: float) -> float:
        """How far (mm) a point is inside the visible skin; negative outside."""
        d = min(x, y, self.w - x, self.h - y) / self.ppm
        if self.body_sdf is not None:
            gy = min(max(int(y / self.body_step), 0), self.body_sdf.shape[0] - 1)
            gx = min(max(int(x / self.body_step), 0), self.body_sdf.shape[1] - 1)
            d = min(d, float(self.body_sdf[gy, gx]))
        if self.scope is not None:
            sx, sy, sr = self.scope
            d = min(d, (sr - math.hypot(x - sx, y - sy)) / self.ppm)
        return d

    def random_point(self, margin_mm: float, tries: int = 60) -> tuple[float, float]:
        best = (self.w / 2, self.h / 2)
        best_d = -1e9
        for _ in range(tries):
            x = float(self.rng.uniform(0, self.w))
            y = float(self.rng.uniform(0, self.h))
            d = self.skin_depth_mm(x, y)
            if d >= margin_mm:
                return x, y
            if d > best_d:
                best, best_d = (x, y), d
        return best

    def main_centre(self, radius_mm: float) -> tuple[float, float]:
        """Where the photographer centred the main lesion (off to one side if a reference)."""
        rng = self.rng
        cx = self.w / 2 + rng.uniform(-0.1, 0.1) * self.w
        cy = self.h / 2 + rng.uniform(-0.1, 0.1) * self.h
        if self.spec.dermoscopic:
            cx = self.w / 2 + rng.uniform(-0.04, 0.04) * self.w
            cy = self.h / 2 + rng.uniform(-0.04, 0.04) * self.h
        elif self.spec.with_reference:
            a = rng.uniform(0, 2 * math.pi)
            self.ref_side = (math.cos(a), math.sin(a))
            cx -= 0.13 * self.w * self.ref_side[0]
            cy -= 0.13 * self.h * self.ref_side[1]
        if self.wide and self.body_sdf is not None:
            for _ in range(40):
                if self.skin_depth_mm(cx, cy) >= radius_mm + 5:
                    break
                x, y = self.random_point(radius_mm + 5, tries=1)
                cx, cy = 0.5 * (cx + x), 0.5 * (cy + y)
        return cx, cy

    # ---- painting primitives (all in linear light, on a box)

    def absorb(self, b: _Box, mel: FloatArray | None, blood: FloatArray | None) -> None:
        """Beer-Lambert attenuation by melanin and blood densities (box-sized maps)."""
        sub = self.img[b.sl]
        for c in range(3):
            if mel is not None:
                dens = mel * float(-_K_MELANIN[c])
                if blood is not None:
                    dens -= blood * float(self.k_blood[c])
            elif blood is not None:
                dens = blood * float(-self.k_blood[c])
            else:
                return
            np.exp(dens, out=dens)
            sub[..., c] *= dens

    def overlay(self, b: _Box, alpha: FloatArray, colour: FloatArray,
                shade: FloatArray | None = None) -> None:
        """Opaque material (scale, pus, paper) of linear colour, lit like the scene."""
        sub = self.img[b.sl]
        light = self.illum[b.sl] * alpha if shade is None else self.illum[b.sl] * shade * alpha
        keep = 1.0 - alpha
        for c in range(3):
            ch = sub[..., c]
            ch *= keep
            ch += light * float(colour[c])

    def bump(self, b: _Box, height: FloatArray, strength: float = 1.0) -> FloatArray:
        """Shade a height map (in px) lit from the scene's light; returns the shading."""
        lx, ly = self.light
        shade = np.zeros(height.shape, dtype=np.float32)
        shade[:, 1:-1] = height[:, 2:] - height[:, :-2]
        shade *= 0.45 * strength * lx
        gy = height[2:, :] - height[:-2, :]
        gy *= 0.45 * strength * ly
        shade[1:-1, :] += gy
        shade += 1.0
        np.clip(shade, 0.35, 1.9, out=shade)
        sub = self.img[b.sl]
        for c in range(3):
            sub[..., c] *= shade
        return shade

    def gain_lines(self, b: _Box, extra: FloatArray) -> None:
        if self.line_gain is None:
            self.line_gain = np.ones((self.h, self.w), dtype=np.float32)
        self.line_gain[b.sl] += extra

    def add_mask(self, b: _Box, m: BoolArray) -> None:
        self.mask[b.sl] |= m

    def dots(
        self, b: _Box, field: FloatArray, pts: list[tuple[float, float, float, float]]
    ) -> None:
        """Add gaussian dots (x, y, sigma_px, amount) into a box-sized field."""
        for x, y, s, amt in pts:
            r = 3.0 * s + 1.0
            x0 = max(int(x - r) - b.x0, 0)
            x1 = min(int(x + r) + 2 - b.x0, b.shape[1])
            y0 = max(int(y - r) - b.y0, 0)
            y1 = min(int(y + r) + 2 - b.y0, b.shape[0])
            if x1 <= x0 or y1 <= y0:
                continue
            dx = np.arange(x0, x1, dtype=np.float32) + b.x0 + 0.5 - x
            dy = np.arange(y0, y1, dtype=np.float32) + b.y0 + 0.5 - y
            g = np.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2 * s * s))
            field[y0:y1, x0:x1] += amt * g


# --------------------------------------------------------------------------- background skin


def _coarse_grid(h: int, w: int, step: int) -> tuple[FloatArray, FloatArray]:
    gh, gw = math.ceil(h / step) + 1, math.ceil(w / step) + 1
    xs = (np.arange(gw, dtype=np.float32) + 0.5) * (w / gw)
    ys = (np.arange(gh, dtype=np.float32) + 0.5) * (h / gh)
    return np.broadcast_to(xs[None, :], (gh, gw)), np.broadcast_to(ys[:, None], (gh, gw))


def _paint_skin(sc: _Scene) -> None:
    """Base tone with mottling, uneven light, vignetting and curvature (coarse, upsampled)."""
    rng, spec = sc.rng, sc.spec
    h, w, ppm = sc.h, sc.w, sc.ppm
    step = 8
    X, Y = _coarse_grid(h, w, step)
    gh, gw = X.shape
    half = 0.5 * max(w, h)
    nx, ny = (X - w / 2) / half, (Y - h / 2) / half
    lx, ly = sc.light
    cstep = w / gw  # coarse cell in px

    def coarse_noise(feature_mm: float) -> FloatArray:
        return _noise(rng, gh, gw, max(feature_mm * ppm / cstep, 1.0))

    exposure = rng.uniform(0.74, 0.86) + 0.2 * sc.t
    if spec.dermoscopic:
        grad = 1.0 + rng.uniform(0.02, 0.07) * (nx * lx + ny * ly)
        r2 = nx * nx + ny * ny
        vig = 1.0 - rng.uniform(0.12, 0.22) * r2
        cyl: FloatArray | float = 1.0
    else:
        grad = 1.0 + rng.uniform(0.08, 0.2) * (nx * lx + ny * ly)
        hx = rng.uniform(0.05, 0.3) * lx
        hy = rng.uniform(0.05, 0.3) * ly
        r2 = (nx - hx) ** 2 + (ny - hy) ** 2
        vig = np.clip(1.0 - rng.uniform(0.18, 0.32) * r2, 0.35, 1.0)
        b = rng.uniform(0, math.pi)
        # a gently rounded limb; never so curved that its edges would be in view
        limb_r = max(rng.uniform(40.0, 75.0) * ppm, 0.6 * max(w, h))
        d = (-(X - w / 2) * math.sin(b) + (Y - h / 2) * math.cos(b)) / limb_r
        d = d + rng.uniform(-0.25, 0.25)
        cyl = np.clip(1.0 - 0.42 * d * d, 0.35, 1.0) if not sc.wide else 1.0
    calm = 0.5 if sc.wide else 1.0
    blotch = calm * (0.022 * coarse_noise(40.0) + 0.01 * coarse_noise(9.0))
    illum = (exposure * grad * vig * cyl * np.exp(blotch)).astype(np.float32)

    # Melanin and blood mottling of normal skin.
    blood = calm * (0.018 * coarse_noise(16.0) + 0.01 * coarse_noise(5.0)) + 0.04
    mel = calm * (0.035 * coarse_noise(25.0) + 0.012 * coarse_noise(6.0))
    if spec.fitzpatrick <= 3 and rng.random() < 0.4 and ppm >= 4:
        # freckles / lentigines on sun-exposed fair skin
        fr = np.clip(coarse_noise(max(1.2, 2.5 * cstep / ppm)) - 2.0, 0, None)
        mel = mel + fr * rng.uniform(0.15, 0.35)
    wb = np.exp(rng.normal(0.0, 0.02, 3)).astype(np.float32)  # white balance
    colour = sc.base * wb
    sheen: npt.NDArray[np.floating] = np.zeros_like(X)
    if not spec.dermoscopic:
        oil = rng.uniform(0.15, 0.45) if spec.kind == "acne" else rng.uniform(0.0, 0.3)
        sx, sy = 0.35 * lx + rng.normal(0, 0.1), 0.35 * ly + rng.normal(0, 0.1)
        sheen = oil * 0.045 * np.exp(-((nx - sx) ** 2 + (ny - sy) ** 2) / 0.12)
        sheen = sheen * np.clip(1.0 + 0.3 * coarse_noise(6.0), 0.0, None)

    skin_sdf: FloatArray | None = None
    if sc.wide:
        skin_sdf = _body_sdf(sc, X, Y)
        hw = float(skin_sdf.max()) + 1e-3
        # a limb or trunk is a rounded surface: Lambert falloff towards its edges
        off = 1.0 - np.clip(skin_sdf / hw, 0.0, 1.0)
        curv = np.sqrt(np.clip(1.0 - off * off, 0.0, 1.0))
        illum_skin = illum * (0.3 + 0.7 * curv)
    else:
        illum_skin = illum

    chans = []
    for c in range(3):
        dens = mel * float(_K_MELANIN[c]) + blood * float(sc.k_blood[c])
        chans.append(colour[c] * np.exp(-dens) * illum_skin + sheen * illum_skin)
    for c in range(3):
        sc.img[..., c] = _upsample(np.asarray(chans[c], dtype=np.float32), w, h)
    sc.illum = _upsample(illum, w, h)

    if sc.wide and skin_sdf is not None:
        _composite_background(sc, illum, skin_sdf, step_px=cstep)


def _body_sdf(sc: _Scene, X: FloatArray, Y: FloatArray) -> FloatArray:
    """Signed distance (mm) to the edge of a limb or trunk crossing a wide shot."""
    rng, ppm = sc.rng, sc.ppm
    w, h = sc.w, sc.h
    Xm, Ym = (X - w / 2) / ppm, (Y - h / 2) / ppm
    fov_w, fov_h = w / ppm, h / ppm
    if rng.random() < 0.55:  # a limb crossing the frame
        a = rng.uniform(-0.35, 0.35) + (math.pi / 2 if h > w else 0.0)
        u = Xm * math.cos(a) + Ym * math.sin(a)
        v = -Xm * math.sin(a) + Ym * math.cos(a)
        span = fov_h if h <= w else fov_w
        half = span * rng.uniform(0.3, 0.4) * (1.0 + 0.08 * np.sin(u / span * 2.4))
        off = span * rng.uniform(-0.06, 0.06) + span * 0.04 * np.sin(u / span * 1.7 + 1.0)
        sdf = half - np.abs(v - off)
    else:  # a trunk filling most of the frame, its flanks at the left and right edges
        half = fov_w * rng.uniform(0.38, 0.46) * (1.0 + 0.05 * np.cos(Ym / fov_h * 3.0))
        sdf = half - np.abs(Xm - fov_w * rng.uniform(-0.05, 0.05))
    sc.body_step = w / X.shape[1]
    out: FloatArray = np.asarray(sdf, dtype=np.float32)
    sc.body_sdf = out
    return out


def _composite_background(sc: _Scene, illum: FloatArray, sdf: FloatArray,
                          step_px: float) -> None:
    rng = sc.rng
    drapes = [(176, 200, 214), (166, 196, 178), (205, 204, 198), (226, 226, 221), (96, 118, 140)]
    bg = _srgb_to_linear(drapes[int(rng.integers(len(drapes)))])
    shadow = 1.0 - 0.45 * np.exp(-np.clip(-sdf, 0.0, None) / 18.0)
    gh, gw = sdf.shape
    folds = 1.0 + 0.06 * _noise(rng, gh, gw, max(60.0 * sc.ppm / step_px, 1.0))
    bg_illum = illum * shadow * folds * 0.95
    sdf_px = _upsample(sdf * sc.ppm, sc.w, sc.h)
    alpha = np.clip(sdf_px * (1 / 1.6) + 0.5, 0.0, 1.0)
    sc.body = alpha
    for c in range(3):
        layer = _upsample(np.asarray(bg_illum * float(bg[c]), dtype=np.float32), sc.w, sc.h)
        ch = sc.img[..., c]
        ch -= layer
        ch *= alpha
        ch += layer


# --------------------------------------------------------------------------- lesions


def _pigmented(sc: _Scene, cx: float, cy: float, diam_mm: float, sev: float,
               detail: float = 1.0) -> None:
    """A melanocytic lesion: banal naevus at low severity, melanoma-like at high."""
    rng, ppm = sc.rng, sc.ppm
    r0 = diam_mm / 2 * ppm
    n_h = 14
    ks = np.arange(2, 2 + n_h, dtype=np.float64)
    irr = 0.03 + 0.17 * sev**1.2
    amps = irr * rng.standard_normal(n_h) / ks**1.2
    amps[0] += rng.uniform(0.03, 0.1)
    phases = rng.uniform(0, 2 * math.pi, n_h)
    th_tab = np.linspace(-math.pi, math.pi, 1025)
    r_tab = 1.0 + (amps[:, None] * np.cos(ks[:, None] * th_tab[None, :] + phases[:, None])).sum(0)
    r_tab = np.clip(r_tab, 0.45, None).astype(np.float32)
    # border sharpness by angle: soft everywhere when banal, partly abrupt when atypical
    e_ph = rng.uniform(0, 2 * math.pi, 3)
    e_var = sum(np.cos((k + 1) * th_tab + e_ph[k]) for k in range(3)) / 3
    e_tab = (0.32 - 0.17 * sev + 0.13 * sev * e_var).clip(0.06, 0.4).astype(np.float32)
    rmax = r0 * float(r_tab.max()) * 1.2 + 4
    b = sc.box(cx, cy, rmax)
    if b is None:
        return
    dx, dy = b.grid(cx, cy)
    r = np.sqrt(dx * dx + dy * dy)
    th = np.arctan2(dy, dx)
    idx = ((th + math.pi) * (1024 / (2 * math.pi))).astype(np.int32)
    rho = r / (r0 * r_tab[idx])
    bh, bw = b.shape
    rho += _noise_sum(rng, bh, bw, ((max(1.2 * ppm, 2.0), 0.02 + 0.05 * sev),
                                    (max(0.3 * ppm, 2.0), 0.008 + 0.02 * sev)))
    ew = e_tab[idx]
    alpha = _smoothstep(1.0 + ew / 2, 1.0 - ew / 2, rho)
    inside = rho < 1.0

    # melanin density
    m0 = rng.uniform(0.55, 0.95) + 0.55 * sev
    profile = 1.0 + rng.uniform(-0.15, 0.45) * (1.0 - np.clip(rho, 0, 1) ** 2)
    ox, oy = rng.uniform(-0.35, 0.35, 2) * r0
    sig = r0 * rng.uniform(0.3, 0.55)
    ecc = sev * rng.uniform(0.4, 1.1)
    profile += ecc * np.exp(-((dx - ox) ** 2 + (dy - oy) ** 2) / (2 * sig * sig))
    var = _noise_sum(rng, bh, bw, ((max(1.4 * ppm, 2.0), 0.1 + 0.45 * sev),
                                   (max(0.5 * ppm, 2.0), 0.05 + 0.15 * sev)))
    mel = m0 * profile * np.exp(var)
    mesh = 0.35 * ppm  # pigment network: brown lines around paler holes, ~0.35 mm apart
    if mesh >= 4.0:
        # three warped line families 60 degrees apart give a honeycomb-like reticulum,
        # regular in a banal naevus and distorted in an atypical lesion
        net = np.zeros((bh, bw), dtype=np.float32)
        a0 = rng.uniform(0, math.pi)
        for k in range(3):
            a = a0 + k * math.pi / 3 + rng.normal(0, 0.08)
            u = (dx * math.cos(a) + dy * math.sin(a)) * (math.pi / mesh)
            u = u + _noise(rng, bh, bw, 2.0 * mesh) * (0.5 + 1.5 * sev)
            np.maximum(net, _ridges(np.sin(u).astype(np.float32), 0.8), out=net)
        na = (0.5 if sc.spec.dermoscopic else 0.25) * detail
        fade = np.clip(1.2 - rho, 0, 1) * np.clip(0.6 + 0.5 * _noise(rng, bh, bw, 3 * mesh),
                                                  0, 1)
        mel *= 1.0 + na * (net - 0.4) * fade
    # dots and globules, more and more eccentric with severity
    pts: list[tuple[float, float, float, float]] = []
    n_dots = int(rng.integers(0, 4) + (30 * sev**1.4 + 4 * sev) * detail)
    dot_ang = rng.uniform(0, 2 * math.pi)
    for _ in range(n_dots):
        a = dot_ang + rng.normal(0, 1.2 + 1.5 * (1 - sev))
        rr = rng.uniform(0.15, 0.95) ** 0.7
        rr_px = rr * r0 * float(r_tab[int((math.atan2(math.sin(a), math.cos(a)) + math.pi)
                                          * (1024 / (2 * math.pi)))])
        s = max(rng.uniform(0.06, 0.22) * ppm, 0.6)
        pts.append((cx + rr_px * math.cos(a), cy + rr_px * math.sin(a), s,
                    rng.uniform(1.2, 3.2)))
    dots = np.zeros((bh, bw), dtype=np.float32)
    sc.dots(b, dots, pts)
    mel = mel * alpha + dots * alpha
    blood = None
    if sev > 0.45:
        blood = (0.45 * sev * alpha * np.clip(_noise(rng, bh, bw, 2.5 * ppm), 0, None)).astype(
            np.float32)
    sc.absorb(b, mel.astype(np.float32), blood)
    # raised (compound) naevi catch the light
    dome = np.clip(1.0 - (rho * (1 / 1.15)) ** 2, 0.0, 1.0)
    height = dome * dome * rng.uniform(0.05, 0.3) * ppm
    sc.bump(b, height.astype(np.float32), 0.8)
    # blue-grey (dermal pigment) and whitish regression areas
    if sev > 0.35 and rng.random() < 0.25 + 0.8 * sev:
        a0 = rng.uniform(-math.pi, math.pi)
        sector = _smoothstep(0.3, 0.8, np.cos(th - a0))
        blob = _smoothstep(-0.3, 0.6, _noise(rng, bh, bw, 2.0 * ppm) + sector)
        ab = (0.12 + 0.25 * sev) * blob * sector * _smoothstep(1.0, 0.6, rho)
        ab *= 0.75 + 0.25 * np.clip(_noise(rng, bh, bw, max(0.6 * ppm, 2.0)), -1, 1)
        sc.overlay(b, ab.astype(np.float32), _srgb_to_linear((112, 116, 124)))
    if sev > 0.7 and rng.random() < 0.7:
        a0 = rng.uniform(-math.pi, math.pi)
        wz = _smoothstep(0.4, 0.9, np.cos(th - a0)) * _smoothstep(0.85, 0.4, rho)
        wz *= _smoothstep(0.0, 0.8, _noise(rng, bh, bw, 1.5 * ppm))
        sc.overlay(b, (0.3 * wz).astype(np.float32), _srgb_to_linear((214, 186, 184)))
    sc.add_mask(b, inside)


def _plaque_field(sc: _Scene, b: _Box, plaques: list[tuple[float, ...]],
                  warp: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Union of distorted elliptical plaques: (edge alpha, interior weight, elevation)."""
    alpha = np.zeros(b.shape, dtype=np.float32)
    interior = np.zeros(b.shape, dtype=np.float32)
    elev = np.zeros(b.shape, dtype=np.float32)
    rng = sc.rng
    th_tab = np.linspace(-math.pi, math.pi, 513)
    for pcx, pcy, a_px, b_px, rot, edge_px in plaques:
        sub = sc.box(pcx, pcy, max(a_px, b_px) * 1.35 + 4)
        if sub is None:
            continue
        oy, ox = sub.y0 - b.y0, sub.x0 - b.x0
        if oy < 0 or ox < 0 or sub.y1 > b.y1 or sub.x1 > b.x1:
            continue
        ks = np.arange(2, 8, dtype=np.float64)
        amps = 0.07 * rng.standard_normal(ks.size) / ks**0.7
        ph = rng.uniform(0, 2 * math.pi, ks.size)
        r_tab = (1 + (amps[:, None] * np.cos(ks[:, None] * th_tab + ph[:, None])).sum(0))
        r_tab = r_tab.astype(np.float32)
        dx, dy = sub.grid(pcx, pcy)
        u = dx * math.cos(rot) + dy * math.sin(rot)
        v = -dx * math.sin(rot) + dy * math.cos(rot)
        th = np.arctan2(v / b_px, u / a_px)
        idx = ((th + math.pi) * (512 / (2 * math.pi))).astype(np.int32)
        rho = np.sqrt((u / a_px) ** 2 + (v / b_px) ** 2) / r_tab[idx]
        sl = (slice(oy, oy + sub.shape[0]), slice(ox, ox + sub.shape[1]))
        rho = rho + warp[sl] * (0.9 / max(min(a_px, b_px) / sc.ppm, 2.0))
        ew = edge_px / max(min(a_px, b_px), 1.0)
        np.maximum(alpha[sl], _smoothstep(1.0 + ew, 1.0 - ew, rho), out=alpha[sl])
        np.maximum(interior[sl], _smoothstep(0.98, 0.45, rho), out=interior[sl])
        ew2 = max(4 * ew, 1.5 * sc.ppm / max(min(a_px, b_px), 1.0))
        np.maximum(elev[sl], _smoothstep(1.0 + ew2 / 2, 1.0 - ew2, rho), out=elev[sl])
    return alpha, interior, elev


def _psoriasis(sc: _Scene, cx: float, cy: float, sev: float) -> None:
    """Well-demarcated salmon-red plaques with silvery-white scale."""
    rng, ppm = sc.rng, sc.ppm
    d_mm = (12.0 + 42.0 * sev) * rng.uniform(0.85, 1.15)
    a = d_mm / 2 * ppm
    plaques: list[tuple[float, ...]] = [
        (cx, cy, a, a * rng.uniform(0.55, 0.9), rng.uniform(0, math.pi), 0.35 * ppm)
    ]
    area_factor = max(1.0, (sc.w * sc.h) / (ppm * ppm) / 7500.0) ** 0.5
    n_extra = int(rng.integers(0, 2 + round(3 * sev)) * area_factor)
    for _ in range(n_extra):
        ang = rng.uniform(0, 2 * math.pi)
        dist = a * rng.uniform(1.05, 1.9)
        s = a * rng.uniform(0.18, 0.5)
        plaques.append((cx + dist * math.cos(ang), cy + dist * math.sin(ang), s,
                        s * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi), 0.3 * ppm))
    n_gut = int(rng.integers(0, 2 + round(8 * sev)) * area_factor)
    drops: list[tuple[float, ...]] = []
    for _ in range(n_gut):
        x, y = sc.random_point(3.0)
        s = rng.uniform(1.2, 3.5) * ppm
        drops.append((x, y, s, s * rng.uniform(0.7, 1.0), rng.uniform(0, math.pi), 0.25 * ppm))
    _plaque_group(sc, plaques, sev)
    for drop in drops:  # small satellite papules, each in its own little box
        _plaque_group(sc, [drop], sev)


def _plaque_group(sc: _Scene, plaques: list[tuple[float, ...]], sev: float) -> None:
    """Paint psoriatic plaques (cx, cy, a_px, b_px, rotation, edge_px) sharing one box."""
    rng, ppm = sc.rng, sc.ppm
    xs = [p[0] for p in plaques]
    ys = [p[1] for p in plaques]
    ext = [max(p[2], p[3]) * 1.35 + 4 for p in plaques]
    x0, x1 = min(x - e for x, e in zip(xs, ext, strict=True)), max(
        x + e for x, e in zip(xs, ext, strict=True))
    y0, y1 = min(y - e for y, e in zip(ys, ext, strict=True)), max(
        y + e for y, e in zip(ys, ext, strict=True))
    b = sc.box((x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2)
    if b is None:
        return
    bh, bw = b.shape
    warp = _noise(rng, bh, bw, 5.0 * ppm)
    alpha, interior, elev = _plaque_field(sc, b, plaques, warp)
    if sc.body is not None:
        alpha *= sc.body[b.sl]
        interior *= sc.body[b.sl]
        elev *= sc.body[b.sl]
    hb0 = (0.7 + 0.85 * sev) * (1.0 - 0.45 * sc.t)
    fine = _noise(rng, bh, bw, max(1.0 * ppm, 2.0))
    rim = alpha * (1.0 - interior)
    blood = alpha * hb0 * (1.0 + 0.1 * fine) + 0.2 * rim
    mel = alpha * (0.03 + 0.4 * sc.t) * (0.6 + 0.4 * interior)
    # scale: thickest centrally, thinning towards the red rim, broken by fissures
    n_s = 0.7 * _noise(rng, bh, bw, max(2.5 * ppm, 2.0)) + 0.3 * fine
    thr = 0.55 - 1.0 * sev
    size_mm = max(max(p[2], p[3]) for p in plaques) / ppm
    small = float(np.clip((size_mm - 2.0) / 8.0, 0.2, 1.0))
    cov = np.clip(0.5 + 0.6 * (n_s + 1.8 * interior - 1.0 - thr), 0.0, 1.0) * alpha * small
    # micaceous scale: stacked flakes, i.e. terraces of a noise field whose lit and
    # shadowed edges read as overlapping plates
    flake = np.clip(_noise(rng, bh, bw, max(0.3 * ppm, 2.0)), -1.5, 1.5)
    plates = np.floor((0.8 * n_s + 0.2 * flake + 3.0) * 2.2) * (1 / 2.2)
    sc.absorb(b, mel.astype(np.float32), blood.astype(np.float32))
    height = elev * (0.3 * ppm) + cov * (0.12 * ppm) * (plates + 0.15 * flake)
    shade = sc.bump(b, height.astype(np.float32), 0.6)
    if sc.t > 0.3:  # thickened plaques on dark skin look ashy, violaceous grey
        sc.overlay(b, (0.1 * sc.t * alpha).astype(np.float32),
                   _srgb_to_linear((128, 104, 116)) * float(sc.base[0] / 0.2) ** 0.5, shade)
    a_scale = cov * (0.5 + 0.4 * sev) * (0.8 + 0.06 * flake) * (1.0 - 0.25 * sc.t)
    scale_col = _srgb_to_linear((226, 226, 230)) * (1.0 - 0.3 * sc.t)
    sc.overlay(b, np.clip(a_scale, 0, 1).astype(np.float32), scale_col, shade)
    sc.gain_lines(b, (0.6 * alpha * (1.0 - cov) - cov).astype(np.float32))
    sc.add_mask(b, alpha > 0.5)


def _eczema(sc: _Scene, cx: float, cy: float, sev: float) -> None:
    """Ill-defined red/pink patches with papules, excoriations and lichenification."""
    rng, ppm = sc.rng, sc.ppm
    ra = (18.0 + 40.0 * sev) * rng.uniform(0.85, 1.15) * ppm
    rb = ra * rng.uniform(0.55, 0.9)
    rot = rng.uniform(0, math.pi)
    b = sc.box(cx, cy, ra * 1.5, ra * 1.5)
    if b is None:
        return
    bh, bw = b.shape
    dx, dy = b.grid(cx, cy)
    u = dx * math.cos(rot) + dy * math.sin(rot)
    v = -dx * math.sin(rot) + dy * math.cos(rot)
    rho = np.sqrt((u / ra) ** 2 + (v / rb) ** 2)
    warp = _noise_sum(rng, bh, bw, ((14.0 * ppm, 0.28), (4.0 * ppm, 0.1)))
    patch = _smoothstep(1.15, 0.4, rho + warp)
    patch *= np.clip(0.9 + 0.12 * _noise(rng, bh, bw, 2.0 * ppm), 0.5, 1.2)
    if sc.body is not None:
        patch *= sc.body[b.sl]
    hb0 = (0.3 + 0.55 * sev) * (1.0 - 0.15 * sc.t)
    blood = patch * hb0
    mel = patch * (0.07 + 1.1 * sc.t)
    # papules, where the eczema is most active
    height = np.zeros((bh, bw), dtype=np.float32)
    bumps: list[tuple[float, float, float, float]] = []
    reds: list[tuple[float, float, float, float]] = []
    n_pap = int((10 + 130 * sev) * (ra * rb) / (40 * 30 * ppm * ppm))
    for _ in range(n_pap):
        x = float(rng.uniform(b.x0, b.x1 - 1))
        y = float(rng.uniform(b.y0, b.y1 - 1))
        if patch[int(y) - b.y0, int(x) - b.x0] < rng.uniform(0.55, 1.0):
            continue
        s = rng.uniform(0.22, 0.5) * ppm
        bumps.append((x, y, s, 0.25 * s))
        reds.append((x, y, s * 1.1, rng.uniform(0.3, 0.7)))
    sc.dots(b, height, bumps)
    sc.dots(b, blood, reds)
    # excoriations: short linear scratches with haemorrhagic crust
    n_exc = int(rng.integers(0, 2 + round(9 * sev)))
    scr = Image.new("L", (bw, bh), 0)
    draw = ImageDraw.Draw(scr)
    for _ in range(n_exc):
        x = float(rng.uniform(0, bw))
        y = float(rng.uniform(0, bh))
        if patch[int(y), int(x)] < 0.4:
            continue
        ang = rng.normal(rot + math.pi / 2, 0.5)
        length = rng.uniform(3.0, 11.0) * ppm
        bend = rng.normal(0, 0.25)
        pts = []
        for i in range(8):
            f = i / 7 - 0.5
            a = ang + bend * f
            pts.append((x + f * length * math.cos(a), y + f * length * math.sin(a)))
        draw.line(pts, fill=int(rng.integers(150, 255)),
                  width=max(int(rng.uniform(0.2, 0.45) * ppm), 1))
        for j in range(int(rng.integers(0, 4))):  # crusted dots along the scratch
            px, py = pts[int(rng.integers(1, 7))]
            rr = rng.uniform(0.2, 0.5) * ppm
            draw.ellipse((px - rr, py - rr, px + rr, py + rr), fill=255 - 20 * j)
    exc = np.asarray(scr.filter(_AA_KERNEL), dtype=np.float32) * (1.0 / 255.0)
    blood += 1.0 * exc
    mel += 0.9 * exc
    sc.absorb(b, mel.astype(np.float32), blood.astype(np.float32))
    shade = sc.bump(b, height, 1.0)
    # dry fine scale
    # dryness: an ashy haze with a few fine flakes (most visible on darker skin)
    haze = _smoothstep(-0.6, 1.4, _noise(rng, bh, bw, max(1.5 * ppm, 2.0)))
    flakes = _smoothstep(1.2, 2.4, _noise(rng, bh, bw, max(0.35 * ppm, 2.0)))
    # a light overlay is far stronger on dark skin than on fair: keep the ash subtle
    lum = float(sc.base @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32))
    ash = min(1.0, lum / 0.4) ** 0.6
    dry = patch * (haze * 0.05 + flakes * (0.03 + 0.05 * sev)) * ash
    sc.overlay(b, (dry * (1 - exc)).astype(np.float32), _srgb_to_linear((196, 190, 186)), shade)
    sc.gain_lines(b, (1.6 * patch * (0.3 + sev)).astype(np.float32))
    sc.add_mask(b, (patch > 0.35) | (exc > 0.5))


def _acne(sc: _Scene, sev: float) -> None:
    """Inflammatory papules and pustules with comedones and post-inflammatory marks."""
    rng, ppm = sc.rng, sc.ppm
    area_factor = float(np.clip((sc.w * sc.h) / (ppm * ppm) / 7500.0, 0.3, 3.0))
    n = max(int((8 + 45 * sev) * area_factor), 3)
    kinds = ["papule", "pustule", "open", "closed", "macule"]
    probs = np.array([0.4, 0.24, 0.13, 0.13, 0.1 + 0.1 * sc.t])
    probs /= probs.sum()
    # lesions cluster over a cheek/forehead-like region
    ccx, ccy = sc.main_centre(10.0)
    spread_x, spread_y = 0.35 * sc.w, 0.32 * sc.h
    pus = _srgb_to_linear((232, 222, 184))
    for _ in range(n):
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        x = float(np.clip(rng.normal(ccx, spread_x), 0, sc.w - 1))
        y = float(np.clip(rng.normal(ccy, spread_y), 0, sc.h - 1))
        if sc.skin_depth_mm(x, y) < 2.0:
            continue
        if kind in ("papule", "pustule"):
            rad = rng.uniform(1.0, 2.4) * (0.8 + 0.5 * sev) * ppm
        elif kind == "macule":
            rad = rng.uniform(1.4, 3.0) * ppm
        elif kind == "open":
            rad = rng.uniform(0.25, 0.5) * ppm
        else:
            rad = rng.uniform(0.4, 0.8) * ppm
        b = sc.box(x, y, rad * 2.6 + 3)
        if b is None:
            continue
        dx, dy = b.grid(x, y)
        r2 = (dx * dx + dy * dy) / (rad * rad)
        if kind in ("papule", "pustule"):
            dome = np.clip(1.0 - r2, 0.0, 1.0)
            blood = (0.5 + 0.6 * sev) * rng.uniform(0.7, 1.2) * np.exp(-1.1 * r2)
            blood = (blood + 0.25 * np.exp(-0.35 * r2)) * (1.0 - 0.35 * sc.t)
            mel = 0.8 * sc.t * np.clip(1.0 - 0.6 * r2, 0.0, 1.0)
            sc.absorb(b, mel.astype(np.float32), blood.astype(np.float32))
            height = (0.22 * rad * dome**1.5).astype(np.float32)
            shade = sc.bump(b, height, 1.0)
            if kind == "pustule":
                core = 0.55 * rng.uniform(0.8, 1.2)
                pa = 0.6 * _smoothstep(core, 0.0, np.sqrt(r2)) ** 0.7
                sc.overlay(b, pa.astype(np.float32), pus, shade)
            glint = np.exp(-(((dx + 0.35 * rad * sc.light[0]) ** 2
                              + (dy + 0.35 * rad * sc.light[1]) ** 2)
                             / (0.05 * rad * rad + 1)))
            sc.img[b.sl] += (0.05 * glint * sc.illum[b.sl])[..., None]
            sc.add_mask(b, r2 < 0.8)
        elif kind == "open":
            sc.absorb(b, (2.6 * np.exp(-1.5 * r2)).astype(np.float32), None)
            sc.add_mask(b, r2 < 0.7)
        elif kind == "closed":
            height = (0.35 * rad * np.exp(-1.5 * r2)).astype(np.float32)
            shade = sc.bump(b, height, 1.0)
            pale = 0.22 * np.exp(-1.8 * r2)
            sc.overlay(b, pale.astype(np.float32), sc.base * 1.15, shade)
            sc.add_mask(b, r2 < 0.7)
        else:
            soft = _smoothstep(1.3, 0.5, np.sqrt(r2))
            sc.absorb(b, (soft * 0.55 * sc.t).astype(np.float32),
                      (soft * 0.38 * (1 - sc.t)).astype(np.float32))
            sc.add_mask(b, r2 < 0.8)
    sc.pore_gain = 1.6


def _overview(sc: _Scene, sev: float) -> None:
    """A wider shot: several small naevi scattered on the skin plus an index lesion."""
    rng = sc.rng
    cx, cy = sc.main_centre(8.0)
    _pigmented(sc, cx, cy, 3.5 + 8.0 * sev, min(0.15 + 0.85 * sev, 1.0), detail=0.6)
    for _ in range(int(rng.integers(4, 13))):
        x, y = sc.random_point(8.0)
        if math.hypot(x - cx, y - cy) < 12 * sc.ppm:
            continue
        _pigmented(sc, x, y, rng.uniform(1.8, 5.0), rng.uniform(0.0, 0.2), detail=0.5)


# --------------------------------------------------------------------------- texture, hair


def _micro_texture(sc: _Scene) -> None:
    """Skin relief (furrow network, micro bumps) lit from the scene's light, pores, grain.

    Everything is folded into one multiplicative full-resolution field.
    """
    rng, ppm, h, w = sc.rng, sc.ppm, sc.h, sc.w
    relief = np.zeros((h, w), dtype=np.float32)
    dark = np.zeros((h, w), dtype=np.float32)
    spacing = 0.55 * ppm * rng.uniform(0.85, 1.2)  # primary furrow spacing, px
    if spacing >= 3.0:
        # Three families of wavy parallel furrows at ~60 degrees make the rhombic mesh
        # of the skin surface; each fades in and out so furrows look like segments.
        fade = float(np.clip((spacing - 3.0) / 5.0, 0.25, 1.0))
        line_px = max(0.07 * ppm, 0.9)
        a1 = rng.uniform(0, math.pi)
        xs = np.arange(w, dtype=np.float32)[None, :]
        ys = np.arange(h, dtype=np.float32)[:, None]
        fams = ((a1, 1.0, 1.0), (a1 + math.radians(rng.uniform(50, 70)), 1.15, 0.8),
                (a1 + math.radians(rng.uniform(110, 130)), 1.6, 0.55))
        warps = (_noise(rng, h, w, 2.2 * ppm), _noise(rng, h, w, 2.2 * ppm))
        fade_in = _noise(rng, h, w, 1.6 * ppm)
        for k, (ang, sf, amp) in enumerate(fams):
            sp = spacing * sf
            u = xs * (math.pi * math.cos(ang) / sp) + ys * (math.pi * math.sin(ang) / sp)
            warp = warps[k] if k < 2 else warps[0] - warps[1]
            u += warp * (0.35 * math.pi if k < 2 else 0.25 * math.pi)
            np.sin(u, out=u)  # zero on a furrow
            fam = _ridges(u, math.pi * line_px / sp)
            sign = (1.0, -1.0, 0.0)[k]
            fam *= np.clip(0.5 + 0.7 * sign * fade_in, 0.0, 1.0) * amp
            dark += fam
        relief -= dark * (0.45 * line_px * fade)
        # under a contact dermoscope the furrows fill with gel and read lighter
        dark *= (0.04 if not sc.spec.dermoscopic else -0.035) * fade
    if ppm >= 4.0:  # the skin between furrows is finely bumpy
        relief += _noise(rng, h, w, 0.25 * ppm) * (0.006 * ppm)
    if sc.line_gain is not None:
        gain = np.clip(sc.line_gain, 0.0, 3.0)
        relief *= gain
        dark *= gain
    if sc.body is not None:
        relief *= sc.body
        dark *= sc.body
    # directional derivative of the relief towards the light -> shading
    lx, ly = sc.light
    strength = 0.5 if not sc.spec.dermoscopic else 0.25
    field = np.zeros((h, w), dtype=np.float32)
    field[:, 1:] = relief[:, 1:] - relief[:, :-1]
    field *= lx * strength
    gy = relief[1:, :] - relief[:-1, :]
    gy *= ly * strength
    field[1:, :] += gy
    field += 1.0
    pore_cell = max(0.2 * ppm, 1.5)
    pore_amp = 0.06 * min(1.0, (0.2 * ppm / pore_cell) ** 2) * sc.pore_gain
    gh, gw = math.ceil(h / pore_cell), math.ceil(w / pore_cell)
    u = rng.random((gh, gw), dtype=np.float32)
    pores = _upsample(np.clip((u - 0.8) * (1 / 0.2), 0.0, 1.0), w, h)
    if sc.body is not None:
        pores *= sc.body
    dark += pores * pore_amp
    field -= dark
    grain = rng.random((h, w), dtype=np.float32)
    grain -= 0.5
    grain *= (0.014 if not sc.spec.dermoscopic else 0.009) * math.sqrt(12.0)
    field += grain
    sc.img *= field[..., None]


def _hair(sc: _Scene) -> None:
    rng, ppm, spec = sc.rng, sc.ppm, sc.spec
    if ppm < 6.0:
        return
    if spec.dermoscopic:
        n = int(rng.integers(2, 22))
        col = _srgb_to_linear((28, 22, 18))
        thick = (0.05, 0.09)
        opacity = (0.85, 1.0)
    else:
        if spec.kind == "acne" or rng.random() < 0.45:
            return
        area = (sc.w * sc.h) / (ppm * ppm)
        n = int(area / 100.0 * rng.uniform(0.3, 1.2))
        dark = spec.fitzpatrick >= 3 or rng.random() < 0.4
        col = _srgb_to_linear((40, 30, 24) if dark else (120, 92, 64))
        thick = (0.03, 0.06)
        opacity = (0.35, 0.8)
    im = Image.new("L", (sc.w, sc.h), 0)
    draw = ImageDraw.Draw(im)
    flow = rng.uniform(0, 2 * math.pi)
    for _ in range(n):
        x = float(rng.uniform(-0.05, 1.05) * sc.w)
        y = float(rng.uniform(-0.05, 1.05) * sc.h)
        ang = flow + rng.normal(0, 0.35)
        length = rng.uniform(4.0, 14.0 if not spec.dermoscopic else 25.0) * ppm
        bend = rng.normal(0, 0.35)
        wpx = max(round(rng.uniform(*thick) * ppm), 1)
        pts = []
        for i in range(10):
            f = i / 9
            a = ang + bend * f
            pts.append((x, y))
            x += length / 9 * math.cos(a)
            y += length / 9 * math.sin(a)
        draw.line(pts, fill=int(255 * rng.uniform(*opacity)), width=wpx, joint="curve")
    bbox = im.getbbox()
    if bbox is None:
        return
    im = im.filter(_AA_KERNEL)
    x0, y0, x1, y1 = bbox
    x0, y0 = max(x0 - 2, 0), max(y0 - 2, 0)
    x1, y1 = min(x1 + 2, sc.w), min(y1 + 2, sc.h)
    alpha = np.asarray(im.crop((x0, y0, x1, y1))).astype(np.float32)
    alpha *= 1.0 / 255.0
    sc.overlay(_Box(y0, y1, x0, x1), alpha, col)


# --------------------------------------------------------------------------- reference


def _place_reference(sc: _Scene, radius_px: float) -> tuple[float, float]:
    """A spot on visible skin whose disc keeps clear of every lesion pixel."""
    rng = sc.rng
    f = 8
    gh, gw = math.ceil(sc.h / f), math.ceil(sc.w / f)
    pad = np.zeros((gh * f, gw * f), dtype=bool)
    pad[: sc.h, : sc.w] = sc.mask
    coarse = pad.reshape(gh, f, gw, f).any(axis=(1, 3))
    if coarse.any():
        dist = np.asarray(ndimage.distance_transform_edt(~coarse), dtype=np.float32) * f
    else:
        dist = np.full((gh, gw), 1e6, dtype=np.float32)
    margin = radius_px + max(2.0 * sc.ppm, 6.0) + f * 1.5
    ys = (np.arange(gh) + 0.5) * f
    xs = (np.arange(gw) + 0.5) * f
    edge = np.minimum.outer(np.minimum(ys, sc.h - ys), np.minimum(xs, sc.w - xs))
    ok = (dist >= margin) & (edge >= radius_px + 0.5 * sc.ppm + 2)
    if sc.body_sdf is not None:
        gy = np.clip((ys / sc.body_step).astype(int), 0, sc.body_sdf.shape[0] - 1)
        gx = np.clip((xs / sc.body_step).astype(int), 0, sc.body_sdf.shape[1] - 1)
        ok &= sc.body_sdf[np.ix_(gy, gx)] * sc.ppm >= radius_px + 2
    if sc.scope is not None:
        sx, sy, sr = sc.scope
        ok &= np.hypot(xs[None, :] - sx, ys[:, None] - sy) <= sr - radius_px - 2
    cand = np.argwhere(ok)
    if cand.size:
        # people put the reference near the lesion: prefer the closest ring of free spots
        d = dist[ok]
        near = cand[d <= float(d.min()) + max(12.0 * sc.ppm, 3 * radius_px)]
        side = sc.ref_side
        if side is not None and len(near) > 1:
            score = (near[:, 1] - sc.w / 2) * side[0] + (near[:, 0] - sc.h / 2) * side[1]
            near = near[score >= np.quantile(score, 0.5)]
        j, i = near[int(rng.integers(len(near)))]
        return float(xs[i]), float(ys[j])
    # No free spot: use the emptiest one; the disc then hides the lesion under it.
    j, i = np.unravel_index(int(np.argmax(np.where(edge >= radius_px, dist, -1))), dist.shape)
    return float(xs[i]), float(ys[j])


def _reference_style(name: str) -> str:
    """How a named reference looks: "sticker", or a "silver", "copper" or "bimetal" coin."""
    n = name.lower()
    if "sticker" in n or "ruler" in n or "dot" in n:
        return "sticker"
    if "€" in n or "eur" in n:
        return "bimetal"
    if "1p" in n or "2p" in n or "penny" in n or ("cent" in n and "¢" not in n):
        return "copper"
    if "¢" in n or "coin" in n or "£" in n or "$" in n or "quarter" in n or "dime" in n:
        return "silver"
    return "sticker"


def _reference(sc: _Scene) -> None:
    spec, rng, ppm = sc.spec, sc.rng, sc.ppm
    radius = spec.reference_mm / 2 * ppm
    cx, cy = _place_reference(sc, radius)
    cx = min(max(cx + float(rng.uniform(-0.5, 0.5)), radius), sc.w - radius)
    cy = min(max(cy + float(rng.uniform(-0.5, 0.5)), radius), sc.h - radius)
    b = sc.box(cx, cy, radius + max(0.8 * ppm, 4))
    if b is None:
        return
    dx, dy = b.grid(cx, cy)
    r = np.sqrt(dx * dx + dy * dy)
    disc = np.clip(radius - r + 0.5, 0.0, 1.0)
    lx, ly = sc.light
    bh, bw = b.shape
    style = _reference_style(spec.reference_name)
    if style == "sticker":
        # paper sticker: thin soft shadow, white disc, thin dark printed ring at its edge
        sdx, sdy = dx + lx * 0.4, dy + ly * 0.4
        sh = np.clip(radius + 1.2 - np.sqrt(sdx * sdx + sdy * sdy), 0.0, 1.5) / 1.5
        sc.img[b.sl] *= (1.0 - 0.25 * sh * (1 - disc))[..., None]
        paper = 1.0 + 0.012 * rng.standard_normal((bh, bw), dtype=np.float32)
        sc.overlay(b, disc.astype(np.float32), _srgb_to_linear((244, 244, 238)), paper)
        ring_w = max(0.45 * ppm, 1.5)
        ring = np.clip(np.minimum(r - (radius - ring_w) + 0.5, radius - r + 0.5), 0.0, 1.0)
        ticks = (np.abs(dx) < max(0.1 * ppm, 0.6)) | (np.abs(dy) < max(0.1 * ppm, 0.6))
        ticks &= r < 0.2 * radius
        ring = np.maximum(ring, ticks.astype(np.float32) * 0.9)
        sc.overlay(b, (0.92 * ring).astype(np.float32), _srgb_to_linear((34, 38, 46)), paper)
    else:
        # a coin: drop shadow, metal with rim and worn relief, lit from the scene's side
        off = 0.9 * ppm
        sdx, sdy = dx + lx * off, dy + ly * off
        sd = np.sqrt(sdx * sdx + sdy * sdy)
        sh = _smoothstep(radius + 0.9 * ppm, radius - 0.3 * ppm, sd.astype(np.float32))
        sc.img[b.sl] *= (1.0 - 0.45 * sh * (1 - disc))[..., None]
        if style == "copper":
            metal = _srgb_to_linear((176, 112, 80))
            inner = metal
        elif style == "bimetal":
            metal = _srgb_to_linear((188, 160, 96))
            inner = _srgb_to_linear((170, 170, 166))
        else:
            metal = _srgb_to_linear((168, 170, 172))
            inner = metal
        rim = _smoothstep(0.86 * radius, 0.9 * radius, r.astype(np.float32))
        if style == "bimetal":
            core = _smoothstep(0.72 * radius, 0.7 * radius, r.astype(np.float32))
            col_a = core
        else:
            col_a = np.zeros_like(rim)
        relief = _noise(rng, bh, bw, max(0.5 * ppm, 2.0)) * 0.025 * ppm
        pa = rng.uniform(0, 2 * math.pi)
        px, py = 0.12 * radius * math.cos(pa), 0.12 * radius * math.sin(pa)
        portrait = np.exp(-(((dx - px) / (0.32 * radius)) ** 2
                            + ((dy - py) / (0.42 * radius)) ** 2))
        relief += _smoothstep(0.2, 0.5, portrait.astype(np.float32)) * (0.12 * ppm)
        relief *= (r < 0.8 * radius)
        height = (rim * 0.3 * ppm + relief).astype(np.float32)
        gy, gx = np.gradient(height)
        shade = 0.8 + 0.25 * (dx * lx + dy * ly) / radius + 0.9 * (gx * lx + gy * ly)
        shade = np.clip(shade, 0.25, 1.6).astype(np.float32)
        sc.overlay(b, disc.astype(np.float32), metal, shade)
        if col_a.any():
            sc.overlay(b, (disc * col_a).astype(np.float32), inner, shade)
        glare = np.exp(-((dx - 0.35 * radius * lx) ** 2 + (dy - 0.35 * radius * ly) ** 2)
                       / (0.18 * radius * radius))
        sc.img[b.sl] += (0.12 * glare * disc * sc.illum[b.sl])[..., None]
    sc.img[b.sl] *= (1.0 + 0.014 * rng.standard_normal((bh, bw), dtype=np.float32)
                     * disc)[..., None]
    sc.reference = ReferenceTruth(
        name=spec.reference_name,
        diameter_mm=float(spec.reference_mm),
        cx=cx,
        cy=cy,
        radius_px=float(radius),
    )


def _dermoscope(sc: _Scene) -> None:
    """The round field of a contact dermoscope: black outside, a soft falloff inside."""
    if sc.scope is None:
        return
    sx, sy, sr = sc.scope
    dx = (np.arange(sc.w, dtype=np.float32) + 0.5 - sx)[None, :]
    dy = (np.arange(sc.h, dtype=np.float32) + 0.5 - sy)[:, None]
    r = np.sqrt(dx * dx + dy * dy)
    edge = 0.012 * sr
    a = _smoothstep(sr + edge, sr - edge, r)
    fall = 1.0 - 0.35 * _smoothstep(0.75 * sr, sr, r)
    a *= fall
    a += 0.012
    sc.img *= a[..., None]
    sc.mask &= r < sr - edge


# --------------------------------------------------------------------------- public API


def render_rgb(spec: PhotoSpec) -> tuple[npt.NDArray[np.uint8], BoolArray, ReferenceTruth | None]:
    """Render a spec to (sRGB uint8 HxWx3, lesion mask HxW, reference truth or None)."""
    sc = _Scene(spec)
    _paint_skin(sc)
    sev = float(spec.severity)
    kind = spec.kind
    if kind == "pigmented":
        diam = max(2.5, (3.0 + 11.0 * sev) * sc.rng.uniform(0.85, 1.2))
        cx, cy = sc.main_centre(diam / 2)
        _pigmented(sc, cx, cy, diam, sev)
    elif kind == "psoriasis":
        cx, cy = sc.main_centre(20.0)
        _psoriasis(sc, cx, cy, sev)
    elif kind == "eczema":
        cx, cy = sc.main_centre(25.0)
        _eczema(sc, cx, cy, sev)
    elif kind == "acne":
        _acne(sc, sev)
    else:
        _overview(sc, sev)
    _micro_texture(sc)
    _hair(sc)
    if spec.with_reference:
        _reference(sc)
        ref = sc.reference
        if ref is not None:  # the disc is flat and opaque: nothing under it is visible
            b = sc.box(ref.cx, ref.cy, ref.radius_px + 2)
            if b is not None:
                bx, by = b.grid(ref.cx, ref.cy)
                sc.mask[b.sl] &= (bx * bx + by * by) > (ref.radius_px + 1) ** 2
    _dermoscope(sc)
    rgb = _to_srgb8(sc.img)
    return rgb, sc.mask, sc.reference


def _exif_bytes(taken_at: datetime | None) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = _CAMERA_MAKE
    exif[0x0110] = _CAMERA_MODEL
    exif[0x0131] = "derm_workstation synthetic renderer"
    exif[0x0112] = 1
    if taken_at is not None:
        aware = taken_at.tzinfo is not None
        ts = taken_at.astimezone(UTC) if aware else taken_at
        stamp = ts.strftime("%Y:%m:%d %H:%M:%S")
        exif[0x0132] = stamp
        ifd = exif.get_ifd(_EXIF_IFD)
        ifd[0x9003] = stamp  # DateTimeOriginal
        ifd[0x9004] = stamp  # DateTimeDigitized
        if aware:
            ifd[0x9011] = "+00:00"  # OffsetTimeOriginal
    return exif.tobytes()


def render_photo(spec: PhotoSpec, taken_at: datetime | None = None) -> SyntheticPhoto:
    """Render and JPEG-encode a synthetic photo (EXIF camera and time, never GPS)."""
    rgb, mask, ref = render_rgb(spec)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=_JPEG_QUALITY,
                              exif=_exif_bytes(taken_at))
    return SyntheticPhoto(
        spec=spec,
        jpeg=buf.getvalue(),
        width=spec.width,
        height=spec.height,
        lesion_mask=mask,
        px_per_mm=float(spec.px_per_mm),
        reference=ref,
    )
