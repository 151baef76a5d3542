"""A fault-injecting HTTP proxy on loopback, in front of the reference portal.

Requests are forwarded to the portal with ``http.client``; a test ``hook`` may, per
request, answer instead of the portal (``before``), change or drop the portal's answer
(``after``), e.g. "forward the POST, then drop the connection" — the lost response a
clinic network produces. The portal's origin in JSON bodies and headers is rewritten to
the proxy's, as a reverse proxy in front of a real portal would.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    resp_headers: dict[str, str] = field(default_factory=dict)
    resp_body: bytes = b""


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering


Before = Callable[[Exchange], Reply | None]
After = Callable[[Exchange], Reply | None]


class FaultProxy:
    def __init__(self, target_origin: str) -> None:
        parts = urlsplit(target_origin)
        self.target_host = parts.hostname or "127.0.0.1"
        self.target_port = parts.port or 80
        self.target_origin = target_origin
        self.before: Before | None = None
        self.after: After | None = None
        self.log: list[Exchange] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "content-length")}
                ex = Exchange(self.command, self.path, headers, body)
                with outer._lock:
                    outer.log.append(ex)
                reply = outer.before(ex) if outer.before else None
                if reply is None:
                    conn = http.client.HTTPConnection(outer.target_host, outer.target_port,
                                                      timeout=30)
                    try:
                        conn.request(self.command, self.path, body=body or None,
                                     headers=headers)
                        resp = conn.getresponse()
                        ex.status = resp.status
                        ex.resp_headers = {k: v for k, v in resp.getheaders()
                                           if k.lower() not in ("content-length", "connection",
                                                                "transfer-encoding")}
                        ex.resp_body = resp.read()
                    finally:
                        conn.close()
                    ctype = ex.resp_headers.get("Content-Type", "")
                    if "json" in ctype:
                        ex.resp_body = ex.resp_body.replace(outer.target_origin.encode(),
                                                            outer.origin.encode())
                    for k, v in list(ex.resp_headers.items()):
                        ex.resp_headers[k] = v.replace(outer.target_origin, outer.origin)
                    reply = outer.after(ex) if outer.after else None
                    if reply is None:
                        reply = Reply(ex.status, ex.resp_body, ex.resp_headers)
                if reply.drop:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.origin + "/fhir"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


#: What the portal says when it refuses a message to the patient (a business rule).
REFUSED_MESSAGE = "Patient has left the portal"


def refuse_messages(ex: Exchange) -> Reply | None:
    """A ``FaultProxy.before`` hook: the portal refuses every new Communication (422,
    with :data:`REFUSED_MESSAGE` in its OperationOutcome); everything else passes."""
    if ex.method == "POST" and "/Communication" in ex.path:
        body = ('{"resourceType":"OperationOutcome","issue":[{"severity":"error",'
                f'"code":"business-rule","diagnostics":"{REFUSED_MESSAGE}"}}]}}').encode()
        return Reply(422, body, {"Content-Type": "application/fhir+json"})
    return None
