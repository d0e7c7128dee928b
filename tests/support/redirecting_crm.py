"""A CRM that moved: a real HTTP server whose old push path answers a redirect, and whose
new one takes pushes.  Every request is kept (method, path, body), so a test sees what a
client did with the redirect: a GET without the body to the new path is what loses an
event (the new path answers 200 to any method, as a careless CRM would)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional
from urllib.parse import parse_qsl

OLD_PATH = "/old/Push"
NEW_PATH = "/api/Binotel/Push"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes
    authorization: Optional[str] = None

    @property
    def fields(self):
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: without TCP_NODELAY the body waits for the
    # client\'s delayed ACK (40 ms) on a kept-alive connection.
    disable_nagle_algorithm = True
    server: "RedirectingCrm"

    def log_message(self, fmt, *args):
        pass

    def _answer(self):
        crm = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with crm.lock:
            crm.requests.append(Request(self.command, self.path, body, self.headers.get("Authorization")))
        if self.path.split("?")[0] == NEW_PATH:
            self.send_response(200)
        else:
            self.send_response(crm.status)
            self.send_header("Location", crm.location)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = do_GET = do_PUT = _answer

    def do_HEAD(self):
        crm = self.server
        with crm.lock:
            crm.requests.append(Request(self.command, self.path, b"", self.headers.get("Authorization")))
        self.send_response(200 if self.path.split("?")[0] == NEW_PATH else crm.status)
        if self.path.split("?")[0] != NEW_PATH:
            self.send_header("Location", crm.location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class RedirectingCrm(ThreadingHTTPServer):
    """``status``: what :data:`OLD_PATH` answers; ``location``: its Location header (by
    default the new path on this server, relative)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, status: int, location: str = NEW_PATH):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status, self.location = status, location
        self.lock = threading.Lock()
        self.requests: List[Request] = []
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def url(self) -> str:
        """The push URL the bridge was configured with (the old one)."""
        return self.base + OLD_PATH

    def at(self, path: str) -> List[Request]:
        with self.lock:
            return [r for r in self.requests if r.path.split("?")[0] == path]

    @property
    def authorizations(self) -> List[Optional[str]]:
        with self.lock:
            return [r.authorization for r in self.requests]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
