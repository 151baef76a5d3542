"""Automatic segmentation: rim rejection, outline tidying, one click on a lesion with a
halo, and invariance to flips and rotations, on synthetic photos with known masks."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from derm_workstation.imaging import segmentation as seg_mod
from derm_workstation.imaging.segmentation import segment
from derm_workstation.imaging.synthetic import PhotoSpec, render_rgb

W, H = 480, 360
SKIN = np.array([205.0, 165.0, 140.0])


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def _disc(cx: float, cy: float, r: float, w: int = W, h: int = H) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """A lesion-like ellipse (a perfect disc would be taken for a calibration sticker)."""
    yy, xx = np.mgrid[0:H, 0:W]
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0


def _photo(layers: list[tuple[np.ndarray, tuple[float, float, float]]], seed: int
           ) -> np.ndarray:
    """Skin with noise, each (mask, RGB) layer painted with slightly soft edges."""
    rng = np.random.default_rng(seed)
    img = np.broadcast_to(SKIN, (H, W, 3)).astype(np.float64).copy()
    for mask, colour in layers:
        a = ndimage.gaussian_filter(mask.astype(np.float64), 1.5)[..., None]
        img = img * (1 - a) + np.asarray(colour) * a
    img += rng.normal(0.0, 3.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_one_click_on_the_dark_centre_still_outlines_a_lesion_around_the_click() -> None:
    halo = _disc(W / 2 + 10, H / 2 - 5, 95)
    core = _disc(W / 2 + 20, H / 2, 28)
    rgb = _photo([(halo, (192, 150, 126)), (core, (90, 55, 40))], seed=3)
    seg = segment(rgb, (W / 2 + 20, H / 2))
    assert seg.method == "seed"
    assert seg.mask[int(H / 2), int(W / 2 + 20)]
    assert (seg.mask & ~halo).sum() < 0.05 * seg.mask.sum()


def test_a_ring_round_the_field_is_not_taken_for_the_lesion() -> None:
    # a grey dermatoscope rim (not black, so not cut off as the surround) round a
    # smaller lesion: the ring is larger and centred, but it is not a blob
    ring = _disc(W / 2, H / 2, 175) & ~_disc(W / 2, H / 2, 157)
    lesion = _ellipse(W / 2 - 30, H / 2 + 20, 48, 34)
    rgb = _photo([(ring, (120, 115, 112)), (lesion, (140, 95, 75))], seed=4)
    seg = segment(rgb)
    assert _jaccard(seg.mask, lesion) >= 0.8
    assert not (seg.mask & ring).any()


def test_a_thin_bridge_to_a_dark_patch_at_the_edge_is_cut() -> None:
    lesion = _ellipse(W / 2, H / 2, 70, 52)
    bridge = np.zeros((H, W), bool)
    bridge[H // 2 - 6:H // 2 + 6, W // 2:W - 1] = True   # 12 px wide, to the edge
    patch = np.zeros((H, W), bool)
    patch[H // 2 - 60:H // 2 + 60, W - 30:] = True
    rgb = _photo([(patch, (120, 80, 60)), (bridge, (110, 70, 55)), (lesion, (110, 70, 55))],
                 seed=5)
    seg = segment(rgb)
    assert _jaccard(seg.mask, lesion) >= 0.85
    assert not seg.mask[:, W - 20:].any()


def test_tidy_cuts_bridges_and_fills_notches_relative_to_size() -> None:
    an = seg_mod._analyse(_photo([], seed=6), None, None)
    h, w = an.s.shape
    yy, xx = np.mgrid[0:h, 0:w]
    blob = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 <= 80 ** 2
    notch = blob & ~((np.abs(yy - h / 2) < 4) & (xx > w / 2 + 40))   # a slit into the blob
    leak = np.zeros_like(blob)
    leak[h // 2 - 2:h // 2 + 2, w // 2:] = True                      # a thin leak to the edge
    core = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 <= 20 ** 2
    out = seg_mod._tidy(an, core, notch | leak)
    assert _jaccard(out, blob) >= 0.97
    assert not out[:, w - 30:].any()


def test_flips_and_rotations_give_the_same_outline() -> None:
    spec = PhotoSpec(seed=81, kind="pigmented", fitzpatrick=3, severity=0.5, width=W,
                     height=H, px_per_mm=14.0)
    rgb, _mask, _ref = render_rgb(spec)
    base = segment(rgb).mask
    flipped = segment(np.ascontiguousarray(rgb[:, ::-1])).mask[:, ::-1]
    turned = np.rot90(segment(np.ascontiguousarray(np.rot90(rgb))).mask, -1)
    assert _jaccard(base, flipped) >= 0.95
    assert _jaccard(base, turned) >= 0.95


def test_solidity_of_a_disc_a_ring_and_a_square() -> None:
    disc = _disc(100, 100, 50, 200, 200)
    ring = disc & ~_disc(100, 100, 44, 200, 200)
    square = np.zeros((200, 200), bool)
    square[50:150, 50:150] = True
    assert seg_mod._solidity(disc) > 0.97
    assert seg_mod._solidity(square) > 0.99
    assert seg_mod._solidity(ring) < 0.3


def test_a_white_ruler_along_the_edge_is_not_taken_for_the_skin() -> None:
    # a white scale along the bottom holds more of the outer band than the skin does;
    # the skin model must still be the skin, so the lesion stands out
    lesion = _ellipse(W / 2, H * 0.4, 65, 48)
    ruler = np.zeros((H, W), bool)
    ruler[int(H * 0.8):, :] = True
    ticks = np.zeros((H, W), bool)
    for x in range(6, W, 24):
        ticks[int(H * 0.86):, x:x + 5] = True
    rgb = _photo([(ruler, (245, 245, 242)), (ticks, (30, 30, 30)),
                  (lesion, (120, 80, 62))], seed=7)
    seg = segment(rgb)
    assert _jaccard(seg.mask, lesion) >= 0.85
    assert not seg.mask[int(H * 0.8):].any()


def test_two_class_split_grows_a_small_start_to_the_whole_faint_lesion() -> None:
    lesion = _ellipse(W / 2 + 15, H / 2 - 10, 120, 85)
    rgb = _photo([(lesion, (190, 140, 118))], seed=8)
    an = seg_mod._analyse(rgb, None, None)
    h, w = an.s.shape
    start = np.zeros((h, w), bool)
    start[h // 2 - 25:h // 2 + 5, w // 2:w // 2 + 30] = True     # a small patch inside
    out = seg_mod._two_class(an, start)
    assert out is not None
    region, direction, _threshold = out
    small = np.asarray(Image.fromarray(lesion).resize((w, h), Image.Resampling.NEAREST))
    assert _jaccard(region, small) >= 0.9
    assert direction.shape == (3,) and abs(float(np.linalg.norm(direction)) - 1.0) < 1e-6


def test_one_click_inside_a_large_faint_lesion_outlines_all_of_it() -> None:
    lesion = _ellipse(W / 2 - 20, H / 2 + 10, 130, 90)
    rgb = _photo([(lesion, (192, 146, 122))], seed=9)
    seg = segment(rgb, (W / 2 - 60, H / 2 + 30))
    assert seg.method == "seed"
    assert _jaccard(seg.mask, lesion) >= 0.85
