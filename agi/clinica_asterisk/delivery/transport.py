"""The one HTTP transport of pushes: the standard library's http.client, a kept-alive
connection per thread, every attempt within a hard time limit, redirects handled on
purpose.

The same transport serves the hooks (the ``clinica-agi`` script and the FastAGI service)
and the delivery worker, so a CRM's answer means the same wherever it is received.  It is
the standard library's because the script imports it at every ring, answer and hang-up
(``requests`` would cost each ~0.2 s of start-up), and because a push needs no more.

**The hard limit.**  Socket timeouts bound each operation, not the whole request (a CRM
that trickles its answer byte by byte would stretch it), so a :class:`Cutoff` shuts the
attempt's connection down at the limit, and no request leaves after it.

**Redirects.**  A 3xx is never a delivery: the event is delivered only when the URL it
was POSTed to answers 2xx.  301, 302 and 303 are not followed (HTTP clients turn the POST
into a GET without the body there: an event lost without a trace); 307 and 308 keep the
method and the body and are followed, at most :data:`MAX_REDIRECTS` hops, to the same
scheme or to https (never from https to http).  A redirect that is not followed comes back
as the answer, with its ``Location``, for the sender to log and the outbox to retry.
"""

from __future__ import annotations

import base64
import heapq
import http.client
import itertools
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional, Tuple
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

# Redirects followed in one attempt (307/308): a CRM moved once, or to https, needs one.
MAX_REDIRECTS = 3
# Redirects that keep the method and the body (RFC 9110 15.4.8, 15.4.9).
KEEPS_THE_BODY = (307, 308)
# What is read of an answer: the CRM's body says nothing a push needs.  A longer one is
# not waited for; its connection is closed instead of reused.
MAX_ANSWER_BYTES = 1 << 16


class AttemptTimedOut(TimeoutError):
    """The attempt reached its limit before the request could leave, or while it waited."""


@dataclass(frozen=True)
class HttpAnswer:
    """What the CRM answered an attempt: the status of the last request sent and, for a
    redirect not followed, its absolute ``location`` and why it was not followed."""

    status: int
    location: str = ""
    not_followed: str = ""
    redirects: int = 0  # redirects followed before this answer
    url: str = ""  # where this answer came from (after the redirects followed)


# --- the hard limit of an attempt ---------------------------------------------------------

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
        the transport keeps alive for the next attempt."""
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


# --- redirects: a pure decision -------------------------------------------------------------

def redirect_target(url: str, status: int, location: Optional[str], redirects: int) -> Tuple[str, str]:
    """Where a redirect answered to a POST to ``url`` may be followed: ``(target, "")``, or
    ``(location, why_not)`` when it must not be (``location`` made absolute, "" if none).
    ``redirects``: how many were followed already in this attempt.  Pure."""
    if not location:
        return "", "no Location"
    try:
        target = urljoin(url, location.strip())
        to, origin = urlsplit(target), urlsplit(url)
        to.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        return "", "a Location that is not a URL"
    if status not in KEEPS_THE_BODY:
        return target, "it would turn the POST into a GET without the body"
    if to.scheme not in ("http", "https") or not to.hostname:
        return target, "not an http or https URL"
    if to.scheme != origin.scheme and to.scheme != "https":
        return target, "from https to http"
    if redirects >= MAX_REDIRECTS:
        return target, f"more than {MAX_REDIRECTS} redirects"
    return target, ""


# --- the transport ----------------------------------------------------------------------------

def _credentials(parts: SplitResult) -> Optional[str]:
    if not parts.username:
        return None
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("utf-8")
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _origin(parts: SplitResult) -> Tuple[str, str, int]:
    return parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _same_site(origin: SplitResult, to: SplitResult) -> bool:
    """Whether the credentials of ``origin``'s URL may go to ``to``: the same scheme, host
    and port (a moved path), or the same host moved from http to https on the default
    ports.  Anywhere else gets only what its own URL carries (as HTTP clients do)."""
    if _origin(to) == _origin(origin):
        return True
    return (to.hostname == origin.hostname and (origin.scheme, to.scheme) == ("http", "https")
            and _origin(origin)[2] == 80 and _origin(to)[2] == 443)


class _ArmsCutoff:
    """Arms the attempt's cutoff with each new connection, before anything is sent (for
    HTTPS on the TLS socket, once the handshake is done)."""

    cutoff: Optional[Cutoff] = None

    def connect(self):
        super().connect()
        # Headers and body go out as two writes: without this, on a kept-alive connection
        # the body could wait for the CRM's delayed acknowledgement of the headers.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.cutoff is not None:
            self.cutoff.arm(self.sock)


class _Http(_ArmsCutoff, http.client.HTTPConnection):
    pass


class _Https(_ArmsCutoff, http.client.HTTPSConnection):
    pass


def _connection(parts: SplitResult, timeout_s: float):
    if parts.scheme == "https":
        import ssl

        return _Https(parts.hostname, parts.port, timeout=timeout_s, context=ssl.create_default_context())
    return _Http(parts.hostname, parts.port, timeout=timeout_s)


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


class HttpTransport:
    """POSTs over one kept-alive connection per thread (a sender thread, or the script's
    main thread): a long-running service does not pay a connection per event, and a
    script that sends two events pays one."""

    def __init__(self):
        self._local = threading.local()

    def post(self, url: str, body: bytes, content_type: str, timeout_s: float,
             cutoff: Optional[Cutoff] = None) -> HttpAnswer:
        """POST ``body`` to ``url``; follow the redirects that may be followed."""
        origin = urlsplit(url)
        authorization = _credentials(origin)
        redirects = 0
        while True:
            parts = urlsplit(url)
            headers = {"Content-Type": content_type, "User-Agent": "clinica-asterisk"}
            auth = _credentials(parts) or (authorization if _same_site(origin, parts) else None)
            if auth:
                headers["Authorization"] = auth
            status, location = self._exchange(parts, body, headers, timeout_s, cutoff)
            if not 300 <= status < 400:
                return HttpAnswer(status, redirects=redirects, url=url)
            target, why_not = redirect_target(url, status, location, redirects)
            if why_not:
                return HttpAnswer(status, target, why_not, redirects, url)
            url, redirects = target, redirects + 1

    def _exchange(self, parts: SplitResult, body: bytes, headers, timeout_s: float,
                  cutoff: Optional[Cutoff]) -> Tuple[int, Optional[str]]:
        connection, reused = self._held(parts, timeout_s)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            return _request(connection, path, body, headers, cutoff)
        except ConnectionError:
            connection.close()
            if not reused:
                self._local.held = None
                raise
            # The CRM closed the idle connection just as we reused it (before answering
            # anything): once more on a fresh one, as HTTP clients do.
            try:
                return _request(connection, path, body, headers, cutoff)
            except Exception:
                connection.close()
                self._local.held = None
                raise
        except BaseException:
            # A broken connection must not be reused; nor one left in the middle of an
            # answer (the script's parent process, its attempt handed to a child: the
            # child's copy of the socket stays open).
            connection.close()
            self._local.held = None
            raise

    def _held(self, parts: SplitResult, timeout_s: float):
        """This thread's connection to ``parts``' origin, and whether it was used before."""
        key = _origin(parts)
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
        return connection, reused

    def release(self) -> None:
        """Close this thread's connection (its sender thread is ending)."""
        held = getattr(self._local, "held", None)
        if held is not None:
            held[1].close()
            self._local.held = None


def _request(connection, path: str, body: bytes, headers, cutoff: Optional[Cutoff]) -> Tuple[int, Optional[str]]:
    connection.cutoff = cutoff
    if cutoff is not None and connection.sock is not None:
        cutoff.arm(connection.sock)  # a kept-alive connection: connect() will not run
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    response.read(MAX_ANSWER_BYTES)
    if not response.isclosed():
        connection.close()  # the rest of a long answer is not worth the wait
    return response.status, response.getheader("Location")
