"""The demo dataset: deterministic, consistent, realistic in shape, and cheap to build."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from derm_workstation.demo import dataset as ds_mod
from derm_workstation.demo.dataset import (
    DEFAULT_NOW,
    OPEN_STATUSES,
    DemoDataset,
    DemoQuestion,
    build_demo_dataset,
)

ANSWER_TYPES = {"string": str, "boolean": bool, "integer": int, "date": date, "coding": str}
REFERENCE_MM = {"sticker-10mm": 10.0, "US 25¢": 24.26, "€1": 23.25, "UK 1p": 20.3}


@pytest.fixture(scope="module")
def ds() -> DemoDataset:
    return build_demo_dataset()


def _walk(items: tuple[DemoQuestion, ...]) -> list[DemoQuestion]:
    out: list[DemoQuestion] = []
    for q in items:
        out.append(q)
        out.extend(_walk(q.items))
    return out


def test_same_arguments_give_an_equal_dataset(ds: DemoDataset) -> None:
    assert build_demo_dataset() == ds
    assert build_demo_dataset(seed=1729, n_cases=40, now=DEFAULT_NOW) == ds
    assert build_demo_dataset(seed=1730) != ds
    later = build_demo_dataset(now=DEFAULT_NOW + timedelta(days=3))
    assert later != ds
    assert [c.key for c in later.cases] == [c.key for c in ds.cases]


def test_has_n_open_cases_plus_completed_history(ds: DemoDataset) -> None:
    open_cases = [c for c in ds.cases if c.status in OPEN_STATUSES]
    assert len(open_cases) == 40
    assert all(c.status == "completed" for c in ds.cases if c not in open_cases)
    assert len(ds.cases) > 45
    statuses = Counter(c.status for c in open_cases)
    assert statuses["requested"] + statuses["received"] >= 18
    priorities = Counter(c.priority for c in open_cases)
    assert priorities["routine"] >= 22 and priorities["urgent"] >= 1
    assert set(priorities) <= {"routine", "urgent", "asap", "stat"}
    assert len(build_demo_dataset(n_cases=5).cases) >= 5
    assert sum(c.is_open for c in build_demo_dataset(n_cases=5).cases) == 5


def test_changing_or_bleeding_moles_are_not_routine(ds: DemoDataset) -> None:
    flagged = [c for c in ds.cases if c.is_open and c.condition == "pigmented"
               and ("bleeds" in c.chief_complaint or "changed" in c.chief_complaint)]
    assert flagged
    assert all(c.priority != "routine" for c in flagged)


def test_keys_are_unique_and_every_patient_exists(ds: DemoDataset) -> None:
    assert len({p.key for p in ds.patients}) == len(ds.patients)
    assert len({p.mrn for p in ds.patients}) == len(ds.patients)
    assert len({c.key for c in ds.cases}) == len(ds.cases)
    assert len({c.portal_case_number for c in ds.cases}) == len(ds.cases)
    photo_keys = [ph.key for c in ds.cases for ph in c.photos]
    assert len(set(photo_keys)) == len(photo_keys)
    for c in ds.cases:
        assert ds.patient(c.patient_key).key == c.patient_key
        assert re.fullmatch(r"TD-\d{4}-\d{6}", c.portal_case_number)
        assert c.portal_case_number[3:7] == str(c.submitted_at.year)
        assert all(ph.key.startswith(c.key + "-") for ph in c.photos)
    with pytest.raises(KeyError):
        ds.patient("P9999")


def test_times_are_aware_utc_and_ordered(ds: DemoDataset) -> None:
    now = DEFAULT_NOW
    for c in ds.cases:
        stamps = [c.submitted_at, c.updated_at, *(p.taken_at for p in c.photos),
                  *(m.sent_at for m in c.messages)]
        for t in stamps:
            assert t.tzinfo is not None and t.utcoffset() == timedelta(0)
        assert c.submitted_at <= c.updated_at <= now
        assert all(p.taken_at <= c.submitted_at for p in c.photos)
        assert all(c.submitted_at < m.sent_at <= now for m in c.messages)
        assert [m.sent_at for m in c.messages] == sorted(m.sent_at for m in c.messages)
        if c.is_open:
            assert timedelta(minutes=1) <= now - c.submitted_at <= timedelta(days=10, hours=1)


def test_naive_now_is_taken_as_utc() -> None:
    naive = datetime(2027, 1, 5, 14, 0)
    built = build_demo_dataset(n_cases=6, now=naive)
    assert built == build_demo_dataset(n_cases=6, now=naive.replace(tzinfo=UTC))
    assert all(c.submitted_at <= naive.replace(tzinfo=UTC) for c in built.cases)


def test_chronic_patients_have_earlier_visits_of_the_same_site(ds: DemoDataset) -> None:
    chronic = 0
    for p in ds.patients:
        history = ds.cases_of(p.key)
        if len(history) < 2:
            continue
        *earlier, current = history
        assert current.is_open
        assert all(c.status == "completed" for c in earlier)
        assert len(earlier) <= 3
        assert {c.body_site for c in history} == {current.body_site}
        assert {c.condition for c in history} == {current.condition}
        for a, b in itertools.pairwise(history):
            gap = b.submitted_at - a.submitted_at
            assert timedelta(days=55) <= gap <= timedelta(days=190), gap
        severities = [c.photos[0].spec.severity for c in history]
        assert max(severities) - min(severities) > 0.05  # improving, flaring or growing
        if current.condition in ("psoriasis", "eczema"):
            chronic += 1
        # follow-up photos reuse the lesion's generator seeds: same skin, new severity
        seeds = [{ph.spec.seed for ph in c.photos} for c in history]
        assert set.intersection(*seeds)
    assert 0.1 * len(ds.patients) <= chronic <= 0.45 * len(ds.patients)
    moles = [p for p in ds.patients
             if len(ds.cases_of(p.key)) > 1 and ds.cases_of(p.key)[0].condition == "pigmented"]
    assert 1 <= len(moles) <= 3


def test_patients_are_a_varied_mix(ds: DemoDataset) -> None:
    assert {p.fitzpatrick for p in ds.patients} == {1, 2, 3, 4, 5, 6}
    assert {p.sex for p in ds.patients} <= {"female", "male", "other", "unknown"}
    assert {"female", "male"} <= {p.sex for p in ds.patients}
    ages = [(DEFAULT_NOW.date() - p.birth_date).days / 365.25 for p in ds.patients]
    assert min(ages) < 12 and max(ages) > 70
    assert all(1.5 < a < 91.5 for a in ages)
    assert len({p.family_name for p in ds.patients}) > 25
    assert {c.condition for c in ds.cases} == {"pigmented", "psoriasis", "eczema", "acne"}


def test_photos_specs_are_consistent(ds: DemoDataset) -> None:
    photos = [(c, ph) for c in ds.cases for ph in c.photos]
    assert all(1 <= len(c.photos) <= 4 for c in ds.cases)
    with_ref = [ph for _, ph in photos if ph.spec.with_reference]
    assert 0.3 <= len(with_ref) / len(photos) <= 0.7
    for ph in with_ref:
        assert REFERENCE_MM[ph.spec.reference_name] == ph.spec.reference_mm
    for c, ph in photos:
        patient = ds.patient(c.patient_key)
        assert ph.spec.fitzpatrick == patient.fitzpatrick
        assert ph.body_site == c.body_site
        assert ph.title
        if ph.spec.dermoscopic:
            assert c.condition == "pigmented" and ph.title == "Dermoscopy"
        if ph.spec.kind != "overview":
            assert ph.spec.kind == c.condition
    assert any(ph.spec.dermoscopic for _, ph in photos)
    assert any(ph.title == "Overview" for _, ph in photos)


def test_questionnaire_is_nested_and_typed(ds: DemoDataset) -> None:
    for c in ds.cases:
        top = {q.link_id for q in c.questionnaire}
        assert {"history", "onset", "medications", "consent"} <= top
        assert any(q.items for q in c.questionnaire)
        all_q = _walk(c.questionnaire)
        assert len({q.link_id for q in all_q}) == len(all_q)
        for q in all_q:
            assert q.text
            for a in q.answers:
                assert isinstance(a.value, ANSWER_TYPES[a.type])
                if a.type == "coding":
                    assert a.system == "http://snomed.info/sct" and a.code
                if a.type == "integer":
                    assert not isinstance(a.value, bool)
        answers = {q.link_id: q.answers[0].value for q in all_q if q.answers}
        assert isinstance(answers["onset"], date) and answers["onset"] < c.submitted_at.date()
        assert 0 <= int(answers["history.itch"]) <= 10
        if c.condition == "pigmented":
            assert "mole.evolving" in answers
        if "bleeds" in c.chief_complaint:
            assert answers["history.bleeding"] is True


def test_messages_are_plausible(ds: DemoDataset) -> None:
    msgs = [m for c in ds.cases for m in c.messages]
    assert msgs
    assert {m.direction for m in msgs} == {"inbound", "outbound"}
    assert all(len(c.messages) <= 3 for c in ds.cases)
    assert all(m.text.strip() and len(m.text) < 400 for m in msgs)
    assert all(1 <= c.description.count(".") <= 4 for c in ds.cases)


def test_building_is_cheap_and_renders_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("the dataset must not render photos")

    monkeypatch.setattr(ds_mod, "render_photo", boom)
    ds = build_demo_dataset()  # renders nothing: photos are drawn only when asked for
    assert ds.cases


def test_photo_renders_lazily_to_its_spec(ds: DemoDataset) -> None:
    ph = next(p for c in ds.cases for p in c.photos if p.spec.with_reference)
    small = ds_mod.DemoPhoto(ph.key, ph.body_site, ph.taken_at, ph.title,
                             replace(ph.spec, width=320, height=240, px_per_mm=4.0))
    photo = small.render()
    assert (photo.width, photo.height) == (320, 240)
    assert photo.reference is not None
    assert photo.reference.diameter_mm == ph.spec.reference_mm
