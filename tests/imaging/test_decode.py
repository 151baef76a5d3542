"""The safe decoding entry point: allow-list, limits, truncation, orientation, ICC, EXIF.

Every image here is generated in the test (Pillow/numpy/struct); no data files.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from derm_workstation.core.errors import InputError
from derm_workstation.imaging import decode
from derm_workstation.imaging.decode import (
    ALLOWED_FORMATS,
    HEIF_SUPPORTED,
    MAX_PIXELS,
    ImageInfo,
    ImageRejected,
    decode_image,
    encode_jpeg,
    inspect_file,
    inspect_image,
    strip_identifying_metadata,
)
from derm_workstation.imaging.probe import probe_bytes

# ----------------------------------------------------------------------- helpers


def px(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    """One RGB pixel as a tuple (typed for mypy)."""
    value = img.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def raw_png(
    width: int, height: int, idat: bytes, *, depth: int = 8, color: int = 2, interlace: int = 0
) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def make_rgb_icc(
    desc: str = "Adobe RGB (1998)-like test profile",
    gamma: float = 563 / 256,
    red: tuple[float, float, float] = (0.60974, 0.31111, 0.01947),
    green: tuple[float, float, float] = (0.20528, 0.62567, 0.06087),
    blue: tuple[float, float, float] = (0.14919, 0.06322, 0.74457),
) -> bytes:
    """A minimal ICC v2 matrix/TRC RGB display profile (default: Adobe RGB primaries)."""
    d = desc.encode("ascii") + b"\0"
    trc = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = {
        b"desc": b"desc\0\0\0\0" + struct.pack(">I", len(d)) + d + b"\0" * 78,
        b"wtpt": b"XYZ \0\0\0\0" + _s15(0.9642) + _s15(1.0) + _s15(0.8249),
        b"rXYZ": b"XYZ \0\0\0\0" + b"".join(map(_s15, red)),
        b"gXYZ": b"XYZ \0\0\0\0" + b"".join(map(_s15, green)),
        b"bXYZ": b"XYZ \0\0\0\0" + b"".join(map(_s15, blue)),
        b"rTRC": trc,
        b"gTRC": trc,
        b"bTRC": trc,
        b"cprt": b"text\0\0\0\0" + b"No copyright, test data\0",
    }
    table_len = 4 + 12 * len(tags)
    table = struct.pack(">I", len(tags))
    body = b""
    for sig, data in tags.items():
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", 128 + table_len + len(body), len(data))
        body += data
    size = 128 + table_len + len(body)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + b"\0" * 28
        + _s15(0.9642)
        + _s15(1.0)
        + _s15(0.8249)
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + table + body


def exif_bytes(**tags: object) -> bytes:
    exif = Image.Exif()
    for key, value in tags.items():
        exif[int(key.lstrip("t"), 16)] = value
    return exif.tobytes()


def orientation_exif(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


# 3 x 2 grid of 16-px blocks, all different colours: no symmetry survives any flip/turn.
BLOCK_COLOURS = [
    [(220, 30, 30), (30, 200, 40), (40, 60, 220)],
    [(240, 220, 40), (200, 40, 200), (30, 210, 210)],
]

ALL_COLOURS = [colour for row in BLOCK_COLOURS for colour in row]


def displayed_reference() -> Image.Image:
    arr = np.zeros((32, 48, 3), np.uint8)
    for r, row in enumerate(BLOCK_COLOURS):
        for c, colour in enumerate(row):
            arr[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = colour
    return Image.fromarray(arr)


# How to store the picture so that applying EXIF orientation N displays the reference.
STORE_FOR = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def stored_for(orientation: int) -> Image.Image:
    ref = displayed_reference()
    op = STORE_FOR[orientation]
    return ref if op is None else ref.transpose(op)


def block_centres(img: Image.Image) -> list[tuple[int, ...]]:
    return [px(img, (c * 16 + 8, r * 16 + 8)) for r in range(2) for c in range(3)]


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:300, 0:400]
    arr = np.stack([x * 0.6, y * 0.8, (x + y) * 0.3], axis=-1) + rng.normal(0, 8, (300, 400, 3))
    return encode(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), "JPEG", quality=90)


@pytest.fixture(scope="module")
def photo_png() -> bytes:
    rng = np.random.default_rng(8)
    arr = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    return encode(Image.fromarray(arr), "PNG")


# -------------------------------------------------------------------- basic API


@pytest.mark.parametrize(
    ("fmt", "kw"),
    [
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("PNG", {"optimize": True}),
        ("WEBP", {}),
        ("WEBP", {"lossless": True}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("TIFF", {"compression": "tiff_adobe_deflate"}),
        ("TIFF", {"compression": "jpeg"}),
    ],
)
def test_allowed_formats_inspect_and_decode(fmt: str, kw: dict[str, object]) -> None:
    data = encode(displayed_reference().resize((96, 64)), fmt, **kw)
    info = inspect_image(data)
    assert isinstance(info, ImageInfo)
    assert (info.format, info.width, info.height) == (fmt, 96, 64)
    assert (info.stored_width, info.stored_height, info.exif_orientation) == (96, 64, 1)
    assert info.content_type == ALLOWED_FORMATS[fmt]
    assert len(info.sha256) == 64
    assert info.icc is None and info.taken_at is None and info.device is None
    js = info.as_json()
    for key in ("format", "width", "height", "stored_width", "stored_height"):
        assert js[key] == getattr(info, key)
    assert {"exif_orientation", "icc", "sha256"} <= js.keys()
    img = decode_image(data)
    assert (img.mode, img.size, img.info) == ("RGB", (96, 64), {})
    assert probe_bytes(data).content_type == ALLOWED_FORMATS[fmt]


def test_rejections_are_input_errors_with_exit_code_2() -> None:
    with pytest.raises(ImageRejected) as err:
        inspect_image(b"")
    assert isinstance(err.value, InputError)
    assert err.value.exit_code == 2
    assert err.value.code == "empty"
    assert err.value.reason == str(err.value) == err.value.message
    assert err.value.reason.endswith(".")


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda im: encode(im, "GIF"), "GIF"),
        (lambda im: encode(im, "BMP"), "BMP"),
        (lambda im: encode(im, "PDF"), "PDF"),
        (lambda im: encode(im, "ICO"), "ICO"),
        (lambda im: encode(im, "JPEG2000"), "JPEG 2000"),
        (lambda im: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (lambda im: b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "HTML"),
        (lambda im: b"\0" * 128 + b"DICM" + b"\0" * 64, "DICOM"),
        (lambda im: encode(im, "AVIF"), "AVIF"),
    ],
)
def test_unsupported_formats_are_rejected_by_name(make, name: str) -> None:  # type: ignore[no-untyped-def]
    data = make(displayed_reference())
    for fn in (inspect_image, decode_image, probe_bytes):
        with pytest.raises(ImageRejected) as err:
            fn(data)
        assert err.value.code == "unsupported"
        assert name in err.value.reason
        assert "not accepted" in err.value.reason


def test_unknown_bytes_and_zero_size() -> None:
    with pytest.raises(ImageRejected, match="empty") as err:
        decode_image(b"")
    assert err.value.code == "empty"
    with pytest.raises(ImageRejected, match="not an image format") as err:
        inspect_image(b"hello, this is plainly text and not a photo at all")
    assert err.value.code == "unknown_format"


def test_heic_support_or_clear_reason() -> None:
    if HEIF_SUPPORTED:
        exif = orientation_exif(6)
        data = encode(stored_for(6), "HEIF", quality=95, exif=exif)
        info = inspect_image(data)
        assert info.format == "HEIF" and info.content_type == "image/heic"
        # libheif applies the rotation itself; the EXIF tag is reset to 1.
        assert (info.width, info.height, info.exif_orientation) == (48, 32, 1)
        img = decode_image(data)
        assert img.size == (48, 32)
        for got, want in zip(block_centres(img), ALL_COLOURS, strict=True):
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 40
        for cut in (40, len(data) // 2, len(data) - 3):
            with pytest.raises(ImageRejected, match="truncated"):
                inspect_image(data[:cut])
    else:
        fake = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64
        with pytest.raises(ImageRejected, match="convert the photo to JPEG"):
            inspect_image(fake)


# ------------------------------------------------------------------ orientation


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_every_exif_orientation_displays_the_same_picture(orientation: int, fmt: str) -> None:
    stored = stored_for(orientation)
    kw: dict[str, object] = {"exif": orientation_exif(orientation)}
    if fmt == "JPEG":
        kw.update(quality=95, subsampling=0)
    data = encode(stored, fmt, **kw)

    info = inspect_image(data)
    assert info.exif_orientation == orientation
    assert (info.stored_width, info.stored_height) == stored.size
    assert (info.width, info.height) == (48, 32)  # swapped back for 5..8
    if orientation >= 5:
        assert stored.size == (32, 48)

    img = decode_image(data)
    assert img.size == (48, 32)
    if fmt == "PNG":  # lossless: every pixel identical to the reference
        assert img.tobytes() == displayed_reference().tobytes()
    else:
        for got, want in zip(block_centres(img), ALL_COLOURS, strict=True):
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 8


@pytest.mark.parametrize("orientation", [2, 6, 7])
@pytest.mark.parametrize("fmt", ["TIFF", "TIFF-LZW", "WEBP"])
def test_orientation_in_tiff_and_webp(fmt: str, orientation: int) -> None:
    stored = stored_for(orientation)
    if fmt == "TIFF":
        data = encode(stored, "TIFF", tiffinfo={0x0112: orientation})
    elif fmt == "TIFF-LZW":
        data = encode(stored, "TIFF", tiffinfo={0x0112: orientation}, compression="tiff_lzw")
    else:
        data = encode(stored, "WEBP", lossless=True, exif=orientation_exif(orientation))
    info = inspect_image(data)
    assert (info.exif_orientation, info.width, info.height) == (orientation, 48, 32)
    assert (info.stored_width, info.stored_height) == stored.size
    assert decode_image(data).tobytes() == displayed_reference().tobytes()
    assert decode_image(data, max_size=24).size == (24, 16)


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_invalid_orientation_values_count_as_1(value: int) -> None:
    data = encode(displayed_reference(), "PNG", exif=orientation_exif(value))
    info = inspect_image(data)
    assert (info.exif_orientation, info.width, info.height) == (1, 48, 32)
    assert decode_image(data).tobytes() == displayed_reference().tobytes()


def test_orientation_with_max_size_and_draft() -> None:
    big = stored_for(8).resize((320, 480), Image.Resampling.NEAREST)
    data = encode(big, "JPEG", quality=95, exif=orientation_exif(8))
    img = decode_image(data, max_size=60)
    assert img.size == (60, 40)
    small_ref = displayed_reference().resize((60, 40), Image.Resampling.NEAREST)
    diff = np.abs(np.asarray(img, np.int16) - np.asarray(small_ref, np.int16))
    assert np.median(diff) < 10


# -------------------------------------------------------------------------- ICC


def test_embedded_adobe_rgb_profile_is_converted_to_srgb() -> None:
    icc = make_rgb_icc()
    src = Image.new("RGB", (32, 32), (100, 150, 100))
    data = encode(src, "PNG", icc_profile=icc)

    info = inspect_image(data)
    assert info.icc == "Adobe RGB (1998)-like test profile"

    img = decode_image(data)
    assert "icc_profile" not in img.info  # the result is plain sRGB, no foreign profile
    got = px(img, (5, 5))
    converted = ImageCms.profileToProfile(
        src,
        ImageCms.ImageCmsProfile(io.BytesIO(icc)),
        ImageCms.createProfile("sRGB"),
        outputMode="RGB",
    )
    assert converted is not None
    expected = px(converted, (5, 5))
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 2
    # Adobe RGB's green is more saturated than sRGB's: the same numbers mean a greener
    # colour, which in sRGB needs a larger green-red gap.
    assert got != (100, 150, 100)
    assert got[1] - got[0] > 150 - 100 + 20

    # Same with a JPEG (draft path) and with max_size.
    jpeg = encode(src, "JPEG", quality=95, icc_profile=icc)
    small = px(decode_image(jpeg, max_size=8), (2, 2))
    assert max(abs(a - b) for a, b in zip(small, expected, strict=True)) <= 4


def test_srgb_profile_passes_through_and_broken_profile_is_ignored() -> None:
    src = Image.new("RGB", (16, 16), (100, 150, 100))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(src, "PNG", icc_profile=srgb)
    assert inspect_image(data).icc == "sRGB built-in"
    assert px(decode_image(data), (3, 3)) == (100, 150, 100)

    broken = encode(src, "PNG", icc_profile=b"definitely not an ICC profile" * 4)
    assert inspect_image(broken).icc is None
    assert px(decode_image(broken), (3, 3)) == (100, 150, 100)


def test_cmyk_and_greyscale_and_alpha_become_rgb() -> None:
    cmyk = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    r, g, b = px(decode_image(cmyk), (8, 8))
    assert r > 200 and g < 60 and b < 60

    grey16 = Image.fromarray(np.full((8, 8), 40000, np.uint16))
    assert px(decode_image(encode(grey16, "PNG")), (1, 1)) == (156, 156, 156)

    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    img = decode_image(encode(rgba, "PNG"))
    assert px(img, (0, 0)) == (255, 0, 0)
    assert px(img, (5, 5)) == (255, 255, 255)  # transparent -> white

    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert px(decode_image(encode(pal, "PNG")), (3, 3)) == (10, 20, 30)


# ------------------------------------------------------------------------ bombs


def test_png_header_claiming_100k_by_100k_is_rejected_quickly() -> None:
    data = raw_png(100_000, 100_000, zlib.compress(b"\0" * 1000))
    for fn in (inspect_image, decode_image, probe_bytes):
        start = time.perf_counter()
        with pytest.raises(ImageRejected, match="too large") as err:
            fn(data)
        assert time.perf_counter() - start < 2
        assert err.value.code == "too_large"


def test_real_compressible_110_megapixel_png_is_rejected_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    width, height = 11_000, 10_000
    row = b"\0" + b"\0" * ((width + 7) // 8)  # filter byte + a 1-bit row
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    data = raw_png(width, height, idat, depth=1, color=0)
    assert len(data) < 100_000  # a real, complete, tiny file
    assert width * height > MAX_PIXELS

    def no_pillow(*a: object, **k: object) -> None:
        raise AssertionError("Pillow must not even open a bomb")

    monkeypatch.setattr(decode.Image, "open", no_pillow)
    for fn in (inspect_image, decode_image):
        start = time.perf_counter()
        with pytest.raises(ImageRejected, match="too large"):
            fn(data)
        assert time.perf_counter() - start < 1


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "TIFF"])
def test_other_formats_with_huge_headers_are_rejected(fmt: str) -> None:
    if fmt == "JPEG":
        sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 60_000, 60_000, 1) + b"\x01\x11\x00"
        data = b"\xff\xd8" + sof + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\0" + b"\xff\xd9"
    elif fmt == "WEBP":
        vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0" * 4 + (16383).to_bytes(3, "little") * 2
        data = b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    else:
        entries = [(256, 4, 1, 60_000), (257, 4, 1, 60_000), (273, 4, 1, 8), (279, 4, 1, 0)]
        ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
        data = b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0\0\0\0"
    with pytest.raises(ImageRejected, match="too large") as err:
        decode_image(data)
    assert err.value.code == "too_large"


def test_absurd_dimensions() -> None:
    data = raw_png(90_000, 1, zlib.compress(b"\0" * 90_001))
    with pytest.raises(ImageRejected, match="not plausible") as err:
        inspect_image(data)
    assert err.value.code == "bad_dimensions"
    with pytest.raises(ImageRejected, match="impossible dimensions"):
        inspect_image(raw_png(0, 10, zlib.compress(b"")))


def test_progressive_cmyk_jpeg_whose_decoder_memory_is_too_big() -> None:
    comps = b"".join(bytes([i, 0x11, 0]) for i in range(1, 5))
    sof2 = b"\xff\xc2" + struct.pack(">HBHHB", 8 + 12, 8, 10_000, 10_000, 4) + comps
    sos = b"\xff\xda" + struct.pack(">HB", 6 + 8, 4) + b"\x01\0\x02\0\x03\0\x04\0" + b"\0\0\0"
    data = b"\xff\xd8" + sof2 + sos + b"\x00" + b"\xff\xd9"
    with pytest.raises(ImageRejected, match=r"too large.*MB"):
        inspect_image(data)


def test_jpeg_with_absurd_number_of_scans_is_rejected(photo_jpeg: bytes) -> None:
    sos_at = photo_jpeg.index(b"\xff\xda")
    data = (
        photo_jpeg[:sos_at] + (b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00\x00" * 500) + b"\xff\xd9"
    )
    start = time.perf_counter()
    with pytest.raises(ImageRejected, match="number of JPEG scans"):
        inspect_image(data)
    assert time.perf_counter() - start < 1


def test_pillow_bomb_error_and_memory_error_become_rejections() -> None:
    assert decode._rejection_for(Image.DecompressionBombError("x")).code == "too_large"
    assert decode._rejection_for(MemoryError()).code == "too_large"
    assert decode._rejection_for(OSError("image file is truncated")).code == "truncated"
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS


def test_oversized_file_is_rejected_before_reading(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "huge.jpg"
    with path.open("wb") as fh:
        fh.truncate(decode.MAX_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ImageRejected, match="larger than 200 MB") as err:
        inspect_file(path)
    assert err.value.code == "file_too_big"
    with pytest.raises(ImageRejected, match="cannot be read") as err:
        inspect_file(tmp_path / "missing.jpg")
    assert err.value.code == "unreadable"


def test_inspect_file_reads_a_photo(tmp_path, photo_jpeg: bytes) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "photo.jpg"
    path.write_bytes(photo_jpeg)
    assert inspect_file(path) == inspect_image(photo_jpeg)


# ------------------------------------------------------------------- truncation


def _cuts(n: int) -> list[int]:
    return sorted({2, 5, 12, 30, 100, n // 4, n // 2, (3 * n) // 4, n - 100, n - 3, n - 1})


@pytest.mark.parametrize("kind", ["jpeg", "progressive", "png", "webp", "tiff"])
def test_truncated_files_are_rejected_as_truncated(kind: str, photo_png: bytes) -> None:
    src = Image.open(io.BytesIO(photo_png))
    data = {
        "jpeg": lambda: encode(src, "JPEG", quality=90),
        "progressive": lambda: encode(src, "JPEG", quality=90, progressive=True),
        "png": lambda: photo_png,
        "webp": lambda: encode(src, "WEBP"),
        "tiff": lambda: encode(src, "TIFF", compression="tiff_lzw"),
    }[kind]()
    for cut in _cuts(len(data)):
        for fn in (inspect_image, decode_image):
            with pytest.raises(ImageRejected) as err:
                fn(data[:cut])
            assert err.value.code == "truncated", (cut, err.value.reason)
            assert err.value.reason == "The file is truncated (the photo data ends early)."


def test_png_with_missing_pixel_rows_is_caught_by_inspect(photo_png: bytes) -> None:
    # A structurally valid PNG (IEND, good CRCs) whose zlib stream holds only half the rows.
    raw = zlib.decompress(b"".join(_png_idat_bodies(photo_png)))
    data = raw_png(160, 120, zlib.compress(raw[: len(raw) // 2]))
    with pytest.raises(ImageRejected, match="truncated"):
        inspect_image(data)
    with pytest.raises(ImageRejected, match="truncated"):
        decode_image(data)


def _png_idat_bodies(data: bytes) -> list[bytes]:
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            out.append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return out


def test_corrupt_jpeg_entropy_data_and_bad_png_crc(photo_jpeg: bytes, photo_png: bytes) -> None:
    bad_crc = bytearray(photo_png)
    bad_crc[60] ^= 0xFF  # inside the first IDAT
    with pytest.raises(ImageRejected, match="damaged"):
        inspect_image(bytes(bad_crc))
    # garbage after the JPEG's EOI (e.g. a phone's appended data) is fine
    assert inspect_image(photo_jpeg + b"trailing junk").format == "JPEG"


# ------------------------------------------------------------------------- fuzz

_PREFIXES = [
    b"",
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"II*\x00\x08\x00\x00\x00",
    b"MM\x00*\x00\x00\x00\x08",
    b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
]


def _expect_info_or_rejection(data: bytes) -> None:
    try:
        info = inspect_image(data)
    except ImageRejected as exc:
        assert exc.reason and exc.code
        return
    assert isinstance(info, ImageInfo)
    assert 1 <= info.exif_orientation <= 8


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_give_info_or_rejection(data: bytes) -> None:
    _expect_info_or_rejection(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_PREFIXES), st.binary(max_size=4096))
def test_random_bytes_behind_real_magic_numbers(prefix: bytes, tail: bytes) -> None:
    _expect_info_or_rejection(prefix + tail)


def _small_files() -> list[bytes]:
    im = displayed_reference()
    exif = exif_bytes(t010F="Canon", t0110="Canon EOS", t0112=6)
    return [
        encode(im, "JPEG", quality=80, exif=exif),
        encode(im, "JPEG", quality=80, progressive=True),
        encode(im, "PNG", exif=exif),
        encode(im.convert("P"), "PNG"),
        encode(im, "WEBP", quality=80),
        encode(im, "WEBP", lossless=True),
        encode(im, "TIFF", compression="tiff_lzw"),
        encode(im, "TIFF"),
    ]


_SMALL_FILES = _small_files()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(_SMALL_FILES))),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_mutated_real_files_give_info_or_rejection(
    which: int, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(_SMALL_FILES[which])
    for pos, value in edits:
        data[pos % len(data)] = value
    _expect_info_or_rejection(bytes(data))
    try:
        img = decode_image(bytes(data), max_size=64)
    except ImageRejected:
        return
    assert img.mode == "RGB" and max(img.size) <= 64


def test_pillow_warnings_do_not_escape(photo_jpeg: bytes) -> None:
    # EXIF whose tag data points far beyond the EXIF block: Pillow warns
    # "Possibly corrupt EXIF data"; we silence that and ignore the damaged EXIF.
    bad_exif = b"Exif\0\0II*\x00\x08\x00\x00\x00\x01\x00\x0f\x01\x02\x00\x00\x01\x00\x00"
    bad_exif += b"\xff\xff\x00\x00\x00\x00\x00\x00"
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + len(bad_exif)) + bad_exif
    data = photo_jpeg[:2] + app1 + photo_jpeg[2:]
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        info = inspect_image(data)
        decode_image(data, max_size=32)
        with pytest.raises(ImageRejected):
            inspect_image(data[: len(data) // 2])
    assert info.device is None
    assert [str(w.message) for w in caught] == []
    # The filter is scoped to our calls on this thread: other warnings still show.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("someone else's warning", UserWarning, stacklevel=1)
    assert len(caught) == 1


# ------------------------------------------------------------------------- EXIF


def _exif_with_gps(offset: str | None) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS R5"
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "2024:05:06 07:08:09"
    if offset:
        sub[0x9011] = offset
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (52.0, 31.0, 12.0)
    gps[3] = "E"
    gps[4] = (13.0, 24.0, 0.0)
    return exif.tobytes()


def test_exif_taken_at_and_device() -> None:
    im = displayed_reference()
    aware = inspect_image(encode(im, "JPEG", exif=_exif_with_gps("+02:00")))
    assert aware.taken_at == datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    assert aware.device == "Canon EOS R5"
    assert aware.as_json()["taken_at"] == "2024-05-06T07:08:09+02:00"

    naive = inspect_image(encode(im, "PNG", exif=_exif_with_gps(None)))
    assert naive.taken_at == datetime(2024, 5, 6, 7, 8, 9)
    assert naive.taken_at.tzinfo is None  # camera wall-clock time, zone unknown

    apple = exif_bytes(t010F="Apple", t0110="iPhone 13 mini")
    assert inspect_image(encode(im, "WEBP", exif=apple)).device == "Apple iPhone 13 mini"

    bad = Image.Exif()
    bad.get_ifd(0x8769)[0x9003] = "0000:00:00 00:00:00"
    assert inspect_image(encode(im, "JPEG", exif=bad.tobytes())).taken_at is None


def test_encode_jpeg_writes_no_exif_gps_or_xmp() -> None:
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
        b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" '
        b'exif:GPSLatitude="52,31.2N"/></rdf:RDF></x:xmpmeta>'
    )
    original = encode(
        displayed_reference(),
        "JPEG",
        exif=_exif_with_gps("+02:00"),
        xmp=xmp,
        comment=b"patient: Jane Doe",
    )
    opened = Image.open(io.BytesIO(original))
    assert "exif" in opened.info and "xmp" in opened.info  # the input really had them

    for img in (opened, decode_image(original)):
        out = encode_jpeg(img)
        assert b"Exif\0\0" not in out
        assert b"http://ns.adobe.com/xap" not in out
        assert b"GPS" not in out and b"Jane Doe" not in out and b"Canon" not in out
        reread = Image.open(io.BytesIO(out))
        assert "exif" not in reread.info and "xmp" not in reread.info
        assert "comment" not in reread.info
        assert len(reread.getexif()) == 0
        assert reread.info["icc_profile"] == decode.SRGB_ICC_PROFILE
        assert inspect_image(out).icc == "sRGB built-in"
        assert reread.size == (48, 32)

    stripped = strip_identifying_metadata(opened)
    assert stripped.info == {} and stripped.mode == "RGB"
    with pytest.raises(ValueError):
        encode_jpeg(stripped, quality=0)


# ------------------------------------------------------------------ threading


def test_decoding_is_thread_safe() -> None:
    files = [f for f in _SMALL_FILES if inspect_image(f)]
    serial = [decode_image(f, max_size=40).tobytes() for f in files]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(i: int) -> list[bytes]:
        barrier.wait()
        out = []
        for _ in range(5):
            out = [decode_image(f, max_size=40).tobytes() for f in files]
            try:
                inspect_image(files[i % len(files)][:50])
            except ImageRejected:
                pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
        return out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert not errors
    assert all(r == serial for r in results)


# ---------------------------------------------------------------- more formats

_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def interlaced_png(arr: np.ndarray) -> bytes:
    """An Adam7-interlaced RGB PNG (Pillow cannot write one)."""
    height, width, _ = arr.shape
    raw = b""
    for x0, y0, dx, dy in _ADAM7:
        sub = arr[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\0" + row.tobytes() for row in sub)
    return raw_png(width, height, zlib.compress(raw), interlace=1)


def test_interlaced_png_is_checked_and_decoded() -> None:
    rng = np.random.default_rng(11)
    arr = (rng.random((37, 53, 3)) * 255).astype(np.uint8)
    data = interlaced_png(arr)
    assert inspect_image(data).width == 53
    assert np.array_equal(np.asarray(decode_image(data)), arr)
    short = interlaced_png(arr)
    raw = zlib.decompress(b"".join(_png_idat_bodies(short)))
    with pytest.raises(ImageRejected, match="truncated"):
        inspect_image(raw_png(53, 37, zlib.compress(raw[:-40]), interlace=1))


def test_multi_picture_jpeg_reads_the_first_picture() -> None:
    first, second = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue")
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    info = inspect_image(data)
    assert (info.format, info.content_type) == ("JPEG", "image/jpeg")
    r, g, b = px(decode_image(data), (5, 5))
    assert r > 240 and g < 15 and b < 15


def test_16_bit_rgb_png_and_webp_memory_limit() -> None:
    arr = (np.arange(24 * 16 * 3, dtype=np.uint16).reshape(16, 24, 3) * 97) % 65535
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in arr)
    data = raw_png(24, 16, zlib.compress(raw), depth=16, color=2)
    img = decode_image(data)
    assert px(img, (3, 2)) == tuple(int(v) >> 8 for v in arr[2, 3])

    # libwebp needs ~17 bytes/pixel: a 64 MP WebP would need more than we allow.
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0" * 4 + (7999).to_bytes(3, "little") * 2
    bits = 7999 | (7999 << 14)
    vp8l = b"VP8L" + struct.pack("<I", 6) + b"\x2f" + struct.pack("<I", bits) + b"\0"
    body = b"WEBP" + vp8x + vp8l
    webp = b"RIFF" + struct.pack("<I", len(body)) + body
    with pytest.raises(ImageRejected, match="memory") as err:
        inspect_image(webp)
    assert err.value.code == "too_large"


def test_probe_bytes_keeps_its_api(photo_jpeg: bytes) -> None:
    stored = stored_for(6)
    data = encode(stored, "JPEG", exif=orientation_exif(6))
    facts = probe_bytes(data)
    assert (facts.format, facts.content_type) == ("JPEG", "image/jpeg")
    assert (facts.width, facts.height, facts.stored_width, facts.stored_height) == (48, 32, 32, 48)
    assert facts.exif_orientation == 6
    with pytest.raises(InputError, match="truncated"):
        probe_bytes(photo_jpeg[: len(photo_jpeg) // 2])
