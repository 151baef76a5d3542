"""256-px thumbnails of 12 MP phone-like JPEGs: ours vs vipsthumbnail vs naive Pillow.

Photos: ``--photos`` (default 5) synthetic skin photos rendered at 4000 x 3000, with
sensor noise, saved as baseline JPEG quality 90 (4:2:0, as phones write them) in a
temporary folder. Every contender reads the file from disk and writes a 256-px JPEG
(fitting 256 x 256) to disk.

* **ours**: ``make_thumbnail(path.read_bytes(), 256)`` in this process, the output written
  to a file: the full safe pipeline (allow-list, structure walk, DCT-scaled decode,
  EXIF orientation, sRGB, JPEG encode).
* **vipsthumbnail** (libvips-tools): one process per file, as a per-file tool is used,
  timed from spawn to exit. Its per-call process start (spawn, dynamic linking, libvips
  init) is measured separately by thumbnailing a tiny 16 x 16 JPEG, and subtracted to
  give vips' net work per file. Also timed: all files given to one vipsthumbnail call
  (start cost paid once), divided by the number of files.
* **naive Pillow**: ``Image.open`` + full decode + LANCZOS resize + JPEG save.

Ratios are ours / other (lower is better for us): targets ours <= 1.0x vipsthumbnail,
and naive / ours >= 5 (we are at least 5x faster than naive Pillow). Every figure is the
median over ``--repeat`` rounds, rounds interleaved so machine noise hits all alike.

    python -m benchmarks.thumbnails [--photos 5] [--repeat 7]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from derm_workstation.imaging.synthetic import PhotoSpec, render_rgb
from derm_workstation.imaging.thumbnails import make_thumbnail

from ._common import report

SIZE = 256
KINDS = ("psoriasis", "eczema", "pigmented", "acne", "overview")


def photo_set(folder: Path, n: int, width: int = 4000, height: int = 3000) -> list[Path]:
    """``n`` realistic 12 MP JPEGs (cached in ``folder`` between calls)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"photo-{i}-{width}x{height}.jpg"
        if not path.exists():
            rgb, _, _ = render_rgb(PhotoSpec(
                seed=100 + i, kind=KINDS[i % len(KINDS)], fitzpatrick=1 + (i * 2) % 6,
                severity=0.6, width=width, height=height, px_per_mm=36.0))
            noisy = rgb + np.random.default_rng(i).normal(0, 2.5, rgb.shape)
            img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
            img.save(path, "JPEG", quality=90)
        out.append(path)
    return out


def ours(src: Path, dst: Path) -> None:
    dst.write_bytes(make_thumbnail(src.read_bytes(), SIZE))


def naive(src: Path, dst: Path) -> None:
    with Image.open(src) as im:
        im.load()
        w, h = im.size
        s = SIZE / max(w, h)
        small = im.convert("RGB").resize((max(1, round(w * s)), max(1, round(h * s))),
                                         Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=85)
    dst.write_bytes(buf.getvalue())


def vips_cmd(srcs: list[Path], out_dir: Path) -> list[str]:
    # -s 256: fit in 256x256; output next to nothing else: out_dir/<name>.jpg at Q=85
    return ["vipsthumbnail", *map(str, srcs), "-s", str(SIZE),
            "-o", f"{out_dir}/%s.jpg[Q=85]"]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "derm-bench-12mp",
                    help="where the generated photos are kept between runs")
    args = ap.parse_args()
    if shutil.which("vipsthumbnail") is None:
        raise SystemExit("vipsthumbnail not found: install libvips-tools")
    vips_version = subprocess.run(["vips", "--version"], capture_output=True,
                                  text=True).stdout.strip()
    photos = photo_set(args.cache, args.photos)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tiny = tmp / "tiny.jpg"
        Image.new("RGB", (16, 16), (200, 150, 120)).save(tiny, quality=85)
        outs = tmp / "out"
        outs.mkdir()
        t_ours: list[float] = []
        t_naive: list[float] = []
        t_vips: list[float] = []
        t_vips_start: list[float] = []
        t_vips_batch: list[float] = []
        # warm the page cache and every code path once
        for p in photos:
            ours(p, outs / "o.jpg")
            naive(p, outs / "n.jpg")
            run(vips_cmd([p], outs))
        run(vips_cmd([tiny], outs))
        for _ in range(args.repeat):
            for p in photos:
                t_ours.append(timed(lambda p=p: ours(p, outs / "o.jpg")))  # type: ignore[misc]
                t_vips.append(timed(lambda p=p: run(vips_cmd([p], outs))))  # type: ignore[misc]
                t_naive.append(timed(lambda p=p: naive(p, outs / "n.jpg")))  # type: ignore[misc]
                t_vips_start.append(timed(lambda: run(vips_cmd([tiny], outs))))
            t_vips_batch.append(timed(lambda: run(vips_cmd(photos, outs))) / len(photos))
        with Image.open(outs / "o.jpg") as im:
            our_size = im.size
    o = statistics.median(t_ours) * 1000
    v = statistics.median(t_vips) * 1000
    vs = statistics.median(t_vips_start) * 1000
    vb = statistics.median(t_vips_batch) * 1000
    n = statistics.median(t_naive) * 1000
    v_net = max(v - vs, 1e-3)
    rows = [
        {"what": "ours: make_thumbnail (read + thumbnail + write), in process",
         "ms_per_file": o, "ours_over_this": 1.0},
        {"what": "vipsthumbnail, one process per file (raw wall time)",
         "ms_per_file": v, "ours_over_this": o / v},
        {"what": "vipsthumbnail process start alone (16x16 JPEG)",
         "ms_per_file": vs, "ours_over_this": o / vs},
        {"what": "vipsthumbnail net work per file (raw - process start)",
         "ms_per_file": v_net, "ours_over_this": o / v_net},
        {"what": f"vipsthumbnail, all {len(photos)} files in one process, per file",
         "ms_per_file": vb, "ours_over_this": o / vb},
        {"what": "naive Pillow: full decode + LANCZOS resize + save",
         "ms_per_file": n, "ours_over_this": o / n},
    ]
    print(f"{len(photos)} photos 4000x3000 JPEG q90, thumbnails {our_size[0]}x{our_size[1]}, "
          f"{args.repeat} rounds; {vips_version}\n")
    print(f"ours / vipsthumbnail per-file call: {o / v:.2f}x (target <= 1.0x); "
          f"ours / vips net of process start: {o / v_net:.2f}x; "
          f"ours / vips batch: {o / vb:.2f}x")
    print(f"naive Pillow / ours: {n / o:.1f}x faster (target >= 5x)\n")
    report("thumbnails", rows, {
        "photos": len(photos), "repeat": args.repeat, "vips_version": vips_version,
        "ratio_ours_over_vips_per_call": o / v,
        "ratio_ours_over_vips_net": o / v_net,
        "ratio_ours_over_vips_batch": o / vb,
        "speedup_over_naive_pillow": n / o,
        "targets": {"ours_over_vips": 1.0, "speedup_over_naive_pillow": 5.0},
    })


if __name__ == "__main__":
    main()
