"""The Alembic migrations build exactly the schema the ORM models describe."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Index, MetaData, String, UniqueConstraint, inspect
from sqlalchemy.engine import Connection, Engine

from derm_workstation.core.db import Database, alembic_config, head_revision, make_engine
from derm_workstation.core.models import NAMING_CONVENTION, Base


def _url(path: Path) -> str:
    return "sqlite:///" + path.as_posix()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "derm.sqlite3"


@pytest.fixture
def migrated(db_path: Path) -> Iterator[Database]:
    db = Database.open(_url(db_path))
    try:
        yield db
    finally:
        db.close()


def _diff(conn: Connection, metadata: MetaData) -> list[Any]:
    ctx = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return compare_metadata(ctx, metadata)


def _version_rows(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
    finally:
        con.close()


# ---------------------------------------------------------------- model == migration


def test_upgraded_empty_database_matches_models_exactly(migrated: Database) -> None:
    with migrated.engine.connect() as conn:
        assert _diff(conn, Base.metadata) == []


def _metadata_copy() -> MetaData:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(md)
    return md


def _flip_nullable(md: MetaData) -> None:
    md.tables["cases"].c.body_site_code.nullable = False


def _change_ondelete(md: MetaData) -> None:
    fk = next(iter(md.tables["cases"].foreign_key_constraints))
    fk.ondelete = "CASCADE"


def _drop_index(md: MetaData) -> None:
    table = md.tables["photos"]
    table.indexes.discard(next(i for i in table.indexes if i.name == "ix_photos_sha256"))


def _add_index(md: MetaData) -> None:
    Index("ix_messages_sent_at", md.tables["messages"].c.sent_at)


def _drop_unique(md: MetaData) -> None:
    table = md.tables["patients"]
    table.constraints.discard(
        next(c for c in table.constraints if isinstance(c, UniqueConstraint))
    )


def _change_type(md: MetaData) -> None:
    md.tables["cases"].c.status.type = String(32)


@pytest.mark.parametrize(
    "tamper",
    [_flip_nullable, _change_ondelete, _drop_index, _add_index, _drop_unique, _change_type],
    ids=lambda f: f.__name__.lstrip("_"),
)
def test_schema_comparison_is_sensitive_to_drift(
    migrated: Database, tamper: Callable[[MetaData], None]
) -> None:
    """Guards the test above: the comparison must notice each kind of difference."""
    md = _metadata_copy()
    with migrated.engine.connect() as conn:
        assert _diff(conn, md) == []  # the unmodified copy matches
        tamper(md)
        assert _diff(conn, md) != []


def _schema_from_metadata(md: MetaData) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in md.sorted_tables:
        out[t.name] = {
            "columns": {c.name: c.nullable for c in t.columns},
            "pk": sorted(c.name for c in t.primary_key.columns),
            "indexes": sorted(
                (i.name, tuple(c.name for c in i.columns), bool(i.unique)) for i in t.indexes
            ),
            "uniques": sorted(
                (c.name, tuple(col.name for col in c.columns))
                for c in t.constraints
                if isinstance(c, UniqueConstraint)
            ),
            "fks": sorted(
                (
                    fk.name,
                    tuple(fk.column_keys),
                    fk.referred_table.name,
                    tuple(e.column.name for e in fk.elements),
                    (fk.ondelete or "").upper(),
                )
                for fk in t.foreign_key_constraints
            ),
        }
    return out


def _schema_from_database(engine: Engine) -> dict[str, Any]:
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for name in insp.get_table_names():
        if name == "alembic_version":
            continue
        out[name] = {
            "columns": {c["name"]: c["nullable"] for c in insp.get_columns(name)},
            "pk": sorted(insp.get_pk_constraint(name)["constrained_columns"]),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in insp.get_indexes(name)
            ),
            "uniques": sorted(
                (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(name)
            ),
            "fks": sorted(
                (
                    fk["name"],
                    tuple(fk["constrained_columns"]),
                    fk["referred_table"],
                    tuple(fk["referred_columns"]),
                    (fk["options"].get("ondelete") or "").upper(),
                )
                for fk in insp.get_foreign_keys(name)
            ),
        }
    return out


def test_tables_columns_indexes_uniques_and_foreign_keys_match_one_by_one(
    migrated: Database,
) -> None:
    """An independent structural comparison (names, nullability, ON DELETE rules)."""
    expected = _schema_from_metadata(Base.metadata)
    actual = _schema_from_database(migrated.engine)
    assert sorted(actual) == sorted(expected)
    for table in expected:
        assert actual[table] == expected[table], table
    # The rules the domain relies on, spelled out:
    fks = {fk[0]: fk[4] for t in actual.values() for fk in t["fks"]}
    assert fks["fk_cases_patient_id_patients"] == "RESTRICT"
    assert fks["fk_photos_case_id_cases"] == "CASCADE"
    assert fks["fk_messages_case_id_cases"] == "CASCADE"
    assert fks["fk_questionnaire_items_parent_id_questionnaire_items"] == "CASCADE"
    assert ("uq_patients_portal_id", ("portal_id",)) in actual["patients"]["uniques"]
    assert ("uq_cases_portal_task_id", ("portal_task_id",)) in actual["cases"]["uniques"]
    assert ("uq_audit_events_hash", ("hash",)) in actual["audit_events"]["uniques"]
    assert actual["cases"]["columns"]["patient_id"] is False
    assert actual["cases"]["columns"]["case_number"] is True


# ---------------------------------------------------------------- revisions


def test_alembic_version_is_the_single_head(migrated: Database, db_path: Path) -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [head_revision()]
    assert _version_rows(db_path) == [head_revision()]
    with migrated.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()


def test_revision_history_is_linear_and_starts_at_0001() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    revs = list(script.walk_revisions())  # head first
    assert revs[-1].revision == "0001"
    assert revs[-1].down_revision is None
    for newer, older in pairwise(revs):
        assert newer.down_revision == older.revision


def test_downgrade_to_base_then_upgrade_again(migrated: Database, db_path: Path) -> None:
    url = _url(db_path)
    migrated.close()

    command.downgrade(alembic_config(url), "base")
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        assert _version_rows(db_path) == []
    finally:
        engine.dispose()

    command.upgrade(alembic_config(url), "head")
    assert _version_rows(db_path) == [head_revision()]
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert _diff(conn, Base.metadata) == []
    finally:
        engine.dispose()


def test_every_revision_steps_down_and_up_one_at_a_time(db_path: Path) -> None:
    url = _url(db_path)
    script = ScriptDirectory.from_config(alembic_config())
    chain = [r.revision for r in reversed(list(script.walk_revisions()))]
    for rev in chain:
        command.upgrade(alembic_config(url), rev)
        assert _version_rows(db_path) == [rev]
    for expected_after in [*reversed(chain[:-1]), None]:
        command.downgrade(alembic_config(url), "-1")
        assert _version_rows(db_path) == ([expected_after] if expected_after else [])


def test_database_open_after_downgrade_to_base_rebuilds_schema(
    migrated: Database, db_path: Path
) -> None:
    url = _url(db_path)
    migrated.close()
    command.downgrade(alembic_config(url), "base")
    db = Database.open(url)
    try:
        with db.engine.connect() as conn:
            assert _diff(conn, Base.metadata) == []
        assert _version_rows(db_path) == [head_revision()]
    finally:
        db.close()


def test_offline_postgresql_script_is_portable(capsys: pytest.CaptureFixture[str]) -> None:
    """The migrations render for PostgreSQL (clinics share one PG database)."""
    command.upgrade(alembic_config("postgresql://user@localhost/derm"), "head", sql=True)
    sql = capsys.readouterr().out
    for table in Base.metadata.tables:
        assert f"CREATE TABLE {table} " in sql
    assert "REFERENCES patients (id) ON DELETE RESTRICT" in sql
    assert "REFERENCES cases (id) ON DELETE CASCADE" in sql
    for table in Base.metadata.sorted_tables:
        for index in table.indexes:
            unique = "UNIQUE " if index.unique else ""
            assert f"CREATE {unique}INDEX {index.name} ON {table.name} " in sql
    stamps = re.findall(r"(?:INSERT INTO|UPDATE) alembic_version [^;]*?'([^']+)'", sql)
    assert stamps and stamps[-1] == head_revision()


def test_the_revision_list_the_app_reads_matches_the_scripts() -> None:
    """core.migrations.REVISIONS lets the app skip importing Alembic at start-up;
    it must list exactly the Alembic scripts, oldest first."""
    from derm_workstation.core.db import script_revisions
    from derm_workstation.core.migrations import HEAD, REVISIONS

    assert script_revisions() == REVISIONS
    assert REVISIONS[-1] == HEAD
