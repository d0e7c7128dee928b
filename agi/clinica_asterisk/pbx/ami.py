"""The one client of the Asterisk Manager Interface (AMI), through pyst2, with a time limit
on every wait: for the API (click-to-call, hang-up, the live channels), the reconciler
(:mod:`clinica_asterisk.delivery.reconcile`) and ``doctor``.

pyst2's :class:`asterisk.manager.Manager` is used through its public API (``connect``,
``login``, ``send_action``, ``register_event``, ``logoff``) by :class:`AmiClient`, except
for what it cannot do safely, which :class:`TimedManager` wraps (see its docstring): it
connects without a timeout and waits for every answer forever.  With the wrap the TCP
connect, the greeting, and each action's response (Login, Originate, Logoff) must each
come within ``timeout_s``, else the session is cut and :class:`AmiTimeout` raised.

One short session per use (connect, login, one action, logoff): nothing to keep alive,
nothing to reconnect, and a stuck Asterisk costs one request its time limit.  The same for
an action that answers with a list of events (``CoreShowChannels``): the whole list, up
to its ``…Complete`` event, must come within ``timeout_s`` of the response.
"""

from __future__ import annotations

import itertools
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

from asterisk.manager import Manager, ManagerAuthException, ManagerException, ManagerSocketException

from ..config import Settings

HeaderValue = Union[str, List[str]]
_POLL_S = 0.05
_ACTION_IDS = itertools.count(1)


class AmiError(Exception):
    """The manager could not do what was asked; the message is safe to show.
    ``action_sent``: the action left before the failure, so Asterisk may have run it."""

    def __init__(self, message: str, action_sent: bool = False, reason: str = ""):
        super().__init__(message)
        self.action_sent = action_sent
        self.reason = reason  # what the manager or the system said, for doctor


class AmiUnreachable(AmiError):
    pass


class AmiConnectFailed(AmiUnreachable):
    """No TCP connection to the manager (nothing listens, no route)."""


class AmiLoginFailed(AmiError):
    pass


class AmiRefused(AmiError):
    """Asterisk answered the action with ``Response: Error``."""


class AmiTimeout(AmiError):
    pass


class _DeadlineQueue(queue.Queue):
    """pyst2 waits on its response queue without a timeout; this queue gives every such
    wait the manager's limit, and on expiry cuts the session and hands pyst2 the None it
    takes for a lost connection."""

    def __init__(self, manager: "TimedManager"):
        super().__init__()
        self._manager = manager

    def get(self, block=True, timeout=None):
        if not block:
            return super().get(False)
        manager = self._manager
        deadline = time.monotonic() + (manager.timeout_s if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                manager.timed_out = True
                manager.abort()
                return None
            try:
                return super().get(True, min(remaining, _POLL_S))
            except queue.Empty:
                pass
            if manager._running.is_set() and not manager._connected.is_set():
                # Asterisk hung up.  pyst2 may have announced it before this wait began
                # (then nobody wakes us): once it has handled all it read, nothing comes.
                manager.message_thread.join(max(0.0, deadline - time.monotonic()))
                try:
                    return super().get(False)
                except queue.Empty:
                    return None


class _ManagerStream:
    """The file pyst2 reads lines from and writes actions to.  Writes go straight to the
    socket; unlike a socket file object, a write or flush never fails because pyst2's
    reader thread has just closed the file after Asterisk hung up, so an action that left
    still gets the answer Asterisk sent before hanging up."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._reader = sock.makefile("rb")

    def write(self, data: bytes) -> None:
        self._sock.sendall(data)

    def flush(self) -> None:
        pass

    def __iter__(self):
        return iter(self._reader)

    def close(self) -> None:
        self._reader.close()


class TimedManager(Manager):
    """pyst2's Manager with a limit on every wait: the one place that touches its internals.

    Why its public API is not enough, exactly:

    * ``connect()`` opens the TCP connection without a timeout (a host that drops packets
      holds it for minutes) and only over IPv4: :meth:`connect` opens it with
      :func:`socket.create_connection` and hands pyst2 the stream (``_sock``), then starts
      its two threads and sets its ``_connected`` / ``_running`` flags as its own
      ``connect()`` does;
    * ``send_action()`` and ``connect()`` wait on ``_response_queue`` with no timeout, and
      when Asterisk hangs up before the wait began nobody wakes them: the queue is swapped
      for :class:`_DeadlineQueue`, which gives every wait the limit, then cuts the session;
    * ``close()`` sends Logoff and joins pyst2's threads without a limit: :meth:`close`
      does the same with the limit;
    * a list action's events arrive on pyst2's dispatch thread: :meth:`wait_for_list`
      waits for them with the limit, and sees a hang-up through ``_connected``.
    """

    def __init__(self, timeout_s: float):
        super().__init__()
        self.timeout_s = timeout_s
        self.timed_out = False
        self._raw: Optional[socket.socket] = None
        self._closed = False
        self._response_queue = _DeadlineQueue(self)

    def connect(self, host, port=5038):
        """Like pyst2's, with a connect timeout; returns the greeting."""
        try:
            raw = socket.create_connection((host, int(port)), timeout=self.timeout_s)
        except socket.timeout:
            self.timed_out = True
            raise ManagerSocketException(0, "connect timed out") from None
        except OSError as exc:
            raise ManagerSocketException(exc.errno, exc.strerror or str(exc)) from None
        # Reads block; each wait for an answer has its own limit (the queue above).
        raw.settimeout(None)
        self._raw = raw
        self._sock = _ManagerStream(raw)
        self._connected.set()
        self._running.set()
        self.message_thread.start()
        self.event_dispatch_thread.start()
        greeting = self._response_queue.get()
        if greeting is None:
            raise ManagerSocketException(0, "no greeting from the manager")
        return greeting

    def wait_for_list(self, complete: threading.Event, timeout_s: float) -> None:
        """Until a list's last event has been handled, at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not complete.wait(max(0.0, min(_POLL_S, deadline - time.monotonic()))):
            if not self._connected.is_set():
                # Asterisk hung up: the events it sent before are still being handed over.
                self.event_dispatch_thread.join(max(0.0, deadline - time.monotonic()))
                if complete.is_set():
                    return
                raise ManagerSocketException(0, "connection closed in the middle of a list")
            if time.monotonic() >= deadline:
                self.timed_out = True
                self.abort()
                raise ManagerException("the list did not end in time")

    def abort(self) -> None:
        """Cut the connection; pyst2's reader sees the end and its threads finish."""
        if self._raw is not None:
            try:
                self._raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._raw is None:
            return
        if self._connected.is_set() and not self.timed_out:
            self.timeout_s = min(self.timeout_s, 1.0)  # a courtesy: not worth a long wait
            try:
                self.logoff()
            except ManagerException:
                pass  # Asterisk may hang up first
        self.abort()
        for thread in (self.message_thread, self.event_dispatch_thread):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(self.timeout_s)
        self._running.clear()
        self._raw.close()


class SessionLimit:
    """At most ``size`` sessions with the manager at once.  A manager that does not answer
    holds each session for its time limit; without a bound, clicks on such a manager would
    take every worker of the API, and a signed call-details would wait behind them."""

    def __init__(self, size: int, wait_s: float):
        self.size = size
        self.wait_s = wait_s
        self._free = threading.BoundedSemaphore(size)

    def acquire(self) -> bool:
        return self._free.acquire(timeout=self.wait_s)

    def release(self) -> None:
        self._free.release()


@dataclass
class AmiClient:
    host: str
    port: int
    user: str
    secret: str = field(repr=False)
    timeout_s: float = 5.0
    manager_factory: Callable[[float], TimedManager] = TimedManager
    # Shared by the copies dataclasses.replace() makes (a shorter timeout for one use).
    sessions: Optional[SessionLimit] = None

    def send(self, action: Dict[str, HeaderValue]) -> Dict[str, str]:
        """Log in, send one action, log off.  The response's headers on success."""
        return self._session(action, None)[0]

    def greet(self) -> str:
        """Log in and log off: what the manager calls itself (``Asterisk Call Manager/7.0.3``)."""
        return self._session(None, None)[0]["Greeting"]

    def collect(self, action: Dict[str, HeaderValue], complete_event: str) -> List[Dict[str, str]]:
        """Log in, send one action that Asterisk answers with a list of events, log off.
        The events of the list, in the order they came, up to and with ``complete_event``."""
        action = dict(action)
        action.setdefault("ActionID", f"clinica-{os.getpid()}-{next(_ACTION_IDS)}")
        return self._session(action, complete_event)[1]

    def _session(self, action: Optional[Dict[str, HeaderValue]],
                 complete_event: Optional[str]) -> Tuple[Dict[str, str], List[Dict[str, str]]]:
        for name, value in (action or {}).items():
            for item in value if isinstance(value, list) else [value]:
                # The last guard against header injection; callers validate first.
                if any(ch in str(item) for ch in "\r\n\0"):
                    raise ValueError(f"AMI header {name} holds a line break")
        if self.sessions is None:
            return self._run(action, complete_event)
        if not self.sessions.acquire():
            raise AmiTimeout(f"the manager is busy: {self.sessions.size} sessions with it are under way")
        try:
            return self._run(action, complete_event)
        finally:
            self.sessions.release()

    def _run(self, action: Optional[Dict[str, HeaderValue]],
             complete_event: Optional[str]) -> Tuple[Dict[str, str], List[Dict[str, str]]]:
        manager = self.manager_factory(self.timeout_s)
        events: List[Dict[str, str]] = []
        complete = threading.Event()
        if complete_event is not None:
            manager.register_event("*", _list_collector(str(action["ActionID"]), complete_event, events, complete))
        what, sent = "connecting", False
        try:
            manager.connect(self.host, self.port)
            what = "logging in"
            manager.login(self.user, self.secret)
            if action is None:
                headers = {"Response": "Success", "Greeting": f"{manager.title}/{manager.version}"}
            else:
                what, sent = f"waiting for the {action.get('Action', 'action')} response", True
                response = manager.send_action(dict(action))
                headers = dict(response.headers)
            if complete_event is not None and headers.get("Response") == "Success":
                what = f"waiting for the {action.get('Action')} list"
                manager.wait_for_list(complete, self.timeout_s)
        except ManagerAuthException as exc:
            raise AmiLoginFailed("the manager refused the login", reason=_printable(exc)) from None
        except ManagerException as exc:
            reason = _printable(exc.args[-1] if exc.args else exc)
            if manager.timed_out:
                raise AmiTimeout(f"no answer from the manager while {what}", sent, reason) from None
            if what == "connecting":
                raise AmiConnectFailed(f"cannot connect to the manager at {self.host}:{self.port}",
                                       reason=reason) from None
            raise AmiUnreachable(f"the manager closed the connection while {what}", sent, reason) from None
        finally:
            manager.close()
        if headers.get("Response") != "Success":
            raise AmiRefused(_printable(headers.get("Message", "")) or "no reason given")
        return headers, list(events)


def ami_client(settings: Settings, sessions: Optional[SessionLimit] = None) -> Optional[AmiClient]:
    """The manager as configured; None when no AMI user is (click-to-call and the
    reconciler's look at the live channels are then off)."""
    if not settings.ami_user:
        return None
    return AmiClient(settings.ami_host, settings.ami_port, settings.ami_user, settings.ami_secret,
                     settings.ami_timeout_s, sessions=sessions)


def _list_collector(action_id: str, complete_event: str, events: List[Dict[str, str]],
                    complete: threading.Event):
    """A pyst2 event callback keeping the events of one list action (its ActionID)."""

    def collect(event, manager) -> None:
        if complete.is_set() or event.headers.get("ActionID") != action_id:
            return  # an unrelated event (the session may also get the user's read= events)
        events.append({k: v for k, v in event.headers.items() if isinstance(v, str)})
        if event.name == complete_event:
            complete.set()

    return collect


def _printable(text: str, limit: int = 120) -> str:
    return "".join(ch for ch in str(text) if ch.isprintable())[:limit]
