"""``derm-workstation analyze …`` run as a real subprocess on real image files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from derm_workstation.imaging.synthetic import PhotoSpec, render_photo
from tests.cli.test_cli import assert_clean_error, cli

PPM = 9.0
COIN_MM = 24.26


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def _main(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))


@pytest.fixture(scope="module")
def coin_photo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    spec = PhotoSpec(seed=21, kind="pigmented", fitzpatrick=3, severity=0.5, width=720,
                     height=540, px_per_mm=PPM, with_reference=True, reference_mm=COIN_MM,
                     reference_name="US 25¢")
    photo = render_photo(spec)
    path = tmp_path_factory.mktemp("analyze") / "coin.jpg"
    path.write_bytes(photo.jpeg)
    return path, _main(photo.lesion_mask)


def _read_mask(path: Path) -> np.ndarray:
    im = Image.open(path)
    assert im.format == "PNG" and im.mode == "L"
    a = np.asarray(im)
    assert set(np.unique(a)) <= {0, 255}
    return a == 255


def test_segment_writes_a_mask_of_the_photo_size(coin_photo: tuple[Path, np.ndarray],
                                                 tmp_path: Path) -> None:
    img, truth = coin_photo
    out = tmp_path / "mask.png"
    r = cli("analyze", "segment", str(img), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["out"] == str(out) and data["method"] == "automatic"
    assert (data["width"], data["height"]) == (720, 540)
    assert len(data["polygon"]) >= 8 and 0 <= data["confidence"] <= 1
    mask = _read_mask(out)
    assert mask.shape == (540, 720)
    assert data["area_px"] == int(mask.sum())
    assert _jaccard(mask, truth) >= 0.72


def test_segment_with_a_seed_and_plain_output(coin_photo: tuple[Path, np.ndarray],
                                              tmp_path: Path) -> None:
    img, truth = coin_photo
    d = ndimage.distance_transform_edt(truth)
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    out = tmp_path / "seeded.png"
    r = cli("analyze", "segment", str(img), "--out", str(out), "--seed", f"{x},{y}")
    assert r.returncode == 0, r.stderr
    assert "seed" in r.stdout and str(out) in r.stdout
    assert _jaccard(_read_mask(out), truth) >= 0.72


def test_segment_follows_exif_orientation(tmp_path: Path) -> None:
    spec = PhotoSpec(seed=22, kind="pigmented", fitzpatrick=2, severity=0.5, width=480,
                     height=360, px_per_mm=12.0)
    photo = render_photo(spec)
    stored = Image.open(io.BytesIO(photo.jpeg))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise
    path = tmp_path / "rotated.jpg"
    stored.save(path, format="JPEG", quality=92, exif=exif.tobytes())
    out = tmp_path / "rotated-mask.png"
    r = cli("analyze", "segment", str(path), "--out", str(out))
    assert r.returncode == 0, r.stderr
    mask = _read_mask(out)
    assert mask.shape == (480, 360)  # the displayed (portrait) size
    shown_truth = np.rot90(_main(photo.lesion_mask), k=-1)  # 90° clockwise
    assert _jaccard(mask, shown_truth) >= 0.72


def test_calibrate_json(coin_photo: tuple[Path, np.ndarray]) -> None:
    img, _truth = coin_photo
    r = cli("analyze", "calibrate", str(img), "--reference", "us-25c", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["method"] == "reference" and data["reference"] == "us-25c"
    assert data["reference_mm"] == COIN_MM
    assert abs(data["px_per_mm"] - PPM) / PPM <= 0.02
    assert set(data["ellipse"]) == {"cx", "cy", "rx", "ry", "angle"}
    assert data["ellipse"]["rx"] == pytest.approx(COIN_MM / 2 * PPM, rel=0.02)
    assert 0 < data["confidence"] <= 1 and data["warnings"] == []
    # the same coin given as a custom diameter
    r2 = cli("analyze", "calibrate", str(img), "--reference-mm", str(COIN_MM), "--json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["px_per_mm"] == pytest.approx(data["px_per_mm"], rel=1e-6)


def test_measure_uncalibrated_then_calibrated(coin_photo: tuple[Path, np.ndarray],
                                             tmp_path: Path) -> None:
    img, truth = coin_photo
    mask_path = tmp_path / "truth.png"
    Image.fromarray(truth.astype(np.uint8) * 255).save(mask_path)
    r = cli("analyze", "measure", str(img), "--mask", str(mask_path), "--json")
    assert r.returncode == 0, r.stderr
    raw = json.loads(r.stdout)
    assert raw["calibrated"] is False and raw["px_per_mm"] is None
    assert raw["area_mm2"] is None and raw["max_diameter_mm"] is None
    assert raw["area_px"] == pytest.approx(float(truth.sum()))
    assert raw["calibration"] is None and raw["tds"] is None

    r = cli("analyze", "measure", str(img), "--mask", str(mask_path), "--px-per-mm", "9",
            "--json")
    manual = json.loads(r.stdout)
    assert manual["calibrated"] is True
    assert manual["area_mm2"] == pytest.approx(raw["area_px"] / 81.0, rel=1e-3)
    assert manual["calibration"] == {"method": "manual", "px_per_mm": 9.0}

    r = cli("analyze", "measure", str(img), "--mask", str(mask_path), "--auto-calibrate",
            "--reference", "us-25c", "--json")
    assert r.returncode == 0, r.stderr
    auto = json.loads(r.stdout)
    assert auto["calibrated"] is True and auto["calibration"]["method"] == "reference"
    assert abs(auto["px_per_mm"] - PPM) / PPM <= 0.02
    true_mm2 = float(truth.sum()) / PPM ** 2
    assert abs(auto["area_mm2"] - true_mm2) / true_mm2 <= 0.04
    for key in ("perimeter_mm", "max_diameter_mm", "min_diameter_mm", "asymmetry",
                "border_irregularity", "colours"):
        assert auto[key] is not None

    r = cli("analyze", "measure", str(img), "--mask", str(mask_path), "--px-per-mm", "9")
    assert r.returncode == 0 and "mm²" in r.stdout and "longest diameter" in r.stdout


def test_measure_dermoscopic_gives_the_tds(tmp_path: Path) -> None:
    spec = PhotoSpec(seed=23, kind="pigmented", fitzpatrick=2, severity=0.8, width=480,
                     height=360, px_per_mm=20.0, dermoscopic=True)
    photo = render_photo(spec)
    img = tmp_path / "derm.jpg"
    img.write_bytes(photo.jpeg)
    mask_path = tmp_path / "derm-mask.png"
    Image.fromarray(_main(photo.lesion_mask).astype(np.uint8) * 255).save(mask_path)
    r = cli("analyze", "measure", str(img), "--mask", str(mask_path), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["dermoscopic"] is True  # the round field was detected
    tds = data["tds"]
    assert set(tds) >= {"tds", "a", "b", "c", "d", "note"}
    assert "not a diagnosis" in tds["note"]
    assert tds["tds"] == pytest.approx(1.3 * tds["a"] + 0.1 * tds["b"] + 0.5 * tds["c"]
                                       + 0.5 * tds["d"], abs=0.01)


def test_errors_are_one_line_exit_2(coin_photo: tuple[Path, np.ndarray],
                                    tmp_path: Path) -> None:
    img, _truth = coin_photo
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    assert_clean_error(cli("analyze", "segment", str(text), "--out", str(tmp_path / "m.png")),
                       2, "not an image")
    assert_clean_error(cli("analyze", "segment", str(img), "--out",
                           str(tmp_path / "missing" / "m.png")), 2, "does not exist")
    assert_clean_error(cli("analyze", "segment", str(img), "--out", str(tmp_path / "m.png"),
                           "--seed", "5000,10"), 2, "outside the image")
    assert_clean_error(cli("analyze", "segment", str(img), "--out", str(tmp_path / "m.png"),
                           "--seed", "a,b"), 2, "--seed")
    small = tmp_path / "small.png"
    Image.new("L", (100, 80), 255).save(small)
    assert_clean_error(cli("analyze", "measure", str(img), "--mask", str(small)), 2,
                       "same size")
    assert_clean_error(cli("analyze", "calibrate", str(img), "--reference", "us-3c"), 2,
                       "Unknown reference")
    assert_clean_error(cli("analyze", "measure", str(img), "--mask", str(small),
                           "--reference", "us-25c"), 2, "--auto-calibrate")


def test_no_reference_found_is_a_clear_error(tmp_path: Path) -> None:
    spec = PhotoSpec(seed=24, kind="pigmented", fitzpatrick=4, severity=0.5, width=480,
                     height=360, px_per_mm=10.0)
    img = tmp_path / "plain.jpg"
    img.write_bytes(render_photo(spec).jpeg)
    r = cli("analyze", "calibrate", str(img), "--reference", "eur-1", "--json")
    assert_clean_error(r, 2, "No calibration reference was found")
    assert r.stdout == ""


def test_help_lists_the_reference_names() -> None:
    r = cli("analyze", "calibrate", "--help")
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    for name in ("us-1c", "us-5c", "us-10c", "us-25c", "eur-1c", "eur-1", "eur-2",
                 "uk-1p", "uk-2p", "gbp-1", "sticker-10mm"):
        assert name in flat
