"""Sending push events to the CRM, each attempt within a hard time limit.

``requests``' own timeouts bound each socket operation, not the whole request (a CRM that
trickles its answer byte by byte would stretch it); the attempt therefore runs on a sender
thread that the caller stops waiting for at the limit.  An abandoned attempt keeps its
lease until the lease runs out, so the event is not sent twice at the same time.  Sender
threads live on between attempts, so a long-running service keeps its connections to the
CRM alive instead of opening one (and a thread) per event.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import select
import threading
import time
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple
from urllib.parse import unquote, urlencode, urlsplit

from .outbox import Outbox, OutboxEvent, lease_owner

log = logging.getLogger(__name__)

# Time kept back from a hook's deadline for the last AGI command (the status variable).
RESERVE_S = 0.1
# A lease outlives the attempt it covers by this much (clock skew, slow commit).
LEASE_MARGIN_S = 5.0
# A sender thread idle this long ends: a burst of calls leaves no crowd of threads behind.
SENDER_IDLE_S = 60.0


@dataclass(frozen=True)
class Attempt:
    ok: bool
    detail: str
    ms: int


def encode_body(payload: Mapping[str, str], push_format: str) -> Tuple[bytes, str]:
    """The request body and its Content-Type: a form (Binotel's way) or JSON."""
    if push_format == "json":
        return json.dumps(dict(payload), ensure_ascii=False).encode("utf-8"), "application/json"
    return urlencode(dict(payload)).encode("ascii"), "application/x-www-form-urlencoded"


class SessionTransport:
    """``requests`` with one kept-alive session per thread: for the long-running services."""

    def __init__(self):
        self._local = threading.local()

    def post(self, url: str, body: bytes, content_type: str, timeout_s: float) -> int:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = self._local.session = requests.Session()
        try:
            response = session.post(url, data=body, headers={"Content-Type": content_type}, timeout=timeout_s)
            response.close()
            return response.status_code
        except Exception:
            self._local.session = None  # a broken connection must not be reused
            raise


def _request_parts(url: str, content_type: str):
    """Where to connect, the path to POST to and the headers (Basic auth from the URL)."""
    parts = urlsplit(url)
    headers = {"Content-Type": content_type, "User-Agent": "clinica-asterisk"}
    if parts.username:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("utf-8")
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts, path, headers


def _connection(parts, timeout_s: float):
    import http.client

    if parts.scheme == "https":
        import ssl

        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout_s,
                                           context=ssl.create_default_context())
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)


def _exchange(connection, path: str, body: bytes, headers) -> int:
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status


class OneShotTransport:
    """The standard library's http.client: for the AGI script, which sends an event or two
    and exits.  Importing ``requests`` would cost every ring and answer ~0.2 s of start-up."""

    def post(self, url: str, body: bytes, content_type: str, timeout_s: float) -> int:
        parts, path, headers = _request_parts(url, content_type)
        connection = _connection(parts, timeout_s)
        try:
            return _exchange(connection, path, body, headers)
        finally:
            connection.close()


class KeepAliveTransport:
    """http.client with one kept-alive connection per thread: for the long-running service,
    where a push costs a fraction of what ``requests`` spends on it (CPU is what bounds the
    FastAGI server's hooks per second)."""

    def __init__(self):
        self._local = threading.local()

    def post(self, url: str, body: bytes, content_type: str, timeout_s: float) -> int:
        parts, path, headers = _request_parts(url, content_type)
        key = (parts.scheme, parts.hostname, parts.port)
        held = getattr(self._local, "held", None)
        if held is not None and (held[0] != key or _dropped(held[1])):
            held[1].close()
            held = None
        if held is None:
            held = self._local.held = (key, _connection(parts, timeout_s))
        connection = held[1]
        connection.timeout = timeout_s
        reused = connection.sock is not None
        if reused:
            connection.sock.settimeout(timeout_s)
        try:
            return _exchange(connection, path, body, headers)
        except ConnectionError:
            connection.close()
            if not reused:
                self._local.held = None
                raise
            # The CRM closed the idle connection just as we reused it (before answering
            # anything): once more on a fresh one, as HTTP clients do.
            try:
                return _exchange(connection, path, body, headers)
            except Exception:
                connection.close()
                self._local.held = None
                raise
        except Exception:
            connection.close()  # a broken connection must not be reused
            self._local.held = None
            raise

    def release(self) -> None:
        """Close this thread's connection (its sender thread is ending)."""
        held = getattr(self._local, "held", None)
        if held is not None:
            held[1].close()
            self._local.held = None


def _dropped(connection) -> bool:
    """The CRM closed the idle connection (or sent something unasked): do not reuse it."""
    sock = connection.sock
    if sock is None:
        return False  # http.client reconnects by itself
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class PushSender:
    """POSTs one event to the CRM push URL through a transport."""

    def __init__(self, url: str, push_format: str = "form", transport=None):
        self.url = url
        self.push_format = push_format
        self.transport = transport or SessionTransport()
        self._lock = threading.Lock()
        self._jobs: "queue.SimpleQueue" = queue.SimpleQueue()
        self._idle = 0  # sender threads waiting for a job, less the jobs already given to them
        self._closed = False

    def _post(self, payload: Mapping[str, str], timeout_s: float) -> Attempt:
        started = time.monotonic()
        body, content_type = encode_body(payload, self.push_format)
        try:
            status = self.transport.post(self.url, body, content_type, timeout_s)
            ok, detail = 200 <= status < 300, f"HTTP {status}"
        except Exception as exc:  # any network failure is a failed delivery, never a crash
            ok, detail = False, f"{type(exc).__name__}: {str(exc)[:200]}"
        return Attempt(ok, detail, int((time.monotonic() - started) * 1000))

    def post(self, payload: Mapping[str, str], limit_s: float) -> Attempt:
        """One attempt that returns within ``limit_s`` whatever the CRM does."""
        if limit_s <= 0.01:
            return Attempt(False, "no time left to send", 0)
        box = []
        done = threading.Event()

        def attempt():
            box.append(self._post(payload, limit_s))
            done.set()

        self._run(attempt)
        if done.wait(limit_s) and box:
            return box[0]
        return Attempt(False, f"no answer within {limit_s:.1f} s", int(limit_s * 1000))

    def _run(self, job) -> None:
        """On an idle sender thread if there is one, else on a new one."""
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)
                return
        threading.Thread(target=self._sender, args=(job,), daemon=True, name="clinica-push").start()

    def close(self) -> None:
        """Idle sender threads end now, busy ones after their attempt (with their connections)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, 0
            for _ in range(idle):
                self._jobs.put(None)

    def _sender(self, job) -> None:
        try:
            self._serve_jobs(job)
        finally:
            release = getattr(self.transport, "release", None)
            if release is not None:
                release()

    def _serve_jobs(self, job) -> None:
        while True:
            if job is None:
                return
            job()
            with self._lock:
                if self._closed:
                    return
                self._idle += 1
            try:
                job = self._jobs.get(timeout=SENDER_IDLE_S)
            except queue.Empty:
                with self._lock:
                    try:  # given a job just as the wait ended
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return


def send_leased_events(outbox: Outbox, sender: PushSender, events: Sequence[OutboxEvent],
                       until_monotonic: float, max_backoff_s: float) -> bool:
    """Send events leased by :meth:`Outbox.lease_pending`, in order, until one fails or
    time runs out; the leases not used are given back.  True when all were delivered."""
    for n, event in enumerate(events):
        left = until_monotonic - time.monotonic()
        if left <= 0.01 or not deliver_one(outbox, sender, event, left, max_backoff_s):
            # A failed event's lease ended with its failure; the later ones wait behind it.
            outbox.release([e.id for e in events[n if left <= 0.01 else n + 1:]], lease_owner())
            return False
    return True


def deliver_one(outbox: Outbox, sender: PushSender, event: OutboxEvent, limit_s: float,
                max_backoff_s: float) -> bool:
    attempt = sender.post(event.payload, limit_s)
    if attempt.ok:
        outbox.mark_delivered(event.id)
    else:
        outbox.mark_failed(event.id, attempt.detail, max_backoff_s)
    log.info("push call=%s event=%s outcome=%s detail=%r ms=%d attempt=%d", event.call_id,
             event.request_type, "sent" if attempt.ok else "failed", attempt.detail, attempt.ms,
             event.attempts + 1)
    return attempt.ok


@dataclass
class DeliverStats:
    sent: int = 0
    failed: int = 0
    waiting: int = 0
    oldest_created_at: Optional[float] = None


def deliver_pass(outbox: Outbox, sender: PushSender, timeout_s: float, max_backoff_s: float,
                 due_only: bool = True, stop: Optional[threading.Event] = None,
                 stats: Optional[DeliverStats] = None) -> DeliverStats:
    """Send every deliverable head once, call by call, oldest first.

    Within one pass a call that failed is not tried again, and its later events wait."""
    stats = stats or DeliverStats()
    owner = lease_owner()
    failed_calls = set()
    while not (stop and stop.is_set()):
        heads = [e for e in outbox.heads(outbox.store.clock(), due_only=due_only) if e.call_id not in failed_calls]
        if not heads:
            break
        for event in heads:
            if stop and stop.is_set():
                break
            if not outbox.claim(event, owner, outbox.store.clock() + timeout_s + LEASE_MARGIN_S):
                failed_calls.add(event.call_id)  # someone else is on it; leave the call to them
                continue
            if deliver_one(outbox, sender, event, timeout_s, max_backoff_s):
                stats.sent += 1
            else:
                stats.failed += 1
                failed_calls.add(event.call_id)
    stats.waiting, stats.oldest_created_at = outbox.backlog()
    return stats


def deliver_forever(outbox: Outbox, sender: PushSender, timeout_s: float, max_backoff_s: float,
                    stop: threading.Event, poll_s: float = 1.0, reconciler=None) -> None:
    """The worker: a pass, then sleep until the next event is due (at most ``poll_s``).

    ``reconciler`` (a :class:`~clinica_asterisk.reconcile.Reconciler`): its ``tick()`` runs
    before each pass, so the events of the calls it closes go out in the same turn."""
    last_purge = 0.0
    while not stop.is_set():
        try:
            if reconciler is not None:
                reconciler.tick()
            deliver_pass(outbox, sender, timeout_s, max_backoff_s, due_only=True, stop=stop)
            if time.monotonic() - last_purge > 3600:
                outbox.purge_delivered()
                last_purge = time.monotonic()
            due = outbox.next_due_at()
        except Exception:  # the worker must outlive a locked or briefly missing database
            log.exception("outbox worker pass failed; retrying")
            due = None
        wait = poll_s if due is None else min(poll_s, max(0.05, due - outbox.store.clock()))
        stop.wait(wait)
