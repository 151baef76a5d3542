"""The fast paths of the pull (issue 3's benchmark) keep every guarantee of the slow ones.

* A photo verified against the portal's size/hash gets a header-only check from the bytes
  already in memory: same content type and displayed size as the full structure check,
  and anything the header does not settle goes through the full check.
* Photos are renamed into place and flushed before the case that refers to them commits.
* Large read pieces, still flat memory.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from derm_workstation.core.errors import StorageError
from derm_workstation.core.imagestore import ImageStore
from derm_workstation.core.models import Case, Photo
from derm_workstation.core.workspace import Workspace
from derm_workstation.imaging import probe
from derm_workstation.portal.client import HEAD_BYTES, PHOTO_CHUNK, AttachmentRef
from derm_workstation.portal.reference.server import ReferencePortal
from derm_workstation.sync import pull
from derm_workstation.sync.engine import run_sync
from derm_workstation.sync.pull import PhotoFacts, jpeg_head_facts
from tests.sync.conftest import ClientFactory, add_portal_case, sha1_b64


def photo(size: tuple[int, int] = (320, 200), *, mode: str = "RGB", orientation: int | None = None,
          progressive: bool = False, big_endian: bool = False, quality: int = 85) -> bytes:
    img = Image.new(mode, size, 90 if mode == "L" else (200, 120, 90, 0)[:len(mode)])
    buf = io.BytesIO()
    kw: dict[str, Any] = {"quality": quality, "progressive": progressive}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif[0x010F] = "Camera"
        raw = exif.tobytes()
        if big_endian:
            raw = _big_endian_exif(orientation)
        kw["exif"] = raw
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _big_endian_exif(orientation: int) -> bytes:
    """A Motorola-order EXIF block with one SHORT Orientation entry."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) \
        + struct.pack(">I", 0)
    return b"Exif\x00\x00" + b"MM\x00*" + struct.pack(">I", 8) + ifd


def probed(data: bytes) -> PhotoFacts:
    f = probe.probe_bytes(data)
    return PhotoFacts(f.content_type, f.width, f.height)


# ---------------------------------------------------------------- header-only check


@pytest.mark.parametrize("orientation", [None, 1, 2, 3, 4, 5, 6, 7, 8])
def test_head_facts_match_the_full_check_for_every_orientation(orientation: int | None) -> None:
    data = photo((320, 200), orientation=orientation)
    got = jpeg_head_facts(data[:HEAD_BYTES])
    assert got == probed(data)
    assert got is not None
    assert (got.width, got.height) == ((200, 320) if orientation in (5, 6, 7, 8) else (320, 200))


@pytest.mark.parametrize("kind", ["grey", "progressive", "cmyk", "big-endian-exif", "odd-size"])
def test_head_facts_match_the_full_check_for_other_jpegs(kind: str) -> None:
    data = {
        "grey": lambda: photo((64, 48), mode="L"),
        "progressive": lambda: photo((300, 301), progressive=True),
        "cmyk": lambda: photo((40, 30), mode="CMYK"),
        "big-endian-exif": lambda: photo((90, 60), orientation=6, big_endian=True),
        "odd-size": lambda: photo((1, 7)),
    }[kind]()
    assert jpeg_head_facts(data) == probed(data)


def _with_sof(data: bytes, marker: int | None = None, width: int | None = None,
              height: int | None = None, precision: int | None = None) -> bytes:
    """Patch the JPEG's frame header (the decoder-facing fields) in place."""
    b = bytearray(data)
    pos = 2
    while True:
        m = b[pos + 1]
        length = (b[pos + 2] << 8) | b[pos + 3]
        if m in (0xC0, 0xC1, 0xC2):
            if marker is not None:
                b[pos + 1] = marker
            if precision is not None:
                b[pos + 4] = precision
            if height is not None:
                b[pos + 5:pos + 7] = height.to_bytes(2, "big")
            if width is not None:
                b[pos + 7:pos + 9] = width.to_bytes(2, "big")
            return bytes(b)
        pos += 2 + length


@pytest.mark.parametrize("case", [
    "png", "gif", "empty", "frame-header-beyond-head", "lossless", "twelve-bit",
    "too-many-pixels", "zero-height", "orientation-as-text", "no-frame-header",
])
def test_anything_the_header_does_not_settle_goes_to_the_full_check(case: str) -> None:
    base = photo((120, 80))
    if case == "png":
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "PNG")
        head = buf.getvalue()
    elif case == "gif":
        buf = io.BytesIO()
        Image.new("P", (8, 8)).save(buf, "GIF")
        head = buf.getvalue()
    elif case == "empty":
        head = b""
    elif case == "frame-header-beyond-head":
        big_exif = b"Exif\x00\x00" + os.urandom(60_000)
        data = photo((120, 80))
        seg = b"\xff\xe2" + (len(big_exif) + 2).to_bytes(2, "big") + big_exif
        head = (data[:2] + seg + seg + seg + data[2:])[:HEAD_BYTES]
    elif case == "lossless":
        head = _with_sof(base, marker=0xC3)
    elif case == "twelve-bit":
        head = _with_sof(base, precision=12)
    elif case == "too-many-pixels":
        head = _with_sof(base, width=9000, height=9000)  # 81 MP: the decoder decides
    elif case == "zero-height":
        head = _with_sof(base, height=0)
    elif case == "orientation-as-text":
        exif = b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) \
            + struct.pack("<HHI4s", 0x0112, 2, 4, b"six\x00") + struct.pack("<I", 0)
        seg = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
        head = base[:2] + seg + base[2:]
    else:  # only markers up to the scan, no SOF
        head = b"\xff\xd8\xff\xe0\x00\x04ab\xff\xda\x00\x08" + bytes(6)
    assert jpeg_head_facts(head) is None


def test_head_facts_never_raise_on_garbage() -> None:
    import random

    rng = random.Random(3)
    base = photo((50, 40), orientation=6)
    for _ in range(400):
        b = bytearray(base[:2000])
        for _ in range(rng.randrange(1, 8)):
            b[rng.randrange(2, len(b))] = rng.randrange(256)
        cut = rng.randrange(3, len(b))
        got = jpeg_head_facts(bytes(b[:cut]))
        assert got is None or isinstance(got, PhotoFacts)


# ---------------------------------------------------------------- the image store


def test_not_durable_store_then_make_durable(tmp_path: Path, fsynced: list[int]) -> None:
    store = ImageStore(tmp_path / "images")
    synced = fsynced
    data = photo()
    sha = store.put_stream([data[:1000], data[1000:]], durable=False)
    path = store.path_for(sha)
    assert path.read_bytes() == data and synced == []  # in place, nothing flushed yet
    store.make_durable([sha])
    assert path.stat().st_ino in synced  # the file
    if os.name != "nt":
        assert path.parent.stat().st_ino in synced  # and its folder entry
    assert list(store.root.glob(".incoming-*")) == []


def test_make_durable_without_folders_then_each_folder_once(
        tmp_path: Path, fsynced: list[int]) -> None:
    """The bulk writer's split: bytes per photo, then the folders of several photos,
    each folder flushed once however many of the photos are in it."""
    store = ImageStore(tmp_path / "images")
    synced = fsynced
    shas = [store.put_stream([photo((30 + n, 20))], durable=False) for n in range(3)]
    for sha in shas:
        store.make_durable([sha], folders=False)
    files = [store.path_for(sha).stat().st_ino for sha in shas]
    assert synced == files  # the bytes only
    synced.clear()
    store.flush_folders([*shas, shas[0]])
    folders = {store.path_for(sha).parent.stat().st_ino for sha in shas}
    if os.name != "nt":
        assert sorted(synced) == sorted(folders)  # each once
    else:  # folders cannot be flushed on Windows
        assert synced == []


def test_make_durable_of_a_missing_photo_is_a_storage_error(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    with pytest.raises(StorageError):
        store.make_durable(["ab" * 32])


def test_a_damaged_leftover_under_the_final_name_is_replaced(tmp_path: Path) -> None:
    """What an OS crash between rename and flush can leave: replaced by the next store."""
    store = ImageStore(tmp_path / "images")
    data = photo()
    sha = hashlib.sha256(data).hexdigest()
    path = store.path_for(sha)
    path.parent.mkdir(parents=True)
    path.write_bytes(data[: len(data) // 2])
    assert store.put_stream([data], durable=False) == sha
    store.make_durable([sha])
    assert store.read_bytes(sha) == data


def test_a_durable_store_of_bytes_already_there_flushes_them(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Another writer may have stored the same bytes without flushing them yet."""
    store = ImageStore(tmp_path / "images")
    data = photo()
    sha = store.put_stream([data], durable=False)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino),
                                                  real_fsync(fd))[1])
    assert store.put_bytes(data) == sha
    assert store.path_for(sha).stat().st_ino in synced


# ---------------------------------------------------------------- through a real portal


def _add_media(store: Any, patient: str, sr: str, data: bytes, *, size: bool = True,
               hash_: bool = True, ctype: str = "image/jpeg") -> str:
    binary = store.put_binary(data, ctype)
    content: dict[str, Any] = {"contentType": ctype, "url": f"Binary/{binary['id']}"}
    if size:
        content["size"] = len(data)
    if hash_:
        content["hash"] = sha1_b64(data)
    media = store.create({
        "resourceType": "Media", "status": "completed",
        "subject": {"reference": f"Patient/{patient}"},
        "basedOn": [{"reference": f"ServiceRequest/{sr}"}], "content": content,
    })
    return str(media["id"])


@pytest.fixture
def probe_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the full structure checks (the real function still runs)."""
    calls: list[int] = []
    real = probe.probe_bytes

    def counted(data: bytes) -> probe.ImageFacts:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(probe, "probe_bytes", counted)
    return calls


def test_verified_jpegs_are_not_read_back_and_get_the_right_size(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        probe_calls: list[int]) -> None:
    ids = add_portal_case(empty_portal.store, n=1)
    upright = photo((300, 200), orientation=6)
    _add_media(empty_portal.store, ids["patient"], ids["service_request"], upright)
    summary = run_sync(ws, make_client(empty_portal.base_url))
    assert summary.completed and summary.photos_downloaded == 1
    assert probe_calls == []
    with ws.db.session() as s:
        (p,) = s.scalars(select(Photo))
        assert (p.content_type, p.width, p.height) == ("image/jpeg", 200, 300)
        assert p.sha256 == hashlib.sha256(upright).hexdigest()


def test_unverified_or_unusual_photos_get_the_full_check(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        probe_calls: list[int]) -> None:
    ids = add_portal_case(empty_portal.store, n=2)
    pat, sr = ids["patient"], ids["service_request"]
    no_checks = photo((100, 50))
    cut_short = photo((400, 300), quality=95)
    cut_short = cut_short[: len(cut_short) * 2 // 3]  # the portal itself holds a cut file
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 200, 10)).save(buf, "PNG")
    png = buf.getvalue()
    buf = io.BytesIO()
    Image.new("P", (8, 8)).save(buf, "GIF")
    gif = buf.getvalue()
    _add_media(empty_portal.store, pat, sr, no_checks, size=False, hash_=False)
    _add_media(empty_portal.store, pat, sr, cut_short, size=False, hash_=False)
    _add_media(empty_portal.store, pat, sr, png, ctype="image/png")
    _add_media(empty_portal.store, pat, sr, gif, ctype="image/gif")
    summary = run_sync(ws, make_client(empty_portal.base_url))
    assert sorted(probe_calls) == sorted([len(no_checks), len(cut_short), len(png), len(gif)])
    assert summary.photos_downloaded == 2
    errors = " ".join(summary.errors)
    assert "not a usable image" in errors and "truncated" in errors and "GIF" in errors
    with ws.db.session() as s:
        got = {(p.content_type, p.width, p.height) for p in s.scalars(select(Photo))}
        case = s.scalars(select(Case)).one()
        assert case.portal_sync_error  # fetched again at the next sync
    assert got == {("image/jpeg", 100, 50), ("image/png", 30, 20)}


def test_every_photo_is_on_disk_before_its_case_commits(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        monkeypatch: pytest.MonkeyPatch, fsynced: list[int]) -> None:
    """The bytes of each photo flushed as it arrived, its folder entry with the case's
    other photos: either way, before the transaction that refers to it."""
    for n in range(3):
        add_portal_case(empty_portal.store, n=n, photos=3)
    flushed = fsynced
    real_apply = pull.apply_case
    checked: list[str] = []

    def apply_case(s: Any, actor: Any, f: pull.FetchedCase) -> Any:
        for p in f.photos:
            assert p.sha256 is not None
            path = ws.images.path_for(p.sha256)
            assert path.stat().st_ino in flushed, "the photo's bytes were not flushed"
            if os.name != "nt":  # folders cannot be flushed on Windows
                assert path.parent.stat().st_ino in flushed, "its folder was not flushed"
            checked.append(p.sha256)
        return real_apply(s, actor, f)

    monkeypatch.setattr(pull, "apply_case", apply_case)
    summary = run_sync(ws, make_client(empty_portal.base_url))
    assert summary.completed and len(checked) == summary.photos_downloaded == 9


# ---------------------------------------------------------------- the download itself


class _Recording(ImageStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.pieces: list[int] = []

    def put_stream(self, chunks: Iterable[bytes], expected_sha256: str | None = None, *,
                   durable: bool = True) -> str:
        def seen() -> Iterable[bytes]:
            for c in chunks:
                self.pieces.append(len(c))
                yield c

        return super().put_stream(seen(), expected_sha256, durable=durable)


def test_raw_photos_are_read_in_large_pieces_and_keep_their_head(
        empty_portal: ReferencePortal, tmp_path: Path, make_client: ClientFactory) -> None:
    data = os.urandom(3 * PHOTO_CHUNK + 12345)
    binary = empty_portal.store.put_binary(data, "image/jpeg")
    store = _Recording(tmp_path / "images")
    att = AttachmentRef(url=f"Binary/{binary['id']}", content_type="image/jpeg",
                        size=len(data), sha1=sha1_b64(data))
    got = make_client(empty_portal.base_url).download(att, store, durable=False)
    assert got.size == len(data) and got.verified
    assert got.head == data[:HEAD_BYTES]
    assert store.read_bytes(got.sha256) == data
    assert max(store.pieces) > 256 * 1024  # not the JSON path's small pieces
    assert max(store.pieces) <= PHOTO_CHUNK


def test_inline_and_unverified_downloads_say_so(empty_portal: ReferencePortal, tmp_path: Path,
                                                make_client: ClientFactory) -> None:
    data = photo((20, 10))
    store = ImageStore(tmp_path / "images")
    client = make_client(empty_portal.base_url)
    inline = client.download(AttachmentRef(data=base64.b64encode(data).decode(), size=len(data)),
                             store)
    assert inline.verified and inline.head == data
    binary = empty_portal.store.put_binary(data, "image/jpeg")
    plain = client.download(AttachmentRef(url=f"Binary/{binary['id']}"), store)
    assert not plain.verified and plain.head == data and plain.sha256 == inline.sha256


# ---------------------------------------------------------------- pages overlap


def test_the_next_page_starts_while_a_slow_case_of_the_last_finishes_cursor_waits(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Page 2's cases are fetched and committed while a page-1 case is still downloading;
    the cursor does not move until that case is committed too."""
    import threading

    from derm_workstation.sync import state
    from tests.sync.proxy import Exchange, FaultProxy, Reply

    monkeypatch.setattr(pull, "PAGE_SIZE", 5)
    slow: dict[str, str] = {}
    for n in range(8):
        ids = add_portal_case(empty_portal.store, n=n, photos=1 if n == 2 else 0)
        if n == 2:
            slow = ids
    slow_media = empty_portal.store.read("Media", slow["media0"])
    slow_path = "/fhir/" + slow_media.resource(empty_portal.base_url)["content"]["url"]
    release = threading.Event()
    held: list[bool] = []
    seen_while_blocked: list[tuple[int, str | None]] = []

    def hold(ex: Exchange) -> Reply | None:
        if ex.path == slow_path:
            held.append(release.wait(20))
        return None

    def progress(done: int, total: int | None) -> None:
        if done == 7 and not release.is_set():  # everything but the slow case
            with ws.db.session() as s:
                seen_while_blocked.append((done, state.get(s, state.CURSOR_OPEN)))
            release.set()

    with FaultProxy(empty_portal.origin) as proxy:
        proxy.before = hold
        summary = run_sync(ws, make_client(proxy.base_url, read_timeout=30.0), concurrency=2,
                           progress=progress)
    assert summary.completed, summary.errors
    assert summary.cases_new == 8 and summary.photos_downloaded == 1
    # 7 cases (the 3 of page 2 among them) were in while the page-1 photo was held, and
    # the cursor had not moved past the uncommitted case
    assert held == [True]
    assert seen_while_blocked == [(7, None)]
    with ws.db.session() as s:
        assert state.get(s, state.CURSOR_OPEN) is not None


# ---------------------------------------------------------------- batched commits


def _fetched(n: int) -> pull.FetchedCase:
    from derm_workstation.portal.mapping import patient_from_fhir, task_from_fhir

    task = task_from_fhir({
        "resourceType": "Task", "id": f"t{n}", "status": "requested", "intent": "order",
        "meta": {"versionId": "1", "lastUpdated": f"2026-11-20T10:00:0{n}Z"},
        "identifier": [{"value": f"B-{n}"}], "for": {"reference": f"Patient/p{n % 2}"},
        "focus": {"reference": f"ServiceRequest/s{n}"}})
    assert task is not None
    patient = patient_from_fhir({"resourceType": "Patient", "id": f"p{n % 2}",
                                 "name": [{"family": f"F{n % 2}", "given": ["G"]}]})
    return pull.FetchedCase(task=task, patient=patient)


def _puller(ws: Workspace, empty_portal: ReferencePortal,
            make_client: ClientFactory) -> pull.Puller:
    from derm_workstation.sync.summary import SyncSummary

    return pull.Puller(ws, make_client(empty_portal.base_url), SyncSummary())


def test_cases_ready_together_commit_in_one_transaction(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory) -> None:
    from sqlalchemy import event

    puller = _puller(ws, empty_portal, make_client)
    commits: list[int] = []
    engine = ws.db.engine
    listener = lambda conn: commits.append(1)  # noqa: E731
    event.listen(engine, "commit", listener)
    try:
        ids = puller._commit_all([(_fetched(n), n == 2) for n in range(4)])
    finally:
        event.remove(engine, "commit", listener)
    assert len(commits) == 1 and len(set(ids)) == 4
    with ws.db.session() as s:
        cases = {c.id: c for c in s.scalars(select(Case))}
        assert set(cases) == set(ids)
        assert [cases[i].portal_sync_error for i in ids] == [None, None, pull.HISTORY_PENDING,
                                                              None]
        assert len({c.patient_id for c in cases.values()}) == 2  # shared patients found
    assert puller.summary.cases_new == 4


def test_a_batch_hit_by_a_concurrent_insert_is_committed_one_by_one(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another sync (the GUI and the CLI at once) storing a case mid-batch: nothing is lost,
    nothing doubled."""
    from sqlalchemy.exc import IntegrityError

    puller = _puller(ws, empty_portal, make_client)
    real_apply = pull.apply_case
    calls = [0]

    def apply_case(s: Any, actor: Any, f: pull.FetchedCase) -> Any:
        calls[0] += 1
        if calls[0] == 2:  # the second case of the batch loses the race once
            raise IntegrityError("INSERT INTO cases", {}, Exception("UNIQUE constraint"))
        return real_apply(s, actor, f)

    monkeypatch.setattr(pull, "apply_case", apply_case)
    ids = puller._commit_all([(_fetched(n), False) for n in range(3)])
    assert calls[0] == 5  # 2 in the rolled-back batch, then 3 one by one
    with ws.db.session() as s:
        assert sorted(c.id for c in s.scalars(select(Case))) == sorted(ids)
        assert sorted(c.portal_task_id for c in s.scalars(select(Case))) == ["t0", "t1", "t2"]
    assert puller.summary.cases_new == 3
