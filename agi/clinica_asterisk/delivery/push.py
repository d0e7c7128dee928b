"""Sending push events to the CRM, each attempt within a hard time limit.

An attempt is over at its limit whatever the CRM does: socket timeouts bound each
operation, not the whole request (a CRM that trickles its answer byte by byte would
stretch it), so a :class:`Cutoff` shuts the attempt's connection down at the limit, and
no request leaves after it.  Attempts run on sender threads that live on between them, so
a long-running service keeps its connections to the CRM alive instead of opening one (and
a thread) per event; at most ``max_in_flight`` run at once.

Its caller may stop waiting before an attempt ends (a hook has its deadline; the attempt
has the transport's whole limit, ``CLINICA_DELIVER_TIMEOUT_MS``).  The attempt then goes
on: the event stays leased until the attempt's limit has surely passed, so nobody sends it
again while this POST may still be in flight, and its outcome is recorded when it ends
(:class:`LateOutcome`).  A CRM slower than the hook's deadline thus gets each event once;
only a crash in the middle of a POST can make it get one twice.
"""

from __future__ import annotations

import base64
import heapq
import http.client
import itertools
import json
import logging
import queue
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple
from urllib.parse import unquote, urlencode, urlsplit

from ..store.outbox import Outbox, OutboxEvent, lease_owner
from ..redact import scrub

log = logging.getLogger(__name__)

# Time kept back from a hook's deadline for the last AGI command (the status variable).
RESERVE_S = 0.1
# A lease outlives the attempt it covers by this much (clock skew, slow commit).
LEASE_MARGIN_S = 5.0
# A sender thread idle this long ends: a burst of calls leaves no crowd of threads behind.
SENDER_IDLE_S = 60.0
# How long after its limit a cut attempt may take to notice (the caller waits that more).
CUT_GRACE_S = 1.0

# What became of an event's attempt (deliver_one).
SENT, FAILED, IN_FLIGHT, NOT_TRIED = "sent", "failed", "in-flight", "not-tried"


@dataclass(frozen=True)
class Attempt:
    ok: bool
    detail: str
    ms: int
    in_flight: bool = False  # still under way when its caller stopped waiting: the outcome comes later
    tried: bool = True  # False: not started (no time left, too many under way)


def encode_body(payload: Mapping[str, str], push_format: str) -> Tuple[bytes, str]:
    """The request body and its Content-Type: a form (Binotel's way) or JSON."""
    if push_format == "json":
        return json.dumps(dict(payload), ensure_ascii=False).encode("utf-8"), "application/json"
    return urlencode(dict(payload)).encode("ascii"), "application/x-www-form-urlencoded"


def failure_text(exc: BaseException, url: str) -> str:
    """Why an attempt failed, for the log and the outbox's ``last_error``: the exception's
    type and the system's reason; nothing of the URL that may be secret."""
    if isinstance(exc, AttemptTimedOut):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    elif isinstance(exc, (TimeoutError, socket.timeout)):
        reason = "timed out"
    else:
        reason = str(exc)
    return f"{type(exc).__name__}: {scrub(reason, url)[:200]}"


# --- the hard limit of an attempt ---------------------------------------------------------

class AttemptTimedOut(TimeoutError):
    """The attempt reached its limit before the request could leave, or while it waited."""


class Cutoff:
    """The end of one attempt, at ``at`` (monotonic): no request leaves after it, and the
    connection of one under way is shut down then (:meth:`cut`, by :data:`CUTTER`)."""

    def __init__(self, at: float):
        self.at = at
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._cut = False

    def arm(self, sock: socket.socket) -> None:
        """The attempt is about to use ``sock``: refused once the limit has passed."""
        with self._lock:
            if self._cut or time.monotonic() >= self.at:
                raise AttemptTimedOut("the push's time limit passed before it could be sent")
            self._sock = sock

    @property
    def was_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        with self._lock:
            if self._cut:
                return
            self._cut = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already

    def disarm(self) -> None:
        """The attempt is over: a cut that comes late must not touch the connection, which
        a kept-alive transport uses for the next attempt."""
        with self._lock:
            self._cut = True
            self._sock = None


class _Cutter:
    """One thread that cuts the attempts which reach their limit (started when needed)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._due: list = []
        self._order = itertools.count()
        self._thread: Optional[threading.Thread] = None

    def watch(self, cutoff: Cutoff) -> None:
        with self._cond:
            heapq.heappush(self._due, (cutoff.at, next(self._order), cutoff))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="clinica-push-cutter", daemon=True)
                self._thread.start()
            self._cond.notify()

    def forget(self, cutoff: Cutoff) -> None:
        with self._cond:
            self._due = [entry for entry in self._due if entry[2] is not cutoff]
            heapq.heapify(self._due)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
                at, _, cutoff = self._due[0]
                left = at - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._due)
            cutoff.cut()


CUTTER = _Cutter()


# --- transports ---------------------------------------------------------------------------

def _request_parts(url: str, content_type: str):
    """Where to connect, the path to POST to and the headers (Basic auth from the URL)."""
    parts = urlsplit(url)
    headers = {"Content-Type": content_type, "User-Agent": "clinica-asterisk"}
    if parts.username:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("utf-8")
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts, path, headers


class _ArmsCutoff:
    """Arms the attempt's cutoff with each new connection, before anything is sent (for
    HTTPS on the TLS socket, once the handshake is done)."""

    cutoff: Optional[Cutoff] = None

    def connect(self):
        super().connect()
        if self.cutoff is not None:
            self.cutoff.arm(self.sock)


class _Http(_ArmsCutoff, http.client.HTTPConnection):
    pass


class _Https(_ArmsCutoff, http.client.HTTPSConnection):
    pass


def _connection(parts, timeout_s: float):
    if parts.scheme == "https":
        import ssl

        return _Https(parts.hostname, parts.port, timeout=timeout_s, context=ssl.create_default_context())
    return _Http(parts.hostname, parts.port, timeout=timeout_s)


def _exchange(connection, path: str, body: bytes, headers, cutoff: Optional[Cutoff]) -> int:
    connection.cutoff = cutoff
    if cutoff is not None and connection.sock is not None:
        cutoff.arm(connection.sock)  # a kept-alive connection: connect() will not run
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status


class OneShotTransport:
    """The standard library's http.client, a connection per push: for the AGI script, which
    sends an event or two and exits.  Importing ``requests`` would cost every ring and
    answer ~0.2 s of start-up."""

    def post(self, url: str, body: bytes, content_type: str, timeout_s: float,
             cutoff: Optional[Cutoff] = None) -> int:
        parts, path, headers = _request_parts(url, content_type)
        connection = _connection(parts, timeout_s)
        try:
            return _exchange(connection, path, body, headers, cutoff)
        finally:
            connection.close()


class KeepAliveTransport:
    """http.client with one kept-alive connection per thread: for the long-running service,
    where a push costs a fraction of what ``requests`` spends on it (CPU is what bounds the
    FastAGI server's hooks per second)."""

    def __init__(self):
        self._local = threading.local()

    def post(self, url: str, body: bytes, content_type: str, timeout_s: float,
             cutoff: Optional[Cutoff] = None) -> int:
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
            return _exchange(connection, path, body, headers, cutoff)
        except ConnectionError:
            connection.close()
            if not reused:
                self._local.held = None
                raise
            # The CRM closed the idle connection just as we reused it (before answering
            # anything): once more on a fresh one, as HTTP clients do.
            try:
                return _exchange(connection, path, body, headers, cutoff)
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


# --- the sender -----------------------------------------------------------------------------

class PushSender:
    """POSTs one event to the CRM push URL through a transport."""

    def __init__(self, url: str, push_format: str = "form", transport=None, max_in_flight: Optional[int] = None):
        self.url = url
        self.push_format = push_format
        self.transport = transport or KeepAliveTransport()
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._quiet = threading.Condition(self._lock)
        self._in_flight = 0
        self._jobs: "queue.SimpleQueue" = queue.SimpleQueue()
        self._idle = 0  # sender threads waiting for a job, less the jobs already given to them
        self._closed = False

    def _post(self, payload: Mapping[str, str], limit_s: float, cutoff: Cutoff) -> Attempt:
        started = time.monotonic()
        body, content_type = encode_body(payload, self.push_format)
        try:
            status = self.transport.post(self.url, body, content_type, limit_s, cutoff)
            ok, detail = 200 <= status < 300, f"HTTP {status}"
        except Exception as exc:  # any network failure is a failed delivery, never a crash
            ok = False
            detail = f"no answer within {limit_s:g} s" if cutoff.was_cut else failure_text(exc, self.url)
        cutoff.disarm()
        return Attempt(ok, detail, int((time.monotonic() - started) * 1000))

    def post(self, payload: Mapping[str, str], limit_s: float, wait_s: Optional[float] = None,
             on_late: Optional[Callable[[Attempt], None]] = None) -> Attempt:
        """One attempt, over within ``limit_s`` whatever the CRM does.

        The caller waits ``wait_s``, never longer (by default: the whole limit, and the
        moment the cut takes).  An attempt still under way then goes on by itself: the
        answer says ``in_flight``, and ``on_late`` gets the outcome when it comes."""
        wait_s = limit_s + CUT_GRACE_S if wait_s is None else wait_s
        if wait_s <= 0.01 or limit_s <= 0.01:
            return Attempt(False, "no time left to send", 0, tried=False)
        with self._lock:
            if self.max_in_flight is not None and self._in_flight >= self.max_in_flight:
                return Attempt(False, f"{self._in_flight} pushes already under way (is the CRM slow?)", 0,
                               tried=False)
            self._in_flight += 1
        return self._attempt(payload, limit_s, wait_s, on_late)

    def _attempt_ended(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._quiet.notify_all()

    def _attempt(self, payload: Mapping[str, str], limit_s: float, wait_s: float,
                 on_late: Optional[Callable[[Attempt], None]]) -> Attempt:
        """On a sender thread, cut at the limit by :data:`CUTTER`."""
        box = []
        done = threading.Event()
        handed_over = []

        def attempt():
            cutoff = Cutoff(time.monotonic() + limit_s)
            CUTTER.watch(cutoff)
            try:
                result = self._post(payload, limit_s, cutoff)
                with self._lock:
                    box.append(result)
                    late = bool(handed_over)
                done.set()
                if late and on_late is not None:
                    on_late(result)
            finally:
                CUTTER.forget(cutoff)
                self._attempt_ended()  # after the outcome is written: wait_idle() waits for it

        self._run(attempt)
        if done.wait(wait_s):
            return box[0]
        with self._lock:
            if box:
                return box[0]
            handed_over.append(True)
        return Attempt(False, f"no answer within {wait_s:.1f} s; the push goes on for up to {limit_s:g} s",
                       int(wait_s * 1000), in_flight=True)

    def wait_idle(self, timeout_s: float) -> int:
        """Wait until no attempt is under way (or ``timeout_s``); how many still are."""
        end = time.monotonic() + timeout_s
        with self._lock:
            while self._in_flight and time.monotonic() < end:
                self._quiet.wait(max(0.0, end - time.monotonic()))
            return self._in_flight

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


# --- the outcome of an attempt, in the outbox --------------------------------------------------

def record_attempt(outbox: Outbox, event: OutboxEvent, owners: Sequence[str], attempt: Attempt,
                   max_backoff_s: float, late: bool = False) -> str:
    """Write what became of an attempt on ``event`` (leased by one of ``owners``) and log
    it; SENT, FAILED, IN_FLIGHT or NOT_TRIED."""
    note = " (after its hook)" if late else ""
    if attempt.in_flight:
        outcome = IN_FLIGHT  # its lease covers it; its outcome is recorded when it ends
    elif not attempt.tried:
        outbox.release([event.id], owners[0])
        outcome = NOT_TRIED
    elif attempt.ok:
        outbox.mark_delivered(event.id)
        outcome = SENT
    else:
        outcome = FAILED
        if not outbox.mark_failed(event.id, attempt.detail, max_backoff_s, owners):
            note += " (another sender holds the event by now: left to it)"
    log.info("push call=%s event=%s outcome=%s detail=%r ms=%d attempt=%d%s", event.call_id,
             event.request_type, outcome, attempt.detail, attempt.ms, event.attempts + 1, note)
    return outcome


@dataclass
class LateOutcome:
    """Where the outcome of an attempt that outlived its caller goes: the outbox at
    ``db_path``, through a connection of its own (it is recorded from the thread, or the
    process, that ran the attempt)."""

    db_path: str
    event: OutboxEvent
    owners: Tuple[str, ...]
    max_backoff_s: float
    # The caller's outbox: only for handed_to(), on the caller's thread.
    outbox: Optional[Outbox] = field(default=None, repr=False, compare=False)

    def __call__(self, attempt: Attempt) -> None:
        _LATE.record(self, attempt)

    def handed_to(self, owner: str) -> None:
        """The attempt goes on in another process (script mode): the lease goes with it,
        so that it counts as held while that process lives (see :mod:`.handoff`)."""
        if self.outbox is not None:
            self.outbox.store.set_busy_timeout(0.05)  # the hook is at its deadline
            try:
                self.outbox.hand_over(self.event.id, self.owners[0], owner)
            except Exception as exc:  # StoreError: the lease runs out instead
                log.warning("push call=%s event=%s: lease not handed over: %s", self.event.call_id,
                            self.event.request_type, exc)
        self.owners = (owner, *self.owners)

    def to_json(self) -> Dict[str, object]:
        e = self.event
        return {"db_path": self.db_path, "owners": list(self.owners), "max_backoff_s": self.max_backoff_s,
                "event": {"id": e.id, "call_id": e.call_id, "request_type": e.request_type, "attempts": e.attempts}}

    @classmethod
    def from_json(cls, data: Mapping) -> "LateOutcome":
        e = data["event"]
        event = OutboxEvent(int(e["id"]), int(e["call_id"]), str(e["request_type"]), {}, int(e["attempts"]),
                            None, None)
        return cls(str(data["db_path"]), event, tuple(data["owners"]), float(data["max_backoff_s"]))


class _LateStores:
    """One store connection for the late outcomes of this process, used under a lock (they
    are rare: a CRM slower than the hooks' deadline)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._store = None

    def record(self, late: LateOutcome, attempt: Attempt) -> None:
        from ..store.database import Store

        with self._lock:
            try:
                if self._store is None or self._store.path != late.db_path:
                    if self._store is not None:
                        self._store.close()
                    self._store = Store(late.db_path, busy_timeout_s=5.0)
                record_attempt(Outbox(self._store), late.event, late.owners, attempt, late.max_backoff_s, late=True)
            except Exception as exc:  # the lease runs out, and the event is sent again
                log.warning("push call=%s event=%s: the outcome of its attempt (%s) was not recorded: %s",
                            late.event.call_id, late.event.request_type, attempt.detail, exc)


_LATE = _LateStores()


# --- sending the outbox ---------------------------------------------------------------------

def send_leased_events(outbox: Outbox, sender: PushSender, events: Sequence[OutboxEvent],
                       until_monotonic: float, max_backoff_s: float, attempt_s: float = 0.0) -> bool:
    """Send events leased by :meth:`Outbox.lease_pending`, in order, waiting for each no
    later than ``until_monotonic``; each attempt may go on for ``attempt_s`` (at least the
    time left).  Stops at the first event not sent; the leases not used are given back.
    True when all were delivered."""
    for n, event in enumerate(events):
        left = until_monotonic - time.monotonic()
        if left <= 0.01:
            outbox.release([e.id for e in events[n:]], lease_owner())
            return False
        if deliver_one(outbox, sender, event, max(attempt_s, left), max_backoff_s, wait_s=left) != SENT:
            # A failed event's lease ended with its failure, one in flight keeps its own;
            # the later ones wait behind it.
            outbox.release([e.id for e in events[n + 1:]], lease_owner())
            return False
    return True


def deliver_one(outbox: Outbox, sender: PushSender, event: OutboxEvent, limit_s: float,
                max_backoff_s: float, wait_s: Optional[float] = None) -> str:
    """One attempt on ``event``, leased by this process: SENT, FAILED, IN_FLIGHT (the
    caller stopped waiting; the outcome is recorded when the attempt ends) or NOT_TRIED."""
    owner = lease_owner()
    late = LateOutcome(outbox.store.path, event, (owner,), max_backoff_s, outbox)
    attempt = sender.post(event.payload, limit_s, wait_s, on_late=late)
    return record_attempt(outbox, event, late.owners, attempt, max_backoff_s)


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
            if not outbox.claim(event, owner, outbox.store.clock() + timeout_s + CUT_GRACE_S + LEASE_MARGIN_S):
                failed_calls.add(event.call_id)  # someone else is on it; leave the call to them
                continue
            if deliver_one(outbox, sender, event, timeout_s, max_backoff_s) == SENT:
                stats.sent += 1
            else:
                stats.failed += 1
                failed_calls.add(event.call_id)
    stats.waiting, stats.oldest_created_at = outbox.backlog()
    return stats


def deliver_forever(outbox: Outbox, sender: PushSender, timeout_s: float, max_backoff_s: float,
                    stop: threading.Event, poll_s: float = 1.0, reconciler=None) -> None:
    """The worker: a pass, then sleep until the next event is due (at most ``poll_s``).

    ``reconciler`` (a :class:`~clinica_asterisk.delivery.reconcile.Reconciler`): its ``tick()`` runs
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
