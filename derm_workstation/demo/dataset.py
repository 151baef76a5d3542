"""The demo case set: invented patients and teledermatology cases as plain frozen dataclasses.

``build_demo_dataset`` returns a small but realistic worklist for demos, screenshots and
tests: about ``n_cases`` open requests (new, received, being reviewed, waiting for the
patient), each with photos, the patient's intake questionnaire and a few portal
messages, plus the earlier, completed visits of patients with chronic skin disease
(psoriasis, eczema) and of a couple of patients whose mole is being followed. Those
earlier visits are of the same body site a few months apart, with the disease better
or worse, and their photos reuse the same generator seed at another severity, so a
side-by-side comparison shows the same patch of skin changing.

Every name, identifier and story is invented. Nothing here touches a database or
renders pixels: a ``DemoPhoto`` only carries the ``PhotoSpec`` and renders lazily
(``DemoPhoto.render()``). Everything follows from ``seed`` and ``now``: the same
arguments give an equal dataset. ``now`` defaults to a fixed instant so tests are
stable; the demo passes the real time so waiting times look live.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import cached_property

from derm_workstation.imaging.synthetic import PhotoSpec, SyntheticPhoto, render_photo

__all__ = [
    "DEFAULT_NOW",
    "OPEN_STATUSES",
    "DemoAnswer",
    "DemoCase",
    "DemoDataset",
    "DemoMessage",
    "DemoPatient",
    "DemoPhoto",
    "DemoQuestion",
    "build_demo_dataset",
]

DEFAULT_NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
OPEN_STATUSES: tuple[str, ...] = ("requested", "received", "accepted", "in-progress", "on-hold")
SNOMED = "http://snomed.info/sct"


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class DemoPatient:
    key: str
    mrn: str
    given_name: str
    family_name: str
    birth_date: date
    sex: str
    fitzpatrick: int


@dataclass(frozen=True)
class DemoAnswer:
    type: str
    value: str | bool | int | date
    system: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class DemoQuestion:
    link_id: str
    text: str
    answers: tuple[DemoAnswer, ...] = ()
    items: tuple[DemoQuestion, ...] = ()


@dataclass(frozen=True)
class DemoMessage:
    direction: str
    text: str
    sent_at: datetime


@dataclass(frozen=True)
class DemoPhoto:
    key: str
    body_site: str
    taken_at: datetime
    title: str
    spec: PhotoSpec

    def render(self) -> SyntheticPhoto:
        """Render the photo now (tens of milliseconds); the dataset never does this itself."""
        return render_photo(self.spec, self.taken_at)


@dataclass(frozen=True)
class DemoCase:
    key: str
    patient_key: str
    portal_case_number: str
    status: str
    priority: str
    chief_complaint: str
    body_site: str
    description: str
    condition: str
    submitted_at: datetime
    updated_at: datetime
    photos: tuple[DemoPhoto, ...]
    questionnaire: tuple[DemoQuestion, ...]
    messages: tuple[DemoMessage, ...]

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(frozen=True)
class DemoDataset:
    patients: tuple[DemoPatient, ...]
    cases: tuple[DemoCase, ...]

    @cached_property
    def _by_key(self) -> dict[str, DemoPatient]:
        return {p.key: p for p in self.patients}

    def patient(self, key: str) -> DemoPatient:
        """The patient with this key; KeyError if there is none."""
        return self._by_key[key]

    def cases_of(self, patient_key: str) -> tuple[DemoCase, ...]:
        """All cases of one patient, oldest first."""
        return tuple(
            sorted((c for c in self.cases if c.patient_key == patient_key),
                   key=lambda c: c.submitted_at)
        )


# --------------------------------------------------------------------------- vocabularies

_FEMALE = (
    "Amara", "Ingrid", "Mei", "Fatima", "Siobhan", "Priya", "Olga", "Zanele", "Lucía",
    "Aiko", "Noor", "Hannah", "Chiamaka", "Leilani", "Marta", "Yasmin", "Freya",
    "Thandiwe", "Ananya", "Camille", "Nadia", "Esi", "Birgit", "Rosa", "Hye-jin", "Ayşe",
    "Maribel", "Kalani", "Saoirse", "Dilnoza",
)
_MALE = (
    "Kwame", "Lars", "Hiroshi", "Mateo", "Ravi", "Tomasz", "Obinna", "Callum", "Youssef",
    "Diego", "Arjun", "Felix", "Tariq", "Jomo", "Emil", "Wei", "Kofi", "Santiago",
    "Declan", "Nikolai", "Tevita", "Idris", "Bram", "Minh", "Rangi", "Oskar", "Tunde",
    "Farid", "Joaquín", "Henrik",
)
_NEUTRAL = ("Alex", "Sam", "Robin", "Kai", "Noa", "Jordan", "Ari", "Sasha")
_FAMILY = (
    "Okafor", "Lindqvist", "Tanaka", "Haddad", "O'Connell", "Raghunathan", "Kowalczyk",
    "Abara", "Fernández", "van der Meulen", "Chatterjee", "Mensah", "Petrov", "Ó Briain",
    "Kealoha", "Nguyen", "Al-Rashid", "Bergström", "Adeyemi", "Castellanos", "Moreau",
    "Sørensen", "Kaur", "Zhou", "Osei", "Papadopoulos", "Silva", "Rahman", "Hartmann",
    "Ndlovu", "Park", "Duarte", "Kapoor", "Whitfield", "Quispe", "Yılmaz", "Achterberg",
    "Fitzgerald", "Tshabalala", "Lindgren", "Takahashi-Brown", "Mwangi", "Ivanović",
    "Delacroix", "Ramírez", "Novak", "Halvorsen", "Begum", "Sato", "Oyelaran",
)

# (body site as recorded, how the patient says it)
_SITES: dict[str, tuple[tuple[str, str], ...]] = {
    "pigmented": (
        ("Left upper back", "left upper back"), ("Right shoulder", "right shoulder"),
        ("Left forearm, extensor surface", "left forearm"), ("Right shin", "right shin"),
        ("Upper chest", "chest"), ("Left cheek", "left cheek"),
        ("Right thigh, posterior", "right thigh, at the back"),
        ("Abdomen, left of umbilicus", "tummy, next to the belly button"),
        ("Right upper arm, lateral", "right upper arm"),
        ("Between the shoulder blades", "back, between the shoulder blades"),
    ),
    "psoriasis": (
        ("Right elbow, extensor surface", "right elbow"),
        ("Left elbow, extensor surface", "left elbow"),
        ("Left knee, extensor surface", "left knee"),
        ("Right knee, extensor surface", "right knee"),
        ("Lower back, sacral area", "lower back"), ("Left shin", "left shin"),
        ("Right forearm, extensor surface", "right forearm"),
    ),
    "eczema": (
        ("Left antecubital fossa", "left elbow crease"),
        ("Right antecubital fossa", "right elbow crease"),
        ("Right popliteal fossa", "right knee crease"), ("Neck, anterior", "neck"),
        ("Left wrist, flexor surface", "left wrist"), ("Left ankle, medial", "left ankle"),
        ("Both cheeks", "cheeks"),
    ),
    "acne": (
        ("Face, both cheeks", "cheeks"), ("Forehead", "forehead"),
        ("Chin and jawline", "chin and jawline"), ("Upper back", "upper back"),
        ("Upper chest", "chest"),
    ),
}
_HAND_SITE = ("Back of the right hand", "right hand")
_NO_OVERVIEW_SITES = frozenset({"Left cheek", "Both cheeks", "Face, both cheeks", "Forehead",
                         "Chin and jawline", "Neck, anterior", "Back of the right hand"})

_DURATIONS: tuple[tuple[str, int], ...] = (
    ("ten days", 10), ("three weeks", 21), ("four weeks", 28), ("six weeks", 42),
    ("two months", 60), ("three months", 90), ("six months", 180),
)

_REFERENCES: tuple[tuple[str, float], ...] = (
    ("sticker-10mm", 10.0), ("sticker-10mm", 10.0), ("sticker-10mm", 10.0),
    ("US 25¢", 24.26), ("€1", 23.25), ("UK 1p", 20.3),
)

_TREATMENTS = {
    "pigmented": ("None", "None", "Sunscreen only"),
    "psoriasis": (
        "Betamethasone valerate 0.1% cream at night, coal-tar shampoo",
        "Calcipotriol/betamethasone gel once daily",
        "Emollients only; stopped the steroid cream a month ago",
        "Methotrexate 15 mg weekly and folic acid",
    ),
    "eczema": (
        "Emollient twice daily and hydrocortisone 1% cream",
        "Clobetasone butyrate 0.05% ointment on flares",
        "Emollient and antihistamine at night",
        "Tacrolimus 0.1% ointment twice daily",
    ),
    "acne": (
        "Benzoyl peroxide 5% gel",
        "Adapalene 0.1% gel at night",
        "Lymecycline 408 mg daily for two months",
        "Over-the-counter salicylic acid wash",
    ),
}

_ALLERGIES: tuple[tuple[str, str | None, float], ...] = (
    ("No known allergy", "716186003", 0.68),
    ("Allergy to penicillin", "91936005", 0.14),
    ("Latex allergy", "300916003", 0.05),
    ("Nickel (earrings and belt buckles)", None, 0.08),
    ("Sticking plasters", None, 0.05),
)


# --------------------------------------------------------------------------- helpers


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return DEFAULT_NOW
    if now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)


def _weighted(rng: random.Random, options: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]


def _photo_seed(seed: int, lesion: int, slot: int) -> int:
    return (seed * 1_000_003 + lesion * 101 + slot * 7919) % 2**31


def _q(link_id: str, text: str, *answers: DemoAnswer) -> DemoQuestion:
    return DemoQuestion(link_id, text, tuple(answers))


def _group(link_id: str, text: str, *items: DemoQuestion) -> DemoQuestion:
    return DemoQuestion(link_id, text, (), tuple(items))


def _s(v: str) -> DemoAnswer:
    return DemoAnswer("string", v)


def _b(v: bool) -> DemoAnswer:
    return DemoAnswer("boolean", v)


def _i(v: int) -> DemoAnswer:
    return DemoAnswer("integer", v)


def _d(v: date) -> DemoAnswer:
    return DemoAnswer("date", v)


@dataclass
class _Story:
    """Everything decided about one visit before it becomes a DemoCase."""

    patient: DemoPatient
    condition: str
    variant: str
    site: str
    phrase: str
    severity: float
    lesion: int
    status: str
    priority: str
    submitted_at: datetime
    duration: tuple[str, int]
    treatment: str
    follow_up: bool = False
    trend: str = ""
    updated_at: datetime | None = None
    messages: list[DemoMessage] = field(default_factory=list)


def _pron(p: DemoPatient) -> tuple[str, str, str]:
    if p.sex == "female":
        return "daughter", "she", "her"
    if p.sex == "male":
        return "son", "he", "him"
    return "child", "they", "them"


# --------------------------------------------------------------------------- texts


def _complaint(st: _Story) -> str:
    v, c = st.variant, st.condition
    if st.follow_up:
        return {
            "pigmented": "Mole follow-up photos",
            "psoriasis": "Psoriasis review",
            "eczema": "Eczema review",
            "acne": "Acne review",
        }[c]
    return {
        ("pigmented", "changing"): "Mole that has changed shape and colour",
        ("pigmented", "bleeding"): "Mole that bleeds and itches",
        ("pigmented", "new"): "New dark spot on the skin",
        ("pigmented", "check"): "Worried about a mole",
        ("psoriasis", "flare"): "Psoriasis flare, creams not helping",
        ("psoriasis", "new"): "Thick scaly patches",
        ("eczema", "adult"): "Itchy red rash that keeps coming back",
        ("eczema", "child"): "Child with itchy rash",
        ("eczema", "hands"): "Sore cracked skin with itching",
        ("acne", "face"): "Spots not improving with treatment",
        ("acne", "painful"): "Painful spots leaving marks",
    }[(c, v)]


def _description(st: _Story, rng: random.Random) -> str:
    site = st.phrase
    dur = st.duration[0]
    p = st.patient
    child, he, him = _pron(p)
    their = {"she": "her", "he": "his"}.get(he, "their")
    if st.follow_up:
        better = {"improving": "a lot better", "flaring": "worse again",
                  "stable": "about the same"}.get(st.trend, "about the same")
        if st.condition == "pigmented":
            return (f"Follow-up photos of the mole on my {site}, as you asked. "
                    "I can't see much difference myself but I measured it with the sticker.")
        return (f"Follow-up photos as requested. The patches on my {site} are {better} "
                f"since the last review. I am using: {st.treatment.lower()}.")
    texts: dict[tuple[str, str], list[str]] = {
        ("pigmented", "changing"): [
            f"I've had this mole on my {site} for years but over the last {dur} it has got "
            "bigger and darker at one edge.",
            "My partner noticed it looks different from the others.",
            "It doesn't hurt but it sometimes feels itchy.",
        ],
        ("pigmented", "bleeding"): [
            f"The mole on my {site} started bleeding when I dried myself with a towel "
            f"about {dur} ago and it has bled twice since.",
            "It also itches and I think it is raised now.",
        ],
        ("pigmented", "new"): [
            f"I noticed a new dark spot on my {site} about {dur} ago.",
            "I don't remember it being there before and it seems to be slowly growing.",
        ],
        ("pigmented", "check"): [
            f"I have quite a few moles and this one on my {site} looks a bit different "
            "from the others.",
            "Nothing has really changed that I know of, but my mother had a melanoma "
            "removed so I would like it checked.",
        ],
        ("psoriasis", "flare"): [
            f"My psoriasis has flared up badly over the last {dur}.",
            f"The patches on my {site} are thick and flaky and crack when I bend.",
            "The cream isn't working like it used to.",
        ],
        ("psoriasis", "new"): [
            f"For {dur} I've had red patches with silvery flakes on my {site}.",
            "They shed everywhere and itch a bit. My father has psoriasis.",
        ],
        ("eczema", "adult"): [
            f"The rash on my {site} has been itchy and red for {dur}.",
            "I scratch it at night without realising and it sometimes weeps.",
            "Moisturiser helps a little but it always comes back.",
        ],
        ("eczema", "child"): [
            f"My {child} has had itchy dry patches on {their} {site} for {dur}.",
            f"{he.capitalize()} scratches at night and it keeps {him} awake.",
            "We use emollient twice a day.",
        ],
        ("eczema", "hands"): [
            f"The skin on my {site} is red, cracked and very itchy, for {dur} now.",
            "It is worse after work, I wash my hands a lot.",
        ],
        ("acne", "face"): [
            f"I've had spots on my {site} for {dur}.",
            "I've tried washes from the pharmacy without much change and it is getting "
            "me down.",
        ],
        ("acne", "painful"): [
            f"Some of the spots on my {site} are deep and painful and leave dark marks.",
            f"It has been like this for {dur}.",
        ],
    }
    parts = texts[(st.condition, st.variant)]
    n = rng.randint(max(1, len(parts) - 1), len(parts))
    return " ".join(parts[:n])


def _questionnaire(st: _Story, rng: random.Random) -> tuple[DemoQuestion, ...]:
    c, v = st.condition, st.variant
    onset = (st.submitted_at - timedelta(days=st.duration[1])).date()
    changed = c != "pigmented" or v in ("changing", "bleeding", "new")
    bleeding = v == "bleeding" or (c == "eczema" and st.severity > 0.7 and rng.random() < 0.5)
    itch = {
        "pigmented": rng.randint(2, 5) if v in ("changing", "bleeding") else rng.randint(0, 1),
        "psoriasis": rng.randint(3, 7),
        "eczema": min(10, 4 + round(st.severity * 5) + rng.randint(0, 1)),
        "acne": rng.randint(0, 3),
    }[c]
    history = _group(
        "history", "About the problem",
        _q("history.duration", "How long have you had it?", _s(st.duration[0].capitalize())),
        _q("history.changed", "Has it changed recently?", _b(changed)),
        _q("history.itch", "How itchy is it, from 0 (not at all) to 10 (worst)?", _i(itch)),
        _q("history.bleeding", "Has it bled?", _b(bleeding)),
    )
    label, code, _w = rng.choices(_ALLERGIES, weights=[a[2] for a in _ALLERGIES])[0]
    allergy = (DemoAnswer("coding", label, SNOMED, code) if code is not None else _s(label))
    meds = _group(
        "medications", "Medicines",
        _q("medications.current", "What treatments are you using on it now?", _s(st.treatment)),
        _q("medications.allergies", "Do you have any allergies?", allergy),
    )
    items: list[DemoQuestion] = [history, _q("onset", "When did you first notice it?",
                                             _d(onset)), meds]
    if c == "pigmented":
        big = st.severity > 0.5
        items.append(_group(
            "mole", "About the mole",
            _q("mole.asymmetry", "Is it an uneven shape (one half unlike the other)?",
               _b(st.severity > 0.4)),
            _q("mole.border", "Are the edges ragged, notched or blurred?",
               _b(st.severity > 0.5)),
            _q("mole.colours", "How many different colours can you see in it?",
               _i(1 + round(st.severity * 3))),
            _q("mole.size", "Roughly how wide is it, in millimetres?",
               _i(round(3 + 11 * st.severity + rng.uniform(-1, 1)) if big
                  else rng.randint(3, 6))),
            _q("mole.evolving", "Has it grown or changed in the last few months?", _b(changed)),
            _q("mole.family", "Has anyone in your family had melanoma?",
               _b(v == "check" or rng.random() < 0.15)),
            _q("mole.sunburn", "Have you had blistering sunburn?", _b(rng.random() < 0.4)),
        ))
    elif c == "psoriasis":
        items.append(_group(
            "psoriasis", "Psoriasis",
            _q("psoriasis.joints", "Do you have joint pain, swelling or morning stiffness?",
               _b(rng.random() < 0.3)),
            _q("psoriasis.nails", "Have your nails changed (pits, lifting, thickening)?",
               _b(rng.random() < 0.45)),
            _q("psoriasis.family", "Does anyone in your family have psoriasis?",
               _b(v == "new" or rng.random() < 0.4)),
        ))
    elif c == "eczema":
        items.append(_group(
            "eczema", "Eczema",
            _q("eczema.sleep", "On how many nights last week did itch disturb sleep?",
               _i(min(7, round(st.severity * 7)))),
            _q("eczema.triggers", "Have you noticed anything that makes it worse?",
               _s(rng.choice(("Hot showers and wool", "Washing-up liquid", "Stress at work",
                              "Cold weather", "Not sure")))),
            _q("eczema.atopy", "Asthma or hay fever in you or your family?",
               _b(rng.random() < 0.6)),
        ))
    else:
        items.append(_group(
            "acne", "Acne",
            _q("acne.scars", "Does it leave marks or scars?", _b(v == "painful")),
            _q("acne.mood", "Is it affecting your mood or confidence?", _b(rng.random() < 0.6)),
        ))
    items.append(_q("consent", "I agree that my photos are stored in my medical record.",
                    _b(True)))
    return tuple(items)


_INBOUND = {
    "pigmented": (
        "I forgot to say: it bled a little again this morning after my shower.",
        "Is it safe to wait for the review, or should I see my GP?",
        "I've added a photo with a coin next to it so you can see the size.",
    ),
    "psoriasis": (
        "Can I keep using the steroid cream until I hear back?",
        "My knees have started to ache as well, not sure if that is related.",
        "The second photo is a bit blurry, I can send another one if needed.",
    ),
    "eczema": (
        "It has started weeping a bit at the edges since yesterday.",
        "We ran out of the cream, is it ok to buy hydrocortisone at the pharmacy?",
        "Sorry, the light in the photos is not great, it is redder than it looks.",
    ),
    "acne": (
        "I'm due to finish my antibiotics next week, should I carry on?",
        "Would the contraceptive pill help with this?",
        "I've added a photo of my back as well.",
    ),
}
_OUTBOUND_ACK = (
    "Thank you, we have received your photos. A dermatologist will review them "
    "within five working days."
)
_OUTBOUND_MORE = (
    "Thank you. Could you please send one more close-up in daylight, with the sticker "
    "or a coin next to the spot? That helps us measure it."
)
_OUTBOUND_URGENT = (
    "Thank you for letting us know. We have marked your request as urgent. If it bleeds "
    "heavily or you feel unwell, please contact your GP or out-of-hours service."
)
_OUTBOUND_DONE = {
    "improving": "The dermatologist has reviewed your photos: it is clearly better. Please "
                 "carry on with the same treatment and send new photos in three months.",
    "flaring": "The dermatologist has reviewed your photos. Your treatment will be "
               "stepped up; a prescription has been sent to your GP. New photos in two "
               "months, please.",
    "stable": "The dermatologist has reviewed your photos and advises to continue your "
              "current treatment. Please send new photos in three months.",
    "initial": "The dermatologist has reviewed your photos and sent a treatment plan to "
               "your GP. Please send new photos in three months so we can see how it goes.",
    "mole": "The dermatologist has reviewed your mole: no worrying features at the moment. "
            "Please send new photos, with the sticker, in three to six months.",
}


def _messages(st: _Story, rng: random.Random, now: datetime) -> list[DemoMessage]:
    msgs: list[DemoMessage] = []
    t = st.submitted_at
    horizon = (now - t).total_seconds()

    def later(max_frac: float = 0.45) -> datetime:
        nonlocal t
        span = max((now - t).total_seconds() * max_frac, 60.0)
        t = t + timedelta(seconds=rng.uniform(60.0, span))
        return t

    if st.status == "completed":
        t = st.submitted_at + timedelta(days=rng.uniform(1, 4), hours=rng.uniform(0, 6))
        if st.condition == "pigmented":
            key = "mole"
        else:
            key = (st.trend or "stable") if st.follow_up else "initial"
        msgs.append(DemoMessage("outbound", _OUTBOUND_DONE[key], t))
        return msgs
    if horizon < 600:  # submitted minutes ago: nobody has written yet
        return msgs
    n = rng.choices((0, 1, 2, 3), weights=(0.3, 0.35, 0.25, 0.1))[0]
    if st.status == "on-hold":
        msgs.append(DemoMessage("outbound", _OUTBOUND_MORE, later()))
        if rng.random() < 0.5:
            msgs.append(DemoMessage("inbound", "OK, I will take another one tonight.", later()))
        return msgs
    pool = list(_INBOUND[st.condition])
    rng.shuffle(pool)
    for k in range(n):
        if k == 1 and st.status != "requested":
            text = _OUTBOUND_URGENT if st.priority != "routine" else _OUTBOUND_ACK
            msgs.append(DemoMessage("outbound", text, later()))
        else:
            msgs.append(DemoMessage("inbound", pool.pop(), later()))
    return msgs


# --------------------------------------------------------------------------- photos


def _photos(st: _Story, key: str, seed: int, rng: random.Random) -> tuple[DemoPhoto, ...]:
    """1-4 photos: close-ups (about half with a calibration reference), overview, dermoscopy."""
    c = st.condition
    # the lesion's own random stream fixes framing and shape across follow-up visits,
    # and which close-up is always taken, so visits can be compared side by side
    prng = random.Random(_photo_seed(seed, st.lesion, 99))
    slots: list[int] = [1 if prng.random() < 0.75 else 0]
    if rng.random() < 0.4:
        slots.append(1 - slots[0])
    if st.site not in _NO_OVERVIEW_SITES and rng.random() < (0.45 if c != "acne" else 0.3):
        slots.append(2)  # the wide-shot generator draws a limb or trunk, not a face or hand
    if c == "pigmented" and (st.follow_up or rng.random() < 0.45):
        slots.append(3)
    slots = sorted(set(slots), key=lambda s: (s != 2, s))  # the overview is taken first
    portrait = prng.random() < 0.2 and c != "pigmented"
    w, h = (900, 1200) if portrait else (1200, 900)
    close_ppm = {"pigmented": prng.uniform(14, 22), "psoriasis": prng.uniform(8, 11),
                 "eczema": prng.uniform(8, 11), "acne": prng.uniform(10, 13)}[c]
    ref_name, ref_mm = prng.choice(_REFERENCES)
    ref_kind = "sticker" if ref_name.startswith("sticker") else f"coin ({ref_name})"
    gaps = [timedelta(seconds=rng.uniform(15, 240)) for _ in slots]
    t = st.submitted_at - timedelta(minutes=rng.uniform(3, 150)) - sum(gaps, timedelta())
    photos: list[DemoPhoto] = []
    for i, slot in enumerate(slots, start=1):
        base = PhotoSpec(
            seed=_photo_seed(seed, st.lesion, slot),
            kind=c,
            fitzpatrick=st.patient.fitzpatrick,
            severity=round(st.severity, 3),
            width=w,
            height=h,
            px_per_mm=round(close_ppm, 2),
        )
        if slot == 0:
            spec, title = base, "Close-up"
        elif slot == 1:
            spec = replace(base, with_reference=True, reference_mm=ref_mm,
                           reference_name=ref_name)
            title = f"Close-up with {ref_kind}"
        elif slot == 2:
            kind = "overview" if c == "pigmented" else c
            spec = replace(base, kind=kind, px_per_mm=round(prng.uniform(3.2, 4.5), 2))
            title = "Overview"
        else:
            spec = replace(base, dermoscopic=True, px_per_mm=round(prng.uniform(26, 34), 2))
            title = "Dermoscopy"
        photos.append(DemoPhoto(f"{key}-{i}", st.site, t, title, spec))
        t += gaps[i - 1]
    return tuple(photos)


# --------------------------------------------------------------------------- the builder


def _new_patient(rng: random.Random, idx: int, condition: str, variant: str,
                 now: datetime, used_mrn: set[str], family: str,
                 fitz: int | None = None, age: int | None = None) -> DemoPatient:
    sex = rng.choices(("female", "male", "other", "unknown"), weights=(48, 48, 2, 2))[0]
    pool = _FEMALE if sex == "female" else _MALE if sex == "male" else _NEUTRAL
    if age is not None:
        pass
    elif condition == "acne":
        age = rng.randint(13, 34)
    elif condition == "eczema" and variant == "child":
        age = rng.randint(2, 11)
    elif condition == "eczema":
        age = rng.randint(16, 90)
    elif condition == "psoriasis":
        age = rng.randint(14, 84)
    else:
        age = rng.randint(19, 90)
    birth = now.date() - timedelta(days=age * 365 + rng.randint(0, 364) + age // 4)
    while True:
        mrn = f"MRN-{rng.randint(100000, 999999)}"
        if mrn not in used_mrn:
            used_mrn.add(mrn)
            break
    if fitz is None:
        fitz = rng.choices((1, 2, 3, 4, 5, 6), weights=(13, 20, 20, 18, 15, 14))[0]
    return DemoPatient(
        key=f"P{idx:04d}", mrn=mrn, given_name=rng.choice(pool),
        family_name=family, birth_date=birth, sex=sex, fitzpatrick=fitz,
    )


_VARIANTS: dict[str, tuple[tuple[str, float], ...]] = {
    "pigmented": (("changing", 0.22), ("bleeding", 0.1), ("new", 0.3), ("check", 0.38)),
    "psoriasis": (("flare", 0.7), ("new", 0.3)),
    "eczema": (("adult", 0.5), ("child", 0.3), ("hands", 0.2)),
    "acne": (("face", 0.65), ("painful", 0.35)),
}
_SHOWCASE: tuple[tuple[str, str, tuple[int, int] | None], ...] = (
    ("pigmented", "bleeding", None),
    ("pigmented", "changing", (76, 90)),
    ("eczema", "child", (2, 6)),
    ("psoriasis", "flare", None),
    ("acne", "face", (15, 19)),
    ("eczema", "adult", None),
    ("psoriasis", "new", None),
    ("pigmented", "check", None),
)
_SEVERITY: dict[tuple[str, str], tuple[float, float]] = {
    ("pigmented", "changing"): (0.6, 0.95), ("pigmented", "bleeding"): (0.55, 0.9),
    ("pigmented", "new"): (0.3, 0.6), ("pigmented", "check"): (0.05, 0.35),
}


def _open_status_priority(rng: random.Random, condition: str, variant: str,
                          severity: float) -> tuple[str, str]:
    status = _weighted(rng, (("requested", 0.36), ("received", 0.3), ("accepted", 0.12),
                             ("in-progress", 0.1), ("on-hold", 0.12)))
    if condition == "pigmented" and variant in ("changing", "bleeding"):
        priority = "urgent" if rng.random() < 0.8 else "asap"
        if variant == "bleeding" and severity > 0.8 and rng.random() < 0.4:
            priority = "stat"
    elif severity > 0.85 and condition in ("psoriasis", "eczema"):
        priority = _weighted(rng, (("urgent", 0.4), ("routine", 0.6)))
    else:
        priority = _weighted(rng, (("routine", 0.93), ("urgent", 0.07)))
    return status, priority


def build_demo_dataset(seed: int = 1729, n_cases: int = 40,
                       now: datetime | None = None) -> DemoDataset:
    """The demo worklist: ``n_cases`` open cases plus earlier completed visits.

    Deterministic in (seed, n_cases, now); cheap (no image is rendered).
    """
    if n_cases < 0:
        raise ValueError("n_cases must not be negative")
    now = _utc(now)
    rng = random.Random(seed)
    used_mrn: set[str] = set()
    patients: list[DemoPatient] = []
    stories: list[_Story] = []
    mole_followups = 0
    conditions = (("pigmented", 0.36), ("psoriasis", 0.2), ("eczema", 0.26), ("acne", 0.18))
    families = rng.sample(_FAMILY, len(_FAMILY))  # no two patients share one unless many

    # The first cases are a fixed showcase (every condition, a bleeding mole, a toddler,
    # a very old patient, all six skin types) so that even a short list is varied.
    showcase = list(_SHOWCASE)
    rng.shuffle(showcase)
    fitz_cycle = rng.sample(range(1, 7), 6)
    for i in range(n_cases):
        fitz: int | None = fitz_cycle[i] if i < 6 else None
        age: int | None = None
        if i < len(showcase):
            condition, variant, age_range = showcase[i]
            if age_range is not None:
                age = rng.randint(*age_range)
        else:
            condition = _weighted(rng, conditions)
            variant = _weighted(rng, _VARIANTS[condition])
        patient = _new_patient(rng, len(patients) + 1, condition, variant, now, used_mrn,
                               families[len(patients) % len(families)], fitz, age)
        patients.append(patient)
        lo, hi = _SEVERITY.get((condition, variant), (0.3, 0.9))
        severity = rng.uniform(lo, hi)
        status, priority = _open_status_priority(rng, condition, variant, severity)
        # waiting times: a few minutes up to ten days, most within a few days
        minutes = rng.choice((rng.uniform(4, 180), rng.uniform(180, 2880),
                              rng.uniform(2880, 14400)))
        if status in ("accepted", "in-progress", "on-hold"):
            minutes = max(minutes, rng.uniform(240, 4000))
        submitted = now - timedelta(minutes=minutes)
        treatments = _TREATMENTS[condition]
        treatment = ("Emollient twice daily" if variant == "child"
                     else rng.choice(treatments))
        site, phrase = _HAND_SITE if variant == "hands" else rng.choice(_SITES[condition])
        story = _Story(
            patient=patient, condition=condition, variant=variant, site=site, phrase=phrase,
            severity=severity, lesion=i, status=status, priority=priority,
            submitted_at=submitted, duration=rng.choice(_DURATIONS), treatment=treatment,
        )
        stories.append(story)

        # earlier completed visits: chronic disease, and a couple of moles under follow-up
        visits = 0
        trend = ""
        if condition in ("psoriasis", "eczema") and rng.random() < 0.55:
            visits = rng.randint(1, 3)
            trend = _weighted(rng, (("improving", 0.45), ("flaring", 0.4), ("stable", 0.15)))
        elif condition == "pigmented" and variant in ("check", "new") and mole_followups < 2:
            visits = rng.randint(1, 2)
            mole_followups += 1
            trend = "growing"
        # severity from the first visit to today's: better on treatment, flaring, ...
        if trend == "improving":
            path = [rng.uniform(0.75, 0.95), rng.uniform(0.2, 0.45)]
        elif trend == "flaring":
            path = [rng.uniform(0.15, 0.35), rng.uniform(0.7, 0.95)]
        elif trend == "growing":
            severity = max(severity, 0.22)
            path = [severity - rng.uniform(0.1, 0.2), severity]
        else:  # "stable": ups and downs around the same level
            path = [severity - 0.15 if severity > 0.55 else severity + 0.15, severity]
        if visits:
            story.severity = severity = path[1]
            story.trend = trend
        when = submitted
        history: list[_Story] = []
        for v in range(visits):
            when = when - timedelta(days=rng.uniform(62, 180))
            frac = (v + 1) / visits  # walking back in time: 1.0 at the first visit
            sev = path[1] + (path[0] - path[1]) * frac
            sev = min(0.95, max(0.02, sev + rng.uniform(-0.04, 0.04)))
            history.append(_Story(
                patient=patient, condition=condition, variant=variant, site=site,
                phrase=phrase, severity=sev, lesion=i, status="completed",
                priority="routine", submitted_at=when, duration=story.duration,
                treatment=treatment, follow_up=True, trend=trend,
            ))
        if history:
            # the first visit told the whole story; later ones (and, unless it is a new
            # flare, the open case) are reviews of the same site
            history[-1].follow_up = False
            story.follow_up = trend != "flaring"
            if condition == "psoriasis" and not story.follow_up:
                story.variant = "flare"  # they told us it was new at their first visit
            if story.follow_up and story.priority != "routine" and condition != "pigmented":
                story.priority = "routine"
            stories.extend(history)

    # keys and portal numbers follow submission order, oldest first
    stories.sort(key=lambda s: (s.submitted_at, s.patient.key))
    cases: list[DemoCase] = []
    number = 100 + rng.randint(0, 400)
    for k, st in enumerate(stories, start=1):
        key = f"C{k:04d}"
        number += rng.randint(1, 9)
        st.messages = _messages(st, rng, now)
        if st.status == "completed":
            done = st.submitted_at + timedelta(days=rng.uniform(1, 4), hours=rng.uniform(0, 6))
            updated = max([done, *(m.sent_at for m in st.messages)])
        elif st.status == "requested":
            updated = max([st.submitted_at, *(m.sent_at for m in st.messages)])
        else:
            touched = st.submitted_at + (now - st.submitted_at) * rng.uniform(0.05, 0.6)
            updated = max([touched, *(m.sent_at for m in st.messages)])
        cases.append(DemoCase(
            key=key,
            patient_key=st.patient.key,
            portal_case_number=f"TD-{st.submitted_at.year}-{number:06d}",
            status=st.status,
            priority=st.priority,
            chief_complaint=_complaint(st),
            body_site=st.site,
            description=_description(st, rng),
            condition=st.condition,
            submitted_at=st.submitted_at,
            updated_at=min(updated, now),
            photos=_photos(st, key, seed, rng),
            questionnaire=_questionnaire(st, rng),
            messages=tuple(st.messages),
        ))
    return DemoDataset(patients=tuple(patients), cases=tuple(cases))
