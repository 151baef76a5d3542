"""Automatic segmentation keeps a dark lesion's own border: a soft, blurred fall-off of
its colour or a faintly darker, reddish skin round it is not part of the lesion.

These guard against rules tried for the "dark core with a wide faint surround" failure
that also move a dark lesion's border out into the skin: choosing, among nested
skin-distance outlines, the one with the strongest relative edge (|grad log S|) or the
largest inside-outside contrast over the outside's spread failed the soft-edge test;
growing a strong lesion into darker skin round it, up to the skin ring's level, failed
the soft-edge and the reddish-skin tests. Synthetic photos with known masks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from derm_workstation.imaging.segmentation import segment
from tests.imaging.test_segmentation_robust import SKIN, H, W

DARK = np.array([95.0, 60.0, 45.0])


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0


def _render(alpha_colours: list[tuple[np.ndarray, np.ndarray]], seed: int) -> np.ndarray:
    """Skin with noise; each (alpha HxW in 0..1, RGB) layer blended over it."""
    rng = np.random.default_rng(seed)
    img = np.broadcast_to(SKIN, (H, W, 3)).astype(np.float64).copy()
    for alpha, colour in alpha_colours:
        a = alpha[..., None]
        img = img * (1 - a) + colour * a
    img += rng.normal(0.0, 3.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


LESION = _ellipse(W / 2 + 12, H / 2 - 8, 62, 46)


def test_a_dark_lesion_with_a_soft_edge_is_outlined_at_its_edge() -> None:
    # the colour falls off over several pixels (a blurred photo): the border is where
    # the change is, not where the last trace of it fades into the skin
    alpha = ndimage.gaussian_filter(LESION.astype(np.float64), 5.0)
    seg = segment(_render([(alpha, DARK)], seed=41))
    assert _jaccard(seg.mask, LESION) >= 0.85
    assert (seg.mask & ~ndimage.binary_dilation(LESION, iterations=8)).sum() == 0


def test_faint_darker_reddish_skin_round_a_dark_lesion_is_not_added() -> None:
    # a wide, soft patch of slightly darker, redder skin (erythema, a shadow) round a
    # dark lesion with a sharp border: the expert's line is the lesion's border
    yy, xx = np.mgrid[0:H, 0:W]
    glow = 0.25 * np.exp(-(((xx - W / 2 - 12) / 120.0) ** 2 + ((yy - H / 2 + 8) / 95.0) ** 2))
    alpha = ndimage.gaussian_filter(LESION.astype(np.float64), 1.5)
    rgb = _render([(glow, np.array([190.0, 125.0, 115.0])), (alpha, DARK)], seed=42)
    seg = segment(rgb)
    assert _jaccard(seg.mask, LESION) >= 0.85
    assert (seg.mask & ~ndimage.binary_dilation(LESION, iterations=6)).sum() == 0


def test_one_click_on_the_soft_edged_lesion_gives_the_same_border() -> None:
    alpha = ndimage.gaussian_filter(LESION.astype(np.float64), 5.0)
    rgb = _render([(alpha, DARK)], seed=43)
    auto = segment(rgb)
    clicked = segment(rgb, (W / 2 + 12, H / 2 - 8))
    assert clicked.method == "seed"
    assert _jaccard(clicked.mask, auto.mask) >= 0.95
