"""Portal sync benchmark: 200 cases x 6 photos (~1.5 MB) from a loopback reference portal.

    python -m benchmarks.sync_pull          (N_CASES=50 in the environment for a quick run)


Wall time of a full `run_sync` vs plain concurrent `requests` GETs of the same Binary URLs
at the same concurrency, measured in the same run; peak RSS growth of this process.
The portal runs as a separate process (`derm-workstation portal serve`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image
from requests.adapters import HTTPAdapter

from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.auth import StaticToken
from derm_workstation.portal.client import PortalClient
from derm_workstation.portal.reference.store import PortalStore
from derm_workstation.sync.engine import run_sync

from ._common import report

N_CASES = int(os.environ.get("N_CASES", 200))
N_PHOTOS = 6
CONC = 4
TOKEN = "bench-token"


def base_jpeg() -> bytes:
    rng = np.random.default_rng(1)
    h, w = 1500, 2000
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 0.1 + y * 0.05) % 255, (y * 0.12) % 255, (x * 0.07) % 255], -1)
    img = (img + rng.normal(0, 22, img.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=88)
    return buf.getvalue()


def unique(jpeg: bytes, i: int) -> bytes:
    tag = f"photo-{i:06d}".encode()
    com = b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag
    return jpeg[:2] + com + jpeg[2:]


def build(folder: Path) -> tuple[int, int]:
    store = PortalStore(folder / "portal.sqlite3")
    jpeg = base_jpeg()
    total = 0
    k = 0
    for n in range(N_CASES):
        with store.transaction():
            p = store.create(
                {
                    "resourceType": "Patient",
                    "name": [{"family": f"F{n}", "given": ["G"]}],
                    "identifier": [{"system": "urn:mrn", "value": f"M{n}"}],
                    "gender": "female",
                    "birthDate": "1970-01-01",
                }
            )
            sr = store.create(
                {
                    "resourceType": "ServiceRequest",
                    "status": "active",
                    "intent": "order",
                    "subject": {"reference": f"Patient/{p['id']}"},
                    "authoredOn": "2026-11-20T10:00:00Z",
                    "reasonCode": [{"text": "Rash"}],
                    "bodySite": [{"text": "Arm"}],
                }
            )
            for _ in range(N_PHOTOS):
                data = unique(jpeg, k)
                k += 1
                total += len(data)
                b = store.put_binary(data, "image/jpeg")
                store.create(
                    {
                        "resourceType": "Media",
                        "status": "completed",
                        "subject": {"reference": f"Patient/{p['id']}"},
                        "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
                        "content": {
                            "contentType": "image/jpeg",
                            "url": f"Binary/{b['id']}",
                            "size": len(data),
                            "hash": base64.b64encode(hashlib.sha1(data).digest()).decode(),
                        },
                    }
                )
            store.create(
                {
                    "resourceType": "Task",
                    "status": "requested",
                    "intent": "order",
                    "identifier": [{"system": "urn:case", "value": f"B-{n}"}],
                    "focus": {"reference": f"ServiceRequest/{sr['id']}"},
                    "for": {"reference": f"Patient/{p['id']}"},
                    "authoredOn": "2026-11-20T10:00:00Z",
                }
            )
    store.close()
    return k, total


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Peak:
    """Peak resident memory of this process while the block runs (Linux /proc)."""

    def __init__(self) -> None:
        self.base = rss()
        self.peak = self.base
        self._stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss())

    def __enter__(self) -> Peak:
        self.t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.t.join()


def baseline(base_url: str, urls: list[str]) -> tuple[float, int]:
    s = requests.Session()
    s.mount("http://", HTTPAdapter(pool_maxsize=CONC + 2))
    s.headers["Authorization"] = f"Bearer {TOKEN}"

    def get(u: str) -> int:
        r = s.get(u, headers={"Accept": "image/jpeg"}, timeout=30)
        r.raise_for_status()
        return len(r.content)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONC) as pool:
        n = sum(pool.map(get, urls))
    return time.perf_counter() - t0, n


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    try:
        t0 = time.perf_counter()
        photos, total = build(work / "portal")
        print(
            f"built portal: {N_CASES} cases, {photos} photos, {total / 1e6:.0f} MB in "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        srv = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "derm_workstation",
                "portal",
                "serve",
                "--data-dir",
                str(work / "portal"),
                "--token",
                TOKEN,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert srv.stdout is not None
        base_url = srv.stdout.readline().strip()
        try:
            s = requests.Session()
            s.headers["Authorization"] = f"Bearer {TOKEN}"
            urls = []
            url = base_url + "/Media?_count=1000"
            while url:
                b = s.get(url, timeout=60).json()
                urls += [
                    base_url + "/" + e["resource"]["content"]["url"] for e in b.get("entry", [])
                ]
                url = next((x["url"] for x in b.get("link", []) if x["relation"] == "next"), None)
            assert len(urls) == photos, len(urls)
            results: list[dict[str, Any]] = []
            for rnd in range(2):
                tb, nb = baseline(base_url, urls)
                ws_dir = work / f"ws{rnd}"
                ws = Workspace.open(ws_dir)
                client = PortalClient(base_url, StaticToken(TOKEN), pool_size=CONC * 2 + 2)
                with Peak() as pk:
                    t0 = time.perf_counter()
                    summary = run_sync(ws, client, concurrency=CONC)
                    ts = time.perf_counter() - t0
                ws.close()
                client.close()
                assert summary.completed, summary.errors[:3]
                assert summary.photos_downloaded == photos and summary.bytes == nb
                res = {
                    "round": rnd,
                    "baseline_s": round(tb, 2),
                    "sync_s": round(ts, 2),
                    "ratio": round(ts / tb, 3),
                    "requests": summary.requests,
                    "peak_rss_growth_mb": round((pk.peak - pk.base) / 1e6, 1),
                    "mb": round(nb / 1e6),
                }
                results.append(res)
                shutil.rmtree(ws_dir)
            # a sync with nothing new (target: at most 2 HTTP requests)
            ws = Workspace.open(work / "ws-again")
            client = PortalClient(base_url, StaticToken(TOKEN))
            run_sync(ws, client, concurrency=CONC)
            again = run_sync(ws, client).requests
            ws.close()
            client.close()
            report(
                "sync_pull",
                results,
                {
                    "cases": N_CASES,
                    "photos": photos,
                    "concurrency": CONC,
                    "target_ratio": 1.3,
                    "nothing_new_requests": again,
                },
            )
        finally:
            srv.terminate()
            srv.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
