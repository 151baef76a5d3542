"""A scripted HTTP server on 127.0.0.1 for client tests: the network outside our control.

Each request is answered by the next :class:`Action` of the script (or by ``default``),
and recorded with its headers and body. Actions can send JSON, raw bytes, a body that
stops half-way (connection dropped), a body shorter than its Content-Length
(truncated), a stall (no answer in time) or a redirect.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Action:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Send only this many body bytes, then close the connection (Content-Length is full).
    cut_at: int | None = None
    #: Seconds to wait before answering.
    stall: float = 0.0
    #: Send the body in pieces of this size with a pause (slow, streaming server).
    chunk: int | None = None


def json_action(status: int, value: Any, headers: dict[str, str] | None = None,
                **kw: Any) -> Action:
    return Action(status, json.dumps(value).encode(),
                  {"Content-Type": "application/fhir+json", **(headers or {})}, **kw)


def outcome(status: int, text: str, headers: dict[str, str] | None = None) -> Action:
    return json_action(status, {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "processing", "diagnostics": text}]}, headers)


class Scripted:
    def __init__(self) -> None:
        self.script: deque[Action | Callable[[Seen], Action]] = deque()
        self.default: Callable[[Seen], Action] = lambda seen: outcome(404, "not scripted")
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                seen = Seen(self.command, self.path, {k: v for k, v in self.headers.items()},
                            body)
                with outer._lock:
                    outer.seen.append(seen)
                    step = outer.script.popleft() if outer.script else outer.default
                action = step(seen) if callable(step) else step
                if action.stall:
                    time.sleep(action.stall)
                try:
                    self.send_response(action.status)
                    headers = {"Content-Length": str(len(action.body)), **action.headers}
                    for k, v in headers.items():
                        self.send_header(k, v)
                    if action.cut_at is not None:
                        self.send_header("Connection", "close")
                    self.end_headers()
                    if action.cut_at is not None:
                        self.wfile.write(action.body[:action.cut_at])
                        self.wfile.flush()
                        self.close_connection = True
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if action.chunk:
                        for i in range(0, len(action.body), action.chunk):
                            self.wfile.write(action.body[i:i + action.chunk])
                            self.wfile.flush()
                    else:
                        self.wfile.write(action.body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + "/fhir"

    def add(self, *actions: Action | Callable[[Seen], Action]) -> None:
        with self._lock:
            self.script.extend(actions)

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
