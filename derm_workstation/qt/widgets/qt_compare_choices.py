"""Which photos the compare window offers, in which order, and which it shows first.

No widgets here: the compare window (``qt_compare_view``) lists every photo of the case
and of the patient's earlier visits as :class:`CompareChoice` items, the same body site
first, each group oldest first; pane 1 (the baseline) gets the oldest photo of the site.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from derm_workstation.core.views import CaseDetail, PhotoView

PANES = 4


@dataclass(frozen=True)
class CompareChoice:
    """A photo the clinician can put in a pane."""

    photo: PhotoView
    case_id: str
    case_label: str
    when: datetime
    current_case: bool

    def label(self) -> str:
        site = self.photo.body_site or "site not recorded"
        title = self.photo.title or "Photo"
        return f"{self.when.astimezone():%d %b %Y}  ·  {title}  ·  {site}  ·  {self.case_label}"


def _norm_site(site: str) -> str:
    return " ".join(site.casefold().replace(",", " ").split())


def same_site(a: str, b: str) -> bool:
    return bool(a.strip()) and _norm_site(a) == _norm_site(b)


def choices_of(detail: CaseDetail, current_case: bool) -> list[CompareChoice]:
    number = detail.case_number or detail.id[:8]
    label = ("this visit" if current_case
             else f"visit {detail.submitted_at.astimezone():%d %b %Y} ({number})")
    return [
        CompareChoice(ph, detail.id, label, ph.taken_at or detail.submitted_at, current_case)
        for ph in detail.photos
    ]


def order_choices(choices: Sequence[CompareChoice], site: str
                  ) -> tuple[list[CompareChoice], list[CompareChoice]]:
    """(same body site, other sites), each oldest first."""
    def key(c: CompareChoice) -> tuple[datetime, str]:
        return (c.when, c.photo.title)

    same = sorted((c for c in choices if same_site(c.photo.body_site, site)), key=key)
    other = sorted((c for c in choices if not same_site(c.photo.body_site, site)), key=key)
    return same, other


def default_picks(same: Sequence[CompareChoice], other: Sequence[CompareChoice],
                  current_photo_id: str | None, n: int = PANES) -> list[str]:
    """Baseline = the oldest photo of the site; then the photo on screen; then the other
    photos of the site in date order; then the rest."""
    order = [c.photo.id for c in same] + [c.photo.id for c in other]
    picks: list[str] = []
    if order:
        picks.append(order[0])
    if current_photo_id and current_photo_id in order and current_photo_id not in picks:
        picks.append(current_photo_id)
    for pid in order:
        if len(picks) >= n:
            break
        if pid not in picks:
            picks.append(pid)
    return picks[:n]
