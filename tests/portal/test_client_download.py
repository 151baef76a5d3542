"""Photo downloads: streamed to the image store, verified by size and SHA-1, flat memory."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derm_workstation.core.imagestore import ImageStore
from derm_workstation.portal.binary_json import binary_json_chunks
from derm_workstation.portal.client import AttachmentRef
from derm_workstation.portal.errors import DownloadError, PortalDataError
from tests.builders import jpeg
from tests.portal.conftest import make_client
from tests.portal.scripted import Action, Scripted, json_action

PHOTO = jpeg((150, 70, 60), (640, 480))


def sha1_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def att(url: str, data: bytes = PHOTO, **kw: object) -> AttachmentRef:
    fields = {"url": url, "content_type": "image/jpeg", "size": len(data),
              "sha1": sha1_b64(data)}
    fields.update(kw)
    return AttachmentRef(**fields)  # type: ignore[arg-type]


def test_raw_bytes_are_verified_and_stored(server: Scripted, store: ImageStore) -> None:
    server.add(Action(200, PHOTO, {"Content-Type": "image/jpeg"}))
    with make_client(server.base_url) as c:
        got = c.download(att("Binary/7"), store)
    assert got.sha256 == hashlib.sha256(PHOTO).hexdigest() and got.size == len(PHOTO)
    assert store.read_bytes(got.sha256) == PHOTO
    assert server.seen[0].path == "/fhir/Binary/7"
    assert server.seen[0].headers["Accept"] == "image/jpeg"


def test_fhir_binary_json_answer_is_decoded(server: Scripted, store: ImageStore) -> None:
    binary = {"resourceType": "Binary", "id": "7", "meta": {"versionId": "1"},
              "contentType": "image/jpeg", "data": base64.b64encode(PHOTO).decode()}
    server.add(json_action(200, binary))
    with make_client(server.base_url) as c:
        got = c.download(att("Binary/7"), store)
    assert store.read_bytes(got.sha256) == PHOTO


def test_hex_sha1_is_tolerated(server: Scripted, store: ImageStore) -> None:
    server.add(Action(200, PHOTO, {"Content-Type": "image/jpeg"}))
    with make_client(server.base_url) as c:
        c.download(att("Binary/7", sha1=hashlib.sha1(PHOTO).hexdigest()), store)


@pytest.mark.parametrize("bad", ["hash", "size_smaller", "size_larger"])
def test_mismatch_is_a_failed_download_and_nothing_is_stored(server: Scripted,
                                                             store: ImageStore,
                                                             bad: str) -> None:
    server.default = lambda seen: Action(200, PHOTO, {"Content-Type": "image/jpeg"})
    ref = {
        "hash": att("Binary/7", sha1=sha1_b64(b"other bytes")),
        "size_smaller": att("Binary/7", size=len(PHOTO) - 10),
        "size_larger": att("Binary/7", size=len(PHOTO) + 10),
    }[bad]
    with make_client(server.base_url) as c, pytest.raises(DownloadError) as err:
        c.download(ref, store)
    assert "not stored" in err.value.message
    assert stored_files(store.root) == []
    assert len(server.seen) == 2  # tried again once: a lying network may fix itself


def test_mismatch_inside_binary_json_stores_nothing(server: Scripted, store: ImageStore) -> None:
    binary = {"resourceType": "Binary", "contentType": "image/jpeg",
              "data": base64.b64encode(PHOTO[:-100]).decode()}
    server.default = lambda seen: json_action(200, binary)
    with make_client(server.base_url) as c, pytest.raises(DownloadError):
        c.download(att("Binary/7"), store)
    assert stored_files(store.root) == []


def test_truncated_download_is_retried_then_stored(server: Scripted, store: ImageStore) -> None:
    server.add(Action(200, PHOTO, {"Content-Type": "image/jpeg"}, cut_at=len(PHOTO) // 3),
               Action(200, PHOTO, {"Content-Type": "image/jpeg"}))
    with make_client(server.base_url) as c:
        got = c.download(att("Binary/7"), store)
    assert store.verify(got.sha256)
    assert len(stored_files(store.root)) == 1  # no half-written leftovers


def test_always_truncated_download_fails_cleanly(server: Scripted, store: ImageStore) -> None:
    server.default = lambda seen: Action(200, PHOTO, {"Content-Type": "image/jpeg"},
                                         cut_at=1000)
    with make_client(server.base_url) as c, pytest.raises(Exception) as err:
        c.download(att("Binary/7"), store)
    assert type(err.value).__name__ in ("PortalUnavailableError", "DownloadError")
    assert stored_files(store.root) == []


def test_truncated_without_size_still_fails_on_the_hash(server: Scripted,
                                                        store: ImageStore) -> None:
    server.default = lambda seen: Action(200, PHOTO[:5000], {"Content-Type": "image/jpeg"})
    with make_client(server.base_url) as c, pytest.raises(DownloadError):
        c.download(att("Binary/7", size=None), store)
    assert stored_files(store.root) == []


def test_content_length_disagreeing_with_the_size_is_refused_before_reading(
        server: Scripted, store: ImageStore) -> None:
    server.default = lambda seen: Action(200, PHOTO + b"extra", {"Content-Type": "image/jpeg"})
    with make_client(server.base_url) as c, pytest.raises(DownloadError) as err:
        c.download(att("Binary/7"), store)
    assert "bytes but the case says" in err.value.message


def test_inline_data_is_verified(server: Scripted, store: ImageStore) -> None:
    ref = AttachmentRef(data=base64.b64encode(PHOTO).decode(), size=len(PHOTO),
                        sha1=sha1_b64(PHOTO))
    with make_client(server.base_url) as c:
        got = c.download(ref, store)
        assert store.read_bytes(got.sha256) == PHOTO
        with pytest.raises(DownloadError):
            c.download(AttachmentRef(data=ref.data, sha1=sha1_b64(b"x")), store)
    assert server.seen == []


def test_an_operation_outcome_instead_of_the_photo_is_a_data_error(server: Scripted,
                                                                   store: ImageStore) -> None:
    server.default = lambda seen: json_action(200, {"resourceType": "OperationOutcome"})
    with make_client(server.base_url) as c, pytest.raises(PortalDataError):
        c.download(att("Binary/7"), store)
    assert stored_files(store.root) == []


@pytest.mark.parametrize("as_json", [False, True], ids=["raw", "binary-json"])
def test_memory_stays_flat_for_a_large_photo(server: Scripted, store: ImageStore,
                                             as_json: bool) -> None:
    big = os.urandom(24 * 1024 * 1024)
    if as_json:
        body = json.dumps({"resourceType": "Binary", "contentType": "image/jpeg",
                           "data": base64.b64encode(big).decode()}).encode()
        action = Action(200, body, {"Content-Type": "application/fhir+json"}, chunk=1 << 20)
    else:
        action = Action(200, big, {"Content-Type": "image/jpeg"}, chunk=1 << 20)
    server.add(action)
    ref = att("Binary/big", data=big)
    del big
    with make_client(server.base_url) as c:
        tracemalloc.start()
        try:
            got = c.download(ref, store)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert got.size == 24 * 1024 * 1024
    assert peak < 6 * 1024 * 1024, peak  # a few chunks, not the 24 MB photo


# ---------------------------------------------------------------- the Binary JSON decoder


def _decode(text: bytes, cuts: list[int]) -> bytes:
    chunks, last = [], 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(text))):
        chunks.append(text[last:cut])
        last = cut
    chunks.append(text[last:])
    return b"".join(binary_json_chunks(iter(chunks)))


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(min_size=1, max_size=300), cuts=st.lists(st.integers(0, 600)),
       escaped=st.booleans(), wrap=st.booleans())
def test_binary_json_decodes_any_chunking(payload: bytes, cuts: list[int], escaped: bool,
                                          wrap: bool) -> None:
    b64 = base64.b64encode(payload).decode()
    if wrap:
        b64 = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    text = json.dumps({"resourceType": "Binary", "meta": {"tag": [{"code": "a\"b"}]},
                       "contentType": "image/png", "securityContext": None, "x": [1, 2.5e3],
                       "data": b64})
    if escaped:
        text = text.replace("/", "\\/").replace('"Binary"', '"\\u0042inary"')
    assert _decode(text.encode(), cuts) == payload


@pytest.mark.parametrize("text", [
    b'{"resourceType": "Binary", "data": "QUJD',  # cut short
    b'{"resourceType": "Binary", "data": "QUJD!!=="}',  # not base64
    b'{"resourceType": "Binary", "data": "QUJDRA"}',  # base64 cut short
    b'{"resourceType": "Patient", "data": "QUJD"}',  # not a Binary
    b'{"resourceType": "Binary", "contentType": "image/png"}',  # no data
    b'{"resourceType": "Binary", "data": "QUJD"} trailing',
    b'[1, 2]',
    b'{"resourceType": "Binary", "data": "QUJD", "data": "QUJD"}',
])
def test_binary_json_rejects_bad_input(text: bytes) -> None:
    with pytest.raises(PortalDataError):
        b"".join(binary_json_chunks(iter([text])))


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x.jpg", "file:///etc/hostname",
                                 "http://[not-an-address/x.jpg", "data:image/jpeg;base64,AAAA"])
def test_unusable_attachment_addresses_are_data_errors(server: Scripted, store: ImageStore,
                                                       url: str) -> None:
    with make_client(server.base_url) as c, pytest.raises(PortalDataError):
        c.download(AttachmentRef(url=url), store)
    assert stored_files(store.root) == [] and server.seen == []
