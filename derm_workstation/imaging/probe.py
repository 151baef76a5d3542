"""Cheap facts about an image file without decoding its pixels.

A thin layer over :mod:`derm_workstation.imaging.decode` (the full safe-decoding
pipeline: allow-list, bomb limits, ICC, EXIF), kept for storing photo metadata.
``probe_bytes`` runs the same header and structure checks as ``decode`` (so it catches
unsupported formats, bombs and most truncated files) but does not decode pixels; use
:func:`~derm_workstation.imaging.decode.inspect_image` to also prove the pixels decode.
Rejections are :class:`~derm_workstation.imaging.decode.ImageRejected`, an
:class:`~derm_workstation.core.errors.InputError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from derm_workstation.imaging.decode import ALLOWED_FORMATS, ImageRejected, inspect_image

__all__ = ["ALLOWED_FORMATS", "ImageFacts", "ImageRejected", "probe_bytes"]


@dataclass(frozen=True)
class ImageFacts:
    format: str
    content_type: str
    width: int  # as displayed, after EXIF orientation
    height: int
    stored_width: int
    stored_height: int
    exif_orientation: int


def probe_bytes(data: bytes) -> ImageFacts:
    """Format and size of an encoded image; raises ImageRejected (an InputError)."""
    info = inspect_image(data, verify_pixels=False)
    return ImageFacts(
        info.format,
        info.content_type,
        info.width,
        info.height,
        info.stored_width,
        info.stored_height,
        info.exif_orientation,
    )
