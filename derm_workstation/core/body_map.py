"""The body map: where each photo and each numbered lesion of a patient is on the body.

Two parts:

* **Placing a site**: :func:`locate` turns the body site the patient gave (free English
  text as people type it — "back of my right hand", "Left forearm, extensor surface",
  "tummy, next to the belly button" — or a SNOMED CT body-structure code the portal
  sent) into a position on our outline: a view ("front" or "back") and x, y from 0 to 1
  across the outline's box (x to the right, y down). Text it cannot place gives None;
  the map lists such sites as "Site not on the map: <text>" for the clinician to place
  by hand.
* **The pins of a patient**: :class:`BodyMapService` groups every photo of the patient
  (all cases, all visits) by site, and every numbered lesion (annotations with a
  ``lesion_number``) into pins, each with its photos in date order; the clinician may
  move a pin (stored in ``body_map_pins``, audited) or put it back.

The outline (:data:`OUTLINE`, :data:`HEAD`) is drawn by the Qt view from the same
numbers, so a site placed here lands on the drawn body. The figure faces the viewer on
the front view: the patient's right is on the viewer's left there, and on the viewer's
right on the back view.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select

from derm_workstation.core import audit
from derm_workstation.core.annotations import point_in_polygon
from derm_workstation.core.errors import InputError, NotFoundError
from derm_workstation.core.lesions import LesionService, latest_changes
from derm_workstation.core.models import BodyMapPin, Case, Patient, Photo, utcnow
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace

VIEWS: tuple[str, ...] = ("front", "back")
VIEW_LABELS: dict[str, str] = {"front": "Front", "back": "Back"}
PIN_KINDS: tuple[str, ...] = ("site", "lesion")
SNOMED = "http://snomed.info/sct"

#: Design units of the outline: a box 100 wide and 200 tall; positions are divided by
#: these to give 0..1.
BOX_W, BOX_H = 100.0, 200.0
MIDLINE = BOX_W / 2

#: The head: centre and radii (design units).
HEAD: tuple[float, float, float, float] = (50.0, 13.5, 8.5, 10.5)

#: The body below the head, the figure's half on the viewer's left (design units),
#: from the neck down the outside of the arm and back up its inside, down the side of
#: the trunk and the outside of the leg and up its inside to the crotch. The other half
#: is its mirror image (:func:`outline_polygon`).
_HALF: tuple[tuple[float, float], ...] = (
    (45.5, 22.0), (45.5, 30.0), (38.0, 32.0), (31.0, 34.0), (27.5, 38.0), (25.5, 46.0),
    (22.5, 60.0), (20.0, 72.0), (17.0, 86.0), (15.0, 98.0), (13.0, 104.0), (12.0, 111.0),
    (14.0, 116.0), (18.0, 116.0), (20.0, 110.0), (21.5, 101.0), (24.0, 88.0), (27.5, 74.0),
    (31.0, 60.0), (34.0, 46.0), (35.0, 58.0), (36.5, 72.0), (35.0, 84.0), (34.0, 96.0),
    (35.0, 112.0), (37.0, 132.0), (37.5, 142.0), (38.0, 160.0), (40.5, 180.0),
    (39.5, 190.0), (41.0, 194.0), (47.0, 194.0), (47.5, 186.0), (46.5, 180.0),
    (47.0, 162.0), (46.5, 142.0), (48.0, 124.0), (49.0, 106.0), (50.0, 104.0),
)


def outline_polygon() -> list[tuple[float, float]]:
    """The body below the head as one closed polygon, 0..1 coordinates."""
    left = list(_HALF)
    right = [(BOX_W - x, y) for x, y in reversed(_HALF[:-1])]
    return [(x / BOX_W, y / BOX_H) for x, y in left + right]


#: The body outline (0..1), the same for both views: closed polygon.
OUTLINE: tuple[tuple[float, float], ...] = tuple(outline_polygon())


def on_body(x: float, y: float) -> bool:
    """Whether the point (0..1 coordinates) lies on the drawn figure."""
    cx, cy, rx, ry = HEAD
    hx, hy = (x * BOX_W - cx) / rx, (y * BOX_H - cy) / ry
    return hx * hx + hy * hy <= 1.0 or point_in_polygon((x, y), OUTLINE)


# -- regions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Region:
    key: str
    label: str
    #: Regular expressions (word-bounded by the matcher) that name the region.
    words: tuple[str, ...]
    #: (distance from the midline, y) in design units on each view; None = not shown there.
    front: tuple[float, float] | None
    back: tuple[float, float] | None
    default: str = "front"
    #: A left/right body part (a cheek, an arm); else on the midline (unless a side is
    #: given: then ``side_dx`` from it).
    paired: bool = False
    side_dx: float = 0.0
    #: Words that put it on the back / front view (besides posterior / anterior).
    back_words: tuple[str, ...] = ()
    front_words: tuple[str, ...] = ()
    #: Words that name the region only when nothing else in the text does ("hair").
    weak: tuple[str, ...] = ()


_EXT = ("extensor", "dorsal", "dorsum", "outer")
_FLEX = ("flexor", "volar", "palmar", "inner", "crease")

# Most specific first: the first region whose words occur in the text wins.
_REGIONS: tuple[_Region, ...] = (
    _Region("between-scapulae", "Between the shoulder blades",
            (r"between (the |my )?shoulder ?blades?", "interscapular"),
            None, (0, 46), "back"),
    _Region("scapula", "Shoulder blade", (r"shoulder ?blades?", r"scapula[re]?"),
            None, (9, 44), "back", paired=True),
    _Region("antecubital", "Antecubital fossa (elbow crease)",
            ("antecubital", r"elbow (crease|pit|fold)s?", r"inner elbows?",
             r"inside of (the |my )?elbows?"),
            (26, 73), None, "front", paired=True),
    _Region("popliteal", "Popliteal fossa (back of the knee)",
            ("popliteal", r"knee (crease|pit|fold)s?", r"behind (the |my )?knees?"),
            None, (8, 139), "back", paired=True),
    _Region("upper-back", "Upper back", (r"upper back",),
            None, (0, 44), "back", side_dx=9),
    _Region("mid-back", "Middle of the back", (r"mid(dle)? ?back", r"middle of (the |my )?back"),
            None, (0, 58), "back", side_dx=8),
    _Region("lower-back", "Lower back", (r"lower back", "lumbar", r"small of (the |my )?back"),
            None, (0, 74), "back", side_dx=6),
    _Region("sacral", "Sacral area", ("sacral", "sacrum", "coccyx", "coccygeal", "tailbone"),
            None, (0, 86), "back", side_dx=4),
    _Region("natal-cleft", "Natal cleft", (r"natal cleft", "perianal", "anus", "anal",
                                           r"bum crack", r"butt crack", "intergluteal"),
            None, (0, 101), "back"),
    _Region("buttock", "Buttock", (r"buttocks?", "gluteal", r"bum", r"butt", "glutes?"),
            None, (7, 95), "back", paired=True),
    _Region("scalp", "Scalp", ("scalp", "vertex", "crown", r"hair ?line"),
            (0, 5.5), (0, 8), "front", side_dx=4, weak=("hair",)),
    _Region("occiput", "Back of the head", ("occiput", "occipital", r"nape"),
            None, (0, 12), "back", side_dx=4),
    _Region("forehead", "Forehead", ("forehead", "brow"),
            (0, 8), None, "front", side_dx=3.5, weak=("frontal",)),
    _Region("temple", "Temple", (r"temples?",), (6.5, 10), None, "front",
            paired=True, weak=("temporal",)),
    _Region("eyelid", "Eyelid", (r"eye ?lids?", r"eyes?", "periorbital", "orbital",
                                 r"eyebrows?", "canthus"),
            (3.5, 12), None, "front", paired=True),
    _Region("ear", "Ear", (r"ears?", r"ear ?lobes?", "auricular", "pinna", "helix"),
            (7.5, 13.5), (7.5, 13.5), "front", paired=True),
    _Region("nose", "Nose", (r"nose", "nasal", r"nostrils?"),
            (0, 15), None, "front", side_dx=1.5, weak=("alar?",)),
    _Region("lip", "Lips", (r"lips?", "mouth", "perioral", "labial"),
            (0, 19.5), None, "front", side_dx=2),
    _Region("chin", "Chin", (r"chin",), (0, 22.5), None, "front", side_dx=2.5,
            weak=("mental",)),
    _Region("jaw", "Jawline", (r"jaw ?line", r"jaws?", "mandib(le|ular)"),
            (5, 20.5), None, "front", paired=True),
    _Region("cheek", "Cheek", (r"cheeks?", "malar", "buccal", "zygomatic"),
            (4.5, 16.5), None, "front", paired=True),
    _Region("face", "Face", (r"face", "facial"), (0, 14), None, "front", side_dx=4),
    _Region("head", "Head", (r"head",), (0, 9), (0, 11), "front", side_dx=4),
    _Region("neck", "Neck", (r"neck", "cervical", "throat", "submental"),
            (0, 27), (0, 27), "front", side_dx=3),
    _Region("axilla", "Armpit", (r"arm ?pits?", r"axillae?", "axillary", r"under ?arms?"),
            (14, 47), None, "front", paired=True),
    _Region("shoulder", "Shoulder", (r"shoulders?", "deltoid"), (19, 37), (19, 37), "front",
            paired=True),
    _Region("breast", "Breast", (r"breasts?", r"nipples?", "areola", r"boobs?", "mammary",
                                 "inframammary", r"under ?boob"),
            (8, 50), None, "front", paired=True),
    _Region("sternum", "Breastbone", ("sternum", "sternal", r"breast ?bone"),
            (0, 46), None, "front"),
    _Region("upper-chest", "Upper chest", (r"upper chest", "decolletage", r"collar ?bones?",
                                           "clavicle", "clavicular"),
            (0, 40), None, "front", side_dx=9),
    _Region("chest", "Chest", (r"chest", "thorax", "thoracic wall", "pectoral"),
            (0, 45), None, "front", side_dx=8),
    _Region("flank", "Flank", (r"flanks?", r"side of (the |my )?(body|trunk|torso|waist)",
                               r"love handles?"),
            None, (11.5, 68), "back", paired=True),
    _Region("umbilicus", "Belly button", ("umbilicus", "umbilical", r"belly ?button",
                                         "navel", "periumbilical"),
            (0, 71), None, "front", side_dx=6),
    _Region("epigastric", "Upper abdomen", ("epigastric", "epigastrium", r"upper abdomen",
                                           r"upper (tummy|belly|stomach)"),
            (0, 62), None, "front", side_dx=6),
    _Region("lower-abdomen", "Lower abdomen", (r"lower abdomen", "suprapubic", "hypogastric",
                                              r"lower (tummy|belly|stomach)", "pubic"),
            (0, 85), None, "front", side_dx=6),
    _Region("abdomen", "Abdomen", ("abdomen", "abdominal", "tummy", "belly", "stomach",
                                   r"waist(line)?"),
            (0, 70), None, "front", side_dx=7),
    _Region("groin", "Groin", (r"groins?", "inguinal", r"bikini (line|area)"),
            (8, 95), None, "front", paired=True),
    _Region("genital", "Genital area",
            ("genital", "genitals", "genitalia", "penis", "penile", "scrotum", "scrotal",
             "vulva", "vulval", "vulvar", "labia", "vagina", "vaginal", "perineum",
             "perineal", r"private (parts|area)", "testicles?", r"foreskin", "glans"),
            (0, 100), None, "front"),
    _Region("hip", "Hip", (r"hips?", "trochanter(ic)?"), (13, 91), (13, 91), "front",
            paired=True),
    _Region("trunk", "Trunk", ("trunk", "torso"), (0, 60), (0, 60), "front", side_dx=8),
    _Region("palm", "Palm", (r"palms?", "palmar"), (33.6, 107), None, "front", paired=True),
    _Region("toe", "Toes", (r"toes?", r"toe ?nails?", r"big toe", "hallux"),
            (6, 193), None, "front", paired=True),
    _Region("nail", "Fingernail", (r"(finger|thumb)? ?nails?", "nail ?beds?", r"cuticles?",
                                   "periungual", "subungual"),
            (34, 114), (34, 114), "back", paired=True),
    _Region("finger", "Fingers", (r"fingers?", r"thumbs?", r"fingertips?", r"knuckles?",
                                  "digits?"),
            (34, 113), (34, 113), "front", paired=True, back_words=("knuckles?",)),
    _Region("hand", "Hand", (r"hands?",), (33.6, 107.5), (33.6, 107.5), "front",
            paired=True, back_words=_EXT),
    _Region("wrist", "Wrist", (r"wrists?", "carpal"), (31.7, 99), (31.7, 99), "front",
            paired=True, back_words=_EXT, front_words=_FLEX),
    _Region("elbow", "Elbow", (r"elbows?", "olecranon"), (26, 73), (26, 73), "back",
            paired=True, back_words=_EXT, front_words=_FLEX),
    _Region("forearm", "Forearm", (r"fore ?arms?",), (29.5, 87), (29.5, 87), "front",
            paired=True, back_words=_EXT, front_words=_FLEX),
    _Region("upper-arm", "Upper arm", (r"upper arms?", "biceps?", "triceps?", "humeral"),
            (21, 50), (21, 50), "front", paired=True, back_words=("triceps?", *_EXT),
            front_words=("biceps?", *_FLEX)),
    _Region("arm", "Arm", (r"arms?",), (22.5, 58), (22.5, 58), "front", paired=True,
            back_words=_EXT, front_words=_FLEX),
    _Region("sole", "Sole", (r"soles?", "plantar", r"heels?", "achilles",
                                         "calcaneal"),
            None, (6.5, 190), "back", paired=True),
    _Region("ankle", "Ankle", (r"ankles?", "malleolus", "malleolar"), (6.5, 181), (6.5, 181),
            "front", paired=True),
    _Region("foot", "Foot", (r"foot", r"feet", r"instep", r"top of (the |my )?foot"),
            (6.5, 189), (6.5, 189), "front", paired=True,
            front_words=("dorsal", "dorsum", "top")),
    _Region("knee", "Knee", (r"knees?", "patella[r]?", r"knee ?caps?"),
            (8, 138), (8, 139), "front", paired=True, front_words=("extensor",),
            back_words=("flexor",)),
    _Region("calf", "Calf", (r"calf", r"calves", "gastrocnemius"), None, (7.5, 158), "back",
            paired=True),
    _Region("shin", "Shin", (r"shins?", "pretibial", "tibial"), (7.5, 158), None, "front",
            paired=True),
    _Region("thigh", "Thigh", (r"thighs?", "femoral"), (8.5, 118), (8.5, 118), "front",
            paired=True),
    _Region("lower-leg", "Lower leg", (r"lower legs?",), (7.5, 155), (7.5, 155), "front",
            paired=True),
    _Region("leg", "Leg", (r"legs?",), (8, 148), (8, 148), "front", paired=True),
    _Region("back", "Back", (r"back",), None, (0, 56), "back", side_dx=8),
)
_BY_KEY: dict[str, _Region] = {r.key: r for r in _REGIONS}

#: SNOMED CT body structures (DICOM anatomic region codes) -> region, and a side when
#: the code itself carries one.
SNOMED_REGIONS: dict[str, tuple[str, str]] = {
    "41695006": ("scalp", ""), "69536005": ("head", ""), "89545001": ("face", ""),
    "52795006": ("forehead", ""), "60819002": ("cheek", ""), "45206002": ("nose", ""),
    "48477009": ("lip", ""), "123851003": ("lip", ""), "30291003": ("chin", ""),
    "661005": ("jaw", ""), "91609006": ("jaw", ""), "117590005": ("ear", ""),
    "81745001": ("eyelid", ""), "80243003": ("eyelid", ""), "371398005": ("eyelid", ""),
    "45048000": ("neck", ""), "16982005": ("shoulder", ""), "91470000": ("axilla", ""),
    "76752008": ("breast", ""), "56873002": ("sternum", ""), "43799004": ("chest", ""),
    "816094009": ("chest", ""), "51299004": ("upper-chest", ""),
    "818981001": ("abdomen", ""), "113345001": ("abdomen", ""),
    "27947004": ("epigastric", ""), "11708003": ("lower-abdomen", ""),
    "90290004": ("umbilicus", ""), "58602004": ("flank", ""),
    "77568009": ("back", ""), "79601000": ("scapula", ""), "52612000": ("lower-back", ""),
    "54735007": ("sacral", ""), "64688005": ("sacral", ""), "46862004": ("buttock", ""),
    "53505006": ("natal-cleft", ""), "26893007": ("groin", ""),
    "85119005": ("groin", "left"), "37117007": ("groin", "right"),
    "18911002": ("genital", ""), "20233005": ("genital", ""), "45292006": ("genital", ""),
    "38864007": ("genital", ""), "24136001": ("hip", ""), "40983000": ("upper-arm", ""),
    "16953009": ("elbow", ""), "14975008": ("forearm", ""), "74670003": ("wrist", ""),
    "8205005": ("wrist", ""), "85562004": ("hand", ""), "7569003": ("finger", ""),
    "76505004": ("finger", ""), "68367000": ("thigh", ""), "72696002": ("knee", ""),
    "64234005": ("knee", ""), "32361000": ("popliteal", ""), "30021000": ("lower-leg", ""),
    "53840002": ("calf", ""), "70258002": ("ankle", ""), "56459004": ("foot", ""),
    "29707007": ("toe", ""), "80144004": ("sole", ""),
}

_SIDE_WORDS = {"left": "left", "lt": "left", "l": "left", "right": "right", "rt": "right",
               "r": "right"}
_POSTERIOR = ("posterior", "rear", "behind", "dorsal", r"at the back", r"back ?side")
_ANTERIOR = ("anterior", "ventral", "front")


def normalise(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: how site texts are compared."""
    t = text.casefold().replace("’", "'")
    t = re.sub(r"[^a-z0-9' ]+", " ", t)
    return " ".join(t.split())


def _has(text: str, words: Sequence[str]) -> bool:
    return any(re.search(rf"\b(?:{w})\b", text) for w in words)


@dataclass(frozen=True)
class SitePosition:
    """Where a body site lands on the map."""

    region: str
    side: str  # "left", "right", "both" or "" (not stated, or a midline region)
    view: str
    x: float
    y: float

    @property
    def key(self) -> str:
        """Groups photos of the same place: region, side and view."""
        return f"{self.region}:{self.side or '-'}:{self.view}"

    @property
    def label(self) -> str:
        """The place in plain words ("Left forearm, back view")."""
        region = _BY_KEY[self.region]
        name = region.label
        if self.side in ("left", "right") and region.paired:
            name = f"{self.side.capitalize()} {name[0].lower()}{name[1:]}"
        elif self.side in ("left", "right"):
            name = f"{name}, {self.side} side"
        elif self.side == "both":
            name = f"{name} (both sides)"
        elif region.paired:
            name = f"{name} (side not stated)"
        return f"{name}, {self.view} view"


def _side_of(text: str) -> str:
    sides = {_SIDE_WORDS[w] for w in re.findall(r"\b(left|lt|l|right|rt|r)\b", text)}
    if len(sides) == 2 or re.search(r"\b(both|bilateral|either)\b", text):
        return "both"
    return next(iter(sides), "")


def _position(region: _Region, side: str, view: str) -> SitePosition:
    spot = region.front if view == "front" else region.back
    assert spot is not None
    offset, y = spot
    if region.paired:
        # a pair without a stated side (or both sides) shows the patient's right one
        right = side != "left"
    elif side in ("left", "right") and region.side_dx:
        offset, right = region.side_dx, side == "right"
    else:
        offset, right, side = 0.0, True, ""
    # The patient's right is on the viewer's left on the front view, on the right behind.
    x = MIDLINE - offset if right == (view == "front") else MIDLINE + offset
    return SitePosition(region.key, side, view, x / BOX_W, y / BOX_H)


def _choose_view(region: _Region, text: str, posterior: bool) -> str:
    if region.front is None:
        return "back"
    if region.back is None:
        return "front"
    if _has(text, region.back_words):
        return "back"
    if _has(text, region.front_words):
        return "front"
    if posterior or _has(text, _POSTERIOR):
        return "back"
    if _has(text, _ANTERIOR):
        return "front"
    return region.default


def locate(text: str, code: str | None = None) -> SitePosition | None:
    """Where the body site ``text`` (or, failing that, the SNOMED CT ``code``) is on
    the map; None when neither names a place we know."""
    t = normalise(text or "")
    side = _side_of(t)
    # "back of the hand" is the hand seen from behind, not the back
    stripped = normalise(re.sub(r"\b(back|rear) of (the |my |his |her |their |your )?", " ", t))
    posterior = stripped != t
    region = (next((r for r in _REGIONS if _has(stripped, r.words)), None)
              or next((r for r in _REGIONS if r.weak and _has(stripped, r.weak)), None))
    if region is None and code:
        hit = SNOMED_REGIONS.get(code.strip())
        if hit is not None:
            region, side = _BY_KEY[hit[0]], hit[1] or side
    if region is None:
        return None
    return _position(region, side, _choose_view(region, stripped, posterior))


# -- pins of a patient --------------------------------------------------------------------------
@dataclass(frozen=True)
class PinPhoto:
    """A photo on a pin."""

    photo_id: str
    case_id: str
    case_number: str | None
    when: datetime
    title: str
    body_site: str


@dataclass(frozen=True)
class BodyPin:
    """A site or a numbered lesion on the map, with its photos (oldest first).

    ``view``/``x``/``y`` are None when the site is not on the map (and nobody has
    placed it yet); ``adjusted`` when the clinician moved it.
    """

    kind: str  # "site" or "lesion"
    key: str
    label: str
    site: str
    view: str | None
    x: float | None
    y: float | None
    photos: tuple[PinPhoto, ...]
    adjusted: bool = False
    lesion_number: int | None = None
    region_label: str = ""
    #: Whether the lesion changed between visits (None: not known / not measurable).
    changed: bool | None = None
    change_summary: str = ""

    @property
    def placed(self) -> bool:
        return self.view is not None

    @property
    def photo_ids(self) -> list[str]:
        return [p.photo_id for p in self.photos]

    @property
    def note(self) -> str:
        """For a pin not on the map: the sentence the map lists."""
        return "" if self.placed else f"Site not on the map: {self.site or 'not recorded'}"

    @property
    def dates_text(self) -> str:
        if not self.photos:
            return "no photos"
        first, last = self.photos[0].when, self.photos[-1].when
        a, b = f"{first.astimezone():%d %b %Y}", f"{last.astimezone():%d %b %Y}"
        n = len(self.photos)
        what = f"{n} photo{'s' if n != 1 else ''}"
        return f"{what}, {a}" if a == b else f"{what}, {a} – {b}"

    @property
    def status(self) -> str:
        """"changed", "no clear change", "change not measurable" or "" (sites, lesions
        measured once)."""
        if self.kind != "lesion" or not self.change_summary:
            return ""
        if self.changed is None:
            return "change not measurable"
        return "changed" if self.changed else "no clear change"

    @property
    def tooltip(self) -> str:
        lines = [f"{self.label} — {self.status}" if self.status else self.label]
        if self.kind == "lesion" and self.site:
            lines.append(f"Site: {self.site}")
        elif self.region_label and self.region_label.split(",")[0] != self.label:
            lines.append(f"On the map: {self.region_label}")
        lines.append(self.dates_text)
        if self.change_summary:
            lines.append(self.change_summary)
        if self.adjusted:
            lines.append("Position set by a clinician")
        if not self.placed:
            lines.append(self.note)
        return "\n".join(lines)


@dataclass(frozen=True)
class BodyMap:
    """Every pin of one patient."""

    patient_id: str
    pins: tuple[BodyPin, ...] = field(default=())

    @property
    def placed(self) -> list[BodyPin]:
        return [p for p in self.pins if p.placed]

    @property
    def unplaced(self) -> list[BodyPin]:
        return [p for p in self.pins if not p.placed]

    def find(self, kind: str, key: str) -> BodyPin | None:
        return next((p for p in self.pins if p.kind == kind and p.key == key), None)

    def site_pins(self) -> list[BodyPin]:
        return [p for p in self.pins if p.kind == "site"]

    def lesion_pins(self) -> list[BodyPin]:
        return [p for p in self.pins if p.kind == "lesion"]


def _text_key(site: str) -> str:
    return ("text:" + normalise(site))[:200]


def _check_target(kind: str, key: str) -> None:
    if kind not in PIN_KINDS:
        raise InputError(f"Unknown pin kind '{kind}'. Known: {', '.join(PIN_KINDS)}.")
    if not key or len(key) > 200:
        raise InputError("A pin needs a key of 1 to 200 characters.")
    if kind == "lesion" and not key.isdigit():
        raise InputError(f"A lesion pin's key is its number, not '{key}'.")


class BodyMapService:
    """The body map of a patient: reading pins (``case.view``), moving and resetting them
    (``case.edit``, audited)."""

    def __init__(self, workspace: Workspace, actor: Actor) -> None:
        self.ws = workspace
        self.actor = actor

    def pins(self, patient_id: str) -> BodyMap:
        """Every photo site and numbered lesion of the patient, across all visits."""
        self.actor.require("case.view")
        with self.ws.db.session() as s:
            if s.get(Patient, patient_id) is None:
                raise NotFoundError(f"No patient with id '{patient_id}'.")
            rows = s.execute(
                select(Photo.id, Photo.body_site, Photo.title, Photo.taken_at, Case.id,
                       Case.case_number, Case.submitted_at, Case.body_site,
                       Case.body_site_code)
                .join(Case, Photo.case_id == Case.id)
                .where(Case.patient_id == patient_id)
            ).all()
            moved = {(p.target_kind, p.target_key): (p.view, p.x, p.y)
                     for p in s.scalars(select(BodyMapPin)
                                        .where(BodyMapPin.patient_id == patient_id))}
        photos: dict[str, tuple[PinPhoto, SitePosition | None, str]] = {}
        for (pid, site, title, taken, case_id, case_number, submitted, case_site,
             case_code) in rows:
            text = site or case_site or ""
            code = case_code if (not site or normalise(site) == normalise(case_site)) else None
            where = locate(text, code)
            key = where.key if where is not None else _text_key(text)
            photos[pid] = (PinPhoto(pid, case_id, case_number, taken or submitted, title, text),
                           where, key)

        def order(p: PinPhoto) -> tuple[datetime, str, str]:
            return (p.when, p.title, p.photo_id)

        pins: list[BodyPin] = []
        view: str | None
        x: float | None
        y: float | None
        by_site: dict[str, list[str]] = {}
        for pid, (_ph, _where, key) in photos.items():
            by_site.setdefault(key, []).append(pid)
        for key, pids in by_site.items():
            group = sorted((photos[p][0] for p in pids), key=order)
            where = photos[pids[0]][1]
            texts = Counter(p.body_site for p in group if p.body_site)
            site = texts.most_common(1)[0][0] if texts else ""
            label = site or "Site not recorded"
            view, x, y = (where.view, where.x, where.y) if where is not None else (None,
                                                                                  None, None)
            adjusted = ("site", key) in moved
            if adjusted:
                view, x, y = moved[("site", key)]
            pins.append(BodyPin("site", key, label, site, view, x, y, tuple(group),
                                adjusted=adjusted,
                                region_label=where.label if where is not None else ""))

        placed_sites = {p.key: (p.view, p.x, p.y) for p in pins
                        if p.view is not None and p.x is not None and p.y is not None}
        observations = LesionService(self.ws, self.actor).observations(patient_id)
        lesions = {n: {o.photo_id for o in obs} for n, obs in observations.items()}
        changes = latest_changes(observations)
        for number in sorted(lesions):
            group = sorted((photos[p][0] for p in lesions[number] if p in photos), key=order)
            # at its (first placed) photo's site pin, wherever that pin is now
            home_key = next((photos[p.photo_id][2] for p in group
                             if photos[p.photo_id][2] in placed_sites), None)
            home = next((photos[p.photo_id][1] for p in group
                         if photos[p.photo_id][1] is not None), None)
            site = group[0].body_site if group else ""
            view, x, y = None, None, None
            if home_key is not None:
                view, x, y = placed_sites[home_key]
            key = str(number)
            adjusted = ("lesion", key) in moved
            if adjusted:
                view, x, y = moved[("lesion", key)]
            change = changes.get(number)
            changed: bool | None = change.changed if change is not None else None
            summary = str(change.summary()) if change is not None else ""
            pins.append(BodyPin("lesion", key, f"Lesion {number}", site, view, x, y,
                                tuple(group), adjusted=adjusted, lesion_number=number,
                                region_label=home.label if home is not None else "",
                                changed=changed, change_summary=summary))
        never = datetime.max.replace(tzinfo=UTC)
        pins.sort(key=lambda p: (p.kind != "site", p.lesion_number or 0,
                                 p.photos[0].when if p.photos else never, p.key))
        return BodyMap(patient_id, tuple(pins))

    def move_pin(self, patient_id: str, kind: str, key: str, view: str, x: float,
                 y: float) -> None:
        """Put the pin where the clinician dropped it (kept until :meth:`reset_pin`)."""
        self.actor.require("case.edit")
        _check_target(kind, key)
        if view not in VIEWS:
            raise InputError(f"Unknown view '{view}'. Choose front or back.")
        fx, fy = float(x), float(y)
        if not (math.isfinite(fx) and math.isfinite(fy) and 0.0 <= fx <= 1.0
                and 0.0 <= fy <= 1.0):
            raise InputError("A pin's position must lie on the map (0 to 1 across and down).")
        with self.ws.db.session() as s:
            if s.get(Patient, patient_id) is None:
                raise NotFoundError(f"No patient with id '{patient_id}'.")
            row = s.scalar(select(BodyMapPin).where(
                BodyMapPin.patient_id == patient_id, BodyMapPin.target_kind == kind,
                BodyMapPin.target_key == key))
            if row is None:
                row = BodyMapPin(patient_id=patient_id, target_kind=kind, target_key=key)
                s.add(row)
            row.view, row.x, row.y = view, fx, fy
            row.moved_by = self.actor.username
            row.moved_at = utcnow()
            s.flush()
            audit.record(s, self.actor, "body_map.move", "body_map_pin", row.id,
                         _audit_detail(patient_id, kind, key, view))

    def reset_pin(self, patient_id: str, kind: str, key: str) -> bool:
        """Put the pin back where the body site places it; False if it was not moved."""
        self.actor.require("case.edit")
        _check_target(kind, key)
        with self.ws.db.session() as s:
            row = s.scalar(select(BodyMapPin).where(
                BodyMapPin.patient_id == patient_id, BodyMapPin.target_kind == kind,
                BodyMapPin.target_key == key))
            if row is None:
                return False
            row_id = row.id
            s.delete(row)
            s.flush()
            audit.record(s, self.actor, "body_map.reset", "body_map_pin", row_id,
                         _audit_detail(patient_id, kind, key, None))
            return True


def _audit_detail(patient_id: str, kind: str, key: str, view: str | None) -> dict[str, object]:
    """Ids and map keys only: a free-text site the map could not place stays out."""
    detail: dict[str, object] = {"patient_id": patient_id, "kind": kind}
    if kind == "lesion":
        detail["lesion_number"] = int(key)
    elif not key.startswith("text:"):
        detail["site_key"] = key
    if view is not None:
        detail["view"] = view
    return detail
