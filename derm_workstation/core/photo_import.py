"""Adding photos to a case from local files (e-mail attachments, a USB stick).

Two steps, so the GUI can run them on different lanes:

1. :func:`validate_file` / :func:`validate_bytes` (no database; the image pool): the
   file goes through the safe pipeline, :func:`~derm_workstation.imaging.decode.inspect_image`
   with full pixel verification. A file the workstation will not open raises
   :class:`~derm_workstation.imaging.decode.ImageRejected` with a one-sentence reason.
2. :meth:`PhotoImporter.store` (the database lane): permission check (``case.edit``),
   the bytes into the content-addressed image store, the photo row through
   :func:`~derm_workstation.core.intake.add_photo` (``source="import"``) and an audit
   event, in one transaction.

Nothing is half-imported: a rejected file leaves no trace; the bytes are written (fsync,
atomic rename) before the row that points to them, so a failure in between leaves at most
an unreferenced file in the store, never a photo row without its file. File names may
contain patient names, so they are neither logged nor audited.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from os import PathLike
from pathlib import Path

from sqlalchemy import select

from derm_workstation.core import audit
from derm_workstation.core.errors import DermError, InputError, NotFoundError
from derm_workstation.core.intake import add_photo
from derm_workstation.core.models import Case, Photo
from derm_workstation.core.services import photo_view
from derm_workstation.core.users import Actor
from derm_workstation.core.views import PhotoView
from derm_workstation.core.workspace import Workspace
from derm_workstation.imaging.decode import ImageInfo, inspect_image

__all__ = [
    "DuplicatePhotoError",
    "ImportOutcome",
    "PhotoImporter",
    "ValidatedPhoto",
    "validate_bytes",
    "validate_file",
]

log = logging.getLogger(__name__)

SOURCE = "import"
MAX_TITLE = 200


class DuplicatePhotoError(InputError):
    """The same photo (same bytes) is already part of the case."""


@dataclass(frozen=True)
class ValidatedPhoto:
    """A file that passed the safe pipeline: its bytes and what they are."""

    name: str  # the file's name, for the clinician's eyes only
    data: bytes
    info: ImageInfo

    def summary(self) -> str:
        """"JPEG · 4000 × 3000 px · taken 12 Mar 2026 14:05" (local time)."""
        parts = [self.info.format, f"{self.info.width} × {self.info.height} px"]
        if self.info.taken_at is not None:
            parts.append(f"taken {_local(self.info.taken_at):%d %b %Y %H:%M}")
        return " · ".join(parts)


@dataclass(frozen=True)
class ImportOutcome:
    """What happened to one file: ``photo`` when stored, else ``error`` (one sentence)."""

    name: str
    photo: PhotoView | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.photo is not None


def _local(dt: datetime) -> datetime:
    # EXIF time without an offset is the camera's wall clock, zone unknown: the best
    # reading at the workstation is local time (astimezone() on a naive value does that).
    return dt.astimezone()


def validate_bytes(data: bytes, name: str = "photo") -> ValidatedPhoto:
    """Check ``data`` through the safe pipeline (pixels proven to decode)."""
    info = inspect_image(data, verify_pixels=True)
    return ValidatedPhoto(name=name, data=bytes(data), info=info)


def validate_file(path: str | PathLike[str]) -> ValidatedPhoto:
    """Read a file (regular files only, size-limited) and validate it."""
    from derm_workstation.imaging.decode import read_image_file

    p = Path(path)
    return validate_bytes(read_image_file(p), p.name)


def _clean_text(value: str, limit: int = MAX_TITLE) -> str:
    return " ".join(value.split())[:limit]


class PhotoImporter:
    """Stores validated photos in a case, as the acting user."""

    def __init__(self, workspace: Workspace, actor: Actor) -> None:
        self.ws = workspace
        self.actor = actor

    def store(self, case_id: str, photo: ValidatedPhoto, *, body_site: str | None = None,
              title: str | None = None) -> PhotoView:
        """Add one validated photo to the case; returns the stored photo.

        ``body_site`` defaults to the case's body site, ``title`` to the file name without
        its extension. Raises :class:`DuplicatePhotoError` when the case already has these
        exact bytes, :class:`~derm_workstation.core.errors.NotFoundError` for an unknown
        case and :class:`~derm_workstation.core.errors.PermissionDeniedError` without
        ``case.edit``."""
        self.actor.require("case.edit")
        with self.ws.db.session() as s:
            case = s.get(Case, case_id)
            if case is None:
                raise NotFoundError(f"No case with id '{case_id}'.")
            existing = s.scalar(
                select(Photo.position).where(Photo.case_id == case.id,
                                             Photo.sha256 == photo.info.sha256)
            )
            if existing is not None:
                raise DuplicatePhotoError(
                    f"This photo is already in the case (photo {existing + 1}); it was not "
                    "added again."
                )
            site = _clean_text(body_site if body_site is not None else case.body_site)
            name = _clean_text(title) if title else _clean_text(Path(photo.name).stem)
            taken = photo.info.taken_at
            stored = add_photo(
                s,
                self.ws.images,
                case,
                photo.data,
                body_site=site,
                title=name or "Imported photo",
                taken_at=_local(taken) if taken is not None else None,
                source=SOURCE,
            )
            audit.record(
                s, self.actor, "photo.import", "photo", stored.id,
                {
                    "case_id": case.id,
                    "sha256": stored.sha256,
                    "format": photo.info.format,
                    "width": stored.width,
                    "height": stored.height,
                    "bytes": stored.byte_size,
                },
            )
            view = photo_view(stored)
        log.info("photo %s imported into case %s", view.id, case_id)
        return view

    def store_all(self, case_id: str, photos: Sequence[ValidatedPhoto], *,
                  body_site: str | None = None, title: str | None = None
                  ) -> list[ImportOutcome]:
        """:meth:`store` each photo in its own transaction; one outcome per photo.

        A photo that cannot be stored (a duplicate, a full disk) does not undo the
        others; its outcome carries the reason. A permission problem stops at once."""
        self.actor.require("case.edit")
        out: list[ImportOutcome] = []
        for i, ph in enumerate(photos):
            numbered = f"{title} ({i + 1})" if title and len(photos) > 1 else title
            try:
                out.append(ImportOutcome(ph.name, photo=self.store(
                    case_id, ph, body_site=body_site, title=numbered)))
            except DermError as exc:
                out.append(ImportOutcome(ph.name, error=exc.message))
        return out

    def import_files(self, case_id: str, paths: Sequence[str | PathLike[str]], *,
                     body_site: str | None = None) -> list[ImportOutcome]:
        """Validate and store files (for scripts and the command line)."""
        self.actor.require("case.edit")
        valid: list[ValidatedPhoto] = []
        rejected: dict[int, ImportOutcome] = {}
        for i, path in enumerate(paths):
            try:
                valid.append(validate_file(path))
            except DermError as exc:
                rejected[i] = ImportOutcome(Path(path).name, error=exc.message)
        stored = iter(self.store_all(case_id, valid, body_site=body_site))
        return [rejected[i] if i in rejected else next(stored) for i in range(len(paths))]
