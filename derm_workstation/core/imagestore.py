"""Content-addressed photo storage.

A photo is stored once under its SHA-256: ``images/ab/cd/abcd…``. Writes go to
a temporary file in the same folder, are fsynced and atomically renamed, so a
crash never leaves a half-written photo under a real name. Every read checks
the hash again: a damaged or missing file raises :class:`ImageCorruptError`
instead of handing a broken picture to the viewer.

A bulk writer (portal sync) may store with ``durable=False`` and call
:meth:`ImageStore.make_durable` before its database rows commit: the file is
renamed into place first and flushed after, so one flush of the file also
carries the rename on journalling file systems (ext4: one journal commit per
photo instead of two). A process crash loses nothing (the bytes are in the OS's
cache); an OS crash before the flush can leave a damaged file that no row
refers to yet, which is harmless: the next store of the same bytes replaces a
file that does not match its name, and every read checks the hash.
:meth:`ImageStore.make_durable` also tells the OS (where it can be told) that the
flushed bytes need not stay cached: a sync of thousands of photos then reuses the
same few cache pages instead of taking fresh memory for every photo (on a virtual
machine, fresh pages cost more than writing the bytes) and does not push the
clinician's working set out of the cache. Such a writer flushes each photo's bytes as
it arrives and the folder entries of several photos at once
(``make_durable(..., folders=False)`` then :meth:`ImageStore.flush_folders`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, TypeVar

from derm_workstation.core.errors import ImageCorruptError, InputError, StorageError

T = TypeVar("T")

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _release_cache(fd: int) -> None:
    """Let the OS drop a file's cached pages (a hint; no-op where unsupported).

    On a flushed file they are dropped; on a file not flushed yet, Linux starts writing
    them out without waiting, so the flush that follows has less left to do.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


class ImageStore:
    """Photos on disk addressed by their SHA-256 (lower-case hex)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        #: Folders known to exist (made or seen by this store): no mkdir per photo.
        self._folders: set[Path] = set()

    def _in_folder(self, folder: Path, op: Callable[[], T]) -> T:
        """Run ``op``, which writes into ``folder``: the folder is made the first time
        (not once per photo), and again if it was removed under us since."""
        if folder not in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            self._folders.add(folder)
        try:
            return op()
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
            return op()

    def path_for(self, sha256: str) -> Path:
        if not _SHA_RE.fullmatch(sha256):
            raise InputError(f"'{sha256}' is not a SHA-256 photo id.")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def contains(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def put_bytes(self, data: bytes) -> str:
        """Store bytes; returns their SHA-256. Storing the same bytes twice is a no-op."""
        return self.put_stream([data])

    def put_file(self, source: Path) -> str:
        with Path(source).open("rb") as fh:
            return self.put_stream(iter(lambda: fh.read(_CHUNK), b""))

    def put_stream(self, chunks: Iterable[bytes], expected_sha256: str | None = None, *,
                   durable: bool = True) -> str:
        """Stream chunks to a temp file, fsync, verify and rename into place.

        Memory stays flat whatever the size. With ``expected_sha256``, a mismatch
        raises :class:`ImageCorruptError` and nothing is stored. ``durable=False``
        skips the fsyncs (still a temp file and an atomic rename): the caller must
        call :meth:`make_durable` before anything durable refers to the photo.
        """
        digest = hashlib.sha256()
        try:
            fd, tmp_name = self._in_folder(
                self.root, lambda: tempfile.mkstemp(prefix=".incoming-", dir=self.root))
        except OSError as exc:
            raise StorageError(f"Cannot write to the photo store {self.root}: {exc}") from exc
        tmp = Path(tmp_name)
        in_source = False  # errors raised by the chunk source are the caller's, not ours
        try:
            with os.fdopen(fd, "wb") as out:
                source = iter(chunks)
                while True:
                    in_source = True
                    chunk = next(source, None)
                    in_source = False
                    if chunk is None:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                if durable:
                    os.fsync(out.fileno())
                else:  # the flush comes later; where the OS can, its writing starts now
                    _release_cache(out.fileno())
            sha = digest.hexdigest()
            if expected_sha256 is not None and sha != expected_sha256.lower():
                raise ImageCorruptError(
                    "The photo did not match its expected checksum and was not stored.", sha
                )
            final = self.path_for(sha)
            if final.is_file() and self._file_sha(final) == sha:
                tmp.unlink()
                if durable:  # another writer may have stored it with durable=False
                    self.make_durable([sha])
                return sha
            self._in_folder(final.parent, lambda: os.replace(tmp, final))
            if durable:
                _fsync_dir(final.parent)
            return sha
        except OSError as exc:
            if in_source:
                raise
            raise StorageError(f"Cannot write to the photo store {self.root}: {exc}") from exc
        finally:
            if tmp.exists():
                tmp.unlink()

    def make_durable(self, sha256s: Iterable[str], *, folders: bool = True) -> None:
        """Flush stored photos (their bytes and their folder entries) to disk.

        For photos stored with ``durable=False``; a no-op cost for ones already on disk.
        ``folders=False`` flushes only the bytes: the caller then calls
        :meth:`flush_folders` for all of them at once (fewer flushes of the same folders).
        Raises :class:`StorageError` when one is missing or cannot be flushed.
        """
        dirs: set[Path] = set()
        for sha in sha256s:
            path = self.path_for(sha)
            try:
                # Windows flushes only handles opened for writing.
                fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
                try:
                    os.fsync(fd)
                    _release_cache(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise StorageError(
                    f"Cannot write to the photo store {self.root}: {exc}") from exc
            dirs.add(path.parent)
        if folders:
            self._flush_dirs(dirs)

    def flush_folders(self, sha256s: Iterable[str]) -> None:
        """Flush the folder entries of stored photos (after ``make_durable(...,
        folders=False)``); each folder once."""
        self._flush_dirs({self.path_for(sha).parent for sha in sha256s})

    def _flush_dirs(self, dirs: set[Path]) -> None:
        try:
            for folder in dirs:
                _fsync_dir(folder)
        except OSError as exc:
            raise StorageError(f"Cannot write to the photo store {self.root}: {exc}") from exc

    @staticmethod
    def _file_sha(path: Path) -> str:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def read_bytes(self, sha256: str) -> bytes:
        """The photo's bytes, verified against its hash."""
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ImageCorruptError(
                f"Photo {sha256[:12]} is missing from the photo store; it cannot be shown.",
                sha256,
            ) from exc
        except OSError as exc:
            raise ImageCorruptError(
                f"Photo {sha256[:12]} cannot be read: {exc.strerror}.", sha256
            ) from exc
        if sha256_bytes(data) != sha256:
            raise ImageCorruptError(
                f"Photo {sha256[:12]} is damaged on disk (its checksum does not match); "
                "it is not shown. Fetch it again from the portal or re-import the original.",
                sha256,
            )
        return data

    def open_verified(self, sha256: str) -> BinaryIO:
        """A file object over the verified bytes (for decoders that want a stream)."""
        import io

        return io.BytesIO(self.read_bytes(sha256))

    def verify(self, sha256: str) -> bool:
        path = self.path_for(sha256)
        return path.is_file() and self._file_sha(path) == sha256

    def remove_stale_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Delete temp files left by a crash mid-write; returns how many.

        Only files untouched for ``older_than_s`` seconds: another process (the CLI
        while the GUI is open) may be writing a fresh one right now.
        """
        import time

        count = 0
        if self.root.is_dir():
            cutoff = time.time() - older_than_s
            for tmp in self.root.glob(".incoming-*"):
                try:
                    if tmp.stat().st_mtime <= cutoff:
                        tmp.unlink()
                        count += 1
                except OSError:
                    pass
        return count
