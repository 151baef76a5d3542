"""The one safe entry point for every image the workstation touches.

Sync, local import, the viewer, thumbnails and exports all go through this module.
Everything that comes in is untrusted bytes: a photo from the portal, a file a
clinician picked, a damaged cache file. The rules:

* **Allow-list.** Only JPEG, PNG, WebP, TIFF and (when ``pillow-heif`` is installed)
  HEIC/HEIF are read. The format is decided from the file's magic bytes *before*
  Pillow sees it, and Pillow is then only allowed to use that one plugin, so a GIF,
  BMP, PDF, SVG, EPS, DICOM … never reaches a decoder.
* **Limits from the header, before decoding.** Width and height are parsed by this
  module's own small header readers (JPEG SOF, PNG IHDR, WebP VP8/VP8L/VP8X, TIFF
  IFD0, HEIF ``ispe``). More than :data:`MAX_PIXELS` pixels, a side longer than
  :data:`MAX_SIDE`, or an estimated peak decode memory above :data:`MAX_DECODE_MEMORY`
  (per format, measured; e.g. WebP needs ~17 bytes/pixel, so a WebP over ~49 MP is
  refused) is rejected without allocating a pixel. Pillow's own bomb check is kept as
  a second line (``Image.MAX_IMAGE_PIXELS = MAX_PIXELS``, set once at import) and its
  ``DecompressionBombError`` becomes :class:`ImageRejected`.
* **Bounded time.** JPEG scans x blocks, JPEG segments, PNG chunks, TIFF strips and
  HEIF boxes are capped, so a small crafted file cannot make a decoder loop for
  minutes. Measured worst cases (100 MP) stay under ~2 s and ~0.9 GB.
* **Structure before pixels.** JPEG markers are walked to the EOI, PNG chunks to IEND
  with CRCs, WebP RIFF chunk sizes, TIFF tag/strip/tile offsets and HEIF boxes are
  checked against the file length, so a truncated download is reported as such.
* **Completeness, cheaply.** :func:`inspect_image` proves the pixel data decodes to
  the end: JPEG with DCT scaling (``draft`` at 1/8 size: every coefficient is still
  entropy-decoded, but almost no IDCT or pixel memory), PNG by streaming the zlib data
  through a counter (no pixel buffer at all; :func:`decode_image` does this too, as
  Pillow silently accepts a PNG whose data ends before the last row), WebP/TIFF/HEIF
  by a normal decode.
* **One exception type.** Every failure is an :class:`ImageRejected` (an
  :class:`~derm_workstation.core.errors.InputError`, exit code 2) whose message is one
  user-facing sentence. Pillow's metadata warnings ("Possibly corrupt EXIF data", …)
  raised while *this module* calls Pillow are silenced by a thread-scoped warnings
  filter (see :class:`_PillowWarningScope`); they never reach the user or the log, and
  the conditions they describe are handled explicitly (damaged EXIF is ignored; a
  damaged structure is rejected).

Decoded output (:func:`decode_image`) is always an 8-bit ``RGB`` image in sRGB:

* EXIF orientation (all 8 values; anything else counts as 1) is applied, so the result
  is what the clinician should see.
* An embedded ICC profile is converted to sRGB with LittleCMS (relative colorimetric
  with black-point compensation). No profile means sRGB. An unusable profile is
  ignored (treated as sRGB) rather than rejecting the photo.
* Transparency is composited on **white**: transparent areas are not skin, and white
  matches how browsers and the portal show such files.
* 16-bit and 32-bit greyscale is scaled (not clipped) to 8 bits.
* The returned image carries no metadata (``info`` is empty).

Design choices worth knowing:

* ``ImageInfo.taken_at``: EXIF ``DateTimeOriginal`` (falling back to
  ``DateTimeDigitized``). It is timezone-aware only when the matching EXIF
  ``OffsetTime…`` tag is present; otherwise it is **naive**, meaning "camera wall-clock
  time, zone unknown" — never assume UTC.
* HEIF: libheif applies the container's rotation/mirroring itself and pillow-heif
  resets the EXIF orientation to 1, so for HEIF ``exif_orientation`` is always 1 and
  ``stored_*`` equal the displayed size. A colour description given only as ``nclx``
  (no ICC profile) is treated as sRGB.
* TIFF: newer Pillow applies the TIFF Orientation tag itself while loading; that is
  detected (the tag disappears) so it is never applied twice. ``exif_orientation`` and
  ``stored_*`` still describe the file.
* PNG ``gAMA``/``cHRM`` without ``iCCP`` are ignored (treated as sRGB).
* Thread safety: nothing here mutates shared state per call. Import-time set-up only:
  ``Image.MAX_IMAGE_PIXELS``, pillow-heif's opener registration, and the warnings
  filter entry (re-inserted if a test harness replaced ``warnings.filters``).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import Any

from PIL import Image, ImageCms, ImageFile

from derm_workstation.core.errors import InputError

__all__ = [
    "ALLOWED_FORMATS",
    "HEIF_SUPPORTED",
    "MAX_BYTES",
    "MAX_DECODE_MEMORY",
    "MAX_PIXELS",
    "MAX_SIDE",
    "SRGB_ICC_PROFILE",
    "ImageInfo",
    "ImageRejected",
    "decode_image",
    "encode_jpeg",
    "inspect_file",
    "inspect_image",
    "jpeg_dimensions",
    "read_image_file",
    "strip_identifying_metadata",
]

MAX_PIXELS: int = 100_000_000
"""About 100 MP: more than this is rejected as a possible decompression bomb."""
MAX_BYTES: int = 200 * 1024 * 1024
"""Largest encoded file accepted."""
MAX_SIDE: int = 50_000
"""Longest accepted side; longer (e.g. 1 x 90,000,000) is not a plausible photo."""
MAX_DECODE_MEMORY: int = 900 * 1024 * 1024
"""Upper bound on the estimated peak memory of a full-size decode (the encoded bytes, the
decoder's own buffers, the pixels and the one transient copy, plus the interpreter);
keeps any accepted photo under ~1 GB. See :func:`_estimate_decode_memory`."""

_MAX_JPEG_SEGMENTS = 5_000
_MAX_JPEG_SCANS = 100
_MAX_JPEG_BLOCK_SCANS = 100_000_000
_MAX_PNG_CHUNKS = 250_000
_MAX_TIFF_STRIPS = 100_000
_MAX_BOXES = 10_000
_JPEG_VERIFY_SCALE = 8

# Pillow's own limit: warns above it, raises above twice it. Our header check rejects
# anything above MAX_PIXELS first, so the warning never fires for an image we accept.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

ALLOWED_FORMATS: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
}

try:  # HEIC/HEIF (iPhone photos) via libheif; optional.
    import pillow_heif

    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
    HEIF_SUPPORTED = True
    ALLOWED_FORMATS["HEIF"] = "image/heic"
except Exception:  # not installed, or libheif missing/broken: HEIC gets a clear reason
    HEIF_SUPPORTED = False

_ACCEPTED_TEXT = "JPEG, PNG, WebP, TIFF or HEIC" if HEIF_SUPPORTED else "JPEG, PNG, WebP or TIFF"

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
SRGB_ICC_PROFILE: bytes = _SRGB.tobytes()
"""A small sRGB ICC profile, embedded in exported JPEGs and thumbnails."""

_ORIENTATION_TAG = 0x0112
_EXIF_IFD = 0x8769
_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


# --------------------------------------------------------------------------- errors


class ImageRejected(InputError):
    """An image the workstation will not open; ``message`` is one user-facing sentence.

    ``code`` is a stable machine-readable kind: ``empty``, ``file_too_big``,
    ``unsupported``, ``unknown_format``, ``truncated``, ``damaged``, ``too_large``,
    ``bad_dimensions``, ``unreadable``.
    """

    def __init__(self, reason: str, *, code: str = "damaged") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def _truncated() -> ImageRejected:
    return ImageRejected("The file is truncated (the photo data ends early).", code="truncated")


def _damaged(detail: str = "") -> ImageRejected:
    text = f"The image file is damaged ({detail})." if detail else "The image file is damaged."
    return ImageRejected(text, code="damaged")


def _unsupported(name: str) -> ImageRejected:
    return ImageRejected(
        f"{name} files are not accepted; send the photo as {_ACCEPTED_TEXT}.", code="unsupported"
    )


def _check_dimensions(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageRejected(
            f"The photo's header gives impossible dimensions ({width} x {height} pixels); "
            "the file is damaged.",
            code="bad_dimensions",
        )
    pixels = width * height
    if pixels > MAX_PIXELS:
        raise ImageRejected(
            f"The photo is too large to open safely ({width} x {height} = "
            f"{pixels / 1e6:.0f} megapixels; the limit is {MAX_PIXELS / 1e6:.0f} megapixels).",
            code="too_large",
        )
    if max(width, height) > MAX_SIDE:
        raise ImageRejected(
            f"The photo's dimensions ({width} x {height} pixels) are not plausible for a "
            "photo; the file is damaged or not a real photo.",
            code="bad_dimensions",
        )


# ------------------------------------------------------------------ warnings scope


class _PillowWarningScope:
    """A ``warnings`` filter "module" matcher that matches only on a thread that is
    currently inside one of this module's Pillow calls.

    ``warnings.catch_warnings`` is not thread-safe, so instead one filter entry
    ``("ignore", None, Warning, <this object>, 0)`` is installed once; the warnings
    machinery calls ``.match(module)`` on it, which looks at a thread-local depth.
    Other threads' warnings, and warnings outside our calls, are untouched.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def match(self, module: object) -> bool:
        return getattr(self._local, "depth", 0) > 0

    @contextmanager
    def active(self) -> Iterator[None]:
        _ensure_warning_filter()
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1


_SCOPE = _PillowWarningScope()
_FILTER: tuple[Any, ...] = ("ignore", None, Warning, _SCOPE, 0)


def _ensure_warning_filter() -> None:
    # Cheap when present; re-inserted only if someone replaced warnings.filters
    # (pytest does so around every test).
    if not any(f[3] is _SCOPE for f in warnings.filters):
        filters: list[Any] = warnings.filters  # type: ignore[assignment]
        filters.insert(0, _FILTER)
        mutated = getattr(warnings, "_filters_mutated", None)
        if callable(mutated):
            mutated()


_ensure_warning_filter()


def _rejection_for(exc: BaseException) -> ImageRejected:
    if isinstance(exc, Image.DecompressionBombError):
        return ImageRejected(
            "The photo is too large to open safely (it could be a decompression bomb).",
            code="too_large",
        )
    if isinstance(exc, MemoryError):
        return ImageRejected(
            "The photo is too large to open with the memory available.", code="too_large"
        )
    text = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in text or "premature end" in text:
        return _truncated()
    if isinstance(exc, Image.UnidentifiedImageError):
        return _damaged("its header cannot be read")
    return _damaged("its picture data cannot be decoded")


@contextmanager
def _pillow_guard() -> Iterator[None]:
    """Run Pillow code: warnings silenced for this thread, every exception -> rejection."""
    with _SCOPE.active():
        try:
            yield
        except ImageRejected:
            raise
        except Exception as exc:  # untrusted input: any decoder failure is a rejection
            raise _rejection_for(exc) from exc


# ------------------------------------------------------------------- format sniffing

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_SIGNATURES = (b"\xff\xd8\xff", _PNG_SIG, b"RIFF", b"II*\x00", b"MM\x00*")
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"mif2"}
_AVIF_BRANDS = {b"avif", b"avis"}


def _ftyp_brands(data: bytes) -> set[bytes]:
    size = int.from_bytes(data[0:4], "big")
    end = min(len(data), size if 16 <= size <= 4096 else 16)
    brands = {data[8:12]}
    brands.update(data[i : i + 4] for i in range(16, end - 3, 4))
    return brands


def _sniff(data: bytes) -> str:
    """The allowed format of ``data``, or an ImageRejected naming what it is instead."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(_PNG_SIG):
        return "PNG"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[4:8] == b"ftyp":
        if len(data) < max(16, int.from_bytes(head[0:4], "big")):
            raise _truncated()
        brands = _ftyp_brands(data)
        if brands & _AVIF_BRANDS:
            raise _unsupported("AVIF")
        if brands & _HEIF_BRANDS:
            if HEIF_SUPPORTED:
                return "HEIF"
            raise ImageRejected(
                "HEIC/HEIF photos cannot be opened on this workstation; convert the photo "
                "to JPEG (on an iPhone: Settings > Camera > Formats > Most Compatible) "
                "and send it again.",
                code="unsupported",
            )
        raise ImageRejected(
            "The file is a video or another media container, not a photo.", code="unsupported"
        )
    name = _known_other_format(data)
    if name is not None:
        raise _unsupported(name)
    if 2 <= len(data) < 12 and (
        any(sig.startswith(data) for sig in _SIGNATURES)
        or (data.startswith(b"RIFF") and b"WEBP".startswith(data[8:]))
    ):
        raise _truncated()
    raise ImageRejected(
        f"The file is not an image format the workstation can read ({_ACCEPTED_TEXT}).",
        code="unknown_format",
    )


def _known_other_format(data: bytes) -> str | None:
    head = data[:16]
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM" and len(data) >= 26:
        return "BMP"
    if head[:5] == b"%PDF-":
        return "PDF"
    if head[:4] in (b"%!PS", b"\xc5\xd0\xd3\xc6"):
        return "PostScript/EPS"
    if head[:4] == b"8BPS":
        return "Photoshop (PSD)"
    if head[:4] == b"\x00\x00\x01\x00":
        return "Icon (ICO)"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000"
    if head[:2] == b"\xff\x0a" or head[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "JPEG XL"
    if data[128:132] == b"DICM":
        return "DICOM"
    if head[:4] == b"PK\x03\x04":
        return "ZIP"
    text = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in text:
        return "SVG"
    if text.startswith((b"<!doctype html", b"<html")):
        return "Web page (HTML)"
    if text.startswith(b"<?xml"):
        return "XML"
    return None


# ----------------------------------------------------------------- header readers


@dataclass
class _Header:
    fmt: str
    width: int
    height: int
    exif: bytes | None = None  # PNG: the eXIf chunk, wherever it is
    extra: dict[str, Any] = field(default_factory=dict)


_SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_SUPPORTED_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC9, 0xCA})
_PROGRESSIVE_SOF = frozenset({0xC2, 0xCA})
# End of entropy-coded data: 0xFF followed by anything but a stuffed 0x00 or RSTn.
_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")


def _jpeg_frame(data: bytes, pos: int, length: int, marker: int
                ) -> tuple[int, int, list[tuple[int, int]]]:
    """(width, height, sampling factors) of the frame header (SOFn) whose length field is
    at ``pos``; ImageRejected for a variant we cannot read or an invalid header."""
    if length < 8:
        raise _damaged("the JPEG frame header is too short")
    precision = data[pos + 2]
    height = (data[pos + 3] << 8) | data[pos + 4]
    width = (data[pos + 5] << 8) | data[pos + 6]
    ncomp = data[pos + 7]
    _check_dimensions(width, height)
    if marker not in _SUPPORTED_SOF or precision != 8:
        raise ImageRejected(
            "This JPEG uses a variant (lossless, 12-bit or hierarchical) the "
            "workstation cannot read; save it as a standard JPEG.",
            code="unsupported",
        )
    if ncomp not in (1, 3, 4) or length < 8 + 3 * ncomp:
        raise _damaged("the JPEG frame header is invalid")
    comps = []
    for i in range(ncomp):
        hv = data[pos + 9 + 3 * i]
        hs, vs = hv >> 4, hv & 0x0F
        if not (1 <= hs <= 4 and 1 <= vs <= 4):
            raise _damaged("the JPEG sampling factors are invalid")
        comps.append((hs, vs))
    return width, height, comps


def jpeg_head_size(head: bytes) -> tuple[int, int] | None:
    """Displayed (width, height) of a JPEG from its first bytes, without decoding.

    Reads the markers before the first scan: the frame header (checked as
    :func:`inspect_image` checks it) and the EXIF orientation (read as the full check
    reads it). None whenever the head does not settle it plainly — not a JPEG, the scan
    not reached within ``head``, a variant or header the full check would refuse — so
    the caller runs the full check instead. Says nothing about the data after the head.
    """
    n = len(head)
    if not head.startswith(b"\xff\xd8\xff"):
        return None
    pos = 2
    size: tuple[int, int] | None = None
    exif: bytes | None = None
    try:
        for _ in range(256):
            if pos >= n or head[pos] != 0xFF:
                return None
            while pos < n and head[pos] == 0xFF:
                pos += 1
            if pos + 3 > n:
                return None
            marker = head[pos]
            pos += 1
            if marker == 0xDA:  # start of scan: everything needed comes before it
                break
            if marker in (0x00, 0x01, 0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:
                return None
            length = (head[pos] << 8) | head[pos + 1]
            if length < 2 or pos + length > n:
                return None
            if marker in _SOF_MARKERS:
                if size is not None:
                    return None
                width, height, _comps = _jpeg_frame(head, pos, length, marker)
                size = (width, height)
            elif marker == 0xE1 and exif is None \
                    and head[pos + 2:pos + 8] == b"Exif\x00\x00":
                exif = head[pos + 2:pos + length]  # as Pillow keeps it in info["exif"]
            pos += length
        else:
            return None
    except (ImageRejected, IndexError):
        return None
    if size is None:
        return None
    orientation = 1
    if exif is not None:
        try:
            with _pillow_guard():  # Pillow's warnings about damaged EXIF stay quiet
                loaded = Image.Exif()
                loaded.load(exif)
                value = loaded.get(_ORIENTATION_TAG, 1)
        except ImageRejected:  # damaged EXIF: leave it to the full check
            return None
        if not isinstance(value, int) or not 1 <= value <= 8:
            return None  # an unusual orientation entry: leave it to the full check
        orientation = value
    width, height = size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _jpeg_header(data: bytes) -> _Header:
    """Walk the JPEG's markers from SOI to EOI (linear, bounded) and read its SOF."""
    n = len(data)
    pos = 2
    segments = scans = blocks = 0
    max_scans = _MAX_JPEG_SCANS
    sof: tuple[int, int, int, list[tuple[int, int]]] | None = None
    while True:
        if pos >= n:
            raise _truncated()
        if data[pos] != 0xFF:
            raise _damaged("a JPEG marker is missing")
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise _truncated()
        marker = data[pos]
        pos += 1
        segments += 1
        if segments > _MAX_JPEG_SEGMENTS:
            raise _damaged("it has an implausible number of JPEG segments")
        if marker == 0xD9:  # EOI: end of the main image; anything after it is ignored
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue
        if marker in (0x00, 0xD8):
            raise _damaged("a JPEG marker is invalid")
        if pos + 2 > n:
            raise _truncated()
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2:
            raise _damaged("a JPEG segment has an invalid length")
        if pos + length > n:
            raise _truncated()
        if marker in _SOF_MARKERS:
            if sof is not None:
                raise ImageRejected(
                    "This JPEG uses a hierarchical encoding the workstation cannot read.",
                    code="unsupported",
                )
            width, height, comps = _jpeg_frame(data, pos, length, marker)
            sof = (marker, width, height, comps)
            hmax = max(c[0] for c in comps)
            vmax = max(c[1] for c in comps)
            blocks = sum(
                math.ceil(width / (8 * hmax)) * hs * math.ceil(height / (8 * vmax)) * vs
                for hs, vs in comps
            )
            # Every scan visits every block, even with almost no data (a cheap file can
            # otherwise cost minutes): bound scans x blocks.
            max_scans = min(_MAX_JPEG_SCANS, max(16, _MAX_JPEG_BLOCK_SCANS // blocks))
        elif marker == 0xDA:  # SOS: skip the entropy-coded data that follows
            if sof is None:
                raise _damaged("the JPEG has image data before its frame header")
            scans += 1
            if scans > max_scans:
                raise _damaged("it has an implausible number of JPEG scans")
            m = _ENTROPY_END.search(data, pos + length)
            if m is None:
                raise _truncated()
            pos = m.start()
            continue
        pos += length
    if sof is None or scans == 0:
        raise _damaged("the JPEG contains no picture")
    marker, width, height, comps = sof
    coefficients = 0
    if marker in _PROGRESSIVE_SOF or scans > 1:  # libjpeg then keeps every coefficient
        coefficients = blocks * 64 * 2
    return _Header(
        "JPEG", width, height, extra={"coefficients": coefficients, "grey": len(comps) == 1}
    )


def jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """Stored (width, height) of a structurally complete JPEG (SOI..EOI), without decoding.

    Cheap (a marker walk); used e.g. to validate cached thumbnails. Raises ImageRejected.
    """
    data = bytes(data)
    if not data.startswith(b"\xff\xd8\xff"):
        raise _damaged("it is not a JPEG")
    hdr = _jpeg_header(data)
    return hdr.width, hdr.height


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


class _PngPixelCounter:
    """Streams IDAT data through zlib without keeping it: proves the pixel data is
    complete (exact raw size) and, for non-interlaced images, that every row starts
    with a valid filter byte. Memory is O(1 MB) whatever the image size."""

    def __init__(self, width: int, height: int, bits_per_pixel: int, interlaced: bool) -> None:
        if interlaced:
            self.row_len = 0
            self.expected = 0
            for x0, y0, dx, dy in _ADAM7:
                cols = (width - x0 + dx - 1) // dx if width > x0 else 0
                rows = (height - y0 + dy - 1) // dy if height > y0 else 0
                if cols and rows:
                    self.expected += rows * (1 + (cols * bits_per_pixel + 7) // 8)
        else:
            self.row_len = 1 + (width * bits_per_pixel + 7) // 8
            self.expected = height * self.row_len
        self.total = 0
        self.next_row = 0
        self._z = zlib.decompressobj()

    def feed(self, chunk: memoryview) -> None:
        buf: bytes | memoryview = chunk
        while buf:
            try:
                out = self._z.decompress(buf, 1 << 20)
            except zlib.error as exc:
                raise _damaged("its compressed picture data is corrupt") from exc
            if self.row_len and out:
                start = self.next_row - self.total
                filters = out[start :: self.row_len]
                if filters and max(filters) > 4:
                    raise _damaged("its picture data is corrupt")
                self.next_row += len(filters) * self.row_len
            self.total += len(out)
            if self.total > self.expected:
                raise _damaged("it has more picture data than its size allows")
            buf = self._z.unconsumed_tail
            if self._z.eof:
                break

    def finish(self) -> None:
        if self.total < self.expected:
            raise _truncated()


def _png_header(data: bytes, deep: bool) -> _Header:
    """Walk PNG chunks to IEND, checking lengths and critical-chunk CRCs."""
    n = len(data)
    mv = memoryview(data)
    pos = 8
    count = 0
    hdr: _Header | None = None
    counter: _PngPixelCounter | None = None
    plte = idat_started = idat_done = False
    color_type = 0
    while True:
        if pos + 12 > n:
            raise _truncated()
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype = data[pos + 4 : pos + 8]
        if length > 0x7FFFFFFF or not ctype.isalpha() or not ctype.isascii():
            raise _damaged("a PNG chunk header is invalid")
        end = pos + 12 + length
        if end > n:
            raise _truncated()
        count += 1
        if count > _MAX_PNG_CHUNKS:
            raise _damaged("it has an implausible number of PNG chunks")
        critical = not (ctype[0] & 0x20)
        body = mv[pos + 8 : pos + 8 + length]
        if critical and zlib.crc32(mv[pos + 4 : end - 4]) != int.from_bytes(
            data[end - 4 : end], "big"
        ):
            raise _damaged("a PNG checksum does not match")
        if count == 1:
            if ctype != b"IHDR" or length != 13:
                raise _damaged("the PNG header is missing")
            width, height, depth, color_type, comp, filt, interlace = struct.unpack(
                ">IIBBBBB", body
            )
            _check_dimensions(width, height)
            if (
                depth not in _PNG_DEPTHS.get(color_type, ())
                or comp != 0
                or filt != 0
                or interlace not in (0, 1)
            ):
                raise _damaged("the PNG header is invalid")
            hdr = _Header("PNG", width, height, extra={"alpha": color_type in (4, 6)})
            if deep:
                counter = _PngPixelCounter(
                    width, height, _PNG_CHANNELS[color_type] * depth, interlace == 1
                )
        elif ctype == b"IHDR":
            raise _damaged("the PNG has two headers")
        elif ctype == b"PLTE":
            plte = True
        elif ctype == b"IDAT":
            if idat_done:
                raise _damaged("the PNG picture data is split")
            idat_started = True
            if counter is not None:
                counter.feed(body)
        elif ctype == b"IEND":
            break
        elif critical:
            raise _damaged("the PNG uses an unknown critical chunk")
        elif ctype == b"eXIf" and hdr is not None and hdr.exif is None:
            hdr.exif = bytes(body)
        elif ctype == b"tRNS" and hdr is not None:
            hdr.extra["alpha"] = True
        if idat_started and ctype != b"IDAT":
            idat_done = True
        pos = end
    if hdr is None or not idat_started or (color_type == 3 and not plte):
        raise _damaged("the PNG contains no picture")
    if counter is not None:
        counter.finish()
    return hdr


def _webp_header(data: bytes) -> _Header:
    n = len(data)
    riff_size = int.from_bytes(data[4:8], "little")
    total = riff_size + 8
    if riff_size < 4:
        raise _damaged("the WebP header is invalid")
    if total > n:
        raise _truncated()
    pos = 12
    count = 0
    size_found: tuple[int, int] | None = None
    has_image = False
    while pos < total:
        if pos + 8 > total:
            raise _truncated()
        fourcc = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if body + size > total:
            raise _truncated()
        count += 1
        if count > _MAX_BOXES:
            raise _damaged("it has an implausible number of WebP chunks")
        if fourcc == b"VP8X" and count == 1:
            if size < 10:
                raise _damaged("the WebP header is invalid")
            w = 1 + int.from_bytes(data[body + 4 : body + 7], "little")
            h = 1 + int.from_bytes(data[body + 7 : body + 10], "little")
            _check_dimensions(w, h)
            size_found = (w, h)
        elif fourcc == b"VP8 ":
            if size < 10 or data[body + 3 : body + 6] != b"\x9d\x01\x2a":
                raise _damaged("the WebP picture header is invalid")
            w = int.from_bytes(data[body + 6 : body + 8], "little") & 0x3FFF
            h = int.from_bytes(data[body + 8 : body + 10], "little") & 0x3FFF
            size_found = size_found or (w, h)
            has_image = True
        elif fourcc == b"VP8L":
            if size < 5 or data[body] != 0x2F:
                raise _damaged("the WebP picture header is invalid")
            bits = int.from_bytes(data[body + 1 : body + 5], "little")
            size_found = size_found or ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
            has_image = True
        elif fourcc == b"ANMF":
            has_image = True
        elif count == 1:
            raise _damaged("the WebP header is invalid")
        pos = body + size + (size & 1)
    if size_found is None or not has_image:
        raise _damaged("the WebP contains no picture")
    _check_dimensions(*size_found)
    return _Header("WEBP", *size_found)


_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q", 13: "I", 18: "Q"}  # BYTE SHORT LONG LONG8 IFD
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_TIFF_TYPE_SIZES.update({13: 4, 16: 8, 17: 8, 18: 8})
_TIFF_COMPRESSIONS = {1, 5, 7, 8, 32773, 32946}  # none, LZW, JPEG, deflate, PackBits


def _tiff_header(data: bytes) -> _Header:
    n = len(data)
    bo = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    try:
        if big:
            if struct.unpack_from(bo + "HH", data, 4) != (8, 0):
                raise _damaged("the BigTIFF header is invalid")
            (ifd,) = struct.unpack_from(bo + "Q", data, 8)
        else:
            (ifd,) = struct.unpack_from(bo + "I", data, 4)
    except struct.error:
        raise _truncated() from None
    if ifd < 8:
        raise _damaged("the TIFF header is invalid")
    count_fmt, entry_size, value_size = ("Q", 20, 8) if big else ("H", 12, 4)
    if ifd + struct.calcsize(count_fmt) > n:
        raise _truncated()
    (count,) = struct.unpack_from(bo + count_fmt, data, ifd)
    if count == 0 or count > 65535:
        raise _damaged("the TIFF directory is invalid")
    start = ifd + struct.calcsize(count_fmt)
    if start + count * entry_size > n:
        raise _truncated()
    tags: dict[int, tuple[int, ...]] = {}
    for i in range(count):
        off = start + i * entry_size
        tag, typ = struct.unpack_from(bo + "HH", data, off)
        (cnt,) = struct.unpack_from(bo + ("Q" if big else "I"), data, off + 4)
        unit = _TIFF_TYPE_SIZES.get(typ, 0)
        if cnt * unit > value_size:  # the value lives elsewhere: it must be in the file
            (where,) = struct.unpack_from(bo + ("Q" if big else "I"), data, off + 4 + value_size)
            if where + cnt * unit > n:
                raise _truncated()
        code = _TIFF_TYPES.get(typ)
        if tag not in (256, 257, 259, 273, 279, 322, 323, 324, 325, 50706) or code is None:
            continue
        if cnt > _MAX_TIFF_STRIPS:
            raise _damaged("it has an implausible number of TIFF strips")
        item = struct.calcsize(code)
        where = off + 4 + value_size
        if cnt * item > value_size:
            (where,) = struct.unpack_from(bo + ("Q" if big else "I"), data, where)
            if where + cnt * item > n:
                raise _truncated()
        tags[tag] = struct.unpack_from(f"{bo}{cnt}{code}", data, where)
    if 50706 in tags:
        raise _unsupported("Camera RAW (DNG)")
    if data[8:10] == b"CR":
        raise _unsupported("Camera RAW (CR2)")
    if not tags.get(256) or not tags.get(257):
        raise _damaged("the TIFF has no image size")
    width, height = tags[256][0], tags[257][0]
    _check_dimensions(width, height)
    compression = tags.get(259, (1,))[0]
    if compression not in _TIFF_COMPRESSIONS:
        raise ImageRejected(
            "This TIFF uses a compression the workstation cannot read; save it as "
            "uncompressed, LZW or ZIP TIFF, or as JPEG/PNG.",
            code="unsupported",
        )
    if 322 in tags or 323 in tags:
        tw, th = tags.get(322, (0,))[0], tags.get(323, (0,))[0]
        if tw <= 0 or th <= 0 or tw * th > max(2 * width * height, 1 << 20):
            raise _damaged("its TIFF tiles are invalid")
        offsets, counts = tags.get(324, ()), tags.get(325, ())
    else:
        offsets, counts = tags.get(273, ()), tags.get(279, ())
    if not offsets or len(offsets) != len(counts):
        raise _damaged("the TIFF has no picture data")
    if max(o + c for o, c in zip(offsets, counts, strict=True)) > n:
        raise _truncated()
    return _Header("TIFF", width, height)


def _iter_boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    pos = start
    count = 0
    while pos < end:
        if pos + 8 > end:
            raise _truncated()
        size = int.from_bytes(data[pos : pos + 4], "big")
        typ = data[pos + 4 : pos + 8]
        head = 8
        if size == 1:
            if pos + 16 > end:
                raise _truncated()
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
            head = 16
        elif size == 0:
            size = end - pos
        if size < head:
            raise _damaged("a HEIF box is invalid")
        if pos + size > end:
            raise _truncated()
        count += 1
        if count > _MAX_BOXES:
            raise _damaged("it has an implausible number of HEIF boxes")
        yield typ, pos + head, pos + size
        pos += size


def _heif_header(data: bytes) -> _Header:
    width = height = 0
    has_meta = has_mdat = False
    for typ, body, end in _iter_boxes(data, 0, len(data)):
        if typ == b"mdat":
            has_mdat = True
        if typ != b"meta":
            continue
        has_meta = True
        for t2, b2, e2 in _iter_boxes(data, body + 4, end):
            if t2 != b"iprp":
                continue
            for t3, b3, e3 in _iter_boxes(data, b2, e2):
                if t3 != b"ipco":
                    continue
                for t4, b4, e4 in _iter_boxes(data, b3, e3):
                    if t4 == b"ispe" and e4 - b4 >= 12:
                        w, h = struct.unpack_from(">II", data, b4 + 4)
                        width, height = max(width, w), max(height, h)
    if not has_meta or not width:
        raise _damaged("the HEIF header is invalid")
    if not has_mdat:
        raise _truncated()
    _check_dimensions(width, height)  # an upper bound: the largest item in the file
    return _Header("HEIF", width, height)


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"expected bytes, not {type(data).__name__}")


_BASELINE_MEMORY = 64 * 1024 * 1024  # interpreter, Pillow, numpy
# Peak bytes per pixel of a full-size decode, measured with Pillow 13 on 100 MP images:
# Pillow keeps RGB(A) at 4 bytes/pixel, and orientation (or a mode conversion) needs a
# second full copy for a moment. libwebp's decoder keeps a canvas, its previous frame
# and a bytes copy besides Pillow's image; libheif a planar buffer.
_PEAK_BYTES_PER_PIXEL = {"JPEG": 8, "PNG": 8, "TIFF": 8, "WEBP": 17, "HEIF": 9}


def _estimate_decode_memory(hdr: _Header, n_bytes: int) -> int:
    pixels = hdr.width * hdr.height
    peak = pixels * _PEAK_BYTES_PER_PIXEL[hdr.fmt]
    if hdr.fmt == "JPEG":
        # greyscale: 1 byte/pixel decoded + copy, then 4 for RGB; colour: 4 + 4, or the
        # progressive coefficient buffer (2 bytes per coefficient) alongside the output
        out = pixels * (1 if hdr.extra["grey"] else 4)
        peak = max(hdr.extra["coefficients"] + out, 2 * out, pixels * 5)
    elif hdr.fmt == "TIFF":
        peak += n_bytes  # Pillow hands libtiff its own copy of the file
    elif hdr.fmt == "PNG" and hdr.extra["alpha"]:
        peak += pixels  # resizing RGBA goes through a premultiplied copy
    return _BASELINE_MEMORY + n_bytes + peak


def _check_memory(hdr: _Header, n_bytes: int) -> None:
    need = _estimate_decode_memory(hdr, n_bytes)
    if need > MAX_DECODE_MEMORY:
        raise ImageRejected(
            f"The photo is too large to open safely (decoding this {hdr.width} x "
            f"{hdr.height} {hdr.fmt} would need about {need >> 20} MB of memory).",
            code="too_large",
        )


def _preflight(data: bytes, *, deep: bool) -> _Header:
    """Size, allow-list, structure and header limits; no pixel is decoded."""
    if not data:
        raise ImageRejected("The file is empty (0 bytes); it is not a photo.", code="empty")
    if len(data) > MAX_BYTES:
        raise ImageRejected(
            f"The file is larger than {MAX_BYTES >> 20} MB, the most the workstation accepts "
            "for one photo.",
            code="file_too_big",
        )
    fmt = _sniff(data)
    try:
        if fmt == "JPEG":
            hdr = _jpeg_header(data)
        elif fmt == "PNG":
            hdr = _png_header(data, deep)
        elif fmt == "WEBP":
            hdr = _webp_header(data)
        elif fmt == "TIFF":
            hdr = _tiff_header(data)
        else:
            hdr = _heif_header(data)
    except ImageRejected:
        raise
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise _damaged("its header cannot be read") from exc
    _check_memory(hdr, len(data))
    return hdr


def _open(data: bytes, hdr: _Header) -> ImageFile.ImageFile:
    """Pillow object for ``data`` using only the sniffed plugin (call inside the guard)."""
    im = Image.open(io.BytesIO(data), formats=[hdr.fmt])
    fmt = "JPEG" if im.format == "MPO" else im.format
    if fmt != hdr.fmt:
        raise _damaged("its header cannot be read")
    width, height = im.size
    _check_dimensions(width, height)
    stored = (hdr.width, hdr.height)
    # HEIF: the header size is an upper bound. TIFF: newer Pillow reports (and on load
    # applies) the orientation itself, so its size may be the swapped one.
    if hdr.fmt == "HEIF" or (hdr.fmt == "TIFF" and (height, width) == stored):
        return im
    if (width, height) != stored:
        raise _damaged("its headers disagree about its size")
    return im


# ------------------------------------------------------------------------ metadata


def _exif_of(im: Image.Image, hdr: _Header) -> Image.Exif:
    """EXIF without side effects (Pillow's PNG getexif() would decode all pixels)."""
    exif = Image.Exif()
    try:
        if hdr.fmt == "TIFF":
            return im.getexif()
        raw = hdr.exif if hdr.fmt == "PNG" else im.info.get("exif")
        if isinstance(raw, bytes) and raw:
            exif.load(raw)
    except Exception:  # damaged EXIF is ignored, never a reason to reject the photo
        return Image.Exif()
    return exif


def _orientation(exif: Image.Exif, fmt: str) -> int:
    if fmt == "HEIF":  # libheif already applied the container's transforms
        return 1
    try:
        value = exif.get(_ORIENTATION_TAG, 1)
        value = int(value)
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


_EXIF_DATE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_EXIF_OFFSET = re.compile(r"^\s*([+-])(\d{2}):(\d{2})\s*$")


def _text(value: object, limit: int = 64) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    cleaned = "".join(ch for ch in value if ch.isprintable()).strip()
    return cleaned[:limit] or None


def _exif_datetime(value: object, offset: object, subsec: object) -> datetime | None:
    text = _text(value)
    m = _EXIF_DATE.match(text or "")
    if not m:
        return None
    try:
        y, mo, d, hh, mm, ss = (int(g) for g in m.groups())
        taken = datetime(y, mo, d, hh, mm, ss)
    except ValueError:
        return None
    sub = _text(subsec) or ""
    if sub.isdigit():
        taken = taken.replace(microsecond=int(sub[:6].ljust(6, "0")))
    om = _EXIF_OFFSET.match(_text(offset) or "")
    if om:
        minutes = int(om.group(2)) * 60 + int(om.group(3))
        if minutes < 24 * 60:
            sign = -1 if om.group(1) == "-" else 1
            taken = taken.replace(tzinfo=timezone(timedelta(minutes=sign * minutes)))
    return taken


def _exif_facts(exif: Image.Exif) -> tuple[datetime | None, str | None]:
    try:
        sub = exif.get_ifd(_EXIF_IFD)
        taken = _exif_datetime(sub.get(0x9003), sub.get(0x9011), sub.get(0x9291))
        if taken is None:
            taken = _exif_datetime(sub.get(0x9004), sub.get(0x9012), sub.get(0x9292))
    except Exception:
        taken = None
    try:
        make, model = _text(exif.get(0x010F)), _text(exif.get(0x0110))
    except Exception:
        make = model = None
    if make and model and model.lower().startswith(make.split()[0].lower()):
        device: str | None = model
    else:
        device = " ".join(p for p in (make, model) if p) or None
    return taken, device


@lru_cache(maxsize=64)
def _icc_facts(icc: bytes) -> tuple[str | None, str | None]:
    """(description, colour space) of an ICC profile, or (None, None) if unusable."""
    try:
        prof = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        desc = (prof.profile.profile_description or "").strip() or "Unnamed ICC profile"
        return desc, prof.profile.xcolor_space.strip()
    except Exception:
        return None, None


def _icc_of(im: Image.Image) -> bytes | None:
    icc = im.info.get("icc_profile")
    if isinstance(icc, bytes) and icc and _icc_facts(icc)[0] is not None:
        return icc
    return None


# ------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ImageInfo:
    """Validated facts about an encoded photo (see module docstring for conventions)."""

    format: str
    content_type: str
    width: int  # as displayed (after EXIF orientation)
    height: int
    stored_width: int
    stored_height: int
    exif_orientation: int  # 1..8; invalid or missing -> 1
    icc: str | None  # ICC profile description, or None when there is no usable profile
    sha256: str
    taken_at: datetime | None  # aware only if EXIF gives an offset; naive = zone unknown
    device: str | None  # "Make Model"

    def as_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "content_type": self.content_type,
            "width": self.width,
            "height": self.height,
            "stored_width": self.stored_width,
            "stored_height": self.stored_height,
            "exif_orientation": self.exif_orientation,
            "icc": self.icc,
            "sha256": self.sha256,
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
            "device": self.device,
        }


def inspect_image(data: bytes, *, verify_pixels: bool = True) -> ImageInfo:
    """Validate ``data`` fully and return its facts; raises :class:`ImageRejected`.

    With ``verify_pixels`` (the default) the pixel data is proven to decode completely,
    cheaply (JPEG at 1/8 scale, PNG streamed through zlib). ``verify_pixels=False`` is a
    header/structure-only check (still catches most truncation) for bulk metadata.
    """
    data = _as_bytes(data)
    hdr = _preflight(data, deep=verify_pixels)
    with _pillow_guard():
        im = _open(data, hdr)
        try:
            exif = _exif_of(im, hdr)
            orientation = _orientation(exif, hdr.fmt)
            taken_at, device = _exif_facts(exif)
            icc = _icc_of(im)
            if verify_pixels:
                if hdr.fmt == "JPEG":
                    w, h = im.size
                    s = _JPEG_VERIFY_SCALE
                    im.draft(None, (max(1, w // s), max(1, h // s)))
                    im.load()
                elif hdr.fmt != "PNG":  # PNG was proven complete by the chunk walk
                    im.load()
        finally:
            im.close()
    sw, sh = hdr.width, hdr.height
    if hdr.fmt == "HEIF":
        sw, sh = im.size
    dw, dh = (sh, sw) if orientation in (5, 6, 7, 8) else (sw, sh)
    return ImageInfo(
        format=hdr.fmt,
        content_type=ALLOWED_FORMATS[hdr.fmt],
        width=dw,
        height=dh,
        stored_width=sw,
        stored_height=sh,
        exif_orientation=orientation,
        icc=_icc_facts(icc)[0] if icc else None,
        sha256=hashlib.sha256(data).hexdigest(),
        taken_at=taken_at,
        device=device,
    )


def read_image_file(path: str | PathLike[str]) -> bytes:
    """The bytes of a photo file, at most :data:`MAX_BYTES`; raises :class:`ImageRejected`
    (code ``unreadable`` or ``file_too_big``) with a clear reason.

    Only regular files are read: a directory, a named pipe, a socket or a device (which
    could block forever or never end) is refused from its ``stat`` before it is opened.
    """
    p = Path(path)
    name = p.name or str(p)
    too_big = ImageRejected(
        f"The file is larger than {MAX_BYTES >> 20} MB, the most the workstation accepts "
        "for one photo.",
        code="file_too_big",
    )

    def unreadable(why: str) -> ImageRejected:
        return ImageRejected(f"The file {name} cannot be read ({why}).", code="unreadable")

    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise unreadable("it does not exist") from None
    except OSError as exc:
        raise unreadable(exc.strerror or str(exc)) from exc
    if stat.S_ISDIR(st.st_mode):
        raise unreadable("it is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise unreadable("it is not a regular file")
    if st.st_size > MAX_BYTES:
        raise too_big
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise unreadable(exc.strerror or str(exc)) from exc
    if len(data) > MAX_BYTES:
        raise too_big
    return data


def inspect_file(path: str | PathLike[str]) -> ImageInfo:
    """:func:`inspect_image` on a file read by :func:`read_image_file`."""
    return inspect_image(read_image_file(path))


# ------------------------------------------------------------------------ decoding


def _fit(width: int, height: int, max_size: int) -> tuple[int, int]:
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _scale_to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit greyscale and float -> "L", scaled rather than clipped."""
    import numpy as np

    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        out = (arr.astype(np.uint32) >> 8).astype(np.uint8)
    else:
        finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 0.0
        if arr.dtype.kind != "f" and lo >= 0 and hi <= 255:
            out = arr.astype(np.uint8)
        elif arr.dtype.kind != "f" and lo >= 0 and hi <= 65535:
            out = (arr >> 8).astype(np.uint8)
        else:
            span = (hi - lo) or 1.0
            scaled = (np.nan_to_num(arr.astype(np.float64), nan=lo) - lo) * (255.0 / span)
            out = np.clip(scaled, 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _normalize_mode(im: Image.Image) -> Image.Image:
    """-> one of RGB, RGBA, L, CMYK, LAB (colour-managed later)."""
    mode = im.mode
    if mode in ("RGB", "RGBA", "L", "CMYK", "LAB"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode == "P":
        return im.convert("RGBA" if im.has_transparency_data else "RGB")
    if mode in ("LA", "La", "PA", "RGBa"):
        return im.convert("RGBA")
    if mode.startswith("I") or mode == "F":
        return _scale_to_8bit(im)
    return im.convert("RGB")


_ICC_SPACE_FOR_MODE = {"RGB": "RGB", "RGBA": "RGB", "L": "GRAY", "CMYK": "CMYK", "LAB": "Lab"}
_SRGB_DESCRIPTION = re.compile(r"^\s*sRGB\b", re.IGNORECASE)


@lru_cache(maxsize=32)
def _transform_to_srgb(icc: bytes | None, mode: str) -> ImageCms.ImageCmsTransform | None:
    try:
        src = (
            ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB"))
            if icc is None
            else ImageCms.ImageCmsProfile(io.BytesIO(icc))
        )
        return ImageCms.buildTransform(
            src,
            _SRGB,
            mode,
            "RGBA" if mode == "RGBA" else "RGB",
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
            flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
        )
    except Exception:
        return None


def _to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Colour-manage into sRGB; returns RGB or RGBA."""
    mode = im.mode
    transform = None
    if icc is not None:
        desc, space = _icc_facts(icc)
        if space == _ICC_SPACE_FOR_MODE.get(mode) and not _SRGB_DESCRIPTION.match(desc or ""):
            transform = _transform_to_srgb(icc, mode)
    elif mode == "LAB":
        transform = _transform_to_srgb(None, "LAB")
    if transform is not None:
        if transform.input_mode == transform.output_mode:
            ImageCms.applyTransform(im, transform, inPlace=True)
            return im
        out = ImageCms.applyTransform(im, transform)
        if out is not None:
            return out
    return im if mode in ("RGB", "RGBA") else im.convert("RGB")


def _flatten(im: Image.Image) -> Image.Image:
    if im.mode != "RGBA":
        return im if im.mode == "RGB" else im.convert("RGB")
    background = Image.new("RGB", im.size, (255, 255, 255))
    background.paste(im, (0, 0), im)  # an RGBA mask uses its alpha band, without a copy
    return background


def decode_image(data: bytes, *, max_size: int | None = None) -> Image.Image:
    """Decode ``data`` to an oriented sRGB ``RGB`` image with no metadata.

    ``max_size`` bounds the longer displayed side (never upscales). JPEGs are then
    decoded directly at 1/2, 1/4 or 1/8 size by the DCT (``draft``) before a Lanczos
    resize, so a 12 MP photo never exists in memory at full size.
    Raises :class:`ImageRejected`.
    """
    if max_size is not None and max_size < 1:
        raise ValueError("max_size must be a positive number of pixels")
    data = _as_bytes(data)
    # deep: Pillow quietly accepts a PNG whose zlib stream ends before the last row.
    hdr = _preflight(data, deep=True)
    with _pillow_guard():
        src = _open(data, hdr)
        orientation = _orientation(_exif_of(src, hdr), hdr.fmt)
        icc = _icc_of(src)
        target = _fit(*src.size, max_size) if max_size else src.size
        if hdr.fmt == "JPEG" and target != src.size:
            src.draft(src.mode, target)
        src.load()
        src.fp = None  # the result must not keep the encoded bytes alive
        if hdr.fmt == "TIFF" and _ORIENTATION_TAG not in getattr(src, "tag_v2", {}):
            orientation = 1  # newer Pillow applies a TIFF's orientation on load
        im = _normalize_mode(src)
        del src  # frees the full-size pixels as soon as they are converted/resized
        # Smallest first: resize, then turn (while still 1 byte/pixel if greyscale),
        # then colour-manage (in place when possible) and flatten alpha.
        if im.size != target:
            im = im.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        if orientation in _TRANSPOSE:
            im = im.transpose(_TRANSPOSE[orientation])
        im = _to_srgb(im, icc)
        im = _flatten(im)
        if im.mode != "RGB":
            im = im.convert("RGB")
        im.info = {}
        return im


# ------------------------------------------------------------------------- export


def strip_identifying_metadata(img: Image.Image) -> Image.Image:
    """A copy of ``img``'s pixels as RGB with no metadata at all (no EXIF, GPS, XMP,
    comments, ICC). Pass an image from :func:`decode_image` (already sRGB, oriented)."""
    with _SCOPE.active():
        im = _flatten(_normalize_mode(img))
        clean = im.copy() if im is img else im
    clean.info = {}
    return clean


def encode_jpeg(img: Image.Image, quality: int = 92) -> bytes:
    """JPEG bytes for export: pixels plus an sRGB ICC profile, and nothing else (no EXIF,
    GPS, XMP or comment). 4:4:4 chroma, to keep the colour detail of skin lesions."""
    if not 1 <= quality <= 100:
        raise ValueError("quality must be between 1 and 100")
    clean = strip_identifying_metadata(img)
    buf = io.BytesIO()
    with _SCOPE.active():
        clean.save(
            buf,
            "JPEG",
            quality=quality,
            subsampling=0,
            optimize=True,
            icc_profile=SRGB_ICC_PROFILE,
        )
    return buf.getvalue()
