"""The case queue on a real workspace: filters, search, every sort order, rows, counts."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from derm_workstation.core import intake, queue
from derm_workstation.core.errors import InputError
from derm_workstation.core.models import (
    CASE_STATUSES,
    OPEN_STATUSES,
    PRIORITY_LABELS,
    PRIORITY_RANK,
    STATUS_LABELS,
)
from derm_workstation.core.queue import SORT_KEYS, QueueQuery
from derm_workstation.core.workspace import Workspace

from .helpers import add_case, add_patient, png_bytes

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
TODAY = date(2025, 3, 20)

PATIENTS: list[tuple[str, str, str | None, date | None, str]] = [
    ("Smith", "Ann", "MRN-100", date(1980, 5, 17), "female"),
    ("Nguyen", "Linh", "MRN-101", date(1992, 3, 20), "female"),  # birthday on TODAY
    ("Öztürk", "Ayşe", None, date(1975, 3, 21), "female"),  # birthday the day after
    ("O'Brien", "Sean", "MRN-103", None, "male"),  # age unknown
    ("Garcia", "Luis", "MRN-104", date(2010, 12, 1), "male"),
    ("Müller", "Jonas", None, date(1950, 7, 7), "male"),
    ("Adams", "", "MRN-106", date(2001, 1, 1), "other"),  # no given name
    ("Zhang", "Wei", "MRN-107", None, "unknown"),
    ("Kowalski", "Ewa", "MRN-108", date(1988, 8, 8), "female"),
    ("Brown", "Tom", "MRN-109", date(1965, 2, 28), "male"),
    ("Smithers", "Kim", "MRN-110", date(1999, 9, 9), "female"),
    ("", "", None, date(2020, 2, 29), "unknown"),  # no name at all
]
COMPLAINTS = [
    "Itchy rash",
    "Changing mole",
    "Lesion 50% larger",  # literal percent sign
    "Bleeding spot",
    "Acne flare",
    "Rash after hiking",
]
BODY_SITES = ["Left forearm", "Back", "left_arm", "Left arm", "Scalp\\crown", "Face"]


@dataclass(frozen=True)
class Rec:
    """What the test wrote, kept independently of the database."""

    id: str
    patient_id: str
    family: str
    given: str
    identifier: str | None
    birth: date | None
    sex: str
    status: str
    priority: str
    submitted: datetime
    complaint: str
    body_site: str
    case_number: str | None
    photos: int
    incomplete: bool

    @property
    def rank(self) -> int:
        return PRIORITY_RANK[self.priority]

    @property
    def haystack(self) -> str:
        parts = [self.family, self.given, self.identifier or "", self.case_number or "",
                 self.complaint, self.body_site]
        return " ".join(parts).lower()


@dataclass
class Dataset:
    ws: Workspace
    recs: list[Rec]

    def by_id(self) -> dict[str, Rec]:
        return {r.id: r for r in self.recs}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataset]:
    ws = Workspace.open(tmp_path_factory.mktemp("queue") / "data")
    rng = random.Random(20250301)
    pngs = [png_bytes(4 + i, 4, (i * 40, 10, 10)) for i in range(3)]
    recs: list[Rec] = []
    with ws.db.session() as s:
        patients = [
            add_patient(s, fam, giv, identifier=ident, birth_date=birth, sex=sex)
            for fam, giv, ident, birth, sex in PATIENTS
        ]
        submitted = T0
        for n in range(60):
            pi = rng.randrange(len(patients))
            fam, giv, ident, birth, sex = PATIENTS[pi]
            # Every 6th case shares the previous case's time, to exercise the tie-breakers.
            if n % 6 != 5:
                submitted = T0 + timedelta(minutes=rng.randrange(0, 20 * 24 * 60))
            status = CASE_STATUSES[n % len(CASE_STATUSES)]
            priority = rng.choice(list(PRIORITY_RANK))
            complaint = COMPLAINTS[rng.randrange(len(COMPLAINTS))]
            site = BODY_SITES[rng.randrange(len(BODY_SITES))]
            number = None if n % 7 == 3 else f"DR-{rng.randrange(10000):04d}-{n:02d}"
            incomplete = n % 13 == 0
            case = add_case(
                s, patients[pi], submitted, status=status, priority=priority,
                complaint=complaint, body_site=site, case_number=number,
                incomplete_reason="photo missing" if incomplete else None,
            )
            nphotos = n % 4
            for k in range(nphotos):
                intake.add_photo(s, ws.images, case, pngs[k], source="demo")
            recs.append(Rec(case.id, patients[pi].id, fam, giv, ident, birth, sex, status,
                            priority, submitted, complaint, site, number, nphotos, incomplete))
    try:
        yield Dataset(ws, recs)
    finally:
        ws.close()


def _ids(data: Dataset, **kw: Any) -> list[str]:
    with data.ws.db.session() as s:
        return queue.case_ids(s, QueueQuery(**kw))


def _triage_order(recs: list[Rec]) -> list[str]:
    return [r.id for r in sorted(recs, key=lambda r: (r.rank, r.submitted, r.id))]


# ---------------------------------------------------------------- filters


def test_dataset_covers_every_status_and_priority(data: Dataset) -> None:
    assert {r.status for r in data.recs} == set(CASE_STATUSES)
    assert {r.priority for r in data.recs} == set(PRIORITY_RANK)
    assert len({r.submitted for r in data.recs}) < len(data.recs)  # some ties exist


def test_default_query_is_open_cases_in_triage_order(data: Dataset) -> None:
    expected = _triage_order([r for r in data.recs if r.status in OPEN_STATUSES])
    got = _ids(data)
    assert got == expected
    assert 0 < len(got) < len(data.recs)


def test_empty_status_filter_means_open_cases(data: Dataset) -> None:
    assert _ids(data, statuses=()) == _ids(data)


def test_all_statuses_shows_every_case(data: Dataset) -> None:
    assert _ids(data, statuses=CASE_STATUSES) == _triage_order(data.recs)


@pytest.mark.parametrize(
    "statuses",
    [(s,) for s in CASE_STATUSES] + [("completed", "cancelled"), ("requested", "on-hold")],
    ids=str,
)
def test_status_filter(data: Dataset, statuses: tuple[str, ...]) -> None:
    expected = _triage_order([r for r in data.recs if r.status in statuses])
    assert expected
    assert _ids(data, statuses=statuses) == expected


@pytest.mark.parametrize("priorities", [("stat",), ("routine",), ("stat", "urgent")], ids=str)
def test_priority_filter(data: Dataset, priorities: tuple[str, ...]) -> None:
    expected = _triage_order(
        [r for r in data.recs if r.priority in priorities and r.status in OPEN_STATUSES]
    )
    assert expected
    assert _ids(data, priorities=priorities) == expected


def test_patient_filter(data: Dataset) -> None:
    pid = Counter(r.patient_id for r in data.recs).most_common(1)[0][0]
    expected = _triage_order([r for r in data.recs if r.patient_id == pid])
    assert len(expected) > 1
    assert _ids(data, statuses=CASE_STATUSES, patient_id=pid) == expected


# ---------------------------------------------------------------- search


def _search_expect(data: Dataset, text: str) -> list[str]:
    words = text.lower().split()
    return _triage_order([r for r in data.recs if all(w in r.haystack for w in words)])


@pytest.mark.parametrize(
    "text",
    [
        "smith",
        "SMITH",
        "smith itch",  # AND across name and complaint
        "Itchy RASH",
        "rash left",
        "öztürk",
        "ÖZTÜRK ayşe",
        "o'brien",
        "mrn-101",
        "dr-",
        "forearm back",  # both words must match: none do
        "  mole    back ",
        "50%",
        "%",
        "_",
        "left_arm",
        "scalp\\crown",
        "\\",
        "no-such-thing",
    ],
)
def test_free_text_search(data: Dataset, text: str) -> None:
    assert _ids(data, statuses=CASE_STATUSES, text=text) == _search_expect(data, text)


def test_search_combines_with_filters(data: Dataset) -> None:
    got = _ids(data, text="rash", priorities=("urgent", "routine"))
    expected = _triage_order(
        [r for r in data.recs if "rash" in r.haystack and r.status in OPEN_STATUSES
         and r.priority in ("urgent", "routine")]
    )
    assert got == expected and got


def test_like_wildcards_are_literal(data: Dataset) -> None:
    every = set(_ids(data, statuses=CASE_STATUSES))
    percent = set(_ids(data, statuses=CASE_STATUSES, text="%"))
    underscore = set(_ids(data, statuses=CASE_STATUSES, text="_"))
    by_id = data.by_id()
    assert percent and percent != every
    assert all("50%" in by_id[i].complaint for i in percent)
    assert underscore and underscore != every
    assert all(by_id[i].body_site == "left_arm" for i in underscore)
    # "left_arm" must not match "Left arm" (where "_" would be a one-character wildcard).
    left_arm = set(_ids(data, statuses=CASE_STATUSES, text="left_arm"))
    assert left_arm == underscore
    assert any(r.body_site == "Left arm" for r in data.recs)


def test_search_finds_a_case_by_its_case_number(data: Dataset) -> None:
    r = next(r for r in data.recs if r.case_number)
    assert r.id in _ids(data, statuses=CASE_STATUSES, text=r.case_number.upper())


# ---------------------------------------------------------------- sorting

#: The ascending order of each sort key, as the clinician sees it: the key, then its
#: tie-breakers ending in (oldest submitted first, id), so the order is total and paging
#: is stable. Age ascending means youngest first, i.e. the latest birth date first.
_ASCENDING: dict[str, Callable[[Rec], tuple[Any, ...]]] = {
    "priority": lambda r: (r.rank, r.submitted, r.id),
    "waiting": lambda r: (r.submitted, r.id),
    "submitted": lambda r: (r.submitted, r.id),
    "patient": lambda r: (r.family, r.given, r.submitted, r.id),
    "age": lambda r: (-r.birth.toordinal() if r.birth else None, r.submitted, r.id),
    "sex": lambda r: (r.sex, r.family, r.given, r.submitted, r.id),
    "complaint": lambda r: (r.complaint, r.submitted, r.id),
    "body_site": lambda r: (r.body_site, r.submitted, r.id),
    "photos": lambda r: (r.photos, r.submitted, r.id),
    "status": lambda r: (r.status, r.submitted, r.id),
    "case_number": lambda r: (r.case_number, r.submitted, r.id),
}


def _sorted_expectations(recs: list[Rec], key: str, descending: bool) -> list[list[str]]:
    """The expected orders. Unknown values (NULL) may come first or last in ascending
    order, but together; descending is the exact reverse of ascending."""
    full = _ASCENDING[key]
    known = sorted((r for r in recs if full(r)[0] is not None), key=full)
    unknown = sorted((r for r in recs if full(r)[0] is None), key=lambda r: full(r)[1:])
    options = [[r.id for r in unknown + known], [r.id for r in known + unknown]]
    if descending:
        options = [o[::-1] for o in options]
    return options if unknown else options[:1]


def test_sort_keys_are_all_covered() -> None:
    assert set(_ASCENDING) == set(SORT_KEYS)


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("key", sorted(SORT_KEYS))
def test_every_sort_key_orders_rows_correctly(data: Dataset, key: str, descending: bool) -> None:
    got = _ids(data, statuses=CASE_STATUSES, sort=key, descending=descending)
    assert sorted(got) == sorted(r.id for r in data.recs)
    assert got in _sorted_expectations(data.recs, key, descending)


@pytest.mark.parametrize("key", sorted(SORT_KEYS))
def test_descending_is_the_exact_reverse_of_ascending(data: Dataset, key: str) -> None:
    asc = _ids(data, statuses=CASE_STATUSES, sort=key)
    desc = _ids(data, statuses=CASE_STATUSES, sort=key, descending=True)
    assert desc == asc[::-1]


def test_sorting_applies_after_filtering(data: Dataset) -> None:
    recs = [r for r in data.recs if r.status in OPEN_STATUSES and "rash" in r.haystack]
    got = _ids(data, text="rash", sort="photos", descending=True)
    assert got in _sorted_expectations(recs, "photos", True)


def test_age_sort_puts_the_youngest_first(data: Dataset) -> None:
    got = _ids(data, statuses=CASE_STATUSES, sort="age")
    by_id = data.by_id()
    births = [by_id[i].birth for i in got if by_id[i].birth is not None]
    assert births == sorted(births, reverse=True)


def test_waiting_sorts_like_submitted(data: Dataset) -> None:
    """Current contract: 'waiting' ascending lists the longest-waiting case first."""
    for desc in (False, True):
        assert _ids(data, statuses=CASE_STATUSES, sort="waiting", descending=desc) == _ids(
            data, statuses=CASE_STATUSES, sort="submitted", descending=desc
        )


# ---------------------------------------------------------------- paging


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"statuses": CASE_STATUSES, "sort": "patient"},
        {"statuses": CASE_STATUSES, "sort": "case_number", "descending": True},
        {"text": "rash", "sort": "age", "descending": True},
        {"text": "smith", "statuses": CASE_STATUSES},
        {"priorities": ("stat",), "sort": "photos"},
        {"text": "no-such-thing"},
    ],
    ids=repr,
)
def test_count_page_and_first_page_agree_with_case_ids(
    data: Dataset, kwargs: dict[str, Any]
) -> None:
    q = QueueQuery(**kwargs)
    with data.ws.db.session() as s:
        ids = queue.case_ids(s, q)
        assert queue.count(s, q) == len(ids)
        paged: list[str] = []
        for offset in range(0, len(ids) + 7, 7):
            chunk = queue.page(s, q, offset, 7, today=TODAY)
            assert chunk == queue.rows(s, ids[offset:offset + 7], today=TODAY)
            paged += [r.id for r in chunk]
        assert paged == ids
        total, first = queue.first_page(s, q, 10, today=TODAY)
        assert total == len(ids)
        assert [r.id for r in first] == ids[:10]


# ---------------------------------------------------------------- rows


def _expected_age(birth: date | None, today: date) -> int | None:
    if birth is None:
        return None
    return max((int(today.strftime("%Y%m%d")) - int(birth.strftime("%Y%m%d"))) // 10000, 0)


def test_rows_follow_the_given_order_and_skip_unknown_ids(data: Dataset) -> None:
    rng = random.Random(7)
    wanted = rng.sample([r.id for r in data.recs], 25)
    asked = [*wanted[:10], "no-such-id", *wanted[10:], "00000000-0000-0000-0000-000000000000"]
    with data.ws.db.session() as s:
        rows = queue.rows(s, asked, today=TODAY)
    assert [row.id for row in rows] == wanted

    by_id = data.by_id()
    for row in rows:
        r = by_id[row.id]
        name = ", ".join(x for x in (r.family, r.given) if x) or "(no name)"
        assert row.patient_name == name
        assert row.case_number == r.case_number
        assert (row.status, row.priority) == (r.status, r.priority)
        assert row.submitted_at == r.submitted and row.submitted_at.tzinfo is UTC
        assert row.age_years == _expected_age(r.birth, TODAY)
        assert row.sex == r.sex
        assert (row.chief_complaint, row.body_site) == (r.complaint, r.body_site)
        assert row.photo_count == r.photos
        assert row.incomplete is r.incomplete
        assert row.status_label == STATUS_LABELS[r.status]
        assert row.priority_label == PRIORITY_LABELS[r.priority]
        js = row.as_json()
        assert js["id"] == r.id and js["submitted_at"] == r.submitted.isoformat()
        assert js["age_years"] == row.age_years and js["incomplete"] is r.incomplete


def test_rows_of_nothing(data: Dataset) -> None:
    with data.ws.db.session() as s:
        assert queue.rows(s, []) == []
        assert queue.rows(s, ["missing"]) == []


def test_rows_show_names_and_birthday_ages(data: Dataset) -> None:
    with data.ws.db.session() as s:
        ids = _ids(data, statuses=CASE_STATUSES)
        rows = {row.id: row for row in queue.rows(s, ids, today=TODAY)}
    by_name = {row.patient_name: row for row in rows.values()}
    assert by_name["Nguyen, Linh"].age_years == 33  # birthday today
    assert by_name["Öztürk, Ayşe"].age_years == 49  # birthday tomorrow
    assert by_name["O'Brien, Sean"].age_years is None
    assert "Adams" in by_name  # no given name: no dangling comma
    assert "(no name)" in by_name


# ---------------------------------------------------------------- counts


def test_counts_by_status(data: Dataset) -> None:
    with data.ws.db.session() as s:
        c = queue.counts(s)
        urgent = queue.counts(s, urgent_only=True)
    assert c.by_status == dict(Counter(r.status for r in data.recs))
    assert c.total == len(data.recs)
    assert c.open == sum(1 for r in data.recs if r.status in OPEN_STATUSES)
    assert c.open == len(_ids(data))
    assert urgent.by_status == dict(Counter(r.status for r in data.recs if r.rank <= 2))
    assert 0 < urgent.total < c.total


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sort": "shoe_size"}, "Unknown sort 'shoe_size'"),
        ({"sort": "Priority"}, "Unknown sort"),
        ({"statuses": ("open",)}, "Unknown status 'open'"),
        ({"statuses": ("requested", "done")}, "Unknown status 'done'"),
        ({"priorities": ("high",)}, "Unknown priority 'high'"),
    ],
)
def test_unknown_query_values_are_input_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        QueueQuery(**kwargs)
    assert err.value.exit_code == 2


def test_unknown_sort_lists_the_choices() -> None:
    with pytest.raises(InputError) as err:
        QueueQuery(sort="nope")
    for key in SORT_KEYS:
        assert key in str(err.value)


# ---------------------------------------------------------------- age_in_years


@pytest.mark.parametrize(
    "birth, today, years",
    [
        (date(1990, 6, 15), date(2025, 6, 15), 35),  # birthday today
        (date(1990, 6, 16), date(2025, 6, 15), 34),  # birthday tomorrow
        (date(1990, 6, 14), date(2025, 6, 15), 35),  # birthday yesterday
        (date(1990, 12, 31), date(2025, 1, 1), 34),
        (date(2000, 2, 29), date(2023, 2, 28), 22),  # leapling, common year
        (date(2000, 2, 29), date(2023, 3, 1), 23),
        (date(2000, 2, 29), date(2024, 2, 29), 24),
        (date(2025, 6, 15), date(2025, 6, 15), 0),  # born today
        (date(2025, 6, 16), date(2025, 6, 15), 0),  # future birth date: never negative
        (None, date(2025, 6, 15), None),
    ],
)
def test_age_in_years(birth: date | None, today: date, years: int | None) -> None:
    assert queue.age_in_years(birth, today) == years


def test_age_in_years_defaults_to_the_current_utc_date() -> None:
    now = datetime.now(UTC).date()
    birth = date(now.year - 40, 1, 1)
    assert queue.age_in_years(birth) == 40


@given(
    birth=st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 1, 1)),
    today=st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 1, 1)),
)
def test_age_in_years_matches_the_yyyymmdd_formula(birth: date, today: date) -> None:
    assert queue.age_in_years(birth, today) == _expected_age(birth, today)
