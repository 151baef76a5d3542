"""The audit trail's hash chain under a bulk writer and concurrent writers.

Run against SQLite always, and against PostgreSQL too when ``DERM_TEST_POSTGRES_URL``
names a server the tests may create databases on (e.g.
``postgresql+psycopg://postgres@/postgres?host=/tmp&port=5432``; needs the psycopg
driver): a clinic may share one PostgreSQL database between workstations.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from derm_workstation.core import audit
from derm_workstation.core.models import AuditEvent
from derm_workstation.core.users import SYSTEM
from derm_workstation.core.workspace import Workspace

PG_URL = os.environ.get("DERM_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def ws(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    if request.param == "sqlite":
        w = Workspace.open(tmp_path / "data")
        try:
            yield w
        finally:
            w.close()
        return
    if not PG_URL:
        pytest.skip("set DERM_TEST_POSTGRES_URL to run against PostgreSQL")
    server = make_url(PG_URL)
    name = f"derm_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        w = Workspace.open(tmp_path / "data", db_url=server.set(database=name)
                           .render_as_string(hide_password=False))
        try:
            yield w
        finally:
            w.close()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}"'))
        admin.dispose()


def audit_ok(ws: Workspace) -> bool:
    with ws.db.session() as s:
        return audit.verify_chain(s) is None


def _chain(ws: Workspace) -> list[tuple[str, str, str]]:
    with ws.db.session() as s:
        return [(e.action, e.prev_hash, e.hash)
                for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def test_unflushed_audit_events_chain_in_the_order_they_were_recorded(
        ws: Workspace) -> None:
    """A bulk writer's events (flush=False) chain to each other before any is written,
    and a savepoint rolled back takes its event out of the chain."""
    with ws.db.session() as s:
        audit.record(s, SYSTEM, "a", "case", "1", flush=False)
        audit.record(s, SYSTEM, "b", "case", "2", flush=False)
        nested = s.begin_nested()
        audit.record(s, SYSTEM, "gone", "case", "3", flush=False)
        nested.rollback()
        for n in range(4):
            audit.record(s, SYSTEM, f"c{n}", "case", str(n), flush=n % 2 == 0)
    chain = _chain(ws)
    assert [a for a, _, _ in chain] == ["a", "b", "c0", "c1", "c2", "c3"]
    assert chain[0][1] == audit.GENESIS
    for (_, _, before), (_, prev, _) in pairwise(chain):
        assert prev == before
    assert audit_ok(ws)


def test_an_event_recorded_while_another_transaction_writes_is_chained_after_it(
        ws: Workspace) -> None:
    """The window's database thread audits a case view while a sync's transaction, which
    has already written an event, is still open: the view's event waits for that commit
    and chains to it (it used to chain to the event before, forking the chain)."""
    import threading
    import time

    writing = threading.Event()

    def sync_batch() -> None:
        with ws.db.session() as s:
            audit.record(s, SYSTEM, "sync", "case", "1")
            writing.set()
            time.sleep(0.3)  # the other thread reads the chain meanwhile (old code)

    with ws.db.session() as s:
        audit.record(s, SYSTEM, "before", "case", "0")
    t = threading.Thread(target=sync_batch)
    t.start()
    assert writing.wait(10)
    with ws.db.session() as s:
        audit.record(s, SYSTEM, "view", "case", "2")
    t.join()
    chain = _chain(ws)
    assert [a for a, _, _ in chain] == ["before", "sync", "view"]
    assert chain[2][1] == chain[1][2]
    assert audit_ok(ws)


def test_an_event_another_writer_added_between_transactions_is_chained_to(
        ws: Workspace) -> None:
    """The last event of an earlier transaction of the same session is not reused: a
    writer in between may have appended."""
    s = ws.db.read_session()
    try:
        audit.record(s, SYSTEM, "first", "case", "1", flush=False)
        s.commit()
        with ws.db.session() as other:
            audit.record(other, SYSTEM, "other", "case", "2")
        audit.record(s, SYSTEM, "again", "case", "3", flush=False)
        s.commit()
    finally:
        s.close()
    chain = _chain(ws)
    assert [a for a, _, _ in chain] == ["first", "other", "again"]
    assert chain[2][1] == chain[1][2]
    assert audit_ok(ws)
