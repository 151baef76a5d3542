"""The synthetic photo renderer: determinism, ground truth, encoding and realism checks."""

from __future__ import annotations

import io
import itertools
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from derm_workstation.imaging.synthetic import (
    KINDS,
    SKIN_TONES,
    PhotoSpec,
    render_photo,
    render_rgb,
)

SMALL = {"width": 400, "height": 300}


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def _means(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    px = rgb.reshape(-1, 3).astype(np.float64)
    m = mask.reshape(-1)
    return px[m].mean(axis=0), px[~m].mean(axis=0)


def test_same_spec_gives_byte_identical_jpeg() -> None:
    spec = PhotoSpec(
        seed=7,
        kind="psoriasis",
        fitzpatrick=4,
        severity=0.6,
        with_reference=True,
        px_per_mm=6.0,
        **SMALL,
    )
    taken = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    a = render_photo(spec, taken)
    b = render_photo(spec, taken)
    assert a.jpeg == b.jpeg
    assert np.array_equal(a.lesion_mask, b.lesion_mask)
    assert a.reference == b.reference
    other = render_photo(
        PhotoSpec(
            seed=8,
            kind="psoriasis",
            fitzpatrick=4,
            severity=0.6,
            with_reference=True,
            px_per_mm=6.0,
            **SMALL,
        ),
        taken,
    )
    assert other.jpeg != a.jpeg


def test_jpeg_decodes_to_declared_size_with_camera_exif_and_no_gps() -> None:
    spec = PhotoSpec(seed=3, kind="pigmented", fitzpatrick=2, severity=0.5, **SMALL)
    taken = datetime(2026, 3, 4, 10, 15, 30, tzinfo=timezone(timedelta(hours=2)))
    photo = render_photo(spec, taken)
    assert (photo.width, photo.height) == (400, 300)
    with Image.open(io.BytesIO(photo.jpeg)) as im:
        assert im.format == "JPEG"
        assert im.size == (400, 300)
        assert im.mode == "RGB"
        exif = im.getexif()
    assert exif[0x010F] == "DermDemo"
    assert exif[0x0110] == "Synthetic Camera"
    assert 0x8825 not in exif  # GPS IFD pointer
    assert not exif.get_ifd(0x8825)
    sub = exif.get_ifd(0x8769)
    assert sub[0x9003] == "2026:03:04 08:15:30"  # DateTimeOriginal, in UTC
    assert sub[0x9011] == "+00:00"


def test_no_capture_time_without_taken_at() -> None:
    photo = render_photo(PhotoSpec(seed=3, kind="acne", fitzpatrick=3, severity=0.5, **SMALL))
    with Image.open(io.BytesIO(photo.jpeg)) as im:
        exif = im.getexif()
    assert exif[0x010F] == "DermDemo"
    assert 0x9003 not in exif.get_ifd(0x8769)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fitzpatrick", [1, 6])
def test_mask_matches_drawn_lesion(kind: str, fitzpatrick: int) -> None:
    ppm = 3.0 if kind == "overview" else 6.0
    spec = PhotoSpec(
        seed=21, kind=kind, fitzpatrick=fitzpatrick, severity=0.7, px_per_mm=ppm, **SMALL
    )
    rgb, mask, ref = render_rgb(spec)
    assert rgb.dtype == np.uint8 and rgb.shape == (300, 400, 3)
    assert mask.dtype == bool and mask.shape == (300, 400)
    assert ref is None
    frac = mask.mean()
    assert 0.0005 < frac < 0.9
    inside, outside = _means(rgb, mask)
    assert np.linalg.norm(inside - outside) > 8.0, (inside, outside)


def test_pigmented_lesion_is_darker_and_inflammation_redder() -> None:
    rgb, mask, _ = render_rgb(
        PhotoSpec(seed=5, kind="pigmented", fitzpatrick=2, severity=0.6, px_per_mm=8.0, **SMALL)
    )
    assert _luma(rgb)[mask].mean() < _luma(rgb)[~mask].mean() - 30
    for kind in ("psoriasis", "eczema"):
        rgb, mask, _ = render_rgb(
            PhotoSpec(seed=5, kind=kind, fitzpatrick=2, severity=0.6, px_per_mm=5.0, **SMALL)
        )
        inside, outside = _means(rgb, mask)
        assert inside[0] - inside[1] > outside[0] - outside[1] + 10  # red over green


def test_erythema_on_dark_skin_is_visible_and_duskier() -> None:
    ratio = {}
    for fitz in (1, 6):
        rgb, mask, _ = render_rgb(PhotoSpec(seed=9, kind="eczema", fitzpatrick=fitz,
                                            severity=0.8, px_per_mm=5.0, **SMALL))
        inside, outside = _means(rgb, mask)
        assert np.linalg.norm(inside - outside) > 8.0
        ratio[fitz] = inside / outside
        assert _luma(rgb)[mask].mean() < _luma(rgb)[~mask].mean()  # not paler
    # fair skin: red stays, green drops (pink-red); dark skin: red drops too (dusky brown)
    assert ratio[1][0] > 0.85 and ratio[1][1] < ratio[1][0] - 0.1
    assert ratio[6][0] < ratio[1][0] - 0.05


def test_severity_grows_the_lesion() -> None:
    for kind in ("pigmented", "psoriasis", "eczema", "acne"):
        areas = [
            render_rgb(
                PhotoSpec(seed=4, kind=kind, fitzpatrick=3, severity=s, px_per_mm=4.0, **SMALL)
            )[1].sum()
            for s in (0.1, 0.9)
        ]
        assert areas[1] > areas[0], kind


@pytest.mark.parametrize(
    ("name", "mm"),
    [("sticker-10mm", 10.0), ("US 25¢", 24.26), ("€1", 23.25), ("UK 1p", 20.3)],
)
@pytest.mark.parametrize("kind", ["pigmented", "psoriasis", "eczema", "acne"])
def test_reference_has_true_radius_and_keeps_clear_of_lesion(
    kind: str, name: str, mm: float
) -> None:
    ppm = 5.0
    spec = PhotoSpec(
        seed=11,
        kind=kind,
        fitzpatrick=5,
        severity=0.5,
        px_per_mm=ppm,
        with_reference=True,
        reference_mm=mm,
        reference_name=name,
        **SMALL,
    )
    rgb, mask, ref = render_rgb(spec)
    assert ref is not None
    assert ref.name == name and ref.diameter_mm == mm
    assert ref.radius_px == pytest.approx(mm / 2 * ppm)
    assert ref.radius_px <= ref.cx <= 400 - ref.radius_px
    assert ref.radius_px <= ref.cy <= 300 - ref.radius_px
    yy, xx = np.mgrid[0:300, 0:400]
    dist = np.hypot(xx + 0.5 - ref.cx, yy + 0.5 - ref.cy)
    assert not (mask & (dist <= ref.radius_px)).any()
    disc = dist < 0.6 * ref.radius_px
    ring = (dist > ref.radius_px + 3) & (dist < 2.5 * ref.radius_px)
    disc_rgb = rgb[disc].astype(np.float64)
    if name.startswith("sticker"):  # a white paper disc on (here dark) skin
        assert _luma(disc_rgb).mean() > _luma(rgb[ring & ~mask]).mean() + 60
    else:  # metal: a flat, rather neutral disc that differs from the skin around it
        assert np.abs(disc_rgb.mean(axis=0) - rgb[ring & ~mask].mean(axis=0)).max() > 20


def test_reference_pixel_radius_follows_scale() -> None:
    for ppm in (4.0, 8.0):
        _, _, ref = render_rgb(
            PhotoSpec(
                seed=2,
                kind="pigmented",
                fitzpatrick=2,
                severity=0.3,
                px_per_mm=ppm,
                with_reference=True,
                **SMALL,
            )
        )
        assert ref is not None and ref.radius_px == pytest.approx(5.0 * ppm)


def test_fitzpatrick_tones_get_darker() -> None:
    def lum(rgb: tuple[int, int, int]) -> float:
        return float(_luma(np.array(rgb, dtype=np.float64)))

    tones = [lum(SKIN_TONES[k]) for k in range(1, 7)]
    assert all(a > b for a, b in itertools.pairwise(tones))
    rendered = []
    for fitz in range(1, 7):
        rgb, mask, _ = render_rgb(
            PhotoSpec(
                seed=1, kind="pigmented", fitzpatrick=fitz, severity=0.2, px_per_mm=5.0, **SMALL
            )
        )
        rendered.append(float(np.median(_luma(rgb)[~mask])))
    assert all(a > b for a, b in itertools.pairwise(rendered)), rendered


def test_dermoscopic_field_is_round_and_dark_outside() -> None:
    rgb, mask, _ = render_rgb(
        PhotoSpec(
            seed=6,
            kind="pigmented",
            fitzpatrick=3,
            severity=0.7,
            px_per_mm=14.0,
            dermoscopic=True,
            **SMALL,
        )
    )
    corners = np.concatenate([rgb[:15, :15], rgb[:15, -15:], rgb[-15:, :15], rgb[-15:, -15:]])
    assert corners.mean() < 20
    yy, xx = np.mgrid[0:300, 0:400]
    field = np.hypot(xx - 200, yy - 150) < 120
    assert rgb[field & ~mask].mean() > 60
    assert mask.any() and not mask[:15, :15].any()


def test_overview_has_several_small_lesions() -> None:
    _, mask, _ = render_rgb(
        PhotoSpec(seed=12, kind="overview", fitzpatrick=2, severity=0.4, px_per_mm=2.0, **SMALL)
    )
    labels, n = ndimage.label(mask)
    assert n >= 3
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.max() < 0.02 * mask.size


def test_invalid_specs_are_rejected() -> None:
    with pytest.raises(ValueError):
        PhotoSpec(seed=1, kind="wart", fitzpatrick=3, severity=0.5)
    with pytest.raises(ValueError):
        PhotoSpec(seed=1, kind="acne", fitzpatrick=7, severity=0.5)
    with pytest.raises(ValueError):
        PhotoSpec(seed=1, kind="acne", fitzpatrick=3, severity=1.5)


def test_full_size_render_is_repeatable() -> None:
    """A full-size photo renders to the same pixels every time (its speed is measured in
    benchmarks/, not asserted here: the machine is shared)."""
    spec = PhotoSpec(
        seed=99, kind="eczema", fitzpatrick=4, severity=0.8, px_per_mm=10.0, with_reference=True
    )
    a, b = render_photo(spec), render_photo(spec)
    assert a.lesion_mask.shape == (900, 1200)
    assert a.lesion_mask.any() and (a.lesion_mask == b.lesion_mask).all()
    assert a.jpeg == b.jpeg
