"""Sending one push event to the CRM, each attempt within a hard time limit.

Attempts run on sender threads that live on between them, so a long-running service keeps
its connections to the CRM alive (:mod:`.transport`) instead of opening one (and a thread)
per event; at most ``max_in_flight`` run at once.  A caller that waits for the whole
attempt anyway (the delivery worker) runs it on its own thread, with its own kept-alive
connection: a hand-off to a sender thread and back for every event would cost the outbox
drain about a fifth of its speed.

Its caller may stop waiting before an attempt ends (a hook has its deadline; the attempt
has the transport's whole limit, ``CLINICA_DELIVER_TIMEOUT_MS``).  The attempt then goes
on, and ``on_late`` gets its outcome when it ends (:class:`.worker.LateOutcome` records it
in the outbox).

Only a 2xx is a delivery.  A redirect the transport did not follow is a failed attempt,
logged with its ``Location`` (shown without credentials, query or fragment), and retried
like any other failure.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import Callable, Mapping, Optional, Tuple
from urllib.parse import quote_plus

from ..deadline import CUT_GRACE_S
from ..logs import get_logger
from ..redact import scrub, shown_url
from ..values import Value

if TYPE_CHECKING:  # the transport (http.client, ssl) loads with the first attempt: a hook
    from .transport import Cutoff, HttpAnswer  # that hands its events over never needs it

log = get_logger(__name__)

# A sender thread idle this long ends: a burst of calls leaves no crowd of threads behind.
SENDER_IDLE_S = 60.0


class Attempt(Value):
    """What became of one attempt to POST an event.  ``in_flight``: still under way when
    its caller stopped waiting (the outcome comes later); ``tried``: False when not started
    (no time left, too many under way)."""

    __slots__ = ("ok", "detail", "ms", "in_flight", "tried")  # bool, str, int, bool, bool
    _defaults = {"in_flight": False, "tried": True}


def encode_body(payload: Mapping[str, str], push_format: str) -> Tuple[bytes, str]:
    """The request body and its Content-Type: a form (Binotel's way) or JSON."""
    if push_format == "json":
        return json.dumps(dict(payload), ensure_ascii=False).encode("utf-8"), "application/json"
    # urlencode's own output, faster: most values (ids, numbers, dates) need no quoting.
    return "&".join(f"{_form_quote(k)}={_form_quote(v)}" for k, v in payload.items()).encode("ascii"), \
        "application/x-www-form-urlencoded"


_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*\Z")


def _form_quote(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if _PLAIN.match(text) else quote_plus(text)


def failure_text(exc: BaseException, url: str) -> str:
    """Why an attempt failed, for the log and the outbox's ``last_error``: the exception's
    type and the system's reason; nothing of the URL that may be secret."""
    from .transport import AttemptTimedOut

    if isinstance(exc, AttemptTimedOut):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    elif isinstance(exc, (TimeoutError, socket.timeout)):
        reason = "timed out"
    else:
        reason = str(exc)
    return f"{type(exc).__name__}: {scrub(reason, url)[:200]}"


def answer_detail(answer: HttpAnswer, url: str) -> str:
    """``HTTP 200``; ``HTTP 301 to https://crm/…, not followed: …`` for a redirect; a
    followed one is named too.  No credentials, query or fragment of either URL."""
    if answer.not_followed:
        where = f" to {scrub(shown_url(answer.location), url)}" if answer.location else ""
        return f"HTTP {answer.status}{where}, not followed: {answer.not_followed}"
    if answer.redirects:
        return f"HTTP {answer.status} from {scrub(shown_url(answer.url), url)} after {answer.redirects} redirect(s)"
    return f"HTTP {answer.status}"


class PushSender:
    """POSTs one event to the CRM push URL through the transport."""

    def __init__(self, url: str, push_format: str = "form", transport=None, max_in_flight: Optional[int] = None):
        self.url = url
        self.push_format = push_format
        if transport is None:
            from .transport import HttpTransport

            transport = HttpTransport()
        self.transport = transport
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._quiet = threading.Condition(self._lock)
        self._in_flight = 0
        import queue  # a hook that hands its events to the worker never makes a sender

        self._jobs: "queue.SimpleQueue" = queue.SimpleQueue()
        self._idle = 0  # sender threads waiting for a job, less the jobs already given to them
        self._closed = False

    def _post(self, payload: Mapping[str, str], limit_s: float, cutoff: Cutoff) -> Attempt:
        started = time.monotonic()
        body, content_type = encode_body(payload, self.push_format)
        try:
            answer = self.transport.post(self.url, body, content_type, limit_s, cutoff)
            ok, detail = 200 <= answer.status < 300, answer_detail(answer, self.url)
            if answer.not_followed or answer.redirects:
                # The operator should point CLINICA_CRM_PUSH_URL where the CRM is now.
                log.warning("push: the CRM push URL redirects: %s; set CLINICA_CRM_PUSH_URL to where the CRM "
                            "is now", detail)
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
        if wait_s >= limit_s + CUT_GRACE_S:
            return self._attempt_here(payload, limit_s)
        return self._attempt(payload, limit_s, wait_s, on_late)

    def _post_within(self, payload: Mapping[str, str], limit_s: float) -> Attempt:
        """:meth:`_post`, cut at the limit by :data:`CUTTER`."""
        from .transport import CUTTER, Cutoff

        cutoff = Cutoff(time.monotonic() + limit_s)
        CUTTER.watch(cutoff)
        try:
            return self._post(payload, limit_s, cutoff)
        finally:
            CUTTER.forget(cutoff)

    def _attempt_here(self, payload: Mapping[str, str], limit_s: float) -> Attempt:
        """On the caller's thread, which waits for the end anyway (the worker): no hand-off
        to a sender thread and back for every event."""
        try:
            return self._post_within(payload, limit_s)
        finally:
            self._attempt_ended()

    def _attempt_ended(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._quiet.notify_all()

    def _attempt(self, payload: Mapping[str, str], limit_s: float, wait_s: float,
                 on_late: Optional[Callable[[Attempt], None]]) -> Attempt:
        """On a sender thread; the caller waits ``wait_s`` at most."""
        box = []
        done = threading.Event()
        handed_over = []

        def attempt():
            try:
                result = self._post_within(payload, limit_s)
                with self._lock:
                    box.append(result)
                    late = bool(handed_over)
                done.set()
                if late and on_late is not None:
                    on_late(result)
            finally:
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
            import queue

            try:
                job = self._jobs.get(timeout=SENDER_IDLE_S)
            except queue.Empty:
                with self._lock:
                    try:  # given a job just as the wait ended
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return
