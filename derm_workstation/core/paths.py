"""Where the workstation keeps its files.

Resolution order for the data directory: ``--data-dir`` (explicit argument),
the ``DERM_WORKSTATION_HOME`` environment variable, then the per-user data
directory given by :mod:`platformdirs` (e.g. ``~/.local/share/DermWorkstation``
on Linux, ``%LOCALAPPDATA%\\DermWorkstation`` on Windows,
``~/Library/Application Support/DermWorkstation`` on macOS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from derm_workstation.core.errors import DataDirError

APP_NAME = "DermWorkstation"
APP_AUTHOR = "DermWorkstation"
HOME_ENV = "DERM_WORKSTATION_HOME"


def default_data_dir() -> Path:
    """The data directory used when nothing overrides it."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir(APP_NAME, APP_AUTHOR))


@dataclass(frozen=True)
class DataPaths:
    """The files and folders under one data directory."""

    root: Path

    @property
    def database(self) -> Path:
        return self.root / "derm.sqlite3"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def settings_file(self) -> Path:
        return self.root / "settings.json"

    def _probe_write(self) -> None:
        """Really try to write (permission bits do not stop root; a read-only mount does)."""
        import tempfile

        try:
            fd, name = tempfile.mkstemp(prefix=".write-test-", dir=self.root)
        except OSError as exc:
            raise _read_only(self.root) from exc
        os.close(fd)
        os.unlink(name)

    def database_url(self) -> str:
        return "sqlite:///" + self.database.as_posix()

    def ensure(self, writable: bool = True) -> DataPaths:
        """Create the folders; raise :class:`DataDirError` with a clear reason if we cannot."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirError(
                f"Cannot create the data folder {self.root}: {exc.strerror or exc}."
            ) from exc
        if not self.root.is_dir():
            raise DataDirError(f"The data folder {self.root} is not a folder.")
        if writable:
            self._probe_write()
            for sub in (self.images, self.cache, self.backups, self.logs):
                try:
                    sub.mkdir(exist_ok=True)
                except OSError as exc:
                    raise DataDirError(
                        f"Cannot create {sub}: {exc.strerror or exc}."
                    ) from exc
        return self


def _read_only(root: Path) -> DataDirError:
    return DataDirError(
        f"The data folder {root} is read-only. Nothing was changed. "
        "Choose a folder you can write to with --data-dir."
    )


def resolve_data_paths(data_dir: str | os.PathLike[str] | None = None) -> DataPaths:
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return DataPaths(root.resolve())


CACHE_ENV = "DERM_WORKSTATION_CACHE"


def default_cache_dir() -> Path:
    """Machine-local cache for regenerable files (demo photo renders); never patient data."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir(APP_NAME, APP_AUTHOR))
