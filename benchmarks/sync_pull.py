"""Portal sync benchmark: 200 cases x 6 photos (~1.4 MB) from a loopback reference portal.

    python -m benchmarks.sync_pull          (N_CASES=50 / ROUNDS=5 in the environment)


Wall time of a full `run_sync` vs plain concurrent `requests` GETs of the same Binary URLs
at the same concurrency, measured in the same run; peak RSS growth of this process.
The portal runs as a separate process (`derm-workstation portal serve`).

The baselines are honest: the same URLs, the same number of threads as the sync's photo
transfers (`CONC`), every byte read, a session that (like the workstation's client) does
not re-read proxy settings and ~/.netrc per request, and one unmeasured pass first so
neither side gets a colder portal. `baseline_s` is the issue's plain GETs (`r.content`);
`streamed_s` reads the same bodies in 1 MB pieces, a stricter floor. Each round also
reports the CPU seconds of this process and of the portal process, and where the
sync's CPU went (per-thread CPU time of its stages): `db` (committing cases),
`metadata` (resource reads and searches, mapping), `photos` (everything a photo costs,
of which `photo_io` is receiving, SHA-1 + SHA-256 and writing, `flush` the fsync before
commit and `checks` the image header checks; the rest is the HTTP request itself).
Every round also records the machine's 1-minute load average when it started (the
machine may be shared: compare ratios of the same round, and prefer rounds at low load);
the summary gives the median ratio over the rounds (3 by default).

Each round syncs into its own new workspace, and the workspaces are deleted after the
last round (when the disk has room for them all): deleting a round's 1.7 GB of photos
right after it made the next rounds slower (on this machine's file system the freed
space is trimmed in the background while the next round writes).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import statistics
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


def baseline(base_url: str, urls: list[str], streamed: bool = False) -> tuple[float, int]:
    s = requests.Session()
    s.mount("http://", HTTPAdapter(pool_maxsize=CONC + 2))
    s.headers["Authorization"] = f"Bearer {TOKEN}"
    s.trust_env = False  # as PortalClient: no per-request proxy/.netrc lookups

    def get(u: str) -> int:
        if streamed:
            with s.get(u, headers={"Accept": "image/jpeg"}, timeout=30, stream=True) as r:
                r.raise_for_status()
                return sum(len(c) for c in r.iter_content(1024 * 1024))
        r = s.get(u, headers={"Accept": "image/jpeg"}, timeout=30)
        r.raise_for_status()
        return len(r.content)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONC) as pool:
        n = sum(pool.map(get, urls))
    return time.perf_counter() - t0, n


def cpu_of(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default; Linux /proc)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stages:
    """Per-thread CPU time spent in the sync's stages (wraps methods while measuring)."""

    TARGETS = (
        ("db", "derm_workstation.sync.pull:Puller._commit_all"),
        ("db", "derm_workstation.sync.pull:Puller._commit"),
        ("metadata", "derm_workstation.sync.pull:Puller._fetch_case"),
        ("photos", "derm_workstation.sync.pull:Puller._download"),
        ("photo_io", "derm_workstation.core.imagestore:ImageStore.put_stream"),
        ("flush", "derm_workstation.core.imagestore:ImageStore.make_durable"),
        ("checks", "derm_workstation.sync.pull:jpeg_head_facts"),
        ("checks", "derm_workstation.imaging.probe:probe_bytes"),
    )

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self._lock = threading.Lock()
        self._active = threading.local()  # stages running on this thread (no double count)
        self._undo: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> Stages:
        import importlib

        for stage, target in self.TARGETS:
            mod_name, _, attr = target.partition(":")
            owner: Any = importlib.import_module(mod_name)
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            real = getattr(owner, name, None)
            if real is None:  # an older version of the code: that stage does not exist
                continue
            self._undo.append((owner, name, real))
            setattr(owner, name, self._timed(stage, real))
        return self

    def _timed(self, stage: str, fn: Any) -> Any:
        def run(*a: Any, **kw: Any) -> Any:
            active: set[str] = self._active.__dict__.setdefault("stages", set())
            if stage in active:
                return fn(*a, **kw)
            active.add(stage)
            t0 = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                active.discard(stage)
                with self._lock:
                    self.cpu[stage] = self.cpu.get(stage, 0.0) + time.thread_time() - t0

        return run

    def __exit__(self, *exc: object) -> None:
        for owner, name, real in reversed(self._undo):
            setattr(owner, name, real)
        self._undo.clear()


def disk_rate(folder: Path, n: int = 300, size: int = 1_400_000) -> float:
    """MB/s of writing and fsyncing photo-sized files, CONC at a time: the durability
    floor of a sync is its bytes at this rate (every photo is on disk before its case
    commits)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)

    def one(i: int) -> None:
        fd = os.open(folder / f"d{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONC) as pool:
        list(pool.map(one, range(n)))
    rate = n * size / 1e6 / (time.perf_counter() - t0)
    shutil.rmtree(folder)
    return rate


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
            baseline(base_url, urls)  # unmeasured: the portal's files are warm for everyone
            results: list[dict[str, Any]] = []
            breakdown: list[dict[str, float]] = []
            rounds = int(os.environ.get("ROUNDS", 3))
            keep = shutil.disk_usage(work).free > 2 * total * rounds
            if not keep:
                print("not enough free disk to keep every round's workspace: each is "
                      "deleted after its round (later rounds may be slower)")
            for rnd in range(rounds):
                load = os.getloadavg()[0]
                c0, s0 = cpu_of(), cpu_of(srv.pid)
                tb, nb = baseline(base_url, urls)
                c1, s1 = cpu_of(), cpu_of(srv.pid)
                tst, nst = baseline(base_url, urls, streamed=True)
                assert nst == nb
                ws_dir = work / f"ws{rnd}"
                ws = Workspace.open(ws_dir)
                client = PortalClient(base_url, StaticToken(TOKEN), pool_size=CONC * 2 + 2)
                with Peak() as pk, Stages() as stages:
                    c2, s2 = cpu_of(), cpu_of(srv.pid)
                    t0 = time.perf_counter()
                    summary = run_sync(ws, client, concurrency=CONC)
                    ts = time.perf_counter() - t0
                    c3, s3 = cpu_of(), cpu_of(srv.pid)
                ws.close()
                client.close()
                assert summary.completed, summary.errors[:3]
                assert summary.photos_downloaded == photos and summary.bytes == nb
                res = {
                    "round": rnd,
                    "baseline_s": round(tb, 2),
                    "streamed_s": round(tst, 2),
                    "sync_s": round(ts, 2),
                    "ratio": round(ts / tb, 3),
                    "ratio_streamed": round(ts / tst, 3),
                    "requests": summary.requests,
                    "peak_rss_growth_mb": round((pk.peak - pk.base) / 1e6, 1),
                    "mb": round(nb / 1e6),
                    "base_cpu_s": round(c1 - c0, 2),
                    "sync_cpu_s": round(c3 - c2, 2),
                    "portal_cpu_base_s": round(s1 - s0, 2),
                    "portal_cpu_sync_s": round(s3 - s2, 2),
                    "load_1min": round(load, 2),
                }
                results.append(res)
                breakdown.append({k: round(v, 2) for k, v in sorted(stages.cpu.items())})
                if not keep:
                    shutil.rmtree(ws_dir)
            # a sync with nothing new (target: at most 2 HTTP requests)
            ws = Workspace.open(work / "ws-again")
            client = PortalClient(base_url, StaticToken(TOKEN))
            run_sync(ws, client, concurrency=CONC)
            again = run_sync(ws, client).requests
            ws.close()
            client.close()
            rate = disk_rate(work / "disk-probe")
            mb = results[0]["mb"] if results else 0
            print(f"disk: {rate:.0f} MB/s written and flushed, so flushing {mb} MB needs "
                  f"at least {mb / rate:.1f} s")
            for rnd, stages_cpu in enumerate(breakdown):
                print(f"round {rnd}: sync CPU by stage (s): {stages_cpu}")
            ratios = sorted(r["ratio"] for r in results)
            median = statistics.median(ratios) if ratios else None
            print(f"ratio to plain GETs: {ratios} (median {median}, "
                  f"target <= 1.3); nothing-new sync: {again} requests (target <= 2)")
            report(
                "sync_pull",
                results,
                {
                    "cases": N_CASES,
                    "photos": photos,
                    "concurrency": CONC,
                    "target_ratio": 1.3,
                    "median_ratio": median,
                    "nothing_new_requests": again,
                    "cpu_by_stage_s": breakdown,
                    "disk_mb_per_s": round(rate),
                    "flush_floor_s": round(mb / rate, 2),
                    "load_average": os.getloadavg(),
                },
            )
        finally:
            srv.terminate()
            srv.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
