"""Incremental pull from the portal (PORTAL_CONTRACT.md, "Pull (sync)").

1. ``GET Task?status=requested,received,accepted,in-progress,on-hold&_lastUpdated=gt<cursor>
   &_sort=_lastUpdated&_count=50``, following ``link[relation=next]``.
2. For each new or changed Task (its ``meta.versionId`` differs from the stored one): read
   its ServiceRequest and Patient; search Media, QuestionnaireResponse and Communication
   ``based-on`` the ServiceRequest, AllergyIntolerance by patient, and the patient's
   earlier cases (``Task?patient=``), which are pulled the same way for comparison.
   Photos download concurrently (bounded), streamed into the image store and verified
   by size and SHA-1 before anything is recorded, and are flushed to disk before the
   case that refers to them commits. A photo verified that way gets a header-only
   check (:func:`jpeg_head_facts`, from bytes already in memory); anything else gets the
   full structure check. The full safe decode happens whenever a photo is shown.
3. Each case is committed as one transaction; the cursor moves only after every case of
   the page (and of every page before it) is committed. Pages are pipelined: the next
   page is read and started while the last cases of the current one finish. A crash
   anywhere re-reads at most the pages not yet passed by the cursor: cases already
   committed are recognised by their version and skipped, so nothing is lost or doubled.
4. Tasks that were cancelled, completed or claimed elsewhere: a second search,
   ``Task?status=completed,cancelled&_lastUpdated=gt<cursor>…``, updates the local cases
   (the open-status search cannot return them), and changed owners/statuses set a
   notice on the case for anyone who has it open.

So a sync with nothing new costs exactly two requests. Cases whose photos failed are
flagged (``Case.portal_sync_error``) and fetched again by id on the next sync.
Database writes happen on the calling thread only; worker threads do network and disk.

Many Tasks at once (:data:`BATCH_MIN` or more of a search page): their ServiceRequests,
Patients, Media, QuestionnaireResponses, Communications, AllergyIntolerances and the
patients' Tasks are searched for the whole page with standard FHIR OR-lists
(``ServiceRequest?_id=a,b``, ``Media?based-on=ServiceRequest/a,ServiceRequest/b``…,
paged like any search) instead of 7 requests per case. A server may not honour
OR-lists, so nothing is taken on trust that could lose data (:class:`_Batch`):

* ``_id`` lists are checked against the ids asked for; any missing is read on its own;
* every case has photos and every patient has at least the current Task, so a
  ServiceRequest without Media or a patient without Tasks in the batched answer is
  searched on its own;
* an empty batched answer counts only for a key the server demonstrably matched in an
  OR-list of the same parameter: a ServiceRequest's questionnaires and messages when
  the batched Media search returned that ServiceRequest's Media, a patient's allergies
  when the batched Task search returned that patient's Tasks; any other empty answer
  is searched again on its own (a server that ignores, truncates or misreads OR-lists
  never turns "not searched" into "none");
* a 400, 422 or 501 to a batched search turns that search back into one request per
  case for the rest of the sync; any other failure does so for that page.
So a patient whose allergy search failed is still "not checked", never "none known".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from derm_workstation.core import audit, intake
from derm_workstation.core.errors import DermError, InputError
from derm_workstation.core.models import (
    Allergy,
    Case,
    Message,
    OutboxItem,
    Patient,
    Photo,
    QuestionnaireResponse,
    utcnow,
)
from derm_workstation.core.users import SYSTEM, Actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.client import PortalClient
from derm_workstation.portal.errors import (
    DownloadError,
    PortalAuthError,
    PortalDataError,
    PortalError,
    PortalRequestError,
    PortalUnavailableError,
)
from derm_workstation.portal.mapping import (
    AllergyIn,
    MediaIn,
    MessageIn,
    PatientIn,
    Problems,
    QuestionnaireIn,
    ServiceRequestIn,
    TaskIn,
    allergy_from_fhir,
    communication_from_fhir,
    format_instant,
    media_from_fhir,
    parse_instant,
    patient_from_fhir,
    questionnaire_from_fhir,
    reference_id,
    service_request_from_fhir,
    task_from_fhir,
)
from derm_workstation.sync import state
from derm_workstation.sync.summary import SyncSummary

log = logging.getLogger(__name__)

OPEN_STATUSES = "requested,received,accepted,in-progress,on-hold"
CLOSED_STATUSES = "completed,cancelled"
PAGE_SIZE = 50
#: The first closed-status search starts this long before the portal's clock at the start.
CLOSED_CURSOR_MARGIN = timedelta(minutes=5)
#: Most cases committed in one transaction (when that many are ready at once).
COMMIT_BATCH = 16
#: Longest a fetched case waits for others to share its transaction (seconds). Each
#: commit is a durable write (an fsync) on the thread that also feeds the workers, so
#: committing cases one by one as they finish made that thread the bottleneck.
COMMIT_WAIT = 0.25
#: ``Case.portal_sync_error`` while the patient's earlier cases are still being fetched.
HISTORY_PENDING = "earlier cases of the patient not fetched yet"
#: Fewest Tasks fetched together (half a search page) whose other resources are searched
#: with OR-lists; below it, the contract's one-resource requests: a routine sync of a few
#: new cases gains little, and keeps each case independent of the others' answers.
BATCH_MIN = 25
#: ``_count`` sent with the OR-list searches (followed through ``link[relation=next]``).
BATCH_COUNT = 200
#: Longest value of one OR-list parameter; more values go into further searches.
BATCH_VALUE_CHARS = 1500
#: HTTP statuses meaning "this server does not do OR-lists here": not tried again.
OR_LIST_REFUSED = (400, 422, 501)

Progress = Callable[[int, int | None], None]


class SyncCancelled(DermError):
    """The sync was stopped on request (the app is closing); nothing half-written."""


@dataclass
class FetchedPhoto:
    media: MediaIn
    sha256: str | None = None
    size: int = 0
    content_type: str = ""
    width: int = 0
    height: int = 0
    error: str | None = None


@dataclass
class FetchedCase:
    task: TaskIn
    patient: PatientIn | None = None
    service_request: ServiceRequestIn | None = None
    photos: list[FetchedPhoto] = field(default_factory=list)
    questionnaires: list[QuestionnaireIn] = field(default_factory=list)
    messages: list[MessageIn] = field(default_factory=list)
    allergies: list[AllergyIn] | None = None
    problems: Problems = field(default_factory=Problems)
    history: list[TaskIn] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.task.case_number or f"Task/{self.task.portal_id}"

    @property
    def photo_errors(self) -> list[str]:
        return [p.error for p in self.photos if p.error]


Raw = dict[str, Any]


@dataclass
class _Found:
    """The answers of the OR-list searches of one batch (only searches that succeeded)."""

    by_id: dict[str, dict[str, Raw]] = field(default_factory=dict)  # type -> id -> resource
    #: (type, key) -> resources: key is the ServiceRequest id (Media, QR, Communication)
    #: or the Patient id (AllergyIntolerance, Task); every key asked by a search that
    #: succeeded is present, with [] when nothing matched it.
    by_ref: dict[tuple[str, str], list[Raw]] = field(default_factory=dict)


class _Batch:
    """OR-list searches for the Tasks of one page, run on the metadata workers.

    ``first`` (ServiceRequests, Patients, Media) is what a case needs before its photos;
    ``second`` (questionnaires, messages, allergies, the patients' Tasks) is needed
    only once the photos are on their way.
    """

    def __init__(self, first: Future[_Found], second: Future[_Found]) -> None:
        self.first = first
        self.second = second


def _chunks(values: list[str], limit: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for v in values:
        if chunk and size + len(v) + 1 > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(v)
        size += len(v) + 1
    if chunk:
        yield chunk


def _refs(res: Raw, element: str, rtype: str) -> set[str]:
    value = res.get(element)
    refs = value if isinstance(value, list) else [value]
    return {i for i in (reference_id(r, rtype) for r in refs) if i}


# ------------------------------------------------------------------------- photo facts

#: Largest picture the fast path accepts: well inside the decoder's pixel, side and
#: decode-memory limits, so the full check could not have refused it for its size.
_FAST_MAX_PIXELS = 40_000_000
_FAST_MAX_SIDE = 20_000


@dataclass(frozen=True)
class PhotoFacts:
    content_type: str
    width: int  # as displayed, after EXIF orientation
    height: int


def jpeg_head_facts(head: bytes) -> PhotoFacts | None:
    """Content type and displayed size of a JPEG from its first bytes, without decoding
    (:func:`~derm_workstation.imaging.decode.jpeg_head_size`), for a picture well inside
    the decoder's limits. None whenever the head does not settle it plainly: the caller
    then runs the full structure check
    (:func:`~derm_workstation.imaging.probe.probe_bytes`) on the whole file. The full
    safe decode still happens whenever the photo is shown.
    """
    from derm_workstation.imaging.decode import jpeg_head_size  # Pillow: imported on use

    size = jpeg_head_size(head)
    if size is None:
        return None
    width, height = size
    if not (0 < width <= _FAST_MAX_SIDE and 0 < height <= _FAST_MAX_SIDE) \
            or width * height > _FAST_MAX_PIXELS:
        return None
    return PhotoFacts("image/jpeg", width, height)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".")
    return text[:300]


def _later(a: str | None, b: str | None) -> bool:
    """True when instant ``a`` is after ``b`` (None is the beginning of time)."""
    if a is None:
        return False
    if b is None:
        return True
    da, db = parse_instant(a), parse_instant(b)
    if da is None:
        return False
    if db is None:
        return True
    return da > db


# ------------------------------------------------------------------------- applying


#: ``Session.info`` keys of rows looked up for a whole commit batch (see :func:`_preload`).
_CASES, _PATIENTS = "pull.cases", "pull.patients"


def _preload(s: Session, fetched: list[FetchedCase]) -> None:
    """Look up the cases and patients of a commit batch with two queries instead of two
    per case. Ids not found are known to be new for this transaction (the batch holds
    each Task once; a patient made by an earlier case of the batch is added here)."""
    tids = {f.task.portal_id for f in fetched}
    pids = {pid for f in fetched
            for pid in ((f.patient.portal_id if f.patient else None) or f.task.patient_id,)
            if pid}
    s.info[_CASES] = {c.portal_task_id: c for c in s.scalars(
        select(Case).where(Case.portal_task_id.in_(tids)))}, tids
    s.info[_PATIENTS] = {p.portal_id: p for p in s.scalars(
        select(Patient).where(Patient.portal_id.in_(pids)))} if pids else {}, pids


def _lookup(s: Session, key: str, value: str) -> tuple[bool, Any]:
    """(known, row) from :func:`_preload`; not known means "query the database"."""
    found = s.info.get(key)
    if found is None or value not in found[1]:
        return False, None
    return True, found[0].get(value)


def _upsert_patient(s: Session, p: PatientIn | None, portal_id: str | None) -> Patient:
    pid = (p.portal_id if p and p.portal_id else portal_id) or None
    patient = None
    if pid:
        known, patient = _lookup(s, _PATIENTS, pid)
        if not known:
            patient = s.scalar(select(Patient).where(Patient.portal_id == pid))
    if patient is None:
        patient = Patient(portal_id=pid, family_name="", given_name="", sex="unknown")
        s.add(patient)
        if pid and _PATIENTS in s.info:
            s.info[_PATIENTS][0][pid] = patient
    if p is not None:
        changed = (patient.family_name, patient.given_name, patient.identifier) != (
            p.family_name, p.given_name, p.identifier)
        patient.identifier = p.identifier[:64] if p.identifier else None
        patient.family_name = p.family_name
        patient.given_name = p.given_name
        patient.birth_date = p.birth_date
        patient.sex = p.sex
        if changed and patient.id is not None:
            for c in patient.cases:
                c.refresh_search_text()
    return patient  # flushed with its case (and found by the next query's autoflush)


def task_notice(case: Case, t: TaskIn) -> str | None:
    """The banner sentence when the portal's Task moved away from what the case shows."""
    if t.status == "cancelled" and case.status != "cancelled":
        return "This case was cancelled on the portal."
    if t.status == "completed" and case.status != "completed":
        who = f" by {t.owner_display}" if t.owner_display else ""
        return f"This case was completed on the portal{who}."
    if t.owner and t.owner != case.portal_owner and not _is_ours(case, t):
        return f"This case was claimed on the portal by {t.owner_display or t.owner}."
    return None


def _is_ours(case: Case, t: TaskIn) -> bool:
    return (case.claim_state in ("pending", "claimed")
            and case.assignee is not None and t.owner_display == case.assignee)


def apply_task_fields(case: Case, t: TaskIn) -> str | None:
    """Copy the Task's workflow fields onto the case; returns a notice when it moved."""
    notice = task_notice(case, t)
    if t.owner and _is_ours(case, t):
        case.claim_state = "claimed"
    elif t.owner and t.owner != case.portal_owner and case.claim_state in ("pending", "claimed"):
        case.claim_state = "elsewhere"
    case.status = t.status
    case.priority = t.priority
    case.priority_rank = intake.PRIORITY_RANK[t.priority]
    case.portal_task_version = t.version
    case.portal_owner = t.owner[:200] if t.owner else None
    case.assignee = t.owner_display[:200] if t.owner_display else None
    case.portal_business_status = t.business_status[:200] if t.business_status else None
    case.portal_note = t.note
    if t.case_number:
        case.case_number = t.case_number[:64]
    if t.last_updated_at:
        case.updated_at = t.last_updated_at
    if notice:
        case.portal_notice = notice
    return notice


def apply_case(s: Session, actor: Actor, f: FetchedCase) -> tuple[str, Case, str | None]:
    """Write one fetched case (new or changed) in the caller's transaction.

    Returns ("new" | "updated", the case, a notice or None).
    """
    t = f.task
    known, case = _lookup(s, _CASES, t.portal_id)
    if not known:
        case = s.scalar(select(Case).where(Case.portal_task_id == t.portal_id))
    sr = f.service_request
    problems = Problems(list(f.problems.items))
    photo_errors = f.photo_errors
    if photo_errors:
        n = len(photo_errors)
        problems.add(f"{n} photo{'s' if n > 1 else ''} could not be downloaded "
                     "(the workstation tries again at the next sync)")
    reason = problems.text()
    submitted = t.authored_on or (sr.authored_on if sr else None) or t.last_updated_at \
        or utcnow()
    notice: str | None = None
    if case is None:
        patient = _upsert_patient(s, f.patient, t.patient_id)
        case = intake.add_case(
            s, actor, patient,
            status=t.status, priority=t.priority,
            chief_complaint=sr.chief_complaint if sr else "",
            body_site=sr.body_site if sr else "",
            description=sr.description if sr else "",
            submitted_at=submitted,
            updated_at=t.last_updated_at or submitted,
            case_number=t.case_number[:64] if t.case_number else None,
            portal_task_id=t.portal_id,
            portal_task_version=t.version,
            portal_service_request_id=t.focus_id,
            incomplete_reason=reason,
            flush=False,  # one INSERT with the fields set below (and the patient's)
        )
        apply_task_fields(case, t)
        case.portal_notice = None
        outcome = "new"
    else:
        if f.patient is not None:
            patient = _upsert_patient(s, f.patient, t.patient_id)
            if case.patient_id != patient.id:
                case.patient = patient
        notice = apply_task_fields(case, t)
        if sr is not None:
            case.chief_complaint = sr.chief_complaint
            case.body_site = sr.body_site
            case.description = sr.description
        case.portal_service_request_id = t.focus_id or case.portal_service_request_id
        case.submitted_at = submitted
        case.incomplete_reason = reason
        outcome = "updated"
        audit.record(s, actor, "case.portal_update", "case", case.id,
                     {"task_version": t.version, "status": t.status})
    if sr is not None:
        case.body_site_code = sr.body_site_code
    case.portal_sync_error = "; ".join(photo_errors)[:2000] if photo_errors else None
    _apply_children(s, case, f, new=outcome == "new")
    case.refresh_search_text()
    # Not flushed here: the next case's first query or the commit writes it (a clash
    # with a row another sync stored meanwhile raises there, inside the transaction).
    return outcome, case, notice


def _apply_children(s: Session, case: Case, f: FetchedCase, *, new: bool) -> None:
    def known(col: Any, owner: Any) -> set[str | None]:
        if new:  # nothing to compare with: skip the queries
            return set()
        return set(s.scalars(select(col).where(owner == case.id, col.is_not(None))))

    have_media = known(Photo.portal_media_id, Photo.case_id)
    for ph in f.photos:
        if ph.sha256 is None or ph.media.portal_id in have_media:
            continue
        intake.add_stored_photo(
            s, case, sha256=ph.sha256, content_type=ph.content_type, byte_size=ph.size,
            width=ph.width, height=ph.height, body_site=ph.media.body_site or case.body_site,
            title=ph.media.title, taken_at=ph.media.taken_at, source="portal",
            portal_media_id=ph.media.portal_id, flush=False,
        )
        have_media.add(ph.media.portal_id)

    have_qr = known(QuestionnaireResponse.portal_id, QuestionnaireResponse.case_id)
    for q in f.questionnaires:
        if q.portal_id and q.portal_id in have_qr:
            continue
        intake.add_questionnaire(s, case, q.items, title=q.title, authored_at=q.authored_at,
                                 portal_id=q.portal_id)
        have_qr.add(q.portal_id)

    have_msg = known(Message.portal_id, Message.case_id)
    for m in f.messages:
        if m.portal_id and m.portal_id in have_msg:
            continue
        if m.outbox_id:
            item = s.get(OutboxItem, m.outbox_id)
            local = s.get(Message, item.payload.get("message_id")) if item is not None else None
            if local is not None:
                local.portal_id = m.portal_id
                if local.delivery_state in ("queued", "failed"):
                    local.delivery_state = "sent"
                have_msg.add(m.portal_id)
                continue
        intake.add_message(s, case, direction=m.direction, text=m.text,
                           sent_at=m.sent_at or case.submitted_at, portal_id=m.portal_id,
                           sender=m.sender[:200] if m.sender else None)
        have_msg.add(m.portal_id)

    if f.allergies is not None:  # the portal answered (an empty answer is "none known")
        case.patient.allergies_checked_at = utcnow()
    if f.allergies:
        patient = case.patient
        existing = {a.portal_id: a for a in patient.allergies if a.portal_id}
        for a in f.allergies:
            row = existing.get(a.portal_id) if a.portal_id else None
            if row is None and a.portal_id:
                row = s.scalar(select(Allergy).where(Allergy.portal_id == a.portal_id))
            if row is None:
                if not a.portal_id and any(x.substance == a.substance for x in patient.allergies):
                    continue
                row = Allergy(patient=patient, portal_id=a.portal_id)
                s.add(row)
            row.patient = patient
            row.substance = a.substance
            row.substance_system = a.system
            row.substance_code = a.code
            row.clinical_status = a.clinical_status
            row.criticality = a.criticality
            row.reaction = a.reaction
            row.recorded_at = a.recorded_at


# ------------------------------------------------------------------------- the puller


class Puller:
    """One pull run. Not reusable; create one per sync."""

    def __init__(self, ws: Workspace, client: PortalClient, summary: SyncSummary, *,
                 actor: Actor = SYSTEM, concurrency: int = 4, progress: Progress | None = None,
                 cancel: threading.Event | None = None) -> None:
        if concurrency < 1:
            raise InputError("Concurrency must be at least 1.")
        self.ws = ws
        self.client = client
        self.summary = summary
        self.actor = actor
        self.concurrency = concurrency
        self.progress = progress
        self.cancel = cancel or threading.Event()
        #: Task id → the version scheduled in this run.
        self._scheduled: dict[str, str | None] = {}
        #: Tasks seen again with a newer version while the pull was paging (changed on the
        #: portal meanwhile): fetched again once nothing else is in flight. Until then the
        #: open cursor is held, so a crash re-reads them instead of skipping past.
        self._stale: dict[str, TaskIn] = {}
        self._held: list[tuple[list[TaskIn], bool]] = []
        self._history: dict[str, list[TaskIn]] = {}
        self._allergy_cache: dict[str, list[AllergyIn] | None] = {}
        self._history_lock = threading.Lock()
        self._meta: ThreadPoolExecutor | None = None
        #: (type, parameter) of OR-list searches the portal refused: one by one from then on.
        self._or_refused: set[tuple[str, str]] = set()
        self._server_date: datetime | None = None
        self._done = 0
        self._total: int | None = None
        self._cases: ThreadPoolExecutor | None = None
        self._photos: ThreadPoolExecutor | None = None
        #: At most ``concurrency`` photo transfers at once; twice as many photo workers,
        #: so one photo's fsync and rename overlap the next one's transfer.
        self._transfers = threading.BoundedSemaphore(concurrency)

    # ---------------------------------------------------------------- run

    def run(self) -> None:
        self._check_portal_url()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="portal-case") as cases, \
                ThreadPoolExecutor(2 * self.concurrency,
                                   thread_name_prefix="portal-photo") as photos, \
                ThreadPoolExecutor(2, thread_name_prefix="portal-meta") as meta:
            self._cases, self._photos, self._meta = cases, photos, meta
            try:
                self._pull_open()
                self._refetch_flagged()
                self._pull_closed()
            finally:
                self._cases = self._photos = self._meta = None

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise SyncCancelled("The sync was stopped; it resumes where it left off next time.")

    def _check_portal_url(self) -> None:
        with self.ws.db.session() as s:
            known = state.get(s, state.PORTAL_URL)
            if known != self.client.base_url:
                if known is not None:
                    log.warning("portal URL changed; sync cursors reset")
                state.put(s, state.PORTAL_URL, self.client.base_url)
                state.put(s, state.CURSOR_OPEN, None)
                state.put(s, state.CURSOR_CLOSED, None)

    def _tick(self) -> None:
        self._done += 1
        if self.progress is not None:
            try:
                self.progress(self._done, self._total)
            except Exception:  # a progress display must never break the sync
                log.exception("sync progress callback failed")

    def _tasks(self, resources: Iterable[dict[str, Any]]) -> list[TaskIn]:
        out = []
        for res in resources:
            t = task_from_fhir(res)
            if t is None:
                self.summary.error("The portal sent a Task without an id; it cannot be stored.")
            else:
                out.append(t)
        return out

    def _pull_open(self) -> None:
        with self.ws.db.session() as s:
            cursor = state.get(s, state.CURSOR_OPEN)
        params = {"status": OPEN_STATUSES}
        if cursor:
            params["_lastUpdated"] = f"gt{cursor}"
        params.update({"_sort": "_lastUpdated", "_count": str(PAGE_SIZE)})
        def pages() -> Iterator[tuple[list[TaskIn], Callable[[], None]]]:
            first = True
            for page in self.client.search_pages("Task", params):
                if first:
                    self._server_date = page.server_date
                    self._total = page.total
                    first = False
                if page.skipped:
                    self.summary.warn(f"{page.skipped} search entries that were not Tasks "
                                      "were ignored.")
                tasks = self._tasks(page.resources)
                yield tasks, partial(self._advance, state.CURSOR_OPEN, tasks,
                                     final=page.next_url is None)

        self._run(pages(), with_history=True)
        self._catch_up_stale()

    def _catch_up_stale(self) -> None:
        """Fetch again the Tasks that changed on the portal while this pull was paging,
        then release the cursor moves held back meanwhile."""
        while self._stale:
            stale = list(self._stale.values())
            self._stale.clear()
            for t in stale:
                self._scheduled.pop(t.portal_id, None)
            self._process(stale, with_history=False)
        held, self._held = self._held, []
        for tasks, final in held:
            self._advance(state.CURSOR_OPEN, tasks, final=final)

    def _pull_closed(self) -> None:
        with self.ws.db.session() as s:
            cursor = state.get(s, state.CURSOR_CLOSED)
        synthesized = False
        if cursor is None and self._server_date is not None:
            cursor = format_instant(self._server_date - CLOSED_CURSOR_MARGIN)
            synthesized = True
        params = {"status": CLOSED_STATUSES}
        if cursor:
            params["_lastUpdated"] = f"gt{cursor}"
        params.update({"_sort": "_lastUpdated", "_count": str(PAGE_SIZE)})
        for page in self.client.search_pages("Task", params):
            tasks = self._tasks(page.resources)
            with self.ws.db.session() as s:
                ids = [t.portal_id for t in tasks]
                local = {c.portal_task_id: c for c in s.scalars(
                    select(Case).where(Case.portal_task_id.in_(ids)))} if ids else {}
                for t in tasks:
                    case = local.get(t.portal_id)
                    if case is None or (case.portal_task_version == t.version and t.version):
                        continue
                    notice = apply_task_fields(case, t)
                    audit.record(s, self.actor, "case.portal_update", "case", case.id,
                                 {"task_version": t.version, "status": t.status})
                    self.summary.cases_updated += 1
                    self.summary.changed(case.id)
                    if notice:
                        self.summary.notices.append((case.id, notice))
            self._advance(state.CURSOR_CLOSED, tasks, final=page.next_url is None,
                          floor=cursor if synthesized else None)
            self._check_cancel()

    def _refetch_flagged(self) -> None:
        with self.ws.db.session() as s:
            rows = list(s.execute(select(Case.id, Case.portal_task_id).where(
                Case.portal_sync_error.is_not(None), Case.portal_task_id.is_not(None))))
        for case_id, task_id in rows:
            if not task_id or task_id in self._scheduled:
                continue
            try:
                raw = self.client.read("Task", task_id)
            except PortalRequestError as exc:
                if exc.status in (404, 410):
                    with self.ws.db.session() as s:
                        case = s.get(Case, case_id)
                        if case is not None:
                            case.portal_sync_error = None
                            case.portal_notice = "The portal no longer has this case."
                    continue
                self.summary.error(f"Task/{task_id}: {_short(exc)}")
                continue
            except PortalDataError as exc:
                self.summary.error(f"Task/{task_id}: {_short(exc)}")
                continue
            self._process(self._tasks([raw]), with_history=True, force=True)

    def _advance(self, key: str, tasks: list[TaskIn], *, final: bool,
                 floor: str | None = None) -> None:
        """Move the cursor after a committed page.

        On a page followed by another, only up to the newest instant strictly older than
        the page's newest one: Tasks sharing that newest instant may continue on the next
        page, and ``gt`` would skip them after a crash.
        """
        stamps: list[tuple[datetime, str]] = []
        for t in tasks:
            when = parse_instant(t.last_updated)
            if when is not None and t.last_updated:
                stamps.append((when, t.last_updated))
        stamps.sort(key=lambda x: x[0])
        if key == state.CURSOR_OPEN and self._stale:
            self._held.append((tasks, final))  # see _catch_up_stale
            return
        candidate: str | None = floor
        if stamps:
            if final:
                candidate = stamps[-1][1]
            else:
                newest = stamps[-1][0]
                older = [raw for when, raw in stamps if when < newest]
                if older:
                    candidate = older[-1]
        if candidate is None:
            return
        with self.ws.db.session() as s:
            current = state.get(s, key)
            if _later(candidate, current):
                state.put(s, key, candidate)

    # ---------------------------------------------------------------- per case

    def _needs(self, tasks: list[TaskIn], force: bool) -> list[tuple[TaskIn, set[str]]]:
        """The Tasks to fetch (new, changed or flagged) and the photos each already has."""
        fresh = []
        for t in tasks:
            if t.portal_id not in self._scheduled:
                fresh.append(t)
            elif t.version is not None and self._scheduled[t.portal_id] != t.version:
                self._stale[t.portal_id] = t  # changed on the portal during this pull
        if not fresh:
            return []
        ids = [t.portal_id for t in fresh]
        with self.ws.db.session() as s:
            rows = {r.portal_task_id: r for r in s.execute(
                select(Case.id, Case.portal_task_id, Case.portal_task_version,
                       Case.portal_sync_error).where(Case.portal_task_id.in_(ids)))}
            out = []
            for t in fresh:
                row = rows.get(t.portal_id)
                if row is not None and not force and t.version is not None \
                        and row.portal_task_version == t.version and row.portal_sync_error is None:
                    continue
                have: set[str] = set()
                if row is not None:
                    for mid, sha in s.execute(select(Photo.portal_media_id, Photo.sha256).where(
                            Photo.case_id == row.id, Photo.portal_media_id.is_not(None))):
                        if mid and self.ws.images.contains(sha):
                            have.add(mid)
                out.append((t, have))
        for t, _ in out:
            self._scheduled[t.portal_id] = t.version
        return out

    def _process(self, tasks: list[TaskIn], *, with_history: bool, force: bool = False) -> None:
        """Fetch and commit Tasks (and their patients' earlier cases) until all are done."""
        self._run(iter([(tasks, None)]), with_history=with_history, force=force)

    def _run(self, batches: Iterator[tuple[list[TaskIn], Callable[[], None] | None]], *,
             with_history: bool, force: bool = False) -> None:
        """Fetch and commit batches of Tasks (search pages), pipelined.

        The next batch is read and started as soon as fewer cases than workers are in
        flight, so the photo transfers of one page overlap the last commits of the one
        before (no drain at page boundaries). A batch's ``done`` (moving the cursor) runs
        once every case of it is committed and every earlier batch's ``done`` has run:
        the cursor never passes a case that is not committed. Reading the next batch
        failing (a broken search page) or the sync being stopped ends the feeding; the
        cases in flight are committed first, then the error is raised.

        A case whose earlier cases still have to be fetched is committed with the
        :data:`HISTORY_PENDING` marker, cleared once all of them are committed: a crash in
        between makes the next sync fetch it (and its history) again by id.
        """
        assert self._cases is not None
        cases = self._cases
        pending: dict[Future[FetchedCase], TaskIn] = {}
        waiting: dict[str, set[str]] = {}  # parent case id -> history task ids not yet in
        parents_of: dict[str, list[str]] = {}  # history task id -> parent case ids
        # batches in order: (task ids not committed yet, what to run once they are)
        open_batches: deque[tuple[set[str], Callable[[], None] | None]] = deque()
        batch_of: dict[str, set[str]] = {}  # task id -> its batch's set above
        failure: BaseException | None = None
        feeding = True
        fed = 0

        def feed() -> None:
            nonlocal feeding, failure, fed
            # The next page is read while a few cases are still to start, so its batched
            # searches are answered by the time a worker takes its first case.
            while feeding and failure is None and len(pending) < 2 * self.concurrency:
                try:
                    if fed:
                        self._check_cancel()
                    batch = next(batches, None)
                except BaseException as exc:  # a search page that failed; stopped
                    failure, feeding = exc, False
                    return
                if batch is None:
                    feeding = False
                    return
                fed += 1
                tasks, done = batch
                outstanding: set[str] = set()
                open_batches.append((outstanding, done))
                needs = self._needs(tasks, force)
                together = self._start_batch([t for t, _ in needs], with_history) \
                    if len(needs) >= BATCH_MIN else None
                for t, have in needs:
                    outstanding.add(t.portal_id)
                    batch_of[t.portal_id] = outstanding
                    pending[cases.submit(self._fetch_case, t, have, with_history,
                                         together)] = t
                close_batches()

        def close_batches() -> None:
            while open_batches and not open_batches[0][0]:
                _, done = open_batches.popleft()
                if done is not None:
                    done()

        ready: list[tuple[FetchedCase, list[tuple[TaskIn, set[str]]]]] = []
        oldest = 0.0  # when the first case in ``ready`` finished
        feed()
        while pending or ready:
            timeout = max(0.0, oldest + COMMIT_WAIT - time.monotonic()) if ready else None
            done_futures, _ = wait(list(pending), timeout=timeout,
                                   return_when=FIRST_COMPLETED) if pending else (set(), set())
            if done_futures and not ready:
                oldest = time.monotonic()
            for fut in done_futures:
                pending.pop(fut)
                try:
                    fetched = fut.result()
                except BaseException as exc:
                    failure = failure or exc
                    feeding = False
                    for other in pending:
                        other.cancel()
                    continue
                history = self._needs(fetched.history, False) \
                    if failure is None and fetched.history else []
                ready.append((fetched, history))
            # Commit when a transaction's worth is ready, the oldest has waited long
            # enough, nothing else is in flight, or the sync is failing.
            if ready and (len(ready) >= COMMIT_BATCH or failure is not None or not pending
                          or time.monotonic() >= oldest + COMMIT_WAIT):
                for start in range(0, len(ready), COMMIT_BATCH):
                    chunk = ready[start:start + COMMIT_BATCH]
                    ids = self._commit_all([(f, bool(h)) for f, h in chunk])
                    for (fetched, history), case_id in zip(chunk, ids, strict=True):
                        self._committed(fetched, history, case_id, batch_of, waiting,
                                        parents_of, pending)
                ready = []
            pending = {f: t for f, t in pending.items() if not f.cancelled()}
            close_batches()
            feed()
        if failure is not None:
            raise failure
        self._check_cancel()

    def _committed(self, fetched: FetchedCase, history: list[tuple[TaskIn, set[str]]],
                   case_id: str, batch_of: dict[str, set[str]], waiting: dict[str, set[str]],
                   parents_of: dict[str, list[str]],
                   pending: dict[Future[FetchedCase], TaskIn]) -> None:
        """Book-keeping of :meth:`_run` after a case is committed."""
        assert self._cases is not None
        self._tick()
        batch = batch_of.pop(fetched.task.portal_id, None)
        if batch is not None:
            batch.discard(fetched.task.portal_id)
        if history:
            waiting[case_id] = {t.portal_id for t, _ in history}
            for t, have in history:
                parents_of.setdefault(t.portal_id, []).append(case_id)
                pending[self._cases.submit(self._fetch_case, t, have, False)] = t
        for parent in parents_of.pop(fetched.task.portal_id, []):
            left = waiting.get(parent)
            if left is not None:
                left.discard(fetched.task.portal_id)
                if not left:
                    del waiting[parent]
                    self._history_done(parent)

    def _history_done(self, case_id: str) -> None:
        with self.ws.db.session() as s:
            case = s.get(Case, case_id)
            if case is not None and case.portal_sync_error == HISTORY_PENDING:
                case.portal_sync_error = None

    def _commit_all(self, items: list[tuple[FetchedCase, bool]]) -> list[str]:
        """Commit fetched cases (with their "history pending" flags); returns their ids.

        Several cases ready at once share one transaction (each still all or nothing):
        fewer commits on the thread that is the pull's one database writer. If that
        fails on a row another sync stored meanwhile, they are committed one by one.
        """
        if len(items) > 1:
            try:
                with self.ws.db.session() as s:
                    _preload(s, [f for f, _ in items])
                    applied = [self._apply(s, f, pending) for f, pending in items]
            except IntegrityError:
                log.info("a case was stored concurrently; committing one by one")
            else:
                return [self._account(f, *r) for (f, _), r in zip(items, applied, strict=True)]
        return [self._commit(f, history_pending=pending) for f, pending in items]

    def _apply(self, s: Session, f: FetchedCase,
               history_pending: bool) -> tuple[str, str, str | None]:
        outcome, case, notice = apply_case(s, self.actor, f)
        if history_pending and case.portal_sync_error is None:
            case.portal_sync_error = HISTORY_PENDING
        return outcome, case.id, notice

    def _commit(self, f: FetchedCase, *, history_pending: bool = False) -> str:
        for attempt in (1, 2):
            try:
                with self.ws.db.session() as s:
                    outcome, case_id, notice = self._apply(s, f, history_pending)
                break
            except IntegrityError:
                # Another sync (the GUI and the CLI at once) stored it first: update instead.
                if attempt == 2:
                    raise
                log.info("case for Task/%s was stored concurrently; retrying", f.task.portal_id)
        return self._account(f, outcome, case_id, notice)

    def _account(self, f: FetchedCase, outcome: str, case_id: str, notice: str | None) -> str:
        """The summary's part of a committed case."""
        stored = [p for p in f.photos if p.sha256]
        self.summary.photos_downloaded += len(stored)
        self.summary.bytes += sum(p.size for p in stored)
        if outcome == "new":
            self.summary.cases_new += 1
        else:
            self.summary.cases_updated += 1
        self.summary.changed(case_id)
        if notice:
            self.summary.notices.append((case_id, notice))
        for p in f.photos:
            if p.error:
                self.summary.error(f"Case {f.label}: photo Media/{p.media.portal_id} was not "
                                   f"stored: {p.error}")
        reason = f.problems.text()
        if reason:
            self.summary.warn(f"Case {f.label} is incomplete from the portal: {reason}")
        log.info("pulled Task/%s (%s, %d photos)", f.task.portal_id, outcome, len(stored))
        return case_id

    def _search(self, rtype: str, params: dict[str, str], f: FetchedCase, what: str,
                batched: list[Raw] | None = None) -> list[Raw]:
        """``batched`` (the trusted answer of an OR-list search) when there is one, else
        the search on its own; a failure is one of the case's problems."""
        if batched is not None:
            return batched
        try:
            return self.client.search_all(rtype, params)
        except (PortalRequestError, PortalDataError) as exc:
            f.problems.add(f"the {what} could not be read ({_short(exc)})")
            return []

    # ---------------------------------------------------------------- OR-list batches

    def _start_batch(self, tasks: list[TaskIn], with_history: bool) -> _Batch | None:
        """Start the OR-list searches for ``tasks`` on the metadata workers."""
        assert self._meta is not None
        srs = sorted({t.focus_id for t in tasks if t.focus_id})
        patients = sorted({t.patient_id for t in tasks if t.patient_id})
        if len(srs) < 2 and len(patients) < 2:
            return None
        first = self._meta.submit(self._batch_first, srs, patients)
        second = self._meta.submit(self._batch_second, srs, patients, with_history)
        return _Batch(first, second)

    def _or_search(self, rtype: str, param: str, values: list[str]) -> list[Raw] | None:
        """Every ``rtype`` matching any of ``values`` (OR-lists, paged); None when the
        search failed (the values are then searched one by one)."""
        if not values or (rtype, param) in self._or_refused:
            return None
        out: list[Raw] = []
        for chunk in _chunks(values, BATCH_VALUE_CHARS):
            self._check_cancel()
            try:
                out.extend(self.client.search_all(
                    rtype, {param: ",".join(chunk), "_count": str(BATCH_COUNT)}))
            except PortalRequestError as exc:
                if exc.status in OR_LIST_REFUSED:
                    log.info("portal refused OR-lists for %s?%s (HTTP %s); searching one "
                             "by one", rtype, param, exc.status)
                    with self._history_lock:
                        self._or_refused.add((rtype, param))
                return None
            except (PortalDataError, PortalUnavailableError) as exc:
                log.info("batched %s search failed (%s); searching one by one", rtype,
                         type(exc).__name__)
                return None
        return out

    def _by_id(self, found: _Found, rtype: str, ids: list[str]) -> None:
        got = self._or_search(rtype, "_id", ids)
        if got is not None:
            wanted = set(ids)  # anything else the server sent is ignored
            found.by_id[rtype] = {r["id"]: r for r in got
                                  if isinstance(r.get("id"), str) and r["id"] in wanted}

    def _by_ref(self, found: _Found, rtype: str, param: str, target: str, element: str,
                keys: list[str]) -> None:
        got = self._or_search(rtype, param, [f"{target}/{k}" for k in keys])
        if got is None:
            return
        groups: dict[str, list[Raw]] = {k: [] for k in keys}
        for res in got:
            for key in _refs(res, element, target):
                if key in groups:
                    groups[key].append(res)
        for key, items in groups.items():
            found.by_ref[(rtype, key)] = items

    def _batch_first(self, srs: list[str], patients: list[str]) -> _Found:
        found = _Found()
        if len(srs) >= 2:
            self._by_id(found, "ServiceRequest", srs)
        if len(patients) >= 2:
            self._by_id(found, "Patient", patients)
        if len(srs) >= 2:
            self._by_ref(found, "Media", "based-on", "ServiceRequest", "basedOn", srs)
        return found

    def _batch_second(self, srs: list[str], patients: list[str], with_history: bool) -> _Found:
        found = _Found()
        if len(srs) >= 2:
            for rtype in ("QuestionnaireResponse", "Communication"):
                self._by_ref(found, rtype, "based-on", "ServiceRequest", "basedOn", srs)
        if len(patients) >= 2:
            with self._history_lock:
                ask = [p for p in patients if p not in self._allergy_cache]
            if len(ask) >= 2:
                self._by_ref(found, "AllergyIntolerance", "patient", "Patient", "patient", ask)
            if with_history:
                with self._history_lock:
                    ask = [p for p in patients if p not in self._history]
                if len(ask) >= 2:
                    self._by_ref(found, "Task", "patient", "Patient", "for", ask)
        return found

    @staticmethod
    def _batched(found: _Found | None, rtype: str, key: str, *,
                 empty_trusted: bool = False) -> list[Raw] | None:
        """The batched answer for ``key``, or None when it must be searched on its own:
        not in a batch that succeeded, or empty where an empty answer is not trusted.

        An empty answer is trusted only for a key the same server demonstrably matched
        inside an OR-list of the same reference parameter: a ServiceRequest whose Media
        the batched Media search returned (for its questionnaires and messages), a
        patient whose Tasks the batched Task search returned (for allergies). A server
        that ignores, truncates or misreads OR-lists therefore never turns "not
        searched" into "none": those keys are searched one by one."""
        if found is None:
            return None
        items = found.by_ref.get((rtype, key))
        if items is None or (not items and not empty_trusted):
            return None
        return items

    def _read(self, found: _Found | None, rtype: str, rid: str) -> Raw:
        """``rtype/rid`` from a batched ``_id`` search, else read on its own."""
        raw = found.by_id.get(rtype, {}).get(rid) if found is not None else None
        return raw if raw is not None else self.client.read(rtype, rid)

    @staticmethod
    def _matched(found: _Found | None, rtype: str, key: str) -> bool:
        """Whether a batched search of this page returned ``rtype`` resources for ``key``."""
        return bool(found is not None and found.by_ref.get((rtype, key)))

    # ---------------------------------------------------------------- one case

    def _fetch_case(self, t: TaskIn, have_media: set[str], with_history: bool,
                    batch: _Batch | None = None) -> FetchedCase:
        """Network part of one case (worker thread): resources, then photos (whose
        transfers start as soon as the Media are known)."""
        self._check_cancel()
        f = FetchedCase(task=t)
        f.problems.add(*t.problems)
        first = batch.first.result() if batch is not None else None
        if t.patient_id:
            try:
                f.patient = patient_from_fhir(self._read(first, "Patient", t.patient_id))
                f.problems.add(*f.patient.problems)
            except (PortalRequestError, PortalDataError) as exc:
                f.problems.add(f"the patient record could not be read ({_short(exc)})")
        downloads: list[Future[FetchedPhoto]] = []
        try:
            if t.focus_id:
                try:
                    f.service_request = service_request_from_fhir(
                        self._read(first, "ServiceRequest", t.focus_id))
                    f.problems.add(*f.service_request.problems)
                except (PortalRequestError, PortalDataError) as exc:
                    f.problems.add(f"the consult request could not be read ({_short(exc)})")
                based_on = {"based-on": f"ServiceRequest/{t.focus_id}"}
                media = []
                for res in self._search("Media", based_on, f, "photo list",
                                        self._batched(first, "Media", t.focus_id)):
                    m, why = media_from_fhir(res)
                    if m is not None:
                        media.append(m)
                    elif why:
                        f.problems.add(why)
                media.sort(key=lambda m: (m.taken_at is None, m.taken_at or utcnow(),
                                          m.portal_id))
                downloads = self._start_downloads(
                    [m for m in media if m.portal_id not in have_media])
                second = batch.second.result() if batch is not None else None
                media_matched = self._matched(first, "Media", t.focus_id)
                for res in self._search(
                        "QuestionnaireResponse", based_on, f, "questionnaire",
                        self._batched(second, "QuestionnaireResponse", t.focus_id,
                                      empty_trusted=media_matched)):
                    f.questionnaires.append(questionnaire_from_fhir(res))
                for res in self._search(
                        "Communication", based_on, f, "messages",
                        self._batched(second, "Communication", t.focus_id,
                                      empty_trusted=media_matched)):
                    msg = communication_from_fhir(res)
                    if msg is not None:
                        f.messages.append(msg)
                f.messages.sort(key=lambda m: (m.sent_at is None, m.sent_at or utcnow()))
            if t.patient_id:
                second = batch.second.result() if batch is not None else None
                f.allergies = self._allergies(t.patient_id, self._batched(
                    second, "AllergyIntolerance", t.patient_id,
                    empty_trusted=self._matched(second, "Task", t.patient_id)))
                if with_history:
                    f.history = [h for h in self._patient_tasks(t.patient_id, self._batched(
                        second, "Task", t.patient_id))
                        if h.portal_id != t.portal_id]
            f.photos = self._finish_downloads(downloads)
            # Each photo's bytes were flushed as it arrived; their folder entries are
            # flushed here, once per case, on this thread (which only waits here) and
            # before any row can refer to them.
            self.ws.images.flush_folders([p.sha256 for p in f.photos if p.sha256])
        except BaseException:
            for fut in downloads:
                fut.cancel()
            raise
        return f

    def _allergies(self, patient_id: str,
                   batched: list[Raw] | None = None) -> list[AllergyIn] | None:
        """The patient's allergies (searched once per patient per sync; ``batched`` is
        the trusted answer of an OR-list search)."""
        with self._history_lock:
            if patient_id in self._allergy_cache:
                return self._allergy_cache[patient_id]
        found: list[AllergyIn] | None
        try:
            raw = batched if batched is not None else self.client.search_all(
                "AllergyIntolerance", {"patient": f"Patient/{patient_id}"})
            found = [a for a in (allergy_from_fhir(r) for r in raw) if a]
        except (PortalRequestError, PortalDataError) as exc:
            log.info("allergies of Patient/%s unavailable: %s", patient_id, type(exc).__name__)
            found = None
        with self._history_lock:
            self._allergy_cache[patient_id] = found
        return found

    def _patient_tasks(self, patient_id: str,
                       batched: list[Raw] | None = None) -> list[TaskIn]:
        with self._history_lock:
            cached = self._history.get(patient_id)
        if cached is not None:
            return cached
        try:
            found = self._tasks(batched if batched is not None else self.client.search_all(
                "Task", {"patient": f"Patient/{patient_id}"}))
        except (PortalRequestError, PortalDataError) as exc:
            log.info("earlier cases of Patient/%s unavailable: %s", patient_id,
                     type(exc).__name__)
            found = []
        with self._history_lock:
            self._history[patient_id] = found
        return found

    def _start_downloads(self, media: list[MediaIn]) -> list[Future[FetchedPhoto]]:
        assert self._photos is not None
        return [self._photos.submit(self._download, m) for m in media]

    @staticmethod
    def _finish_downloads(futures: list[Future[FetchedPhoto]]) -> list[FetchedPhoto]:
        return [fut.result() for fut in futures]  # PortalAuthError / SyncCancelled propagate

    def _download(self, m: MediaIn) -> FetchedPhoto:
        self._check_cancel()
        ph = FetchedPhoto(media=m)
        try:
            got = self.client.download(m.attachment, self.ws.images, slots=self._transfers,
                                       durable=False)
        except PortalAuthError:
            raise
        except (DownloadError, PortalDataError, PortalRequestError,
                PortalUnavailableError) as exc:
            ph.error = _short(exc)
            return ph
        except PortalError as exc:  # pragma: no cover - every subclass is listed above
            ph.error = _short(exc)
            return ph
        # Bytes checked against the portal's size or hash need only a header check here;
        # others (and anything unusual) get the full structure check, which also catches
        # a truncated file.
        facts = jpeg_head_facts(got.head) if got.verified else None
        if facts is None:
            from derm_workstation.imaging.probe import ImageRejected, probe_bytes

            try:
                probed = probe_bytes(self.ws.images.path_for(got.sha256).read_bytes())
            except ImageRejected as exc:
                ph.error = f"it is not a usable image ({_short(exc)})"
                return ph
            except OSError as exc:
                ph.error = f"it could not be read back from the photo store ({exc.strerror})"
                return ph
            facts = PhotoFacts(probed.content_type, probed.width, probed.height)
        # Stored renamed-then-flushed, the flush here (outside the transfer slot, so the
        # next transfer overlaps it; its folder entry with the case's other photos).
        self.ws.images.make_durable([got.sha256], folders=False)
        ph.sha256, ph.size = got.sha256, got.size
        ph.content_type, ph.width, ph.height = facts.content_type, facts.width, facts.height
        return ph


__all__ = [
    "CLOSED_STATUSES",
    "HISTORY_PENDING",
    "OPEN_STATUSES",
    "PAGE_SIZE",
    "FetchedCase",
    "FetchedPhoto",
    "PhotoFacts",
    "Puller",
    "SyncCancelled",
    "apply_case",
    "apply_task_fields",
    "jpeg_head_facts",
    "task_notice",
]
