"""Playing Asterisk against a FastAGI server over real TCP, and a CRM that answers only
when a test lets it."""

from __future__ import annotations

import json
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Tuple
from urllib.parse import parse_qsl

from clinica_asterisk.devtools.asterisk_peer import AsteriskCall, Conversation, RecordedSession, serve_session
from clinica_asterisk.hooks.fastagi import fastagi_server

WAIT_S = 30.0  # generous: only a failure ever waits this long


@contextmanager
def running_server(settings, **kwargs):
    # The engine the settings name (CLINICA_FASTAGI_ENGINE; the event loop by default).
    server = fastagi_server(settings, bind=("127.0.0.1", 0), **kwargs).start()
    try:
        yield server
    finally:
        server.stop(timeout_s=WAIT_S)


def fastagi(address: Tuple[str, int], call: AsteriskCall, session: RecordedSession,
            args=None, script: str = "clinica-agi") -> Conversation:
    """One hook session as Asterisk runs ``AGI(agi://host:port/<script>,<args>…)``."""
    if args is not None:
        session = session.with_args(args)
    session = session.over_fastagi(address[0], address[1], script)
    with socket.create_connection(address, timeout=WAIT_S) as sock:
        return serve_session(call, session, sock.fileno(), sock.fileno(), WAIT_S)


def exchange(address: Tuple[str, int], data: bytes, half_close: bool = False) -> bytes:
    """Send ``data``, then read whatever the server says until it closes the connection."""
    with socket.create_connection(address, timeout=WAIT_S) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return b""
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


def status_of(conv: Conversation) -> str:
    return conv.local.get("CLINICA_STATUS", "")


class _GateHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: without TCP_NODELAY the body waits for the
    # client\'s delayed ACK (40 ms) on a kept-alive connection.
    disable_nagle_algorithm = True
    server: "GatedCrm"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        crm = self.server
        with crm.cond:
            crm.arrived += 1
            crm.cond.notify_all()
        crm.gate.wait(WAIT_S)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            fields = json.loads(body)
        else:
            fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        with crm.cond:
            crm.received.append(fields)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


class GatedCrm(ThreadingHTTPServer):
    """A CRM whose answers wait for :meth:`open`; :meth:`wait_for` waits for arrivals."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _GateHandler)
        self.cond = threading.Condition()
        self.gate = threading.Event()
        self.arrived = 0
        self.received: List[Dict[str, str]] = []
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/Binotel/Push"

    def wait_for(self, count: int) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.arrived >= count, WAIT_S):
                raise AssertionError(f"only {self.arrived} of {count} pushes reached the CRM")

    def open(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.shutdown()
        self.server_close()
