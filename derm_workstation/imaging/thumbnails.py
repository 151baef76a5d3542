"""Thumbnails: small oriented sRGB JPEGs, made cheaply and cached on disk.

:func:`make_thumbnail` goes through :func:`~derm_workstation.imaging.decode.decode_image`
with ``max_size``, so a big JPEG is decoded directly at 1/2, 1/4 or 1/8 size by the
DCT and never exists in memory at full size; every other safety rule of ``decode``
(allow-list, bomb limits, truncation) applies unchanged.

:class:`ThumbnailCache` keeps them under ``root/<size>/<sha[:2]>/<sha>.jpg``. Files are
written atomically (temporary file in the same folder, then ``os.replace``), so readers
never see half a file. A cache file that is damaged anyway (disk trouble, a crash on a
file system without ordered renames) is detected on read by a cheap JPEG structure walk
and regenerated. Cache writes are best effort: a read-only or full disk only costs the
cache, never the thumbnail. Thumbnails are not fsynced: they can always be remade.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from derm_workstation.core.errors import ImageCorruptError, InputError
from derm_workstation.imaging.decode import (
    SRGB_ICC_PROFILE,
    ImageRejected,
    decode_image,
    jpeg_dimensions,
)

__all__ = ["MAX_THUMBNAIL_SIZE", "ThumbnailCache", "make_thumbnail"]

log = logging.getLogger(__name__)

MAX_THUMBNAIL_SIZE = 4096
_THUMBNAIL_QUALITY = 85
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_THUMBNAIL_SIZE:
        raise ValueError(f"thumbnail size must be an int from 1 to {MAX_THUMBNAIL_SIZE}")
    return size


def make_thumbnail(data: bytes, size: int = 256) -> bytes:
    """JPEG bytes of ``data`` fitting in ``size`` x ``size``: oriented, sRGB (tagged with a
    small sRGB profile), no other metadata. Raises
    :class:`~derm_workstation.imaging.decode.ImageRejected` for unusable input."""
    _check_size(size)
    img = decode_image(data, max_size=size)
    buf = io.BytesIO()
    img.save(
        buf,
        "JPEG",
        quality=_THUMBNAIL_QUALITY,
        optimize=True,
        icc_profile=SRGB_ICC_PROFILE,
    )
    return buf.getvalue()


class ThumbnailCache:
    """Thumbnails on disk, addressed by the photo's SHA-256 and the thumbnail size."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str, size: int) -> Path:
        if not isinstance(sha256, str) or not _SHA_RE.match(sha256):
            raise InputError(f"'{sha256}' is not a SHA-256 photo id.")
        _check_size(size)
        return self.root / str(size) / sha256[:2] / f"{sha256}.jpg"

    def get(self, sha256: str, size: int) -> bytes | None:
        """The cached thumbnail, or None if missing or damaged."""
        path = self.path_for(sha256, size)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            width, height = jpeg_dimensions(data)
        except ImageRejected:
            log.info("Damaged thumbnail %s will be regenerated", path)
            return None
        if max(width, height) > size:
            return None
        return data

    def get_or_create(self, sha256: str, size: int, load: Callable[[], bytes]) -> bytes:
        """The cached thumbnail, or one made from ``load()`` (the photo's bytes) and cached.

        The loaded bytes must hash to ``sha256`` (so the cache cannot be poisoned with
        another photo's thumbnail); a mismatch raises
        :class:`~derm_workstation.core.errors.ImageCorruptError`.
        """
        path = self.path_for(sha256, size)
        cached = self.get(sha256, size)
        if cached is not None:
            return cached
        data = load()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ImageCorruptError(
                f"Photo {sha256[:12]} does not match its checksum; no thumbnail was made.",
                sha256,
            )
        thumb = make_thumbnail(data, size)
        self._write_atomic(path, thumb)
        return thumb

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jpg", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:  # the cache is an optimisation; never fail the caller
            log.warning("Cannot write thumbnail %s: %s", path, exc)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
