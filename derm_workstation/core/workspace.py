"""One open workstation data store: paths, database and image store together.

``Workspace.open`` is the single way in for the CLI, the GUI and tests: it
checks the data folder, opens (and if needed backs up and migrates) the
database, and clears temp files a crash may have left in the image store.
"""

from __future__ import annotations

import logging
import logging.handlers
from dataclasses import dataclass
from pathlib import Path

from derm_workstation.core.db import Database
from derm_workstation.core.imagestore import ImageStore
from derm_workstation.core.notify import notifier
from derm_workstation.core.paths import DataPaths, resolve_data_paths

log = logging.getLogger(__name__)


@dataclass
class Workspace:
    paths: DataPaths
    db: Database
    images: ImageStore

    @classmethod
    def open(cls, data_dir: str | Path | None = None, db_url: str | None = None) -> Workspace:
        paths = resolve_data_paths(data_dir).ensure(writable=True)
        db = Database.open(db_url or paths.database_url(), backups_dir=paths.backups)
        images = ImageStore(paths.images)
        removed = images.remove_stale_temp_files()
        if removed:
            log.warning("Removed %d incomplete photo file(s) left by an interrupted write", removed)
            notifier.info(
                f"{removed} photo file(s) left half-written by an earlier interruption were "
                "cleaned up. No stored photo was affected."
            )
        return cls(paths=paths, db=db, images=images)

    @property
    def location(self) -> str:
        """Where the data lives, for the status bar (no secrets: the URL password is hidden)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.db.url)
        if url.get_backend_name() == "sqlite":
            return str(self.paths.root)
        return url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.db.close()


def configure_logging(paths: DataPaths, verbose: bool = False) -> Path:
    """Log to ``logs/workstation.log`` (rotated). Never log patient data."""
    log_file = paths.logs / "workstation.log"
    root = logging.getLogger()
    if not any(isinstance(h, logging.handlers.RotatingFileHandler) for h in root.handlers):
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=2_000_000, backupCount=3, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return log_file
