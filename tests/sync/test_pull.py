"""Pulling cases from the reference portal over real loopback HTTP."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select

from derm_workstation.core import audit
from derm_workstation.core.models import (
    Allergy,
    Case,
    Message,
    Patient,
    Photo,
    QuestionnaireItem,
    QuestionnaireResponse,
)
from derm_workstation.core.services import CaseService
from derm_workstation.core.users import local_actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.mapping import reference_id
from derm_workstation.portal.reference.server import ReferencePortal
from derm_workstation.sync import state
from derm_workstation.sync.engine import run_sync
from tests.sync.conftest import ClientFactory, add_portal_case, faults


def expected_tasks(portal: ReferencePortal) -> dict[str, dict[str, Any]]:
    """Tasks the workstation should hold: open ones, and every Task of their patients."""
    tasks = portal.store.search("Task")
    open_ = {t["id"] for t in tasks if t["status"] not in ("completed", "cancelled")}
    patients = {reference_id(t["for"], "Patient") for t in tasks if t["id"] in open_}
    return {t["id"]: t for t in tasks
            if t["id"] in open_ or reference_id(t.get("for"), "Patient") in patients}


def local_counts(ws: Workspace) -> dict[str, int]:
    with ws.db.session() as s:
        return {
            "cases": s.scalar(select(func.count()).select_from(Case)) or 0,
            "photos": s.scalar(select(func.count()).select_from(Photo)) or 0,
            "messages": s.scalar(select(func.count()).select_from(Message)) or 0,
            "patients": s.scalar(select(func.count()).select_from(Patient)) or 0,
        }


def assert_no_duplicates(ws: Workspace) -> None:
    with ws.db.session() as s:
        for col in (Photo.portal_media_id, Message.portal_id, QuestionnaireResponse.portal_id):
            owner = col.class_.case_id
            rows = s.execute(select(owner, col).where(col.is_not(None))).all()
            dup = [k for k, n in Counter(rows).items() if n > 1]
            assert not dup, (col, dup)
        assert audit.verify_chain(s) is None


def assert_matches_portal(ws: Workspace, portal: ReferencePortal) -> None:
    """Every expected Task is a case with exactly its photos, messages and answers."""
    expected = expected_tasks(portal)
    store = portal.store
    with ws.db.session() as s:
        cases = {c.portal_task_id: c for c in s.scalars(select(Case))}
        assert set(cases) == set(expected)
        for tid, task in expected.items():
            c = cases[tid]
            assert c.status == task["status"]
            assert c.portal_task_version == task["meta"]["versionId"]
            sr_id = reference_id(task["focus"], "ServiceRequest")
            assert c.portal_service_request_id == sr_id
            media = [m for m in store.search("Media", based_on=f"ServiceRequest/{sr_id}")]
            photos = {p.portal_media_id: p for p in c.photos}
            assert set(photos) == {m["id"] for m in media}, tid
            for m in media:
                data = ws.images.read_bytes(photos[m["id"]].sha256)
                assert len(data) == m["content"]["size"] == photos[m["id"]].byte_size
                sha1 = base64.b64encode(hashlib.sha1(data).digest()).decode()
                assert sha1 == m["content"]["hash"]
            comms = store.search("Communication", based_on=f"ServiceRequest/{sr_id}")
            assert sorted(m.portal_id for m in c.messages) == sorted(x["id"] for x in comms)
            qrs = store.search("QuestionnaireResponse", based_on=f"ServiceRequest/{sr_id}")
            assert len(c.questionnaires) == len(qrs)
            assert c.photo_count == len(c.photos)
            assert c.incomplete_reason is None, c.incomplete_reason
            assert c.portal_sync_error is None
    assert_no_duplicates(ws)


# ---------------------------------------------------------------- full and incremental


def test_full_pull(portal: ReferencePortal, ws: Workspace, make_client: ClientFactory) -> None:
    client = make_client(portal.base_url)
    summary = run_sync(ws, client)
    assert summary.completed, summary.errors
    expected = expected_tasks(portal)
    assert summary.cases_new == len(expected) and summary.cases_updated == 0
    assert summary.photos_downloaded == local_counts(ws)["photos"] > 0
    with ws.db.session() as s:
        assert summary.bytes == s.scalar(select(func.sum(Photo.byte_size)))
    assert_matches_portal(ws, portal)
    with ws.db.session() as s:
        # nested questionnaire answers, allergies, earlier visits of chronic patients
        assert s.scalar(select(func.count()).select_from(QuestionnaireItem).where(
            QuestionnaireItem.parent_id.is_not(None))) > 0
        assert s.scalar(select(func.count()).select_from(Allergy)) > 0
        with_history = [c for c in s.scalars(select(Case)) if len(c.patient.cases) > 1]
        completed = [c for c in s.scalars(select(Case).where(Case.status == "completed"))]
    assert completed and with_history
    open_case = next(c for c in with_history if c.status != "completed")
    detail = CaseService(ws, local_actor()).case_detail(open_case.id)
    assert detail.earlier_cases
    j = detail.as_json()
    assert j["portal"]["task_id"] == open_case.portal_task_id
    assert j["portal"]["patient_id"] and j["portal"]["service_request_id"]
    assert all(len(p["sha256"]) == 64 for p in j["photos"])
    # every request of the run went to the contract's interactions
    paths = [r.target.split("?")[0] for r in portal.request_log]
    kinds = {p.split("/")[2] for p in paths}
    assert kinds <= {"Task", "Patient", "ServiceRequest", "Media", "QuestionnaireResponse",
                     "Communication", "AllergyIntolerance", "Binary"}


def test_second_sync_with_nothing_new_makes_two_requests(
        portal: ReferencePortal, ws: Workspace, make_client: ClientFactory) -> None:
    client = make_client(portal.base_url)
    assert run_sync(ws, client).completed
    portal.clear_log()
    before = client.stats.requests
    summary = run_sync(ws, client)
    assert summary.completed
    assert client.stats.requests - before == 2 == summary.requests
    log = portal.request_log
    assert len(log) == 2
    assert log[0].target.startswith(
        "/fhir/Task?status=requested%2Creceived%2Caccepted%2Cin-progress%2Con-hold"
        "&_lastUpdated=gt")
    assert log[0].target.endswith("&_sort=_lastUpdated&_count=50")
    assert log[1].target.startswith("/fhir/Task?status=completed%2Ccancelled&_lastUpdated=gt")
    assert (summary.cases_new, summary.cases_updated, summary.photos_downloaded) == (0, 0, 0)


def test_incremental_pull_gets_new_and_changed_cases(
        portal: ReferencePortal, ws: Workspace, make_client: ClientFactory) -> None:
    client = make_client(portal.base_url)
    assert run_sync(ws, client).completed
    before = local_counts(ws)
    new = add_portal_case(portal.store, n=1, photos=2)
    changed = next(t for t in portal.store.search("Task", status="requested"))
    changed["status"] = "on-hold"
    changed["businessStatus"] = {"text": "Waiting for a closer photo"}
    portal.store.put(changed)
    sr_id = reference_id(changed["focus"], "ServiceRequest")
    portal.store.create({
        "resourceType": "Communication", "status": "completed",
        "basedOn": [{"reference": f"ServiceRequest/{sr_id}"}],
        "sender": changed["for"], "sent": "2026-11-29T08:00:00Z",
        "payload": [{"contentString": "Here is the closer photo you asked for."}]})
    summary = run_sync(ws, client)
    assert summary.completed, summary.errors
    assert summary.cases_new == 1 and summary.cases_updated == 1
    assert summary.photos_downloaded == 2
    after = local_counts(ws)
    assert after["cases"] == before["cases"] + 1
    assert after["photos"] == before["photos"] + 2
    assert after["messages"] == before["messages"] + 1
    with ws.db.session() as s:
        c = s.scalar(select(Case).where(Case.portal_task_id == changed["id"]))
        assert c.status == "on-hold" and c.portal_business_status == "Waiting for a closer photo"
        assert s.scalar(select(Case).where(Case.portal_task_id == new["task"])).photo_count == 2
    assert_matches_portal(ws, portal)


def test_more_than_fifty_tasks_are_paged(empty_portal: ReferencePortal, ws: Workspace,
                                          make_client: ClientFactory) -> None:
    for n in range(57):
        add_portal_case(empty_portal.store, n=n)
    client = make_client(empty_portal.base_url)
    summary = run_sync(ws, client)
    assert summary.completed, summary.errors
    assert summary.cases_new == 57 == local_counts(ws)["cases"]
    searches = [r.target for r in empty_portal.request_log
                if r.target.startswith("/fhir/Task?") and "patient=" not in r.target]
    open_pages = [t for t in searches if "status=requested" in t or "_pageToken" in t]
    assert len(open_pages) >= 2  # followed the next link
    empty_portal.clear_log()
    assert run_sync(ws, client).requests == 2
    assert_no_duplicates(ws)


def test_cursor_moves_only_after_a_committed_page(empty_portal: ReferencePortal,
                                                  ws: Workspace,
                                                  make_client: ClientFactory) -> None:
    total = 90  # two pages; fetched cases are committed up to 16 at a time
    for n in range(total):
        add_portal_case(empty_portal.store, n=n)
    tasks = empty_portal.store.search("Task")  # oldest change first
    stop = threading.Event()

    def progress(done: int, total: int | None) -> None:
        if done >= 53:  # well into the second page
            stop.set()

    client = make_client(empty_portal.base_url)
    first = run_sync(ws, client, concurrency=2, progress=progress, cancel=stop)
    assert not first.completed and first.aborted
    with ws.db.session() as s:
        cursor = state.get(s, state.CURSOR_OPEN)
        stored = s.scalar(select(func.count()).select_from(Case))
    assert 50 <= stored < total
    # The cursor is within the committed first page, never in the second: the newest
    # instant strictly older than the page's newest (Tasks sharing the newest instant
    # could continue on the next page, and "gt" would skip them after a crash).
    assert cursor == tasks[48]["meta"]["lastUpdated"]
    second = run_sync(ws, client)
    assert second.completed
    assert second.cases_new == total - stored and second.cases_updated == 0
    assert local_counts(ws)["cases"] == total
    assert_no_duplicates(ws)


# ---------------------------------------------------------------- bad photos


@pytest.mark.parametrize("bad", [{"hash": base64.b64encode(b"x" * 20).decode()},
                                 {"size": 12345}], ids=["hash", "size"])
def test_photo_mismatch_is_not_stored_and_is_fetched_again_later(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        bad: dict[str, Any]) -> None:
    ids = add_portal_case(empty_portal.store, n=1, photos=2)
    good_media = empty_portal.store.get("Media", ids["media1"])
    broken = empty_portal.store.get("Media", ids["media1"])
    broken["content"].update(bad)
    empty_portal.store.put(broken)
    client = make_client(empty_portal.base_url)
    summary = run_sync(ws, client)
    assert not summary.completed
    assert any(f"Media/{ids['media1']}" in e for e in summary.errors)
    with ws.db.session() as s:
        c = s.scalar(select(Case))
        assert [p.portal_media_id for p in c.photos] == [ids["media0"]]
        assert c.portal_sync_error and "could not be downloaded" in (c.incomplete_reason or "")
    files = [p for p in ws.images.root.rglob("*") if p.is_file()]
    assert len(files) == 1  # the good photo only; no partial or unverified file
    # The portal fixes the record (the Task itself does not change): the next sync
    # fetches the flagged case again by id and completes it.
    good_media.pop("meta", None)
    empty_portal.store.put(good_media)
    summary = run_sync(ws, client)
    assert summary.completed, summary.errors
    with ws.db.session() as s:
        c = s.scalar(select(Case))
        assert sorted(p.portal_media_id for p in c.photos) == sorted([ids["media0"],
                                                                      ids["media1"]])
        assert c.portal_sync_error is None and c.incomplete_reason is None
    empty_portal.clear_log()
    assert run_sync(ws, client).requests == 2  # no longer fetched every time


def test_wrong_hashes_and_truncated_photos_from_the_portal(
        portal: ReferencePortal, ws: Workspace, make_client: ClientFactory) -> None:
    portal.faults = faults("bad_hash=1.0,seed=3")
    client = make_client(portal.base_url)
    summary = run_sync(ws, client)
    assert not summary.completed and summary.photos_downloaded == 0
    assert local_counts(ws)["photos"] == 0 and local_counts(ws)["cases"] > 0
    assert not [p for p in ws.images.root.rglob("*") if p.is_file()]
    portal.faults = faults("truncate=1.0,seed=3")
    summary = run_sync(ws, client)
    assert not summary.completed and summary.photos_downloaded == 0
    assert not [p for p in ws.images.root.rglob("*") if p.is_file()]
    portal.faults = None
    summary = run_sync(ws, client)
    assert summary.completed, summary.errors
    assert_matches_portal(ws, portal)


def test_flaky_portal_loses_nothing_and_duplicates_nothing(
        portal: ReferencePortal, ws: Workspace, make_client: ClientFactory) -> None:
    portal.faults = faults("error_rate=0.25,drop=0.1,truncate=0.2,seed=11")
    client = make_client(portal.base_url)
    runs = 0
    while True:
        runs += 1
        summary = run_sync(ws, client)
        if summary.completed or runs == 6:
            break
    assert summary.completed, summary.errors
    faulted = [r for r in portal.request_log if r.fault]
    assert len(faulted) > 10  # the faults really happened
    assert_matches_portal(ws, portal)


# ---------------------------------------------------------------- incomplete cases


def test_incomplete_cases_are_stored_and_flagged(empty_portal: ReferencePortal, ws: Workspace,
                                                 make_client: ClientFactory) -> None:
    store = empty_portal.store
    no_focus = add_portal_case(store, n=1, task_overrides={"focus": None})
    no_patient = add_portal_case(store, n=2, task_overrides={
        "for": {"reference": "Patient/does-not-exist"}})
    odd_status = add_portal_case(store, n=3, task_overrides={"priority": "whenever",
                                                             "unknownField": [1, 2]})
    bare = add_portal_case(store, n=4)
    sr = store.get("ServiceRequest", bare["service_request"])
    sr.pop("reasonCode")
    sr["unknownField"] = {"ignored": True}
    store.put(sr)
    no_url = add_portal_case(store, n=5, photos=1, media_overrides={"url": None})
    summary = run_sync(ws, make_client(empty_portal.base_url))
    assert summary.cases_new == 5
    with ws.db.session() as s:
        by_task = {c.portal_task_id: c for c in s.scalars(select(Case))}
        assert "no consult request" in by_task[no_focus["task"]].incomplete_reason
        assert "patient record could not be read" in by_task[no_patient["task"]].incomplete_reason
        assert by_task[no_patient["task"]].patient.portal_id == "does-not-exist"
        assert by_task[odd_status["task"]].status == "requested"
        assert by_task[odd_status["task"]].priority == "routine"
        assert by_task[odd_status["task"]].incomplete_reason is None
        assert "no chief complaint" in by_task[bare["task"]].incomplete_reason
        assert "without a link to its image" in by_task[no_url["task"]].incomplete_reason
    assert len(summary.warnings) == 4
    rows = CaseService(ws, local_actor()).queue_rows(
        [c.id for c in by_task.values()])
    assert sum(r.incomplete for r in rows) == 4


# ---------------------------------------------------------------- changes elsewhere


def test_cancelled_completed_and_claimed_elsewhere_update_the_case(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory) -> None:
    store = empty_portal.store
    a = add_portal_case(store, n=1)
    b = add_portal_case(store, n=2)
    c = add_portal_case(store, n=3)
    client = make_client(empty_portal.base_url)
    assert run_sync(ws, client).completed
    colleague = store.create({"resourceType": "Practitioner", "name": [{"family": "Colleague"}]})
    for tid, change in ((a["task"], {"status": "cancelled"}),
                        (b["task"], {"status": "completed"}),
                        (c["task"], {"status": "in-progress", "owner": {
                            "reference": f"Practitioner/{colleague['id']}",
                            "display": "Dr Colleague"}})):
        t = store.get("Task", tid)
        t.update(change)
        store.put(t)
    summary = run_sync(ws, client)
    assert summary.completed
    assert summary.cases_updated == 3 and summary.cases_new == 0
    notices = dict(summary.notices)
    with ws.db.session() as s:
        by_task = {x.portal_task_id: x for x in s.scalars(select(Case))}
        ca, cb, cc = by_task[a["task"]], by_task[b["task"]], by_task[c["task"]]
        assert ca.status == "cancelled"
        assert ca.portal_notice == "This case was cancelled on the portal."
        assert cb.status == "completed" and "completed on the portal" in cb.portal_notice
        assert cc.status == "in-progress" and cc.assignee == "Dr Colleague"
        assert cc.portal_notice == "This case was claimed on the portal by Dr Colleague."
        assert notices[ca.id] == ca.portal_notice and notices[cc.id] == cc.portal_notice


# ---------------------------------------------------------------- offline


def test_starting_offline_is_a_clear_error_and_local_data_stays_usable(
        portal: ReferencePortal, ws: Workspace, make_client: ClientFactory) -> None:
    client = make_client(portal.base_url)
    assert run_sync(ws, client).completed
    with ws.db.session() as s:
        case_id = s.scalar(select(Case.id).where(Case.photo_count > 0))
    portal.stop()
    summary = run_sync(ws, make_client(portal.base_url))
    assert not summary.completed and summary.aborted
    assert len(summary.errors) == 1
    assert "could not be reached" in summary.errors[0]
    assert "can still be used" in summary.errors[0]
    svc = CaseService(ws, local_actor())
    detail = svc.case_detail(case_id)
    assert svc.photo_bytes(detail.photos[0].sha256)
    status = state.status(ws)
    assert status.last_error == summary.errors[0]
    assert status.last_success_at is not None and status.last_attempt_at is not None


def test_photo_downloads_are_concurrent_but_bounded(empty_portal: ReferencePortal,
                                                    ws: Workspace,
                                                    make_client: ClientFactory) -> None:
    import time

    from tests.sync.proxy import Exchange, FaultProxy, Reply

    for n in range(4):
        add_portal_case(empty_portal.store, n=n, photos=4)
    lock = threading.Lock()
    inflight = [0, 0]  # now, peak

    def slow_start(ex: Exchange) -> Reply | None:
        if "/Binary/" in ex.path:
            with lock:
                inflight[0] += 1
                inflight[1] = max(inflight[1], inflight[0])
            time.sleep(0.05)  # a slow transfer
        return None

    def done(ex: Exchange) -> Reply | None:
        if "/Binary/" in ex.path:
            with lock:
                inflight[0] -= 1
        return None

    with FaultProxy(empty_portal.origin) as proxy:
        proxy.before, proxy.after = slow_start, done
        summary = run_sync(ws, make_client(proxy.base_url), concurrency=2)
    assert summary.completed and summary.photos_downloaded == 16
    assert inflight[1] == 2  # in parallel, never more than asked


def test_a_task_changed_on_the_portal_while_paging_is_not_lost(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory) -> None:
    """A Task already taken from page 1 changes on the portal before the last page is read:
    it comes back on a later page with a new version. That version must reach the local
    case in this sync (not be skipped as "already seen"), and the cursor must not pass it
    before it is stored."""
    for n in range(57):
        add_portal_case(empty_portal.store, n=n)
    first = empty_portal.store.search("Task")[0]  # oldest change: on page 1
    changed = threading.Event()

    def progress(done: int, total: int | None) -> None:
        if not changed.is_set():
            changed.set()
            task = empty_portal.store.get("Task", first["id"])
            task["status"] = "on-hold"
            task["businessStatus"] = {"text": "Waiting for a sharper photo"}
            empty_portal.store.put(task)

    summary = run_sync(ws, make_client(empty_portal.base_url), concurrency=2,
                       progress=progress)
    assert summary.completed, summary.errors
    assert changed.is_set()
    now = empty_portal.store.get("Task", first["id"])
    with ws.db.session() as s:
        case = s.scalar(select(Case).where(Case.portal_task_id == first["id"]))
        assert case is not None
        assert case.status == "on-hold"
        assert case.portal_task_version == now["meta"]["versionId"]
        assert case.portal_business_status == "Waiting for a sharper photo"
        cursor = state.get(s, state.CURSOR_OPEN)
    assert cursor == now["meta"]["lastUpdated"]  # all committed, so it moved to the end
    assert local_counts(ws)["cases"] == 57
    assert_no_duplicates(ws)
