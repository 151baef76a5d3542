"""Thumbnails: reduced-size decoding, orientation, and the on-disk cache."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from derm_workstation.core.errors import ImageCorruptError, InputError
from derm_workstation.imaging import decode
from derm_workstation.imaging.decode import ImageRejected, inspect_image
from derm_workstation.imaging.thumbnails import ThumbnailCache, make_thumbnail


def px(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    """One RGB pixel as a tuple (typed for mypy)."""
    value = img.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def _photo(width: int, height: int, seed: int = 3) -> Image.Image:
    """A photo-like picture: smooth gradients, mild noise, a red block top-left."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    arr = np.stack(
        [120 + 60 * np.sin(x / 300), 100 + 50 * np.cos(y / 250), 90 + 0.01 * (x + y)], axis=-1
    )
    arr += rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    out = np.clip(arr, 0, 255).astype(np.uint8)
    out[: height // 5, : width // 5] = (230, 20, 20)
    return Image.fromarray(out)


def _orientation_exif(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


@pytest.fixture(scope="module")
def jpeg_12mp() -> bytes:
    buf = io.BytesIO()
    _photo(4000, 3000).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpeg_12mp_rotated() -> bytes:
    # Stored landscape, EXIF 6: displayed portrait 3000 x 4000, red block top-left.
    stored = _photo(3000, 4000).transpose(Image.Transpose.ROTATE_90)
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=90, exif=_orientation_exif(6))
    return buf.getvalue()


@pytest.fixture
def draft_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Records (requested size, resulting decode size) of every JPEG draft() call."""
    calls: list[tuple[tuple[int, int], tuple[int, int]]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):  # type: ignore[no-untyped-def]
        result = original(self, mode, size)
        calls.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


def test_thumbnail_of_4000x3000_fits_and_uses_reduced_decoding(
    jpeg_12mp_rotated: bytes, draft_spy: list[tuple[tuple[int, int], tuple[int, int]]]
) -> None:
    thumb = make_thumbnail(jpeg_12mp_rotated, 256)
    # decoded straight at 1/8 size by the DCT: 500 x 375, never the full 12 MP
    assert draft_spy == [((256, 192), (500, 375))]

    info = inspect_image(thumb)
    assert info.format == "JPEG"
    assert (info.width, info.height) == (192, 256)  # oriented: portrait
    assert info.exif_orientation == 1
    assert info.icc == "sRGB built-in"
    img = Image.open(io.BytesIO(thumb))
    assert "exif" not in img.info
    r, g, b = px(img.convert("RGB"), (10, 10))  # the red block is top-left
    assert r > 180 and g < 80 and b < 80
    r, g, b = px(img.convert("RGB"), (180, 245))
    assert not (r > 180 and g < 80)


def test_thumbnail_sizes_and_small_images(jpeg_12mp: bytes) -> None:
    for size in (64, 128, 512):
        img = Image.open(io.BytesIO(make_thumbnail(jpeg_12mp, size)))
        assert img.size == (size, size * 3 // 4)
    tiny = io.BytesIO()
    Image.new("RGB", (40, 30), "blue").save(tiny, "PNG")
    assert Image.open(io.BytesIO(make_thumbnail(tiny.getvalue(), 256))).size == (40, 30)
    with pytest.raises(ValueError):
        make_thumbnail(tiny.getvalue(), 0)
    with pytest.raises(ImageRejected):
        make_thumbnail(b"GIF89a" + b"\0" * 100)


def test_thumbnail_speed_vs_naive_full_decode(jpeg_12mp: bytes) -> None:
    """Measured and printed, not asserted (timings vary by machine)."""

    def naive() -> bytes:
        im = Image.open(io.BytesIO(jpeg_12mp)).convert("RGB")
        im = im.resize((256, 192), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        return buf.getvalue()

    def best(fn, n: int = 3) -> float:  # type: ignore[no-untyped-def]
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    ours = best(lambda: make_thumbnail(jpeg_12mp, 256))
    theirs = best(naive)
    print(
        f"\n12 MP JPEG -> 256 px thumbnail: make_thumbnail {ours * 1000:.1f} ms, "
        f"naive full decode + resize {theirs * 1000:.1f} ms, speed-up x{theirs / ours:.1f}"
    )


# ------------------------------------------------------------------------- cache


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def small_photo() -> bytes:
    buf = io.BytesIO()
    _photo(640, 480, seed=5).save(buf, "JPEG", quality=85, exif=_orientation_exif(8))
    return buf.getvalue()


def test_cache_round_trip(tmp_path: Path, small_photo: bytes) -> None:
    cache = ThumbnailCache(tmp_path / "thumbs")
    sha = _sha(small_photo)
    loads: list[int] = []

    def load() -> bytes:
        loads.append(1)
        return small_photo

    assert cache.get(sha, 128) is None
    first = cache.get_or_create(sha, 128, load)
    assert Image.open(io.BytesIO(first)).size == (96, 128)  # EXIF 8: portrait
    path = tmp_path / "thumbs" / "128" / sha[:2] / f"{sha}.jpg"
    assert path.read_bytes() == first
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left

    assert cache.get_or_create(sha, 128, load) == first
    assert cache.get(sha, 128) == first
    assert len(loads) == 1  # second time from disk

    other = cache.get_or_create(sha, 64, load)  # sizes are cached separately
    assert Image.open(io.BytesIO(other)).size == (48, 64)
    assert len(loads) == 2


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated write
        lambda b: b"",  # zero-length file
        lambda b: os.urandom(len(b)),  # garbage
        lambda b: b[:-2],  # lost EOI
    ],
)
def test_damaged_cache_file_is_regenerated(tmp_path: Path, small_photo: bytes, damage) -> None:  # type: ignore[no-untyped-def]
    cache = ThumbnailCache(tmp_path)
    sha = _sha(small_photo)
    good = cache.get_or_create(sha, 96, lambda: small_photo)
    path = cache.path_for(sha, 96)
    path.write_bytes(damage(good))

    assert cache.get(sha, 96) is None
    again = cache.get_or_create(sha, 96, lambda: small_photo)
    assert inspect_image(again).width == 72
    assert path.read_bytes() == again
    assert cache.get(sha, 96) == again


def test_cache_rejects_bad_ids_and_mismatched_bytes(tmp_path: Path, small_photo: bytes) -> None:
    cache = ThumbnailCache(tmp_path)
    with pytest.raises(InputError):
        cache.get("../../etc/passwd", 128)
    with pytest.raises(InputError):
        cache.get_or_create("A" * 64, 128, lambda: small_photo)
    with pytest.raises(ValueError):
        cache.get(_sha(small_photo), 0)
    with pytest.raises(ImageCorruptError):
        cache.get_or_create("0" * 64, 128, lambda: small_photo)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_rejected_photo_is_not_cached(tmp_path: Path) -> None:
    cache = ThumbnailCache(tmp_path)
    bad = b"\xff\xd8\xff\xe0" + b"\0" * 50
    with pytest.raises(ImageRejected):
        cache.get_or_create(_sha(bad), 128, lambda: bad)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_unwritable_cache_still_returns_thumbnail(tmp_path: Path, small_photo: bytes) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_bytes(b"x")
    cache = ThumbnailCache(blocker)  # mkdir under a regular file fails
    thumb = cache.get_or_create(_sha(small_photo), 64, lambda: small_photo)
    assert decode.jpeg_dimensions(thumb) == (48, 64)
