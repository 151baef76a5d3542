"""Opening the local database: checks, backup, migration, sessions.

``Database.open`` refuses files that are not SQLite databases or were written by
a newer version of the workstation (nothing is overwritten), takes a backup of
the file before migrating an older schema, then upgrades it with Alembic.
SQLite runs in WAL mode with foreign keys on; any other SQLAlchemy URL
(PostgreSQL for a clinic sharing one database) is used as given.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from derm_workstation.core.errors import DatabaseError, SchemaTooNewError, StorageError
from derm_workstation.core.migrations import REVISIONS

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_MAGIC = b"SQLite format 3\x00"


def alembic_config(url: str | None = None, migrations: Path = MIGRATIONS_DIR) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def script_revisions(migrations: Path = MIGRATIONS_DIR) -> tuple[str, ...]:
    """Every revision in the Alembic scripts, oldest first (imports Alembic)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(None, migrations))
    return tuple(reversed([rev.revision for rev in script.walk_revisions()]))


def head_revision(migrations: Path = MIGRATIONS_DIR) -> str:
    if migrations == MIGRATIONS_DIR:
        return REVISIONS[-1]
    return script_revisions(migrations)[-1]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and in-memory ones."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def make_engine(url: str) -> Engine:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _check_sqlite_file(path: Path) -> None:
    if not path.exists():
        return
    if path.is_dir():
        raise DatabaseError(f"The database path {path} is a folder, not a database file.")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise DatabaseError(f"Cannot read the database file {path}: {exc.strerror}.") from exc
    if head and head != SQLITE_MAGIC:
        raise DatabaseError(
            f"The file {path} is not a Derm Workstation database (it is not SQLite). "
            "Nothing was changed. Point --db or --data-dir at the right location."
        )


def backup_sqlite(path: Path, backups_dir: Path, revision: str | None) -> Path:
    """Copy a live SQLite database consistently (online backup API) into backups_dir."""
    backups_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = backups_dir / f"{path.stem}-{revision or 'unversioned'}-{stamp}.sqlite3"
    src = sqlite3.connect(str(path))
    try:
        dst = sqlite3.connect(str(target))
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    return target


class Database:
    """An open, migrated database and its session factory."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, backups_dir: Path | None = None, migrate: bool = True,
             migrations: Path = MIGRATIONS_DIR) -> Database:
        """Open (and if needed back up and migrate) the database at ``url``.

        ``migrations`` is the Alembic script folder; only tests pass another one.
        """
        path = sqlite_file(url)
        if path is not None:
            _check_sqlite_file(path)
        engine = make_engine(url)
        try:
            current = cls._current_revision(engine)
            known = REVISIONS if migrations == MIGRATIONS_DIR else script_revisions(migrations)
            head = known[-1]
            if current is not None and current not in known:
                raise SchemaTooNewError(
                    "This database was written by a newer version of Derm Workstation "
                    f"(schema {current}). Install the newer version; nothing was changed."
                )
            if current is None and cls._has_foreign_tables(engine):
                raise DatabaseError(
                    f"The database at {path or make_url(url).render_as_string()} holds tables "
                    "that are not a Derm Workstation database. Nothing was changed."
                )
            if migrate and current != head:
                if current is not None and path is not None and backups_dir is not None:
                    saved = backup_sqlite(path, backups_dir, current)
                    log.info("Backed up the database before migrating to %s", saved.name)
                cls._upgrade(engine, url, migrations)
            if path is not None:
                with engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        except (SADatabaseError, sqlite3.DatabaseError) as exc:
            engine.dispose()
            raise DatabaseError(cls._explain(exc, path)) from exc
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, url)

    @staticmethod
    def _explain(exc: Exception, path: Path | None) -> str:
        text = str(getattr(exc, "orig", exc))
        where = f" {path}" if path else ""
        if "readonly" in text or "read-only" in text:
            return f"The database{where} is read-only; the workstation needs to write to it."
        if "not a database" in text or "malformed" in text:
            return f"The database file{where} is damaged or not a database. Nothing was changed."
        if "unable to open" in text:
            return f"Cannot open the database{where}; check that the folder exists and is writable."
        return f"The database{where} could not be opened: {text}"

    @staticmethod
    def _current_revision(engine: Engine) -> str | None:
        """The revision in ``alembic_version`` (plain SQL: Alembic is only loaded to migrate)."""
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            heads = tuple(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
        if len(heads) > 1:
            raise SchemaTooNewError(
                "This database carries several schema versions at once "
                f"({', '.join(sorted(heads))}); it was not written by this version of "
                "Derm Workstation. Nothing was changed."
            )
        return heads[0] if heads else None

    @staticmethod
    def _has_foreign_tables(engine: Engine) -> bool:
        names = set(inspect(engine).get_table_names())
        return bool(names - {"alembic_version"})

    @staticmethod
    def _upgrade(engine: Engine, url: str, migrations: Path) -> None:
        from alembic import command

        cfg = alembic_config(url, migrations)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on any exception."""
        s = self._sessions()
        try:
            yield s
            s.commit()
        except OperationalError as exc:
            s.rollback()
            raise StorageError(f"The database could not be written: {exc.orig}") from exc
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def read_session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()


def open_database(url: str, backups_dir: Path | None = None) -> Database:
    return Database.open(url, backups_dir=backups_dir)


__all__ = ["Database", "backup_sqlite", "head_revision", "open_database"]
