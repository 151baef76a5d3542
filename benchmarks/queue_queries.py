"""Sort, filter and search over 100,000 cases, as the queue does it.

Each query = what the queue view does when the clinician changes the sort,
filter or search: ``first_page`` — the first 200 display rows in order (one
ordered, limited SQL query) plus the total count (skipped when the first page
is short). Later pages load as the clinician scrolls. Target: median ≤ 50 ms.

    python -m benchmarks.queue_queries [--cases 100000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from derm_workstation.core import queue
from derm_workstation.core.models import CASE_STATUSES
from derm_workstation.core.queue import QueueQuery
from derm_workstation.core.workspace import Workspace

from ._common import bulk_fill, median_ms, report

QUERIES: list[tuple[str, QueueQuery]] = [
    ("default (open, triage order)", QueueQuery()),
    ("all statuses", QueueQuery(statuses=CASE_STATUSES)),
    ("status = new", QueueQuery(statuses=("requested",))),
    ("priority >= urgent", QueueQuery(priorities=("urgent", "asap", "stat"))),
    ("search one word", QueueQuery(text="mole")),
    ("search two words", QueueQuery(text="okafor forearm")),
    ("search case number", QueueQuery(text="td-b-0012345", statuses=CASE_STATUSES)),
    ("search + status + priority", QueueQuery(text="rash", statuses=("requested",),
                                              priorities=("routine",))),
]
for key in queue.SORT_KEYS:
    QUERIES.append((f"sort {key} asc", QueueQuery(sort=key)))
    QUERIES.append((f"sort {key} desc", QueueQuery(sort=key, descending=True)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp))
        bulk_fill(ws, args.cases)
        with ws.db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
        rows = []
        for label, q in QUERIES:
            def run(q: QueueQuery = q) -> int:
                with ws.db.session() as s:
                    total, _rows = queue.first_page(s, q, 200)
                    return total
            with ws.db.session() as s:
                n = queue.count(s, q)
            ms = median_ms(run, repeat=args.repeat)
            rows.append({"query": label, "matches": n, "median_ms": ms,
                         "target_ms": 50.0, "ok": "yes" if ms <= 50 else "NO"})
        ws.close()
    overall = sorted(r["median_ms"] for r in rows)[len(rows) // 2]
    print(f"\n{args.cases} cases; median over all queries: {overall:.1f} ms (target ≤ 50 ms)\n")
    report("queue_queries", rows, {"cases": args.cases, "median_of_medians_ms": overall})


if __name__ == "__main__":
    main()
