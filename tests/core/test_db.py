"""Opening the database: refusals that change nothing, WAL, backups, sessions, UTC times."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from derm_workstation.core.db import Database, alembic_config, backup_sqlite, head_revision
from derm_workstation.core.errors import DatabaseError, SchemaTooNewError, StorageError
from derm_workstation.core.models import Case, Patient, UTCDateTime


def _url(path: Path) -> str:
    return "sqlite:///" + path.as_posix()


def _snapshot(folder: Path) -> dict[str, str]:
    """Name -> sha256 of every file in the folder (catches new -wal/-journal files too)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def _make_workstation_db(path: Path) -> None:
    db = Database.open(_url(path))
    with db.session() as s:
        s.add(Patient(family_name="Keep", given_name="Me"))
    db.close()


# ---------------------------------------------------------------- pragmas


def test_wal_journal_and_foreign_keys_are_on(tmp_path: Path) -> None:
    path = tmp_path / "derm.sqlite3"
    db = Database.open(_url(path))
    try:
        # Two connections at once: the pragmas must hold for every pooled connection.
        with db.engine.connect() as c1, db.engine.connect() as c2:
            for conn in (c1, c2):
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        with db.session() as s:
            assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
            s.add(Patient(family_name="A"))
        assert (tmp_path / "derm.sqlite3-wal").exists()
    finally:
        db.close()
    # WAL is persistent in the file header: a plain sqlite3 connection sees it too.
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    db = Database.open(_url(tmp_path / "derm.sqlite3"))
    try:
        with pytest.raises(IntegrityError, match="FOREIGN KEY"), db.session() as s:
            s.execute(
                text(
                    "INSERT INTO photos (id, case_id, position, sha256, content_type, "
                    "byte_size, width, height, body_site, title, source, created_at) VALUES "
                    "('p', 'no-such-case', 0, 'x', 'image/png', 1, 1, 1, '', '', 'demo', "
                    "'2024-01-01 00:00:00')"
                )
            )
    finally:
        db.close()


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "content",
    [
        os.urandom(8192),
        b"patient list\nSmith, Ann\nJones, Bob\n" * 50,
        b"hello",
    ],
    ids=["random-bytes", "text-file", "short-text"],
)
def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "derm.sqlite3"
    path.write_bytes(content)
    before = _snapshot(tmp_path)
    with pytest.raises(DatabaseError, match="not a Derm Workstation database") as err:
        Database.open(_url(path))
    assert "Nothing was changed" in str(err.value)
    assert path.read_bytes() == content
    assert _snapshot(tmp_path) == before


def test_a_damaged_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "derm.sqlite3"
    content = b"SQLite format 3\x00" + os.urandom(4096)
    path.write_bytes(content)
    before = _snapshot(tmp_path)
    with pytest.raises(DatabaseError, match="damaged or not a database"):
        Database.open(_url(path))
    assert path.read_bytes() == content
    assert _snapshot(tmp_path) == before


def test_a_folder_in_place_of_the_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "derm.sqlite3"
    path.mkdir()
    with pytest.raises(DatabaseError, match="is a folder"):
        Database.open(_url(path))


def test_a_missing_parent_folder_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="Cannot open the database"):
        Database.open(_url(tmp_path / "no" / "such" / "derm.sqlite3"))


@pytest.mark.parametrize("migrate", [True, False])
def test_a_database_from_a_newer_version_is_refused_and_left_alone(
    tmp_path: Path, migrate: bool
) -> None:
    path = tmp_path / "derm.sqlite3"
    _make_workstation_db(path)
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = '9999_future'")
    con.commit()
    con.close()
    before = _snapshot(tmp_path)
    backups = tmp_path / "backups"

    with pytest.raises(SchemaTooNewError, match="9999_future") as err:
        Database.open(_url(path), backups_dir=backups, migrate=migrate)

    assert "newer version" in str(err.value)
    assert _snapshot(tmp_path) == before
    assert not backups.exists() or not any(backups.iterdir())


def test_a_sqlite_file_of_another_application_is_refused_and_left_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "derm.sqlite3"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    con.execute("INSERT INTO invoices (amount) VALUES (12.5)")
    con.commit()
    con.close()
    before = _snapshot(tmp_path)

    with pytest.raises(DatabaseError, match="not a Derm Workstation database"):
        Database.open(_url(path))

    assert _snapshot(tmp_path) == before
    con = sqlite3.connect(path)
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()
    assert names == {"invoices"}


def test_workstation_tables_without_a_revision_are_refused(tmp_path: Path) -> None:
    """Tables present but the version row gone (stamped to base): no blind re-migration."""
    path = tmp_path / "derm.sqlite3"
    _make_workstation_db(path)
    con = sqlite3.connect(path)
    con.execute("DELETE FROM alembic_version")
    con.commit()
    con.close()
    before = _snapshot(tmp_path)

    with pytest.raises(DatabaseError, match="Nothing was changed"):
        Database.open(_url(path))

    assert _snapshot(tmp_path) == before


def test_an_empty_file_is_treated_as_a_new_database(tmp_path: Path) -> None:
    path = tmp_path / "derm.sqlite3"
    path.write_bytes(b"")
    db = Database.open(_url(path))
    try:
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Patient)) == 0
    finally:
        db.close()
    assert path.read_bytes().startswith(b"SQLite format 3\x00")


# ---------------------------------------------------------------- reopen and backups


def test_reopening_keeps_data_and_takes_no_backup_at_head(tmp_path: Path) -> None:
    path = tmp_path / "derm.sqlite3"
    backups = tmp_path / "backups"
    db = Database.open(_url(path), backups_dir=backups)
    with db.session() as s:
        s.add(Patient(family_name="Persist"))
    db.close()

    db = Database.open(_url(path), backups_dir=backups)
    try:
        with db.session() as s:
            assert s.scalars(select(Patient.family_name)).all() == ["Persist"]
    finally:
        db.close()
    # Neither creating a new database nor opening one at head needs a backup.
    assert not backups.exists() or list(backups.iterdir()) == []


def test_an_older_schema_is_backed_up_before_migrating(tmp_path: Path) -> None:
    chain = [r.revision for r in reversed(list(
        ScriptDirectory.from_config(alembic_config()).walk_revisions()))]
    if len(chain) < 2:
        pytest.skip("only one schema revision exists so far: nothing older to migrate from")
    path = tmp_path / "derm.sqlite3"
    url = _url(path)
    command.upgrade(alembic_config(url), chain[-2])
    backups = tmp_path / "backups"

    Database.open(url, backups_dir=backups).close()

    (saved,) = backups.iterdir()
    assert saved.name.startswith(f"derm-{chain[-2]}-")
    con = sqlite3.connect(saved)
    try:
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == chain[-2]
    finally:
        con.close()
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == chain[-1]
    finally:
        con.close()


def test_a_branched_version_table_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "derm.sqlite3"
    _make_workstation_db(path)
    con = sqlite3.connect(path)
    con.execute("INSERT INTO alembic_version VALUES ('9999_branch')")
    con.commit()
    con.close()
    before = _snapshot(tmp_path)
    try:
        Database.open(_url(path)).close()
        raised: BaseException | None = None
    except BaseException as exc:
        raised = exc
    assert _snapshot(tmp_path) == before
    assert isinstance(raised, SchemaTooNewError | DatabaseError), repr(raised)


def test_backup_of_a_live_wal_database_is_complete_and_consistent(tmp_path: Path) -> None:
    path = tmp_path / "derm.sqlite3"
    db = Database.open(_url(path))
    try:
        with db.session() as s:
            s.add_all(Patient(family_name=f"P{i:03d}") for i in range(200))
        # The pool still holds a connection, so the rows sit in the WAL, not the main file:
        # a naive file copy would miss them.
        assert (tmp_path / "derm.sqlite3-wal").stat().st_size > 0

        saved = backup_sqlite(path, tmp_path / "backups", head_revision())
    finally:
        db.close()

    assert saved.parent == tmp_path / "backups"
    assert re.fullmatch(rf"derm-{head_revision()}-\d{{8}}T\d{{12}}Z\.sqlite3", saved.name)
    con = sqlite3.connect(saved)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM patients").fetchone()[0] == 200
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == (
            head_revision()
        )
    finally:
        con.close()


def test_backups_never_overwrite_each_other(tmp_path: Path) -> None:
    path = tmp_path / "derm.sqlite3"
    _make_workstation_db(path)
    a = backup_sqlite(path, tmp_path / "b", None)
    b = backup_sqlite(path, tmp_path / "b", None)
    assert a != b
    assert "unversioned" in a.name
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted([a.name, b.name])


def test_backup_can_be_opened_as_a_workstation_database(tmp_path: Path) -> None:
    path = tmp_path / "derm.sqlite3"
    _make_workstation_db(path)
    saved = backup_sqlite(path, tmp_path / "backups", head_revision())
    db = Database.open(_url(saved))
    try:
        with db.session() as s:
            assert s.scalars(select(Patient.family_name)).all() == ["Keep"]
    finally:
        db.close()


# ---------------------------------------------------------------- sessions


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database.open(_url(tmp_path / "derm.sqlite3"))
    yield database
    database.close()


def _patient_count(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Patient)) or 0


def test_session_commits_on_success(db: Database) -> None:
    with db.session() as s:
        s.add(Patient(family_name="A"))
    assert _patient_count(db) == 1


def test_session_rolls_back_everything_on_an_exception(db: Database) -> None:
    with pytest.raises(RuntimeError, match="boom"), db.session() as s:
        s.add(Patient(family_name="A"))
        s.flush()  # the row has reached the database inside the transaction
        s.add(Patient(family_name="B"))
        s.flush()
        raise RuntimeError("boom")
    assert _patient_count(db) == 0


def test_session_rolls_back_the_whole_unit_on_a_constraint_failure(db: Database) -> None:
    with db.session() as s:
        s.add(Patient(family_name="Existing", portal_id="P-1"))
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(Patient(family_name="Fine"))
        s.flush()
        s.add(Patient(family_name="Duplicate", portal_id="P-1"))
    with db.session() as s:
        assert s.scalars(select(Patient.family_name)).all() == ["Existing"]


def test_operational_errors_become_storage_errors_and_roll_back(db: Database) -> None:
    with pytest.raises(StorageError, match="could not be written"), db.session() as s:
        s.add(Patient(family_name="A"))
        s.flush()
        s.execute(text("INSERT INTO no_such_table VALUES (1)"))
    assert _patient_count(db) == 0


def test_read_session_sees_committed_rows(db: Database) -> None:
    with db.session() as s:
        s.add(Patient(family_name="Seen"))
    s = db.read_session()
    try:
        assert s.scalars(select(Patient.family_name)).all() == ["Seen"]
    finally:
        s.close()


# ---------------------------------------------------------------- UTCDateTime


def test_naive_datetimes_are_rejected_and_nothing_is_written(db: Database) -> None:
    with pytest.raises(StatementError) as err, db.session() as s:
        s.add(Patient(family_name="A", created_at=datetime(2024, 1, 1, 12, 0)))
    assert isinstance(err.value.orig, ValueError)
    assert "naive datetime" in str(err.value.orig)
    assert _patient_count(db) == 0


def test_aware_datetimes_are_stored_as_utc_and_returned_aware(db: Database) -> None:
    plus5 = timezone(timedelta(hours=5, minutes=30))
    local = datetime(2024, 3, 10, 9, 15, 30, 123456, tzinfo=plus5)
    with db.session() as s:
        p = Patient(family_name="Tz", created_at=local)
        s.add(p)
        s.flush()
        pid = p.id

    with db.engine.connect() as conn:
        raw = conn.exec_driver_sql(
            "SELECT created_at FROM patients WHERE id = ?", (pid,)
        ).scalar()
    assert raw == "2024-03-10 03:45:30.123456"  # naive UTC on disk

    with db.session() as s:
        got = s.get(Patient, pid)
        assert got is not None
        assert got.created_at.tzinfo is UTC
        assert got.created_at == local
        assert got.created_at == datetime(2024, 3, 10, 3, 45, 30, 123456, tzinfo=UTC)


def test_null_datetimes_pass_through(db: Database) -> None:
    t = UTCDateTime()
    dialect = db.engine.dialect
    assert t.process_bind_param(None, dialect) is None
    assert t.process_result_value(None, dialect) is None
    with pytest.raises(ValueError, match="naive"):
        t.process_bind_param(datetime(2024, 1, 1), dialect)


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1900, 1, 2),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-11)), timezone(timedelta(hours=13, minutes=45))]
        ),
    )
)
def test_utc_datetime_round_trip_preserves_the_instant(value: datetime) -> None:
    from sqlalchemy.dialects import sqlite

    t = UTCDateTime()
    dialect = sqlite.dialect()
    stored = t.process_bind_param(value, dialect)
    assert stored is not None and stored.tzinfo is None
    back = t.process_result_value(stored, dialect)
    assert back is not None
    assert back.tzinfo is UTC
    assert back == value


def test_case_times_round_trip_through_the_database(db: Database) -> None:
    when = datetime(2025, 6, 30, 23, 59, 59, tzinfo=timezone(timedelta(hours=-4)))
    with db.session() as s:
        p = Patient(family_name="A")
        c = Case(patient=p, submitted_at=when, updated_at=when)
        s.add(c)
        s.flush()
        cid = c.id
    with db.session() as s:
        c2 = s.get(Case, cid)
        assert c2 is not None
        assert c2.submitted_at == when
        assert c2.submitted_at.tzinfo is UTC
        assert c2.submitted_at.day == 1 and c2.submitted_at.month == 7


NEXT_REVISION = '''"""a later schema (test only)"""
import sqlalchemy as sa
from alembic import op

revision = "0002_test"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("later_table", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    op.drop_table("later_table")
'''


def test_opening_with_a_newer_app_backs_up_then_migrates(tmp_path: Path) -> None:
    """A database at the current head, opened by an app whose migrations go one
    revision further (a copy of ours plus one), is backed up first, then upgraded."""
    import shutil

    from derm_workstation.core.db import MIGRATIONS_DIR, head_revision

    newer = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, newer, ignore=shutil.ignore_patterns("__pycache__"))
    (newer / "versions" / "0002_test.py").write_text(
        NEXT_REVISION.format(head=head_revision()))
    path = tmp_path / "derm.sqlite3"
    _make_workstation_db(path)
    con = sqlite3.connect(path)
    con.execute("INSERT INTO audit_events (at, actor, action, entity_type, detail, prev_hash, "
                "hash) VALUES ('2026-01-01 00:00:00', 'a', 'x', 'y', '{}', 'p', 'h')")
    con.commit()
    con.close()
    backups = tmp_path / "backups"

    Database.open(_url(path), backups_dir=backups, migrations=newer).close()

    (saved,) = backups.iterdir()
    assert saved.name.startswith(f"derm-{head_revision()}-")
    con = sqlite3.connect(saved)
    try:  # the backup is the old database, data included
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == (
            head_revision())
        assert con.execute("SELECT count(*) FROM audit_events").fetchone()[0] == 1
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        assert "later_table" not in tables
    finally:
        con.close()
    con = sqlite3.connect(path)
    try:  # the live database moved on and kept its data
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == (
            "0002_test")
        assert con.execute("SELECT count(*) FROM audit_events").fetchone()[0] == 1
    finally:
        con.close()
