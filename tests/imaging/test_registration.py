"""Automatic and manual alignment of a follow-up photo to its baseline.

The follow-up photos are made from a rendered synthetic skin photo by warping it with a
known transform (``skimage.transform.warp``, whose pixel convention — centres at integer
coordinates — is the one :mod:`registration` documents), then changing exposure, adding
noise or blur. The recovered matrix is judged by the RMS distance, over a grid of
follow-up points that land inside the base, between where it and the true transform map
them (full-resolution base pixels). Target: within 1 px.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from scipy import ndimage
from skimage.transform import AffineTransform, warp

from derm_workstation.core.errors import InputError
from derm_workstation.imaging.decode import ImageRejected
from derm_workstation.imaging.registration import (
    Alignment,
    AlignmentFailed,
    align,
    align_bytes,
    align_files,
    manual_alignment,
)
from derm_workstation.imaging.synthetic import PhotoSpec, render_rgb

W, H = 1000, 750
RGB = npt.NDArray[np.uint8]


def similarity(rot_deg: float, zoom: float, shift: tuple[float, float] = (0.0, 0.0),
               size: tuple[int, int] = (W, H)) -> np.ndarray:
    """Follow-up -> base matrix of a camera turned by ``rot_deg`` and zoomed by ``zoom``
    about the picture centre (the follow-up shows the base ``zoom`` times larger)."""
    c = np.array([(size[0] - 1) / 2, (size[1] - 1) / 2])
    a = math.radians(rot_deg)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) / zoom
    m = np.eye(3)
    m[:2, :2] = r
    m[:2, 2] = c + np.asarray(shift) - r @ c
    return m


def follow_up(base: RGB, m: np.ndarray, *, gain: float = 1.0, gamma: float = 1.0,
              noise: float = 0.0, blur: float = 0.0, shape: tuple[int, int] = (H, W),
              seed: int = 1) -> RGB:
    """``base`` as seen through follow-up -> base matrix ``m``, like a second photo."""
    src = base.astype(np.float64)
    shrink = math.sqrt(abs(np.linalg.det(m[:2, :2])))  # > 1: the follow-up is zoomed out
    if shrink > 1.05:  # a camera integrates over its pixels: antialias like one
        s = 0.5 * math.sqrt(shrink**2 - 1)
        src = ndimage.gaussian_filter(src, (s, s, 0))
    out = warp(src, AffineTransform(matrix=m), output_shape=shape, order=1,
               preserve_range=True, cval=20.0)
    if blur:
        out = ndimage.gaussian_filter(out, (blur, blur, 0))
    out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** gamma * gain
    if noise:
        out += np.random.default_rng(seed).normal(0.0, noise, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def grid_rms(est: np.ndarray, true: np.ndarray, follow_size: tuple[int, int] = (W, H),
             base_size: tuple[int, int] = (W, H)) -> float:
    fw, fh = follow_size
    ys, xs = np.mgrid[0:fh:10, 0:fw:10]
    pts = np.column_stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    want = pts @ true.T
    inside = ((want[:, 0] >= 0) & (want[:, 0] <= base_size[0] - 1)
              & (want[:, 1] >= 0) & (want[:, 1] <= base_size[1] - 1))
    assert inside.sum() > 100, "the test transform must keep an overlap"
    got = pts[inside] @ np.asarray(est).T
    d = got[:, :2] - want[inside, :2]
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))


@pytest.fixture(scope="module")
def base() -> RGB:
    rgb, _, _ = render_rgb(PhotoSpec(seed=11, kind="psoriasis", fitzpatrick=3, severity=0.5,
                                     width=W, height=H))
    return rgb


@pytest.fixture(scope="module")
def other() -> RGB:
    """Another patient's photo: same kind of picture, different skin."""
    rgb, _, _ = render_rgb(PhotoSpec(seed=12, kind="pigmented", fitzpatrick=3, severity=0.5,
                                     width=W, height=H))
    return rgb


# ------------------------------------------------------------------ automatic


@pytest.mark.parametrize("rot", [0.0, 30.0, 90.0, 180.0])
def test_recovers_rotation_within_1px(base: RGB, rot: float) -> None:
    true = similarity(rot, 1.0, shift=(25.0, -18.0))
    result = align(base, follow_up(base, true))
    assert result.model == "similarity"
    assert grid_rms(result.matrix, true) < 1.0
    assert result.inliers >= 100 and result.confidence > 0.9
    assert result.rms_px < 1.5


@pytest.mark.parametrize("zoom", [0.7, 1.4])
def test_recovers_zoom_within_1px(base: RGB, zoom: float) -> None:
    true = similarity(-20.0, zoom, shift=(10.0, 12.0))
    result = align(base, follow_up(base, true))
    assert grid_rms(result.matrix, true) < 1.0
    assert result.confidence > 0.8


def test_exposure_change_noise_and_blur(base: RGB) -> None:
    true = similarity(12.0, 1.1, shift=(-30.0, 8.0))
    brighter = follow_up(base, true, gain=1.3, gamma=0.8)
    assert grid_rms(align(base, brighter).matrix, true) < 1.0
    darker_noisy = follow_up(base, true, gain=0.65, noise=5.0, blur=1.0)
    result = align(base, darker_noisy)
    assert grid_rms(result.matrix, true) < 1.0
    assert result.confidence > 0.5


def test_underexposed_dark_skin(base: RGB) -> None:
    """Dark skin, badly under-exposed in both photos, is skin, not a 'dark surround'."""
    rgb, _, _ = render_rgb(PhotoSpec(seed=8, kind="eczema", fitzpatrick=6, severity=0.5,
                                     width=W, height=H))
    true = similarity(25.0, 1.2, shift=(5.0, 5.0))
    dark = (rgb * 0.3).astype(np.uint8)
    result = align(dark, follow_up(rgb, true, gain=0.27, noise=2.0))
    assert grid_rms(result.matrix, true) < 1.0


def test_fixed_overlays_of_a_dermoscope_do_not_win(base: RGB) -> None:
    """A small round dermoscope field with a ruler and text burnt into the black
    surround: they stay put in the frame while the skin turns. Without masking the
    surround, they out-vote the skin and the result is 'no movement' (a ~170 px error)
    with full confidence."""
    from PIL import ImageDraw

    yy, xx = np.mgrid[0:H, 0:W]
    field = np.where(np.hypot(xx - W / 2, yy - H / 2) < 0.3 * H, 0.97, 0.0) + 0.03
    overlay = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(overlay)
    for i in range(30):
        long = i % 5 == 0
        draw.line([(20, 40 + i * 22), (55 if long else 35, 40 + i * 22)], fill=255, width=2)
        draw.line([(W - 60, 40 + i * 22), (W - 25 if long else W - 45, 40 + i * 22)],
                  fill=255, width=2)
        draw.line([(100 + i * 25, H - 30), (100 + i * 25, H - 60 if long else H - 45)],
                  fill=255, width=2)
    for j, text in enumerate(["DermScope 2026-05-01 12:30", "ID 0042  x10", "SCALE 1mm"]):
        draw.text((W - 220, 30 + j * 20), text, fill=255)
    draw.rectangle((W - 120, H - 60, W - 30, H - 30), outline=255, width=2)
    ink = np.asarray(overlay, np.float64)[..., None] / 255.0
    skin = ndimage.gaussian_filter(base.astype(np.float64), (2, 2, 0))

    def through_scope(img: np.ndarray) -> RGB:
        out = img * field[..., None] * (1 - ink) + 230.0 * ink
        return np.clip(out, 0, 255).astype(np.uint8)

    true = similarity(30.0, 1.1, shift=(10.0, 5.0))
    follow = follow_up(skin.astype(np.uint8), true)
    result = align(through_scope(skin), through_scope(follow.astype(np.float64)))
    assert grid_rms(result.matrix, true) < 1.0


def test_affine_model_recovers_a_sheared_view(base: RGB) -> None:
    true = np.array([[1.08, 0.12, -40.0], [-0.05, 0.93, 30.0], [0.0, 0.0, 1.0]])
    follow = follow_up(base, true)
    result = align(base, follow, "affine")
    assert result.model == "affine"
    assert grid_rms(result.matrix, true) < 1.0
    # a similarity cannot express the shear: it is refused, or clearly worse
    try:
        sim = align(base, follow)
    except AlignmentFailed:
        return
    assert grid_rms(sim.matrix, true) > 2 * grid_rms(result.matrix, true)


def test_full_resolution_matrix_from_reduced_working_copies(base: RGB) -> None:
    """Different photo sizes, both reduced internally: the matrix is in full-res pixels."""
    true = similarity(40.0, 1.25, shift=(5.0, -5.0))
    follow = follow_up(base, true, shape=(600, 800))
    result = align(base, follow, max_side=512)
    # tighter than 1 px on purpose: losing the half-pixel centre offset when scaling the
    # matrix back gives ~0.45 px here
    assert grid_rms(result.matrix, true, follow_size=(800, 600)) < 0.2


def test_unrelated_photos_fail_with_a_reason(base: RGB, other: RGB) -> None:
    with pytest.raises(AlignmentFailed) as err:
        align(base, other)
    assert "may not show the same area" in err.value.reason
    assert isinstance(err.value, InputError) and err.value.exit_code == 2


def test_featureless_photo_fails_with_a_reason(base: RGB) -> None:
    blank = np.full((H, W, 3), 190, np.uint8)
    with pytest.raises(AlignmentFailed, match="Too few distinct features in the follow-up"):
        align(base, blank)
    with pytest.raises(AlignmentFailed, match="too small"):
        align(base, base[:20, :20])


def test_deterministic_and_seeded(base: RGB) -> None:
    true = similarity(75.0, 0.9, shift=(12.0, 3.0))
    follow = follow_up(base, true, noise=3.0)
    a, b = align(base, follow), align(base, follow)
    assert np.array_equal(a.matrix, b.matrix) and a.as_json() == b.as_json()
    c = align(base, follow, seed=7)
    assert grid_rms(c.matrix, true) < 1.0


def test_bad_arguments(base: RGB) -> None:
    with pytest.raises(InputError, match="Unknown alignment model"):
        align(base, base, "perspective")
    with pytest.raises(InputError, match="H x W x 3"):
        align(base, np.zeros((4, 4, 4, 4), np.uint8))


def test_as_json_is_plain_json(base: RGB) -> None:
    true = similarity(0.0, 1.0, shift=(3.0, 4.0))
    result = align(base, follow_up(base, true))
    data = json.loads(json.dumps(result.as_json()))
    assert set(data) == {"matrix", "model", "inliers", "matches", "confidence", "rms_px"}
    assert np.asarray(data["matrix"]).shape == (3, 3)
    assert data["matrix"][2] == [0.0, 0.0, 1.0]
    assert 0.0 <= data["confidence"] <= 1.0 and data["inliers"] <= data["matches"]
    # helpers agree with the matrix
    p = result.map_points([(100.0, 200.0)])[0]
    assert np.allclose(p, (103.0, 204.0), atol=0.3)
    assert np.allclose(result.inverse @ result.matrix, np.eye(3), atol=1e-9)


# ------------------------------------------------------------------ from files


def _jpeg(rgb: RGB, orientation: int = 1) -> bytes:
    """A JPEG that *displays* as ``rgb``: stored turned, with an EXIF Orientation tag."""
    img = Image.fromarray(rgb)
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
            8: Image.Transpose.ROTATE_270}
    kw: dict[str, object] = {"quality": 92}
    if orientation != 1:
        img = img.transpose(undo[orientation])
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [6, 8])
def test_align_files_uses_displayed_pixels(tmp_path: Path, base: RGB, orientation: int) -> None:
    true = similarity(-15.0, 1.2, shift=(-12.0, 20.0))
    (tmp_path / "base.jpg").write_bytes(_jpeg(base, 3))
    (tmp_path / "follow.jpg").write_bytes(_jpeg(follow_up(base, true), orientation))
    # 400: both JPEGs are decoded at 1/2 scale by the DCT, then resized
    result = align_files(tmp_path / "base.jpg", tmp_path / "follow.jpg", max_side=400)
    assert grid_rms(result.matrix, true) < 0.2  # a lost half-pixel offset gives ~0.3
    # the same from bytes in memory
    same = align_bytes((tmp_path / "base.jpg").read_bytes(),
                       (tmp_path / "follow.jpg").read_bytes(), max_side=400)
    assert same.as_json() == result.as_json()


def test_align_files_names_the_rejected_photo(tmp_path: Path, base: RGB) -> None:
    good = tmp_path / "base.jpg"
    good.write_bytes(_jpeg(base))
    bad = tmp_path / "follow.jpg"
    bad.write_bytes(_jpeg(base)[:5000])
    with pytest.raises(ImageRejected, match=r"^Follow-up photo follow\.jpg: .*truncated"):
        align_files(good, bad)
    with pytest.raises(ImageRejected, match=r"^Base photo nothere\.jpg: .*does not exist"):
        align_files(tmp_path / "nothere.jpg", good)
    with pytest.raises(ImageRejected, match=r"^Follow-up photo: The file is empty"):
        align_bytes(good.read_bytes(), b"")


# ------------------------------------------------------------------ manual


def test_manual_three_points_exact() -> None:
    true = similarity(33.0, 1.3, shift=(40.0, -25.0))
    follow_pts = [(100.0, 120.0), (800.0, 150.0), (450.0, 600.0)]
    base_pts = [tuple(p) for p in (np.c_[follow_pts, np.ones(3)] @ true.T)[:, :2]]
    result = manual_alignment(base_pts, follow_pts)
    assert isinstance(result, Alignment) and result.model == "manual"
    assert np.allclose(result.matrix, true, atol=1e-9)
    assert result.rms_px < 1e-9 and result.confidence == 1.0
    assert result.inliers == result.matches == 3
    # an affine is exact on any 3 non-collinear pairs
    shear = np.array([[1.1, 0.2, 5.0], [-0.1, 0.95, -7.0], [0.0, 0.0, 1.0]])
    base_pts = [tuple(p) for p in (np.c_[follow_pts, np.ones(3)] @ shear.T)[:, :2]]
    assert np.allclose(manual_alignment(base_pts, follow_pts, "affine").matrix, shear,
                       atol=1e-9)
    # a similarity cannot follow the shear: least squares, with a residual to show it
    assert manual_alignment(base_pts, follow_pts).rms_px > 1.0


def test_manual_rejects_unusable_points() -> None:
    pts = [(0.0, 0.0), (100.0, 0.0), (0.0, 100.0)]
    with pytest.raises(AlignmentFailed, match="at least 3 point pairs"):
        manual_alignment(pts[:2], pts[:2])
    with pytest.raises(AlignmentFailed, match="Each base point needs"):
        manual_alignment(pts, pts[:2] + pts[:2])
    with pytest.raises(AlignmentFailed, match="one line"):
        manual_alignment([(0.0, 0.0), (50.0, 50.0), (100.0, 100.0)], pts)
    with pytest.raises(AlignmentFailed, match="too close together"):
        manual_alignment(pts, [(10.0, 10.0), (10.5, 10.0), (10.0, 10.5)])
    mirrored = [(-x, y) for x, y in pts]
    with pytest.raises(AlignmentFailed, match="mirror"):
        manual_alignment(mirrored, pts, "affine")
    with pytest.raises(AlignmentFailed, match="finite"):
        manual_alignment([(0.0, 0.0), (1.0, math.nan), (0.0, 5.0)], pts)
    with pytest.raises(InputError, match="Unknown alignment model"):
        manual_alignment(pts, pts, "projective")
