"""The FHIR client over real loopback HTTP: retries, backoff, errors, auth, credentials."""

from __future__ import annotations

import json
import time

import pytest

from derm_workstation.portal.auth import StaticToken
from derm_workstation.portal.client import RetryPolicy, outcome_text, parse_location
from derm_workstation.portal.errors import (
    PortalAuthError,
    PortalConflictError,
    PortalDataError,
    PortalRequestError,
    PortalUnavailableError,
)
from tests.portal.conftest import make_client
from tests.portal.scripted import Action, Scripted, json_action, outcome

TASK = {"resourceType": "Task", "id": "1", "meta": {"versionId": "3"}, "status": "requested",
        "intent": "order"}


def bundle(resources: list[dict], next_url: str | None = None) -> dict:
    b = {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
         "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
         "link": [{"relation": "self", "url": "x"}]}
    if next_url:
        b["link"].append({"relation": "next", "url": next_url})
    return b


# ---------------------------------------------------------------- retry and backoff


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_server_errors_are_retried_then_succeed(server: Scripted, status: int) -> None:
    server.add(outcome(status, "try later"), outcome(status, "try later"),
               json_action(200, TASK))
    with make_client(server.base_url) as c:
        assert c.read("Task", "1")["id"] == "1"
        assert c.stats.requests == 3
    assert [s.path for s in server.seen] == ["/fhir/Task/1"] * 3


def test_retry_after_is_honoured_for_429_and_503(server: Scripted) -> None:
    server.add(outcome(429, "slow down", {"Retry-After": "1"}),
               outcome(503, "maintenance", {"Retry-After": "1"}), json_action(200, TASK))
    with make_client(server.base_url) as c:
        t0 = time.monotonic()
        c.read("Task", "1")
        elapsed = time.monotonic() - t0
    assert elapsed >= 1.9, elapsed  # two waits of one second, not the 10 ms backoff


def test_retry_after_too_long_gives_up_with_the_wait(server: Scripted) -> None:
    server.add(outcome(503, "down for maintenance", {"Retry-After": "3600"}))
    with make_client(server.base_url) as c, pytest.raises(PortalUnavailableError) as err:
        c.read("Task", "1")
    assert err.value.retry_after == 3600
    assert "down for maintenance" in err.value.message
    assert len(server.seen) == 1


def test_bounded_tries_then_a_clear_unavailable_error(server: Scripted) -> None:
    server.default = lambda seen: outcome(500, "database on fire")
    with make_client(server.base_url) as c, pytest.raises(PortalUnavailableError) as err:
        c.read("Task", "1")
    assert len(server.seen) == 4  # FAST.max_tries
    assert "HTTP 500" in err.value.message and "database on fire" in err.value.message


def test_backoff_grows_exponentially_with_jitter() -> None:
    import random

    policy = RetryPolicy(backoff_base=1.0, backoff_max=100.0)
    rng = random.Random(1)
    waits = [policy.backoff(n, rng) for n in range(1, 7)]
    for n, w in enumerate(waits, start=1):
        cap = min(100.0, 2 ** (n - 1))
        assert cap / 2 <= w <= cap
    assert len({round(w, 6) for w in waits}) == len(waits)
    assert RetryPolicy(backoff_base=1, backoff_max=8).backoff(20, rng) <= 8


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_other_4xx_are_not_retried_and_carry_the_operation_outcome(server: Scripted,
                                                                   status: int) -> None:
    server.add(outcome(status, "Task.status is not allowed here"))
    with make_client(server.base_url) as c, pytest.raises(PortalRequestError) as err:
        c.read("Task", "1")
    assert err.value.status == status
    assert err.value.outcome == "Task.status is not allowed here"
    assert "Task.status is not allowed here" in err.value.message
    assert len(server.seen) == 1


def test_412_is_a_conflict(server: Scripted) -> None:
    server.add(outcome(412, "version mismatch"))
    with make_client(server.base_url) as c, pytest.raises(PortalConflictError) as err:
        c.update(dict(TASK), if_match="3")
    assert err.value.status == 412
    assert server.seen[0].method == "PUT"
    assert server.seen[0].headers["If-Match"] == 'W/"3"'
    assert len(server.seen) == 1


def test_connection_dropped_mid_body_is_retried(server: Scripted) -> None:
    body = json.dumps(bundle([TASK] * 40)).encode()
    server.add(Action(200, body, {"Content-Type": "application/fhir+json"},
                      cut_at=len(body) // 2),
               Action(200, body, {"Content-Type": "application/fhir+json"}))
    with make_client(server.base_url) as c:
        pages = list(c.search_pages("Task", {"status": "requested"}))
    assert len(pages[0].resources) == 40
    assert len(server.seen) == 2


def test_connection_dropped_every_time_is_unavailable(server: Scripted) -> None:
    body = json.dumps(TASK).encode()
    server.default = lambda seen: Action(200, body, cut_at=5)
    with make_client(server.base_url) as c, pytest.raises(PortalUnavailableError) as err:
        c.read("Task", "1")
    assert "cut short" in err.value.message or "stopped answering" in err.value.message
    assert len(server.seen) == 4


def test_stalled_server_times_out_and_is_retried(server: Scripted) -> None:
    server.add(Action(200, json.dumps(TASK).encode(), stall=1.5), json_action(200, TASK))
    with make_client(server.base_url, read_timeout=0.5) as c:
        t0 = time.monotonic()
        assert c.read("Task", "1")["id"] == "1"
        assert time.monotonic() - t0 < 1.4  # the stall was abandoned, not waited out
    assert len(server.seen) == 2


def test_portal_down_is_unavailable_quickly() -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with make_client(f"http://127.0.0.1:{port}/fhir") as c:
        t0 = time.monotonic()
        with pytest.raises(PortalUnavailableError) as err:
            c.read("Task", "1")
        assert time.monotonic() - t0 < 3
    assert "could not be reached" in err.value.message
    assert "connection refused" in err.value.message


def test_malformed_json_is_tried_again_then_reported(server: Scripted) -> None:
    server.default = lambda seen: Action(200, b'{"resourceType": "Task", "id": ',
                                         {"Content-Type": "application/fhir+json"})
    with make_client(server.base_url) as c, pytest.raises(PortalDataError) as err:
        c.read("Task", "1")
    assert "malformed JSON" in err.value.message
    assert len(server.seen) == 2  # data_tries


def test_malformed_json_once_then_good(server: Scripted) -> None:
    server.add(Action(200, b"<html>proxy error</html>", {"Content-Type": "text/html"}),
               json_action(200, TASK))
    with make_client(server.base_url) as c:
        assert c.read("Task", "1")["status"] == "requested"


def test_wrong_resource_type_is_a_data_error(server: Scripted) -> None:
    server.default = lambda seen: json_action(200, {"resourceType": "Patient", "id": "1"})
    with make_client(server.base_url) as c, pytest.raises(PortalDataError) as err:
        c.read("Task", "1")
    assert "Patient where a Task was expected" in err.value.message


def test_json_that_is_not_a_resource_is_a_data_error(server: Scripted) -> None:
    server.default = lambda seen: json_action(200, [1, 2, 3])
    with make_client(server.base_url) as c, pytest.raises(PortalDataError):
        c.read("Task", "1")


# ---------------------------------------------------------------- search and paging


def test_search_follows_next_links_and_ignores_other_types(server: Scripted) -> None:
    server.add(
        json_action(200, {**bundle([TASK, {"resourceType": "Patient", "id": "p"}],
                                   next_url=f"{server.base_url}/Task?_page=2"),
                          "entry": [
                              {"resource": TASK, "search": {"mode": "match"}},
                              {"resource": {"resourceType": "Patient", "id": "p"},
                               "search": {"mode": "include"}},
                              {"resource": {"resourceType": "OperationOutcome"},
                               "search": {"mode": "outcome"}},
                              {"resource": {"resourceType": "Patient", "id": "q"}},
                          ]}),
        json_action(200, bundle([{**TASK, "id": "2"}], next_url="Task?_page=3")),
        json_action(200, bundle([{**TASK, "id": "3"}])),
    )
    with make_client(server.base_url) as c:
        pages = list(c.search_pages("Task", {"status": "requested", "_count": "50"}))
    assert [[r["id"] for r in p.resources] for p in pages] == [["1"], ["2"], ["3"]]
    assert pages[0].skipped == 1  # the Patient without a search mode; include/outcome ignored
    assert server.seen[0].path == "/fhir/Task?status=requested&_count=50"
    assert server.seen[1].path == "/fhir/Task?_page=2"
    assert server.seen[2].path == "/fhir/Task?_page=3"  # relative next link resolved


def test_paging_loop_is_detected(server: Scripted) -> None:
    loop = bundle([TASK], next_url="Task?_page=2")
    server.default = lambda seen: json_action(200, loop)
    with make_client(server.base_url) as c, pytest.raises(PortalDataError):
        list(c.search_pages("Task", {}))


def test_instants_in_search_parameters_are_encoded(server: Scripted) -> None:
    server.add(json_action(200, bundle([])))
    with make_client(server.base_url) as c:
        list(c.search_pages("Task", {"_lastUpdated": "gt2026-11-29T09:00:00.123+01:00"}))
    assert server.seen[0].path == "/fhir/Task?_lastUpdated=gt2026-11-29T09%3A00%3A00.123%2B01%3A00"


# ---------------------------------------------------------------- writes


def test_conditional_create_sends_if_none_exist_and_reads_location(server: Scripted) -> None:
    server.add(Action(201, b"", {"Location": f"{server.base_url}/Communication/77/_history/1",
                                 "ETag": 'W/"1"'}))
    res = {"resourceType": "Communication", "status": "completed"}
    with make_client(server.base_url) as c:
        out = c.create(res, if_none_exist="identifier=urn:derm-workstation:outbox|abc")
    assert (out.id, out.version, out.created) == ("77", "1", True)
    seen = server.seen[0]
    assert seen.method == "POST" and seen.path == "/fhir/Communication"
    assert seen.headers["If-None-Exist"] == "identifier=urn:derm-workstation:outbox|abc"
    assert seen.headers["Content-Type"].startswith("application/fhir+json")
    assert json.loads(seen.body) == res


def test_conditional_create_match_is_200_with_the_existing_resource(server: Scripted) -> None:
    server.add(json_action(200, {"resourceType": "Communication", "id": "77",
                                 "meta": {"versionId": "1"}}))
    with make_client(server.base_url) as c:
        out = c.create({"resourceType": "Communication"}, if_none_exist="identifier=x|y")
    assert (out.id, out.created, out.status) == ("77", False, 200)


def test_parse_location_and_outcome_text() -> None:
    assert parse_location("http://h/fhir/Task/5/_history/9") == ("5", "9")
    assert parse_location("Task/5") == ("5", None)
    assert parse_location(None) == (None, None)
    oo = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "details": {"text": "Bad status"}},
        {"severity": "error", "code": "required"}]}
    assert outcome_text(json.dumps(oo)) == "Bad status; required"
    assert outcome_text("plain text error") == "plain text error"
    assert outcome_text("<html>nope</html>") == ""


# ---------------------------------------------------------------- auth


def test_bearer_token_is_sent_to_the_portal(server: Scripted) -> None:
    server.add(json_action(200, TASK))
    with make_client(server.base_url, StaticToken("abc")) as c:
        c.read("Task", "1")
    assert server.seen[0].headers["Authorization"] == "Bearer abc"


def test_401_refreshes_once_then_succeeds(server: Scripted) -> None:
    server.add(outcome(401, "expired"), json_action(200, TASK))
    tokens = StaticToken("old", reload=lambda: "new")
    with make_client(server.base_url, tokens) as c:
        c.read("Task", "1")
    assert [s.headers.get("Authorization") for s in server.seen] == ["Bearer old", "Bearer new"]


def test_401_twice_is_a_clear_error_and_never_a_loop(server: Scripted) -> None:
    server.default = lambda seen: outcome(401, "no")
    tokens = StaticToken("old", reload=lambda: "new")
    with make_client(server.base_url, tokens) as c:
        with pytest.raises(PortalAuthError) as err:
            c.read("Task", "1")
        assert "rejected the credentials" in err.value.message
        assert len(server.seen) == 2
        with pytest.raises(PortalAuthError):  # later calls fail fast, without a request
            c.read("Task", "2")
    assert len(server.seen) == 2


def test_401_without_a_way_to_refresh_is_final_after_one_request(server: Scripted) -> None:
    server.default = lambda seen: outcome(401, "no")
    with make_client(server.base_url, StaticToken("bad")) as c, pytest.raises(PortalAuthError):
        c.read("Task", "1")
    assert len(server.seen) == 1


def test_credentials_never_go_to_another_host_in_an_attachment_url(
        server: Scripted, other_server: Scripted, tmp_path) -> None:
    from derm_workstation.core.imagestore import ImageStore
    from derm_workstation.portal.client import AttachmentRef
    from tests.builders import jpeg

    data = jpeg((120, 60, 50))
    other_server.add(Action(200, data, {"Content-Type": "image/jpeg"}))
    # the same machine by another name is another origin too
    other_by_name = f"http://localhost:{server.port}/files/x.jpg"
    server.add(Action(200, data, {"Content-Type": "image/jpeg"}))
    store = ImageStore(tmp_path / "images")
    with make_client(server.base_url, StaticToken("abc")) as c:
        c.download(AttachmentRef(url=f"{other_server.origin}/files/x.jpg", size=len(data)), store)
        c.download(AttachmentRef(url=other_by_name, size=len(data)), store)
    assert "Authorization" not in other_server.seen[0].headers
    assert "Authorization" not in server.seen[0].headers


def test_redirects_keep_credentials_only_on_the_portal(server: Scripted,
                                                       other_server: Scripted) -> None:
    server.add(Action(302, b"", {"Location": "/fhir/Task/1b"}),
               Action(307, b"", {"Location": f"{other_server.origin}/elsewhere/Task/1"}))
    other_server.add(json_action(200, TASK))
    with make_client(server.base_url, StaticToken("abc")) as c:
        assert c.read("Task", "1")["id"] == "1"
    assert server.seen[1].path == "/fhir/Task/1b"
    assert server.seen[1].headers["Authorization"] == "Bearer abc"
    assert other_server.seen[0].path == "/elsewhere/Task/1"
    assert "Authorization" not in other_server.seen[0].headers


def test_a_write_is_never_redirected_to_another_origin(server: Scripted,
                                                      other_server: Scripted) -> None:
    server.add(Action(307, b"", {"Location": f"{other_server.origin}/fhir/Communication"}))
    with make_client(server.base_url) as c, pytest.raises(PortalRequestError) as err:
        c.create({"resourceType": "Communication", "payload": [{"contentString": "x"}]})
    assert "nothing was sent there" in err.value.message
    assert other_server.seen == []


def test_every_request_has_a_timeout_and_tls_verification(monkeypatch) -> None:
    """Guards the defaults the contract requires (timeouts everywhere, TLS verified)."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    c = make_client("https://portal.example.org/fhir")
    assert c.timeout[0] > 0 and c.timeout[1] > 0
    assert c.verify is True
    c.close()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/clinic/ca.pem")
    with make_client("https://portal.example.org/fhir") as c:
        assert c.verify == "/clinic/ca.pem"  # a clinic CA from the environment, still verified


def test_proxy_from_the_environment_is_used(server: Scripted, monkeypatch) -> None:
    """A clinic's HTTP proxy (HTTP_PROXY) carries the requests; NO_PROXY is respected."""
    monkeypatch.setenv("HTTP_PROXY", server.origin)
    monkeypatch.setenv("NO_PROXY", "localhost")
    server.add(json_action(200, TASK), json_action(200, TASK))
    with make_client("http://portal.invalid/fhir") as c:
        c.read("Task", "1")
    assert server.seen[0].path == "http://portal.invalid/fhir/Task/1"
    assert server.seen[0].headers["Authorization"] == "Bearer secret-token"
    with make_client(f"http://localhost:{server.port}/fhir") as c:
        c.read("Task", "1")  # bypasses the proxy: straight to the server
    assert server.seen[1].path == "/fhir/Task/1"
