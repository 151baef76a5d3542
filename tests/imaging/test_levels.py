"""Display levels (sizes, choice, DCT-scaled decoding) and display adjustments (LUT)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from derm_workstation.imaging.decode import ImageRejected
from derm_workstation.imaging.levels import (
    Adjustment,
    LevelSpec,
    apply_lut,
    decode_level,
    fill_bgrx,
    pick_loaded,
    plan_levels,
    wanted_level,
)


def _jpeg(w: int, h: int, orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x * 255 // max(1, w - 1)), (y * 255 // max(1, h - 1)),
                    np.full_like(x, 90)], axis=-1).astype(np.int16)
    arr += rng.integers(-8, 9, size=(h, w, 1), dtype=np.int16)
    arr[: h // 4, : w // 4] = (20, 200, 40)  # a green top-left corner
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    img.save(buf, "JPEG", quality=92, **kwargs)
    return buf.getvalue()


def test_levels_follow_the_dct_scales() -> None:
    levels = plan_levels(4032, 3024)
    assert [(s.index, s.width, s.height) for s in levels] == [
        (0, 4032, 3024), (1, 2016, 1512), (2, 1008, 756), (3, 504, 378)]
    assert [s.scale for s in levels] == [1.0, 0.5, 0.25, 0.125]


def test_small_photos_get_fewer_levels() -> None:
    assert [s.index for s in plan_levels(600, 400)] == [0, 1]  # 300 ≥ 256, 150 < 256
    assert [s.index for s in plan_levels(300, 200)] == [0]
    assert [s.index for s in plan_levels(1, 1)] == [0]
    with pytest.raises(ValueError):
        plan_levels(0, 10)


def test_wanted_level_is_the_coarsest_sharp_enough() -> None:
    levels = plan_levels(6000, 4000)
    assert wanted_level(levels, 0.2).index == 2  # 1/4 has 0.25 ≥ 0.2
    assert wanted_level(levels, 0.25).index == 2
    assert wanted_level(levels, 0.26).index == 1
    assert wanted_level(levels, 0.1).index == 3
    assert wanted_level(levels, 0.01).index == 3
    assert wanted_level(levels, 1.0).index == 0
    assert wanted_level(levels, 8.0).index == 0
    # rounding of an odd size must not force the next, 4x bigger, level
    odd = plan_levels(4001, 3001)
    assert wanted_level(odd, 0.25).index == 2


def test_pick_loaded_prefers_sharp_then_coarse() -> None:
    assert pick_loaded([], 1.0) is None
    assert pick_loaded([0.125, 1.0], 0.1) == 0  # coarse is sharp enough: cheapest to draw
    assert pick_loaded([0.125, 1.0], 0.3) == 1  # only full size is sharp enough
    assert pick_loaded([0.125, 0.25], 0.9) == 1  # nothing sharp: the sharpest there is


def test_decode_level_uses_reduced_size_decoding() -> None:
    data = _jpeg(1600, 1200)
    levels = plan_levels(1600, 1200)
    for spec in levels:
        img = decode_level(data, spec)
        assert img.mode == "RGB"
        assert img.size == (spec.width, spec.height)
    # the level is what the full image looks like, reduced
    full = np.asarray(decode_level(data, levels[0]), dtype=np.float64)
    quarter = np.asarray(decode_level(data, levels[2]), dtype=np.float64)
    reduced = full.reshape(300, 4, 400, 4, 3).mean(axis=(1, 3))
    assert np.abs(reduced - quarter).mean() < 4.0


def test_decode_level_applies_orientation() -> None:
    data = _jpeg(800, 600, orientation=6)  # stored landscape, shown portrait (90° cw)
    levels = plan_levels(600, 800)
    img = decode_level(data, levels[1])
    assert img.size == (300, 400)
    # the green corner was top-left in the stored image: after 90° cw it is top-right
    r, g, _b = img.getpixel((img.width - 10, 10))
    assert g > 150 and r < 80


def test_decode_level_rejects_broken_files() -> None:
    data = _jpeg(800, 600)
    with pytest.raises(ImageRejected):
        decode_level(data[: len(data) // 2], plan_levels(800, 600)[1])
    with pytest.raises(ImageRejected):
        decode_level(b"not an image at all", LevelSpec(0, 10, 10, 10, 10))


def test_fill_bgrx_writes_qt_rgb32_byte_order() -> None:
    img = Image.fromarray(np.array([[[10, 20, 30], [40, 50, 60]]] * 600, dtype=np.uint8))
    out = np.zeros((600, 3, 4), np.uint8)  # stride wider than the image
    fill_bgrx(img, out)
    assert out[0, 0].tolist() == [30, 20, 10, 255]
    assert out[599, 1].tolist() == [60, 50, 40, 255]
    assert out[0, 2].tolist() == [0, 0, 0, 0]  # padding untouched
    with pytest.raises(ValueError):
        fill_bgrx(img, np.zeros((10, 2, 4), np.uint8))


def test_identity_adjustment_changes_nothing() -> None:
    adj = Adjustment()
    assert adj.is_identity and adj.describe() == ""
    assert adj.lut().tolist() == list(range(256))


def test_brightness_contrast_gamma() -> None:
    lut = Adjustment(brightness=40).lut()
    assert lut[100] > 100 and lut[255] == 255
    assert Adjustment(brightness=-40).lut()[100] < 100
    c = Adjustment(contrast=50).lut()
    assert c[60] < 60 and c[200] > 200 and abs(int(c[128]) - 128) <= 1
    flat = Adjustment(contrast=-100).lut()
    assert flat.max() - flat.min() < 200
    g = Adjustment(gamma=2.0).lut()
    assert g[64] > 64 and g[0] == 0 and g[255] == 255  # above 1 brightens mid-tones
    assert Adjustment(gamma=0.5).lut()[64] < 64
    for adj in (Adjustment(30, 60, 1.7), Adjustment(-80, -50, 0.3)):
        assert np.all(np.diff(adj.lut().astype(int)) >= 0)  # never inverts tones
    assert "brightness +40" in Adjustment(brightness=40).describe()


@pytest.mark.parametrize("kwargs", [{"brightness": 101}, {"contrast": -101}, {"gamma": 0.1},
                                    {"gamma": float("nan")}])
def test_adjustment_limits(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Adjustment(**kwargs)  # type: ignore[arg-type]


def test_apply_lut_keeps_the_padding_channel_and_works_in_place() -> None:
    src = np.random.default_rng(1).integers(0, 256, size=(700, 50, 4), dtype=np.uint8)
    src[..., 3] = 255
    lut = Adjustment(brightness=-50).lut()
    out = apply_lut(src, lut)
    assert np.array_equal(out[..., :3], lut[src[..., :3]])
    assert np.all(out[..., 3] == 255)
    same = src.copy()
    apply_lut(same, lut, out=same)
    assert np.array_equal(same, out)
    with pytest.raises(ValueError):
        apply_lut(src, np.arange(10, dtype=np.uint8))
