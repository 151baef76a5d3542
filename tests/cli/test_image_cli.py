"""``derm-workstation image info`` and ``image align``, run as real subprocesses on
generated files (every EXIF orientation, broken and hostile files, photo pairs)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from derm_workstation.imaging.synthetic import PhotoSpec, render_rgb
from tests.imaging.test_registration import follow_up, grid_rms, similarity

LIMIT_S = 10.0
INFO_KEYS = {"format", "width", "height", "stored_width", "stored_height", "exif_orientation",
             "icc", "sha256"}


def cli(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "derm_workstation", *map(str, args)],
                       capture_output=True, text=True, env=env, timeout=60)
    return r, time.perf_counter() - t0


def assert_rejected(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle.lower() in lines[0].lower(), lines[0]
    assert r.stdout == ""


def jpeg_with_orientation(orientation: int, size: tuple[int, int] = (60, 40)) -> bytes:
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, :, 0] = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :]
    arr[:10, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


# ------------------------------------------------------------------------ info


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8, 0, 9])
def test_info_every_exif_orientation(tmp_path: Path, orientation: int) -> None:
    data = jpeg_with_orientation(orientation)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    r, elapsed = cli("image", "info", path, "--json")
    assert r.returncode == 0, r.stderr
    assert elapsed < LIMIT_S
    info = json.loads(r.stdout)
    assert info.keys() >= INFO_KEYS
    turned = orientation in (5, 6, 7, 8)
    assert (info["width"], info["height"]) == ((40, 60) if turned else (60, 40))
    assert (info["stored_width"], info["stored_height"]) == (60, 40)
    assert info["exif_orientation"] == (orientation if 1 <= orientation <= 8 else 1)
    assert info["format"] == "JPEG" and info["icc"] is None
    assert info["sha256"] == hashlib.sha256(data).hexdigest()


def test_info_icc_description_and_text_output(tmp_path: Path) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path / "profiled.png"
    Image.new("RGB", (32, 24), (180, 120, 90)).save(path, icc_profile=srgb)
    r, _ = cli("image", "info", path, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "PNG" and info["icc"] == "sRGB built-in"
    r, _ = cli("image", "info", path)
    assert r.returncode == 0 and "width: 32" in r.stdout and "icc: sRGB built-in" in r.stdout


def _png_bomb() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 100_000)) + chunk(b"IEND", b""))


def _photo_jpeg() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("garbage.jpg", np.random.default_rng(5).bytes(5000), "not an image format"),
    ("truncated.jpg", _photo_jpeg()[:20_000], "truncated"),
    ("empty.jpg", b"", "empty"),
    ("bomb.png", _png_bomb(), "too large to open safely"),
    ("animation.gif", b"GIF89a" + bytes(50), "GIF files are not accepted"),
])
def test_info_rejects_broken_and_hostile_files(tmp_path: Path, name: str, content: bytes,
                                               needle: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    r, elapsed = cli("image", "info", path, "--json")
    assert_rejected(r, needle)
    assert elapsed < LIMIT_S


def test_info_rejects_a_directory_a_missing_file_and_a_pipe(tmp_path: Path) -> None:
    r, _ = cli("image", "info", tmp_path, "--json")
    assert_rejected(r, "is a folder")
    r, _ = cli("image", "info", tmp_path / "nothere.jpg", "--json")
    assert_rejected(r, "nothere.jpg cannot be read (it does not exist)")
    if hasattr(os, "mkfifo"):  # opening a FIFO would block forever
        fifo = tmp_path / "pipe.jpg"
        os.mkfifo(fifo)
        r, elapsed = cli("image", "info", fifo, "--json")
        assert_rejected(r, "not a regular file")
        assert elapsed < LIMIT_S


def test_info_gives_up_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(_photo_jpeg())
    r, _ = cli("image", "info", path, "--json", "--timeout", "0.001")
    assert_rejected(r, "took longer than 0.001 s")
    r, _ = cli("image", "info", path, "--timeout", "0")
    assert_rejected(r, "--timeout")


# ------------------------------------------------------------------------ align

W, H = 1000, 750


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """Base JPEG, follow-up JPEG (turned 90 degrees, zoomed, stored with EXIF orientation 6
    so its displayed pixels differ from its stored ones), and the true matrix."""
    d = tmp_path_factory.mktemp("pair")
    base, _, _ = render_rgb(PhotoSpec(seed=21, kind="eczema", fitzpatrick=4, severity=0.5,
                                      width=W, height=H))
    true = similarity(90.0, 1.15, shift=(20.0, -10.0))
    follow = follow_up(base, true, gain=0.9, noise=2.0)
    Image.fromarray(base).save(d / "base.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(follow).transpose(Image.Transpose.ROTATE_90)
    stored.save(d / "follow.jpg", quality=90, exif=exif.tobytes())
    return d / "base.jpg", d / "follow.jpg", true


def test_align_json(pair: tuple[Path, Path, np.ndarray]) -> None:
    base, follow, true = pair
    r, elapsed = cli("image", "align", base, follow, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"matrix", "model", "inliers", "matches", "confidence", "rms_px"}
    assert out["model"] == "similarity"
    assert grid_rms(np.asarray(out["matrix"]), true) < 1.0
    assert out["inliers"] >= 50 and out["confidence"] > 0.8
    assert elapsed < LIMIT_S
    r, _ = cli("image", "align", base, follow, "--model", "affine")
    assert r.returncode == 0, r.stderr
    assert "model: affine" in r.stdout and "confidence:" in r.stdout
    assert "matrix (follow-up -> base pixels):" in r.stdout


def test_align_failures_exit_2_with_a_reason(tmp_path: Path,
                                             pair: tuple[Path, Path, np.ndarray]) -> None:
    base, _, _ = pair
    unrelated = tmp_path / "other.jpg"
    rgb, _, _ = render_rgb(PhotoSpec(seed=5, kind="acne", fitzpatrick=2, severity=0.5,
                                     width=800, height=600))
    Image.fromarray(rgb).save(unrelated, quality=90)
    r, _ = cli("image", "align", base, unrelated, "--json")
    assert_rejected(r, "may not show the same area")
    r, _ = cli("image", "align", base, tmp_path / "missing.jpg")
    assert_rejected(r, "Follow-up photo missing.jpg: The file missing.jpg cannot be read")
    r, _ = cli("image", "align", base, base, "--model", "perspective")
    assert_rejected(r, "invalid choice")
