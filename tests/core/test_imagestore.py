"""Content-addressed photo storage: layout, verification, atomic writes, crash recovery."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derm_workstation.core.errors import ImageCorruptError, InputError, StorageError
from derm_workstation.core.imagestore import ImageStore, sha256_bytes
from derm_workstation.core.workspace import Workspace

from .helpers import REPO_ROOT, files_under, png_bytes

DATA = b"\x89PNG fake photo bytes " * 1000


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def _temp_files(store: ImageStore) -> list[Path]:
    return sorted(store.root.rglob(".incoming-*")) if store.root.exists() else []


def test_put_and_read_round_trip(store: ImageStore) -> None:
    sha = store.put_bytes(DATA)
    assert sha == hashlib.sha256(DATA).hexdigest()
    assert store.read_bytes(sha) == DATA
    assert store.open_verified(sha).read() == DATA
    assert store.contains(sha)
    assert store.verify(sha)
    assert _temp_files(store) == []


def test_layout_is_two_levels_of_hash_prefix(store: ImageStore) -> None:
    sha = store.put_bytes(DATA)
    expected = store.root / sha[:2] / sha[2:4] / sha
    assert store.path_for(sha) == expected
    assert expected.is_file()
    assert expected.read_bytes() == DATA
    assert files_under(store.root) == [Path(sha[:2]) / sha[2:4] / sha]


def test_put_is_idempotent_and_does_not_rewrite_the_file(store: ImageStore) -> None:
    sha1 = store.put_bytes(DATA)
    inode = store.path_for(sha1).stat().st_ino
    sha2 = store.put_bytes(DATA)
    sha3 = store.put_stream([DATA[:10], DATA[10:5000], DATA[5000:]])
    assert sha1 == sha2 == sha3
    assert store.path_for(sha1).stat().st_ino == inode  # same file, not replaced
    assert files_under(store.root) == [Path(sha1[:2]) / sha1[2:4] / sha1]


def test_distinct_photos_are_stored_separately(store: ImageStore) -> None:
    a = store.put_bytes(png_bytes(color=(1, 2, 3)))
    b = store.put_bytes(png_bytes(color=(3, 2, 1)))
    assert a != b
    assert len(files_under(store.root)) == 2


def test_put_file_streams_a_file_from_disk(store: ImageStore, tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)  # more than one read chunk
    src = tmp_path / "photo.jpg"
    src.write_bytes(big)
    sha = store.put_file(src)
    assert sha == sha256_bytes(big)
    assert store.read_bytes(sha) == big


def test_expected_checksum_accepts_upper_case(store: ImageStore) -> None:
    sha = store.put_stream([DATA], expected_sha256=sha256_bytes(DATA).upper())
    assert sha == sha256_bytes(DATA)


def test_checksum_mismatch_stores_nothing(store: ImageStore) -> None:
    wrong = sha256_bytes(b"something else")
    with pytest.raises(ImageCorruptError, match="did not match") as err:
        store.put_stream([DATA[:100], DATA[100:]], expected_sha256=wrong)
    assert err.value.sha256 == sha256_bytes(DATA)  # the checksum actually received
    assert not store.contains(sha256_bytes(DATA))
    assert files_under(store.root) == []


def test_a_failing_source_leaves_no_temp_file(store: ImageStore) -> None:
    def chunks() -> Iterator[bytes]:
        yield DATA
        raise RuntimeError("decoder gave up")

    with pytest.raises(RuntimeError, match="decoder gave up"):
        store.put_stream(chunks())
    assert files_under(store.root) == []


def test_a_network_error_from_the_source_is_not_blamed_on_the_photo_store(
    store: ImageStore,
) -> None:
    def chunks() -> Iterator[bytes]:
        yield DATA
        raise ConnectionError("portal went away")

    raised: Exception | None = None
    try:
        store.put_stream(chunks())
    except Exception as exc:
        raised = exc
    assert files_under(store.root) == []
    assert type(raised) is ConnectionError, f"reported as {raised!r}"


def test_an_unwritable_destination_is_a_storage_error_and_leaves_no_temp(
    store: ImageStore,
) -> None:
    sha = sha256_bytes(DATA)
    store.root.mkdir(parents=True)
    (store.root / sha[:2]).write_bytes(b"a file where the shard folder should be")
    with pytest.raises(StorageError, match="Cannot write to the photo store"):
        store.put_bytes(DATA)
    assert _temp_files(store) == []
    assert not store.contains(sha)


def test_a_flipped_byte_on_disk_is_detected(store: ImageStore) -> None:
    sha = store.put_bytes(DATA)
    path = store.path_for(sha)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))

    with pytest.raises(ImageCorruptError, match="damaged") as err:
        store.read_bytes(sha)
    assert err.value.sha256 == sha
    assert sha[:12] in str(err.value)
    with pytest.raises(ImageCorruptError, match="damaged"):
        store.open_verified(sha)
    assert not store.verify(sha)


def test_a_truncated_file_is_detected(store: ImageStore) -> None:
    sha = store.put_bytes(DATA)
    path = store.path_for(sha)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ImageCorruptError, match="damaged"):
        store.read_bytes(sha)


def test_a_missing_file_is_reported(store: ImageStore) -> None:
    sha = store.put_bytes(DATA)
    store.path_for(sha).unlink()
    with pytest.raises(ImageCorruptError, match="missing") as err:
        store.read_bytes(sha)
    assert err.value.sha256 == sha
    assert not store.contains(sha)
    assert not store.verify(sha)


def test_putting_the_original_again_repairs_a_damaged_file(store: ImageStore) -> None:
    sha = store.put_bytes(DATA)
    store.path_for(sha).write_bytes(b"garbage")
    assert store.put_bytes(DATA) == sha
    assert store.read_bytes(sha) == DATA
    assert _temp_files(store) == []


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "A" * 64,  # upper case is not the canonical form
        "g" * 64,
        "0" * 63,
        "0" * 65,
        "../../etc/passwd".ljust(64, "0"),
    ],
)
def test_malformed_photo_ids_are_input_errors(store: ImageStore, bad: str) -> None:
    with pytest.raises(InputError, match="not a SHA-256"):
        store.path_for(bad)
    with pytest.raises(InputError):
        store.read_bytes(bad)
    with pytest.raises(InputError):
        store.contains(bad)


def test_a_photo_id_with_a_trailing_newline_is_rejected(store: ImageStore) -> None:
    try:
        path: Path | None = store.path_for("0" * 64 + "\n")
    except InputError:
        path = None
    assert path is None, f"accepted as {path!r}"


def test_remove_stale_temp_files_only_touches_temp_files(store: ImageStore) -> None:
    assert ImageStore(store.root / "never-created").remove_stale_temp_files() == 0
    sha = store.put_bytes(DATA)
    (store.root / ".incoming-abc123").write_bytes(b"half a photo")
    (store.root / ".incoming-def456").write_bytes(b"")
    two_hours_ago = time.time() - 7200
    for name in (".incoming-abc123", ".incoming-def456"):
        os.utime(store.root / name, (two_hours_ago, two_hours_ago))
    # a fresh temp file may belong to another process writing right now: kept
    (store.root / ".incoming-fresh").write_bytes(b"being written")
    (store.root / "notes.txt").write_text("keep me")
    assert store.remove_stale_temp_files() == 2
    assert [p.name for p in _temp_files(store)] == [".incoming-fresh"]
    assert store.remove_stale_temp_files(older_than_s=0) == 1
    assert _temp_files(store) == []
    assert (store.root / "notes.txt").exists()
    assert store.read_bytes(sha) == DATA


def test_workspace_open_clears_temp_files_left_by_a_crash(tmp_path: Path) -> None:
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    (images / ".incoming-crashed").write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(images / ".incoming-crashed", (old, old))
    ws = Workspace.open(tmp_path / "data")
    try:
        assert not (images / ".incoming-crashed").exists()
        assert ws.images.root == images
    finally:
        ws.close()


@settings(max_examples=30, deadline=None)
@given(chunks=st.lists(st.binary(max_size=2048), max_size=6))
def test_any_chunking_round_trips(chunks: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = ImageStore(Path(d))
        joined = b"".join(chunks)
        sha = store.put_stream(chunks)
        assert sha == sha256_bytes(joined)
        assert store.read_bytes(sha) == joined
        assert [p.name for p in files_under(store.root)] == [sha]


# ---------------------------------------------------------------- crash mid-write

CHUNK = 256 * 1024  # larger than Python's write buffer, so each chunk reaches the disk

_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from derm_workstation.core.imagestore import ImageStore

    def slow_chunks():
        for i in range(400):
            yield bytes([i % 251]) * {chunk}
            time.sleep(0.05)

    ImageStore(Path(sys.argv[1])).put_stream(slow_chunks())
    print("finished")  # never reached: the test kills us first
    """
).format(chunk=CHUNK)


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX only")
def test_a_writer_killed_mid_write_leaves_only_a_temp_file(tmp_path: Path) -> None:
    root = tmp_path / "images"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            temps = list(root.glob(".incoming-*")) if root.exists() else []
            if temps and temps[0].stat().st_size >= CHUNK:
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.01)
        else:
            pytest.fail("the writer never started writing")
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == -signal.SIGKILL
    assert b"finished" not in out
    left = files_under(root)
    assert len(left) == 1, left
    assert left[0].name.startswith(".incoming-")
    assert left[0].parent == Path(".")  # nothing under any ab/cd shard folder
    assert not any(p.is_dir() for p in root.iterdir())

    full = hashlib.sha256()
    for i in range(400):
        full.update(bytes([i % 251]) * CHUNK)
    store = ImageStore(root)
    assert not store.contains(full.hexdigest())

    assert store.remove_stale_temp_files(older_than_s=0) == 1
    assert files_under(root) == []
