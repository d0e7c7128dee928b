"""A local stand-in for the CRM's push endpoint: it prints and keeps what it receives.

For trying the bridge without a CRM (``clinica-asterisk crm-sink``), for tests and for the
benchmark.  It can also misbehave on purpose: answer with an error status, or accept the
request and never answer (``hang``), as a broken CRM would.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional
from urllib.parse import parse_qsl

MAX_BODY = 1 << 20


class _Handler(BaseHTTPRequestHandler):
    server: "CrmSink"
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one write: two small writes on a kept-alive connection
    # meet the client's delayed ACK and cost ~40 ms a push.
    wbufsize = 1 << 16

    def log_message(self, fmt, *args):  # the sink reports through on_push instead
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_error(413)
            return
        body = self.rfile.read(length)
        if len(body) < length:  # the client died mid-request: no web server would pass it on
            self.close_connection = True
            return
        sink = self.server
        with sink.lock:
            sink.arrivals += 1
            if sink.hang_after is not None and sink.arrivals > sink.hang_after:
                sink.behaviour = "hang"
        sink.arrived.set()
        if sink.behaviour == "hang":
            sink.release.wait(sink.hang_s)
            self.close_connection = True
            return
        if self.headers.get("Content-Type", "").startswith("application/json"):
            fields = json.loads(body or b"{}")
        else:
            fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        status = sink.status
        if 200 <= status < 300:
            with sink.lock:
                sink.received.append(fields)
                sink.paths.append(self.path)
            if sink.on_push:
                sink.on_push(fields)
        else:
            with sink.lock:
                sink.refused += 1
        payload = b'{"status":"ok"}' if status < 300 else b'{"status":"error"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class CrmSink(ThreadingHTTPServer):
    """``behaviour``: 'ok' (answer ``status``) or 'hang' (never answer); ``hang_after``:
    answer that many requests, then hang."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address=("127.0.0.1", 0), status: int = 200, behaviour: str = "ok",
                 on_push: Optional[Callable[[Dict[str, str]], None]] = None, hang_s: float = 3600,
                 hang_after: Optional[int] = None):
        super().__init__(address, _Handler)
        self.status = status
        self.behaviour = behaviour
        self.hang_s = hang_s
        self.on_push = on_push
        self.received: List[Dict[str, str]] = []
        self.paths: List[str] = []
        self.refused = 0
        self.arrivals = 0
        self.hang_after = hang_after
        self.arrived = threading.Event()
        self.lock = threading.Lock()
        self.release = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/api/Binotel/Push"

    def start(self) -> "CrmSink":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="crm-sink")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()

    def recover(self) -> None:
        """Behave again: answer every request (the hung ones are let go)."""
        with self.lock:
            self.behaviour, self.status, self.hang_after = "ok", 200, None
        self.release.set()

    def pushes(self) -> List[Dict[str, str]]:
        with self.lock:
            return list(self.received)
