"""Reference portal: photos as Binary, raw bytes or FHIR JSON by the Accept header."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from urllib.parse import urljoin

import pytest
import requests
from PIL import Image

from derm_workstation.demo.dataset import build_demo_dataset
from derm_workstation.portal.reference.server import ReferencePortal
from tests.portal.test_reference_support import (
    FHIR_JSON,
    FIXED_NOW,
    SEED_CASES,
    search_all,
    seeded_db,
)


@pytest.fixture(scope="module")
def seeded_portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferencePortal]:
    """The session's 40-case demo portal, served for this module; read only."""
    with ReferencePortal.start(seeded_db(tmp_path_factory)) as p:
        yield p


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 120, 90)).save(buf, format="PNG")
    return buf.getvalue()


def test_every_seeded_photo_downloads_with_matching_size_and_hash(
        seeded_portal: ReferencePortal) -> None:
    base = seeded_portal.base_url
    with requests.Session() as http:
        media = search_all(http, f"{base}/Media", {"_count": "100"})
        ds = build_demo_dataset(seed=1729, n_cases=SEED_CASES, now=FIXED_NOW)
        assert len(media) == sum(len(c.photos) for c in ds.cases)
        urls = [m["content"]["url"] for m in media]
        assert any(u.startswith("Binary/") for u in urls)  # relative…
        assert any(u.startswith(base + "/Binary/") for u in urls)  # …and absolute
        for m in media:
            content = m["content"]
            url = urljoin(base + "/", content["url"])
            r = http.get(url, headers={"Accept": content["contentType"]}, timeout=30)
            assert r.status_code == 200
            assert r.headers["Content-Type"] == "image/jpeg"
            assert r.headers["ETag"] == 'W/"1"'
            assert len(r.content) == content["size"] == int(r.headers["Content-Length"])
            digest = base64.b64encode(hashlib.sha1(r.content).digest()).decode()
            assert digest == content["hash"]
            with Image.open(io.BytesIO(r.content)) as im:
                assert im.format == "JPEG" and im.width >= 600


@pytest.mark.parametrize(("accept", "as_json"), [
    ("image/jpeg", False),
    ("*/*", False),
    (None, False),
    ("image/*", False),
    ("image/png", False),  # another image type: still the bytes, with their real type
    (FHIR_JSON, True),
    ("application/json", True),
    ("application/fhir+json;q=0.5, image/jpeg", False),
    ("image/jpeg;q=0.1, application/fhir+json", True),
])
def test_binary_raw_or_json_by_accept(seeded_portal: ReferencePortal, accept: str | None,
                                      as_json: bool) -> None:
    base = seeded_portal.base_url
    headers = {"Accept": accept} if accept else {}
    with requests.Session() as http:
        binary = search_all(http, f"{base}/Binary", {"_count": "1"})[0]
        raw = seeded_portal.store.binary(binary["id"])
        if accept is None:
            http.headers.pop("Accept", None)
        r = http.get(f"{base}/Binary/{binary['id']}", headers=headers, timeout=30)
    assert r.status_code == 200
    if as_json:
        assert r.headers["Content-Type"].startswith(FHIR_JSON)
        body = r.json()
        assert body["resourceType"] == "Binary" and body["contentType"] == "image/jpeg"
        assert base64.b64decode(body["data"]) == raw
    else:
        assert r.headers["Content-Type"] == "image/jpeg"
        assert r.content == raw


def test_format_parameter_asks_for_json(seeded_portal: ReferencePortal) -> None:
    base = seeded_portal.base_url
    with requests.Session() as http:
        bid = search_all(http, f"{base}/Binary", {"_count": "1"})[0]["id"]
        r = http.get(f"{base}/Binary/{bid}", params={"_format": "json"},
                     headers={"Accept": "*/*"}, timeout=30)
    assert r.json()["resourceType"] == "Binary"


def test_post_binary_raw_and_as_json(portal: ReferencePortal, http: requests.Session) -> None:
    png = _png()
    r = http.post(f"{portal.base_url}/Binary", data=png,
                  headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["resourceType"] == "Binary" and created["contentType"] == "image/png"
    assert "data" not in created  # the bytes are not echoed back
    assert r.headers["Location"] == f"{portal.base_url}/Binary/{created['id']}/_history/1"
    back = http.get(f"{portal.base_url}/Binary/{created['id']}",
                    headers={"Accept": "image/png"}, timeout=30)
    assert back.content == png and back.headers["Content-Type"] == "image/png"
    as_json = {"resourceType": "Binary", "contentType": "image/png",
               "data": base64.b64encode(png).decode()}
    r = http.post(f"{portal.base_url}/Binary", data=json.dumps(as_json),
                  headers={"Content-Type": FHIR_JSON}, timeout=30)
    assert r.status_code == 201
    assert portal.store.binary(r.json()["id"]) == png
    # raw bytes with no Content-Type, or broken base64, are refused
    r = http.post(f"{portal.base_url}/Binary", data=png, timeout=30)
    assert r.status_code == 400
    r = http.post(f"{portal.base_url}/Binary", data=json.dumps(dict(as_json, data="%%%")),
                  headers={"Content-Type": FHIR_JSON}, timeout=30)
    assert r.status_code == 400
    assert portal.store.count("Binary") == 2


def test_chunked_upload_is_read_whole(portal: ReferencePortal, http: requests.Session) -> None:
    png = _png()
    r = http.post(f"{portal.base_url}/Binary", data=iter([png[:10], png[10:]]),
                  headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 201
    assert portal.store.binary(r.json()["id"]) == png


def test_deleted_binary_is_gone(portal: ReferencePortal, http: requests.Session) -> None:
    b = portal.store.put_binary(_png(), "image/png")
    portal.store.delete("Binary", b["id"])
    r = http.get(f"{portal.base_url}/Binary/{b['id']}", headers={"Accept": "image/png"},
                 timeout=30)
    assert r.status_code == 410 and r.json()["resourceType"] == "OperationOutcome"
