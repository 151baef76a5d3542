"""Batched metadata (FHIR search OR-lists) in the pull: fewer requests, never less data.

The same portal data is pulled from a portal that honours OR-lists, one that takes the
comma literally (finds nothing), one that refuses OR-lists (400) and one that applies
only the first value of a list: every workstation ends with exactly the same cases,
photos, messages, answers and allergies, and the allergy "checked" state stays exact.
"""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests
from sqlalchemy import select

from derm_workstation.core.models import Case, Photo
from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.reference.server import ReferencePortal
from derm_workstation.sync import pull
from derm_workstation.sync.engine import run_sync
from tests.sync.conftest import ClientFactory, add_portal_case, faults
from tests.sync.proxy import Exchange, FaultProxy, Reply
from tests.sync.test_pull import assert_matches_portal

N_OPEN = 12  # one page of Tasks searched together (BATCH_MIN lowered below)
SINGLE_READS = ("/fhir/ServiceRequest/", "/fhir/Patient/")


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches from 8 Tasks on, so the tests' portals stay small (same code path)."""
    monkeypatch.setattr(pull, "BATCH_MIN", 8)


def fill(store: Any) -> list[dict[str, str]]:
    """Open cases with photos; answers, messages and allergies for some; two patients
    with a second open case, one with an earlier completed case (the last item)."""
    made: list[dict[str, str]] = []
    for n in range(N_OPEN):
        shared = made[n - 8]["patient"] if n >= 10 else None
        made.append(add_portal_case(store, n=n, photos=1 + n % 2, patient_id=shared))
    for n, ids in enumerate(made):
        sr = {"reference": f"ServiceRequest/{ids['service_request']}"}
        subject = {"reference": f"Patient/{ids['patient']}"}
        if n % 3 == 0:
            store.create({"resourceType": "QuestionnaireResponse", "status": "completed",
                          "basedOn": [sr], "subject": subject,
                          "authored": "2026-11-20T10:00:00Z",
                          "item": [{"linkId": "itch", "text": "Does it itch?",
                                    "answer": [{"valueBoolean": n % 2 == 0}]}]})
        if n % 4 == 1:
            store.create({"resourceType": "Communication", "status": "completed",
                          "basedOn": [sr], "subject": subject, "sender": subject,
                          "sent": f"2026-11-20T11:0{n % 10}:00Z",
                          "payload": [{"contentString": f"Message of case {n}"}]})
        if n % 5 == 2:
            store.create({"resourceType": "AllergyIntolerance", "patient": subject,
                          "code": {"text": f"Substance {n}"}, "criticality": "low"})
    earlier = add_portal_case(store, n=90, status="completed", photos=1,
                              patient_id=made[0]["patient"])
    return [*made, earlier]


def snapshot(ws: Workspace) -> dict[str, Any]:
    """Everything the pull stores, keyed by portal ids (local ids differ between runs)."""
    out: dict[str, Any] = {}
    with ws.db.session() as s:
        for c in s.scalars(select(Case)):
            out[c.portal_task_id or ""] = (
                c.status, c.portal_task_version, c.chief_complaint, c.patient.portal_id,
                sorted((p.portal_media_id, p.sha256, p.width, p.height) for p in c.photos),
                sorted((m.portal_id, m.text) for m in c.messages),
                sorted((q.portal_id, len(q.items)) for q in c.questionnaires),
                sorted(a.substance for a in c.patient.allergies),
                c.patient.allergies_checked_at is not None,
                len(c.patient.cases), c.incomplete_reason, c.portal_sync_error,
            )
    return out


def batched(target: str) -> bool:
    """A search with an OR-list of ids or references (not the status token list)."""
    query = dict(parse_qsl(urlsplit(target).query))
    return any("," in v for k, v in query.items() if k in ("_id", "based-on", "patient"))


@pytest.fixture
def reference(empty_portal: ReferencePortal, ws: Workspace,
              make_client: ClientFactory) -> dict[str, Any]:
    """The pull of the data from a portal that honours OR-lists (the reference result)."""
    fill(empty_portal.store)
    summary = run_sync(ws, make_client(empty_portal.base_url))
    assert summary.completed, summary.errors
    return snapshot(ws)


def pull_again(portal: ReferencePortal, tmp_path: Any, make_client: ClientFactory,
               name: str, base_url: str | None = None) -> tuple[dict[str, Any], Any]:
    ws = Workspace.open(tmp_path / name)
    try:
        summary = run_sync(ws, make_client(base_url or portal.base_url))
        return snapshot(ws), summary
    finally:
        ws.close()


def test_an_or_list_portal_is_pulled_with_a_few_searches(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory) -> None:
    *_, earlier = fill(empty_portal.store)
    summary = run_sync(ws, make_client(empty_portal.base_url))
    assert summary.completed, summary.errors
    assert_matches_portal(ws, empty_portal)
    log = [r.target for r in empty_portal.request_log]
    photos = [t for t in log if t.startswith("/fhir/Binary/")]
    assert len(photos) == summary.photos_downloaded == 19
    # no per-case reads or searches for the page's 12 Tasks: one OR-list search per kind;
    # the one earlier case found through a patient's Tasks is fetched on its own
    sr = earlier["service_request"]
    alone = [t for t in log if not t.startswith("/fhir/Binary/") and not batched(t)
             and "status=" not in t]
    assert sorted(alone) == sorted([
        f"/fhir/Patient/{earlier['patient']}", f"/fhir/ServiceRequest/{sr}",
        f"/fhir/Media?based-on=ServiceRequest%2F{sr}",
        f"/fhir/QuestionnaireResponse?based-on=ServiceRequest%2F{sr}",
        f"/fhir/Communication?based-on=ServiceRequest%2F{sr}"])
    kinds = sorted(urlsplit(t).path for t in log if batched(t))
    assert kinds == sorted(f"/fhir/{k}" for k in (
        "ServiceRequest", "Patient", "Media", "QuestionnaireResponse", "Communication",
        "AllergyIntolerance", "Task"))
    # + the open and the closed Task search
    assert summary.requests == len(photos) + 7 + len(alone) + 2
    with ws.db.session() as s:
        cases = list(s.scalars(select(Case)))
        checked = {c.patient.portal_id: c.patient.allergies_checked_at is not None
                   for c in cases}
    assert len(cases) == N_OPEN + 1 and all(checked.values())


@pytest.mark.parametrize("mode", ["literal", "reject"])
def test_a_portal_without_or_lists_gives_the_same_cases(
        empty_portal: ReferencePortal, reference: dict[str, Any], tmp_path: Any,
        make_client: ClientFactory, mode: str) -> None:
    empty_portal.faults = faults(f"or_lists={mode}")
    empty_portal.clear_log()
    got, summary = pull_again(empty_portal, tmp_path, make_client, f"ws-{mode}")
    assert summary.completed, summary.errors
    assert got == reference
    log = empty_portal.request_log
    tried = [r for r in log if batched(r.target)]
    singles = [r for r in log if r.target.startswith(SINGLE_READS)]
    # every case's ServiceRequest and Patient read on its own (the earlier case's too)...
    assert len(singles) == 2 * (N_OPEN + 1)
    if mode == "reject":
        # ...and each refused kind of OR-list search was tried once, never again
        assert all(r.status == 400 for r in tried)
        assert len({urlsplit(r.target).path for r in tried}) == len(tried)
    else:
        # nothing is taken on trust from empty answers: every case searched on its own
        for kind in ("QuestionnaireResponse", "Communication", "AllergyIntolerance"):
            assert len([r for r in log if r.target.startswith(f"/fhir/{kind}?")
                        and not batched(r.target)]) >= 10, kind


def first_value_only(portal: ReferencePortal, proxy: FaultProxy, keep: int = 1) -> Any:
    """A portal that applies only the first ``keep`` values of an OR-list of references
    (``keep`` > 1: a server that silently truncates long OR-lists)."""

    def before(ex: Exchange) -> Reply | None:
        url = urlsplit(ex.path)
        query = parse_qsl(url.query)
        if not any(k in ("based-on", "patient") and "," in v for k, v in query):
            return None
        query = [(k, ",".join(v.split(",")[:keep]) if k in ("based-on", "patient") else v)
                 for k, v in query]
        r = requests.get(f"{portal.origin}{url.path}?{urlencode(query)}", timeout=30,
                         headers={"Authorization": ex.headers.get("Authorization", "")})
        body = r.content.replace(portal.origin.encode(), proxy.origin.encode())
        return Reply(r.status_code, body, {"Content-Type": r.headers["Content-Type"]})

    return before


def test_a_portal_applying_only_the_first_value_gives_the_same_cases(
        empty_portal: ReferencePortal, reference: dict[str, Any], tmp_path: Any,
        make_client: ClientFactory) -> None:
    with FaultProxy(empty_portal.origin) as proxy:
        proxy.before = first_value_only(empty_portal, proxy)
        got, summary = pull_again(empty_portal, tmp_path, make_client, "ws-first",
                                  proxy.base_url)
        lists = [e for e in proxy.log if batched(e.path) and "_id=" not in e.path]
    assert summary.completed, summary.errors
    assert len(lists) >= 5 and all(e.status == 0 for e in lists)  # the hook answered them
    assert got == reference  # empty answers were not trusted: Media never proved OR-lists


def test_a_portal_truncating_or_lists_gives_the_same_cases(
        empty_portal: ReferencePortal, reference: dict[str, Any], tmp_path: Any,
        make_client: ClientFactory) -> None:
    """Media found for two ServiceRequests proves nothing about the others: their empty
    questionnaire, message and allergy answers are searched again one by one."""
    with FaultProxy(empty_portal.origin) as proxy:
        proxy.before = first_value_only(empty_portal, proxy, keep=2)
        got, summary = pull_again(empty_portal, tmp_path, make_client, "ws-trunc",
                                  proxy.base_url)
        singles = [e for e in proxy.log if not batched(e.path)
                   and e.path.startswith("/fhir/Communication?")]
    assert summary.completed, summary.errors
    assert len(singles) >= N_OPEN - 2  # every ServiceRequest past the first two
    assert got == reference


def test_a_failed_allergy_search_stays_not_checked_when_batched(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory) -> None:
    made = fill(empty_portal.store)[:-1]
    unanswered = made[4]["patient"]  # no allergies recorded

    def fail(ex: Exchange) -> Reply | None:
        if ex.path.startswith("/fhir/AllergyIntolerance?") \
                and f"Patient%2F{unanswered}%2C" in ex.path + "%2C":
            return Reply(400, json.dumps({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "invalid", "diagnostics": "no"}]}).encode(),
                {"Content-Type": "application/fhir+json"})
        return None

    with FaultProxy(empty_portal.origin) as proxy:
        proxy.before = fail
        summary = run_sync(ws, make_client(proxy.base_url))
        allergy_searches = [e.path for e in proxy.log if "/AllergyIntolerance?" in e.path]
    assert summary.cases_new == N_OPEN + 1
    assert any(batched(p) for p in allergy_searches)  # tried batched, then one by one
    with ws.db.session() as s:
        checked = {c.patient.portal_id: (c.patient.allergies_checked_at is not None,
                                         sorted(a.substance for a in c.patient.allergies))
                   for c in s.scalars(select(Case))}
    assert checked.pop(unanswered) == (False, [])
    assert all(ok for ok, _ in checked.values())
    assert checked[made[2]["patient"]] == (True, ["Substance 2"])


def test_long_or_lists_are_split_into_several_searches(
        empty_portal: ReferencePortal, reference: dict[str, Any], tmp_path: Any,
        make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pull, "BATCH_VALUE_CHARS", 60)
    monkeypatch.setattr(pull, "BATCH_COUNT", 3)  # and paged
    empty_portal.clear_log()
    got, summary = pull_again(empty_portal, tmp_path, make_client, "ws-split")
    assert summary.completed, summary.errors
    assert got == reference
    media = [r.target for r in empty_portal.request_log
             if r.target.startswith("/fhir/Media?")]
    assert len(media) >= 4 and all(len(dict(parse_qsl(urlsplit(t).query)).get(
        "based-on", "")) <= 60 for t in media)
    singles = [r for r in empty_portal.request_log if r.target.startswith(SINGLE_READS)]
    assert len(singles) == 2  # the earlier case's own, as with long lists


def test_few_tasks_keep_the_contracts_single_requests(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory) -> None:
    for n in range(pull.BATCH_MIN - 1):
        add_portal_case(empty_portal.store, n=n, photos=1)
    summary = run_sync(ws, make_client(empty_portal.base_url))
    assert summary.completed and summary.cases_new == pull.BATCH_MIN - 1
    assert not [r for r in empty_portal.request_log if batched(r.target)]
    assert_matches_portal(ws, empty_portal)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_during_a_batched_pull_then_resume(
        empty_portal: ReferencePortal, tmp_path: Any, make_client: ClientFactory) -> None:
    """The CLI (real BATCH_MIN) killed while it pulls one page of Tasks with OR-lists:
    nothing lost, nothing doubled."""
    from tests.sync.test_sync_crash import resumed, sync_killed_after

    for n in range(30):
        add_portal_case(empty_portal.store, n=n, photos=1)
    empty_portal.faults = faults("latency=0.005,seed=2")
    data_dir = tmp_path / "ws"
    Workspace.open(data_dir).close()
    outcomes = [sync_killed_after(empty_portal, data_dir, k) for k in (4, 9, 15, 22)]
    assert outcomes.count("killed") >= 3, outcomes
    assert any(batched(r.target) for r in empty_portal.request_log)
    with resumed(empty_portal, data_dir, make_client) as ws:
        with ws.db.session() as s:
            shas = list(s.scalars(select(Photo.sha256)))
        assert len(shas) == 30 and all(ws.images.verify(sha) for sha in shas)


# ---------------------------------------------------------------- the photo store's part


def test_the_photo_store_remakes_folders_removed_under_it(tmp_path: Any) -> None:
    """Folders are made once per store (no mkdir per photo), yet one removed meanwhile
    (a user cleaning up, a restored backup) is made again, not an error."""
    import shutil

    from derm_workstation.core.imagestore import ImageStore
    from tests.builders import jpeg

    store = ImageStore(tmp_path / "images")
    a, b = jpeg((200, 10, 10), (40, 30)), jpeg((10, 200, 10), (40, 30))
    sha_a = store.put_bytes(a)
    shutil.rmtree(store.root)  # the root and every photo folder
    sha_b = store.put_stream([b], durable=False)
    store.make_durable([sha_b])
    assert store.read_bytes(sha_b) == b
    shutil.rmtree(store.path_for(sha_b).parent.parent)
    assert store.put_bytes(b) == sha_b and store.read_bytes(sha_b) == b
    assert store.put_bytes(a) == sha_a and store.read_bytes(sha_a) == a


def test_flushed_photos_are_released_from_the_os_cache(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """After its flush, a photo's cached pages are given back (posix_fadvise DONTNEED),
    so a large sync reuses the same pages instead of taking fresh memory per photo. The
    same hint is given once its bytes are written, before the flush: Linux then starts
    writing them out at once, so the flush that follows has less left to do."""
    import os

    from derm_workstation.core.imagestore import ImageStore
    from tests.builders import jpeg

    if not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise on this OS (the hint is skipped there)")
    events: list[tuple[str, int]] = []
    real_fsync, real_advise = os.fsync, os.posix_fadvise

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.fstat(fd).st_ino))

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        real_advise(fd, offset, length, advice)
        if advice == os.POSIX_FADV_DONTNEED:
            events.append(("dropped", os.fstat(fd).st_ino))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "posix_fadvise", advise)
    store = ImageStore(tmp_path / "images")
    sha = store.put_stream([jpeg((1, 2, 3), (30, 20))], durable=False)
    ino = store.path_for(sha).stat().st_ino
    assert events == [("dropped", ino)]  # writing started, not flushed
    store.make_durable([sha])
    assert events[1:3] == [("fsync", ino), ("dropped", ino)]  # dropped again once on disk
