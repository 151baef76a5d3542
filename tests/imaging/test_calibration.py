"""Calibration: automatic coin/sticker detection on synthetic photos of known scale,
the ruler line, metadata, the reference table and the failure modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from derm_workstation.core.errors import InputError
from derm_workstation.imaging.calibration import (
    REFERENCES,
    TILT_WARNING_RATIO,
    Calibration,
    Ellipse,
    NoReferenceFound,
    detect_reference,
    fit_ellipse,
    from_metadata,
    from_ruler_line,
    reference_diameter,
    with_lesion_check,
)
from derm_workstation.imaging.synthetic import PhotoSpec, render_rgb

W, H = 640, 480

# How the synthetic renderer draws each reference (its style follows the name).
_SYNTHETIC_NAME = {
    "us-1c": "US 1¢", "us-5c": "US 5¢", "us-10c": "US 10¢", "us-25c": "US 25¢",
    "eur-1c": "1 euro-cent", "eur-1": "€1", "eur-2": "€2",
    "uk-1p": "UK 1p", "uk-2p": "UK 2p", "gbp-1": "£1",
}


def _photo(ref_name: str, diameter_mm: float, *, fitzpatrick: int, change: str,
           seed: int, kind: str = "pigmented", share: float = 0.35
           ) -> tuple[np.ndarray, float, tuple[float, float]]:
    """A synthetic close-up with a reference of ``diameter_mm`` spanning ``share`` of the
    short side, then one photographic change. Returns (rgb, true px/mm, ref centre)."""
    ppm = share * min(W, H) / diameter_mm
    spec = PhotoSpec(seed=seed, kind=kind, fitzpatrick=fitzpatrick, severity=0.5, width=W,
                     height=H, px_per_mm=ppm, with_reference=True, reference_mm=diameter_mm,
                     reference_name=_SYNTHETIC_NAME.get(ref_name, ref_name))
    rgb, _mask, ref = render_rgb(spec)
    assert ref is not None
    img = rgb.astype(np.float32)
    rng = np.random.default_rng(seed)
    if change == "blur":
        img = ndimage.gaussian_filter(img, (1.5, 1.5, 0))
    elif change == "noise":
        img = img + rng.normal(0.0, 8.0, img.shape)
    elif change == "uneven light":
        img = img * (0.55 + 0.6 * np.arange(W, dtype=np.float32) / W)[None, :, None]
    out = np.clip(img, 0, 255).astype(np.uint8)
    if change == "rotation":
        out = np.asarray(Image.fromarray(out).rotate(
            23, resample=Image.Resampling.BICUBIC, center=(ref.cx, ref.cy),
            fillcolor=(40, 40, 40)))
    return out, ppm, (ref.cx, ref.cy)


CHANGES = ("none", "blur", "noise", "uneven light", "rotation")
CASES = [(name, 1 + i % 6, CHANGES[i % len(CHANGES)]) for i, name in enumerate(REFERENCES)]
CASES.append(("custom 30 mm", 3, "noise"))


@pytest.mark.parametrize(("name", "fitzpatrick", "change"), CASES)
def test_auto_detected_reference_measures_within_two_percent(
        name: str, fitzpatrick: int, change: str) -> None:
    diameter = 30.0 if name.startswith("custom") else reference_diameter(name)
    synth_name = "sticker-30mm" if name.startswith("custom") else name
    rgb, true_ppm, (cx, cy) = _photo(synth_name, diameter, fitzpatrick=fitzpatrick,
                                     change=change, seed=700 + len(name) * 7 + fitzpatrick)
    cal = detect_reference(rgb, diameter)
    assert cal.method == "reference"
    assert cal.reference_mm == diameter
    assert abs(cal.px_per_mm - true_ppm) / true_ppm <= 0.02, (cal, true_ppm)
    assert cal.ellipse is not None
    assert math.hypot(cal.ellipse.cx - cx, cal.ellipse.cy - cy) < 0.03 * cal.ellipse.rx
    assert 0.0 < cal.confidence <= 1.0
    assert not any("elliptical" in w for w in cal.warnings)
    # a known-size object measured with it: the reference's own diameter
    measured_mm = 2 * cal.ellipse.ry / cal.px_per_mm
    assert abs(measured_mm - diameter) / diameter <= 0.02


@pytest.mark.parametrize("fitzpatrick", [1, 3, 6])
def test_sticker_on_every_skin_tone(fitzpatrick: int) -> None:
    rgb, true_ppm, _c = _photo("sticker-10mm", 10.0, fitzpatrick=fitzpatrick, change="none",
                               seed=900 + fitzpatrick, share=0.25)
    cal = detect_reference(rgb, 10.0)
    assert abs(cal.px_per_mm - true_ppm) / true_ppm <= 0.02


def test_tilted_camera_warns_and_keeps_the_major_axis() -> None:
    rgb, true_ppm, _c = _photo("us-25c", 24.26, fitzpatrick=2, change="none", seed=41)
    squashed = np.asarray(Image.fromarray(rgb).resize((W, int(H * 0.8)),
                                                      Image.Resampling.LANCZOS))
    cal = detect_reference(squashed, 24.26)
    assert cal.ellipse is not None
    assert cal.ellipse.axis_ratio > TILT_WARNING_RATIO
    assert abs(cal.ellipse.axis_ratio - 1.25) < 0.05
    assert any("not square to the skin" in w for w in cal.warnings)
    # the horizontal (unsquashed) axis still carries the true scale
    assert abs(cal.px_per_mm - true_ppm) / true_ppm <= 0.02
    assert abs(cal.ellipse.angle_deg % 180 - 0.0) < 5 or abs(cal.ellipse.angle_deg - 180) < 5


def test_no_reference_gives_a_clear_message() -> None:
    spec = PhotoSpec(seed=5, kind="pigmented", fitzpatrick=3, severity=0.6, width=W,
                     height=H, px_per_mm=10.0)
    rgb, _m, _r = render_rgb(spec)
    with pytest.raises(NoReferenceFound, match="No calibration reference was found") as exc:
        detect_reference(rgb, 24.26)
    assert isinstance(exc.value, InputError)
    assert exc.value.exit_code == 2


def test_plain_skin_has_no_reference() -> None:
    rng = np.random.default_rng(3)
    rgb = np.clip(rng.normal((200, 160, 130), 6, (H, W, 3)), 0, 255).astype(np.uint8)
    with pytest.raises(NoReferenceFound):
        detect_reference(rgb, 10.0)


def test_reference_over_the_lesion_mask_is_skipped() -> None:
    rgb, _ppm, (cx, cy) = _photo("sticker-10mm", 10.0, fitzpatrick=2, change="none", seed=77)
    yy, xx = np.mgrid[0:H, 0:W]
    lesion = (xx - cx) ** 2 + (yy - cy) ** 2 < 60 ** 2  # pretend the disc is the lesion
    with pytest.raises(NoReferenceFound):
        detect_reference(rgb, 10.0, lesion=lesion)


def test_bad_arguments() -> None:
    rgb = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(InputError):
        detect_reference(rgb, 0.0)
    with pytest.raises(InputError):
        detect_reference(np.zeros((10, 10, 3), np.uint8), 10.0)
    with pytest.raises(InputError):
        detect_reference(rgb, 10.0, lesion=np.zeros((5, 5), bool))


def test_far_reference_in_a_wide_shot_warns() -> None:
    cal = Calibration(px_per_mm=4.0, method="reference", confidence=0.9,
                      ellipse=Ellipse(100.0, 100.0, 48.5, 48.5, 0.0), reference_mm=24.26)
    # 1200 px at 4 px/mm = 300 mm wide; the lesion 100 mm away
    far = with_lesion_check(cal, (500.0, 100.0), (900, 1200))
    assert any("from the lesion in a wide shot" in w for w in far.warnings)
    assert far.confidence < cal.confidence
    near = with_lesion_check(cal, (250.0, 100.0), (900, 1200))  # 37.5 mm away
    assert near.warnings == ()
    close_up = Calibration(px_per_mm=20.0, method="reference", confidence=0.9,
                           ellipse=Ellipse(100.0, 100.0, 240.0, 240.0, 0.0))
    # 1200 px at 20 px/mm = 60 mm wide: not a wide shot, however far
    assert with_lesion_check(close_up, (1100.0, 800.0), (900, 1200)).warnings == ()


def test_ruler_line() -> None:
    cal = from_ruler_line((10.0, 20.0), (310.0, 420.0), 50.0)
    assert cal.method == "ruler"
    assert cal.px_per_mm == pytest.approx(500.0 / 50.0)
    assert cal.warnings == () and cal.ellipse is None
    short = from_ruler_line((0.0, 0.0), (30.0, 0.0), 3.0)
    assert short.px_per_mm == pytest.approx(10.0)
    assert short.warnings and short.confidence < 1.0
    with pytest.raises(InputError):
        from_ruler_line((0.0, 0.0), (2.0, 0.0), 1.0)
    with pytest.raises(InputError):
        from_ruler_line((0.0, 0.0), (200.0, 0.0), 0.0)


def test_metadata_only_when_trustworthy() -> None:
    phone_exif = {"XResolution": 72, "YResolution": 72, "FocalLength": 4.2,
                  "SubjectDistance": 0.15, "Make": "Phone"}
    assert from_metadata(phone_exif) is None
    assert from_metadata({}) is None
    cal = from_metadata({"pixel_spacing_mm": (0.05, 0.05)})
    assert cal is not None and cal.method == "metadata"
    assert cal.px_per_mm == pytest.approx(20.0)
    assert from_metadata({"pixel_spacing_mm": 0.1}) is not None
    assert from_metadata({"pixel_spacing_mm": (0.05, 0.08)}) is None  # not square
    assert from_metadata({"pixel_spacing_mm": "x"}) is None
    assert from_metadata({"pixel_spacing_mm": -1.0}) is None


def test_reference_table_is_the_issue_table() -> None:
    expected = {"us-1c": 19.05, "us-5c": 21.21, "us-10c": 17.91, "us-25c": 24.26,
                "eur-1": 23.25, "eur-2": 25.75, "eur-1c": 16.25,
                "uk-1p": 20.3, "uk-2p": 25.9, "gbp-1": 23.43}
    for name, mm in expected.items():
        assert reference_diameter(name) == mm
        assert REFERENCES[name].kind == "coin"
    assert reference_diameter("sticker-10mm") == 10.0
    assert reference_diameter("STICKER-12.5mm") == 12.5
    with pytest.raises(InputError, match="Unknown reference"):
        reference_diameter("us-50c")


def test_fit_ellipse_recovers_parameters() -> None:
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    a, b, ang = 40.0, 25.0, math.radians(30)
    x = 100 + a * np.cos(t) * math.cos(ang) - b * np.sin(t) * math.sin(ang)
    y = 80 + a * np.cos(t) * math.sin(ang) + b * np.sin(t) * math.cos(ang)
    e = fit_ellipse(x, y)
    assert e is not None
    assert (e.cx, e.cy) == pytest.approx((100, 80), abs=1e-6)
    assert (e.rx, e.ry) == pytest.approx((40, 25), abs=1e-6)
    assert e.angle_deg == pytest.approx(30, abs=1e-4)
    assert fit_ellipse([0, 1, 2], [0, 1, 2]) is None
