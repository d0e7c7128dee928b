"""What the fault-injection tests share: a CRM that misbehaves on purpose and keeps a
record of every POST, the service and the worker as real processes, and a look into the
outbox.  Everything listens on 127.0.0.1, port 0; everything stops by itself."""

from __future__ import annotations

import collections
import json
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qsl

BIN = os.path.dirname(sys.executable)
WAIT_S = 60.0  # the longest any wait of these tests may take: only a failure waits that long


@dataclass
class Post:
    """One POST as the CRM saw it."""

    key: Tuple[str, str]  # (generalCallID, requestType)
    arrived: float
    ended: Optional[float] = None  # answered, or the client went away
    accepted: bool = False  # the CRM acted on it (a real CRM does so before it answers)
    answered: bool = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: without TCP_NODELAY the body waits for the
    # client\'s delayed ACK (40 ms) on a kept-alive connection.
    disable_nagle_algorithm = True
    server: "FaultyCrm"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        crm = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if len(body) < length:
            # The client died between headers and body (a SIGKILLed worker): a web server
            # never hands such a request to the CRM's code.
            self.close_connection = True
            return
        fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        post = Post((fields.get("generalCallID", ""), fields.get("requestType", "")), time.monotonic())
        with crm.lock:
            mode, delay_s, status = crm.mode, crm.delay_s, crm.status
            crm.posts.append(post)
            crm.changed.notify_all()
        if mode == "slow":
            crm.accept(post)  # it acts first, then takes its time to answer
            if not self._wait(delay_s, lambda: False):
                return crm.end(post)
        elif mode == "hang":
            # A hung CRM acts on nothing; it wakes up only when it recovers (then answers).
            if not self._wait(WAIT_S, lambda: crm.mode != "hang"):
                return crm.end(post)
            crm.accept(post)
        elif mode == "ok" or (mode == "status" and 200 <= status < 300):
            crm.accept(post)
        if mode == "redirect":
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
        else:
            self.send_response(status if mode == "status" else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        try:
            self.wfile.write(b"{}")
            self.wfile.flush()
            post.answered = True
        except OSError:
            pass
        crm.end(post)

    def _wait(self, seconds: float, until) -> bool:
        """Wait ``seconds`` (or until ``until()``); False when the client went away first."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until():
            readable, _, _ = select.select([self.connection], [], [], 0.02)
            if readable:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return False
                except OSError:
                    return False
        return True


class FaultyCrm(ThreadingHTTPServer):
    """``mode``: ``ok``; ``slow`` (acts on each push at once, answers after ``delay_s``);
    ``hang`` (acts on nothing and never answers, until it recovers); ``status`` (answers
    ``status``: a 5xx acts on nothing); ``redirect`` (307 elsewhere, acts on nothing)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, mode: str = "ok", delay_s: float = 0.0, status: int = 200, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.mode, self.delay_s, self.status = mode, delay_s, status
        self.lock = threading.RLock()  # wait_for's condition reads under it too
        self.changed = threading.Condition(self.lock)
        self.posts: List[Post] = []
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/Binotel/Push"

    def set_mode(self, mode: str, delay_s: float = 0.0, status: int = 200) -> None:
        with self.lock:
            self.mode, self.delay_s, self.status = mode, delay_s, status
            self.changed.notify_all()

    def accept(self, post: Post) -> None:
        with self.lock:
            post.accepted = True
            self.changed.notify_all()

    def end(self, post: Post) -> None:
        with self.lock:
            post.ended = time.monotonic()
            self.changed.notify_all()

    def close(self) -> None:
        self.set_mode("ok")
        self.shutdown()
        self.server_close()

    # --- what happened ---------------------------------------------------------------

    def accepted(self) -> collections.Counter:
        with self.lock:
            return collections.Counter(p.key for p in self.posts if p.accepted)

    def open_posts(self) -> int:
        with self.lock:
            return sum(1 for p in self.posts if p.ended is None)

    def open_at(self, moment: float) -> int:
        """POSTs under way at ``moment`` (monotonic)."""
        with self.lock:
            return sum(1 for p in self.posts if p.arrived <= moment and (p.ended is None or p.ended >= moment))

    def concurrent_copies(self) -> int:
        """POSTs that arrived while an earlier POST of the same event was still open."""
        with self.lock:
            posts = list(self.posts)
        count = 0
        for n, post in enumerate(posts):
            count += any(p.key == post.key and (p.ended is None or p.ended > post.arrived) for p in posts[:n])
        return count

    def wait_for(self, condition, what: str, timeout_s: float = WAIT_S) -> None:
        with self.lock:
            if not self.changed.wait_for(lambda: condition(self), timeout_s):
                raise AssertionError(f"the CRM never saw {what}")


def figure(name: str, value) -> None:
    """One measured figure of the fault suite, for docs/reliability.md: shown by
    ``pytest -m fault -s | grep '^figure'``."""
    print(f"\nfigure {name}: {value}")


def duplicates(accepted: collections.Counter) -> int:
    return sum(n - 1 for n in accepted.values() if n > 1)


# --- the outbox, read as an operator would ---------------------------------------------

def outbox_rows(data_dir: Path) -> List[sqlite3.Row]:
    path = data_dir / "clinica.sqlite3"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM outbox ORDER BY id").fetchall()
    finally:
        conn.close()


def waiting(data_dir: Path) -> int:
    return sum(1 for row in outbox_rows(data_dir) if row["delivered_at"] is None)


def wait_until(condition, what: str, timeout_s: float = WAIT_S, step_s: float = 0.05) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step_s)


# --- processes -------------------------------------------------------------------------

def environment(tmp_path: Path, **settings: str) -> Dict[str, str]:
    """An environment for the product's commands: settings in an env file (as in
    production), logs on stderr, FreePBX's database off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINICA_")}
    values = {"CLINICA_DATA_DIR": str(tmp_path / "data"), "CLINICA_LOG_FILE": "-", "CLINICA_FREEPBX_DB": "off"}
    values.update({f"CLINICA_{k.upper()}": str(v) for k, v in settings.items()})
    env_file = tmp_path / "clinica.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    env["CLINICA_ENV_FILE"] = str(env_file)
    return env


class Serve:
    """``clinica-asterisk serve --no-api`` as a process; its FastAGI address from its log."""

    def __init__(self, env: Dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([os.path.join(BIN, "clinica-asterisk"), "serve", "--no-api",
                                      "--bind", "127.0.0.1:0"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=self._log)
        self.address = self._address()

    def _address(self) -> Tuple[str, int]:
        end = time.monotonic() + WAIT_S
        while time.monotonic() < end:
            found = re.findall(r"FastAGI listening on ([0-9.]+):(\d+)", self.log_path.read_text())
            if found:
                return found[-1][0], int(found[-1][1])
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {self.log_path.read_text()}")
            time.sleep(0.02)
        raise AssertionError("serve did not start listening")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def deliver_once(env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "clinica-asterisk"), "deliver"], env=env,
                          capture_output=True, text=True, timeout=WAIT_S)


def pushes_of(crm: FaultyCrm) -> Dict[str, List[str]]:
    """The events the CRM acted on, per call, in the order it acted."""
    calls: Dict[str, List[str]] = {}
    with crm.lock:
        for post in crm.posts:
            if post.accepted:
                calls.setdefault(post.key[0], []).append(post.key[1])
    return calls


def dumps(crm: FaultyCrm) -> str:
    with crm.lock:
        return json.dumps([(p.key, round(p.arrived, 2), p.ended and round(p.ended, 2), p.accepted)
                           for p in crm.posts])
