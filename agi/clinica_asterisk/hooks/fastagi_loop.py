"""The FastAGI server on one event loop: every session, every store write and every push on
one thread, instead of a thread per session.

Why: on two cores a thread per session spent more CPU switching threads and passing the
GIL around than on the hooks themselves (some 2.2 ms of CPU per session, about 450
sessions/s).  Here the hooks are the very same steps (:func:`.stages.hook_steps`, which
also run in script mode through :func:`.stages.drive`), driven by a ``selectors`` loop:

* **AGI**: each command a step yields is written to the session's socket; its answer,
  when it comes, is sent back into the steps.  Each wait has the deadline the blocking
  channel would have had (counted from the env block); when it passes, the steps get
  ``DeadlineExceeded`` as they would from :class:`..agi.channel.LineStream`.
* **The store, group commit**: the writes that hooks reach in one turn of the loop run
  in one transaction (:meth:`..store.database.Store.group`), each in a savepoint of its
  own; a hook learns its write's outcome, and only then answers Asterisk, after that one
  commit.  Recording the pushes' outcomes is batched the same way.
* **Pushes** go out on kept-alive connections to the CRM (at most
  :data:`MAX_CRM_CONNECTIONS`), sent and read on the loop; a hook waits for its push up to
  its deadline, as in script mode; a push still under way then goes on to its limit
  (``CLINICA_DELIVER_TIMEOUT_MS``) and its outcome is recorded when it ends.  An
  ``https://`` CRM, or one that answers with a redirect, is sent to through
  :class:`..delivery.sender.PushSender` on its threads instead (TLS and redirects are
  handled there), the outcome handed back to the loop.

What the threaded server guarantees holds here too: at most ``CLINICA_FASTAGI_POOL``
sessions in flight (the next connection is closed at once: ``AGISTATUS=FAILURE``), the
allow-list, the spare descriptor for a full descriptor table, the env block's limits and
time-out, a graceful stop (the listener closes at once, the sessions in flight and their
pushes finish), and :meth:`healthy` for the watchdog.
"""

from __future__ import annotations

import collections
import errno
import gc
import heapq
import logging
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Deque, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from asterisk.agi import AGIException

from ..agi.channel import AnswerLines, ChannelClosed, LineTooLong, read_steps, say_steps, set_steps
from ..agi.request import MAX_ENV_BYTES, MAX_ENV_LINES, MAX_LINE_BYTES, AgiRequest, EnvBlockError, parse_env_block, parse_env_line
from ..config import Settings
from ..deadline import Deadline, DeadlineExceeded
from ..delivery.sender import Attempt, PushSender, answer_detail, encode_body, failure_text
from ..delivery.transport import MAX_ANSWER_BYTES, HttpAnswer, _credentials, redirect_target
from ..delivery.worker import record_attempt
from ..store.database import Store, StoreError
from ..store.outbox import lease_owner
from .fastagi import FastAgiServer, _no_delay, log, max_session_s
from .session import session_steps
from .stages import HookServices, Read, Say, Send, Set, Write

# Kept-alive connections to the CRM, at most (each push takes one while it waits).
MAX_CRM_CONNECTIONS = 32
# A session whose peer sends this much while no answer is awaited is broken.
MAX_UNREAD_BYTES = 64 * 1024
# The call store's write-ahead log is copied into the database this often (see
# LoopFastAgiServer._checkpoints_aside).
CHECKPOINT_EVERY_S = 0.5
# Threads for pushes the loop does not send itself (https, redirects).
FALLBACK_THREADS = 32

_ENV, _AGI, _WAIT, _DONE = "env", "agi", "wait", "done"


class LoopSessions:
    """The sessions in flight, bounded like the threaded server's pool (same surface:
    ``size``, ``busy``, ``longest_busy_s``, ``wait_idle``, ``close``)."""

    def __init__(self, size: int, clock, start: Callable[[object], bool]):
        self.size = size
        self.submit = start  # (connection, client, accepted at) -> False when full
        self._clock = clock
        self.started: Dict[int, float] = {}  # fd -> when the session was accepted
        self._idle = threading.Condition()

    @property
    def busy(self) -> int:
        return len(self.started)

    def longest_busy_s(self) -> float:
        started = list(self.started.values())
        return self._clock() - min(started) if started else 0.0

    def ended(self) -> None:
        with self._idle:
            self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> int:
        end = time.monotonic() + timeout_s
        with self._idle:
            while self.started and time.monotonic() < end:
                self._idle.wait(min(0.1, max(0.0, end - time.monotonic())))
            return len(self.started)

    def close(self) -> None:
        pass


class _Session:
    __slots__ = ("sock", "fd", "client", "accepted_at", "settings", "buf", "env", "env_left", "state",
                 "steps", "sub", "answer", "op_deadline", "deadline", "token", "out", "services",
                 "broken", "send", "hung_up")

    def __init__(self, sock, client, accepted_at, settings):
        self.sock, self.fd, self.client, self.accepted_at, self.settings = sock, sock.fileno(), client, accepted_at, settings
        self.buf = bytearray()
        self.env: List[str] = []
        self.env_left = MAX_ENV_BYTES
        self.state = _ENV
        self.steps = self.sub = self.answer = self.op_deadline = self.deadline = self.services = self.send = None
        self.token = 0
        self.out = b""
        self.broken = ""
        self.hung_up = False


class _Sending:
    __slots__ = ("events", "n", "until", "attempt_s", "push")

    def __init__(self, step: Send):
        self.events, self.n, self.until, self.attempt_s, self.push = list(step.events), 0, step.until_monotonic, step.attempt_s, None


class _Slowly(Exception):
    """An env block the fast path leaves to the line-by-line one (CR, long lines)."""


class LoopFastAgiServer(FastAgiServer):
    """:class:`.fastagi.FastAgiServer` (bind, accept, allow-list, descriptors, reload) with
    its sessions on the accepting thread's event loop."""

    engine = "loop"

    def __init__(self, settings: Settings, bind=None, sender: Optional[PushSender] = None, clock=time.monotonic):
        super().__init__(settings, bind=bind, sender=sender, clock=clock)
        self.pool = LoopSessions(settings.fastagi_pool, clock, self._start)
        self._sel: Optional[selectors.BaseSelector] = None
        self._sessions: Dict[int, _Session] = {}
        self._timers: List[Tuple[float, int, int, object]] = []
        self._seq = 0
        # (session or None, work, then): then(session, value, error) gets the outcome after the commit
        self._writes: List[Tuple[Optional[_Session], Callable[[], object], Optional[Callable]]] = []
        self._store_obj: Optional[Store] = None
        self._services: Dict[str, HookServices] = {}
        self._services_settings: Optional[Settings] = None
        self._crm: Optional[_CrmClient] = None
        self._handed_back: Deque[Callable[[], None]] = collections.deque()
        self._listening = False
        self.on_stopping: Optional[Callable[[int], None]] = None  # the listener closed: sessions in flight
        self._checkpointer: Optional[threading.Event] = None

    # --- the loop ---------------------------------------------------------------------

    def serve_forever(self, on_tick: Optional[Callable[[], None]] = None, tick_s: float = 0.5) -> None:
        if self._sock is None:
            self.bind()
        self._tick_s = tick_s
        # What start-up made lives as long as the process: out of the garbage collector's
        # full passes, which would otherwise walk it all while every session waits.
        gc.freeze()
        sel = self._sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._listen(True)
        drain_until = None
        ticked = None
        try:
            while True:
                self._last_turn = now = self._clock()
                if self._stop.is_set():
                    if drain_until is None:
                        self._listen(False)
                        self._close_listener()
                        drain_until = now + max_session_s(self.settings) + self.settings.deliver_timeout_s + 1.0
                        if self.on_stopping is not None:
                            self.on_stopping(len(self._sessions))
                    if (not self._sessions and not self._crm_busy()) or now >= drain_until:
                        break
                elif not self._listening and now >= self._paused_until:
                    self._listen(True)
                if on_tick is not None and (ticked is None or now - ticked >= 0.05):
                    ticked = now
                    on_tick()
                timeout = tick_s
                if self._timers:
                    timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
                if self._writes or self._handed_back:
                    timeout = 0.0
                for key, mask in sel.select(timeout):
                    data = key.data
                    if data is None:
                        self._drain_wake_pipe()
                        ticked = None
                    elif data == "listen":
                        if not self._stop.is_set():
                            self._accept_some()
                            if self._clock() < self._paused_until:
                                self._listen(False)
                    else:
                        data(mask)
                self._run_timers()
                while self._handed_back:
                    self._handed_back.popleft()()
                while self._writes:
                    self._commit_writes()
        finally:
            left = len(self._sessions)
            for session in list(self._sessions.values()):
                self._close_session(session)
            if self._crm is not None:
                self._crm.close()
            self._listen(False)
            self._close_listener()
            sel.close()
            if self._store_obj is not None:
                self._store_obj.close()
                self._store_obj = None
            if self._checkpointer is not None:
                self._checkpointer.set()
                self._checkpointer = None
            self._left = left
            self._stopped.set()

    def _listen(self, on: bool) -> None:
        if self._sel is None or self._sock is None or on == self._listening:
            return
        if on:
            self._sel.register(self._sock, selectors.EVENT_READ, "listen")
        else:
            self._sel.unregister(self._sock)
        self._listening = on

    def _accept_some(self) -> None:
        # The threaded server's accept (allow-list, descriptors) hands sessions to the pool:
        # here ``pool.submit`` is :meth:`_start`.
        super()._accept_some()

    def _crm_busy(self) -> bool:
        return self._crm is not None and self._crm.in_flight > 0

    def drain(self, timeout_s: Optional[float] = None) -> int:
        """The loop finished the sessions in flight before it returned."""
        return getattr(self, "_left", 0)

    def wake_soon(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the loop (from any thread)."""
        self._handed_back.append(job)
        self.wake()

    # --- timers ---------------------------------------------------------------------------

    def _at(self, when: float, session: Optional[_Session], token: int, what: object) -> None:
        """At ``when``: ``what()`` if callable; else the session's wait times out, if it is
        still the wait ``token`` names."""
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, session, (token, what)))

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, session, (token, what) = heapq.heappop(timers)
            if callable(what):
                what()
                continue
            if session.state == _DONE or session.token != token:
                continue  # that wait is over
            if session.state == _ENV:
                self._drop(session, f"no complete env block within {int(session.settings.fastagi_session_timeout_s * 1000)} ms",
                           logging.WARNING)
            elif session.state == _AGI:
                self._advance(session, error=DeadlineExceeded("waiting for Asterisk"))

    # --- sessions -------------------------------------------------------------------------

    def _start(self, job) -> bool:
        conn, client, accepted_at = job
        if self._stop.is_set() or len(self._sessions) >= self.pool.size:
            return False
        conn.setblocking(False)
        _no_delay(conn)
        session = _Session(conn, client, accepted_at, self.settings)  # a reload applies to the next one
        self._sessions[session.fd] = session
        self.pool.started[session.fd] = accepted_at
        self._sel.register(conn, selectors.EVENT_READ, lambda mask, s=session: self._on_ready(s, mask))
        self._at(time.monotonic() + session.settings.fastagi_session_timeout_s, session, session.token, "env")
        return True

    def _on_ready(self, session: _Session, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and session.out:
            self._flush(session)
        if not mask & selectors.EVENT_READ or session.state == _DONE:
            return
        try:
            chunk = session.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._closed_by_peer(session)
            return
        session.buf += chunk
        if session.state == _ENV:
            self._read_env(session)
        elif session.state == _AGI:
            self._read_answers(session)
        elif len(session.buf) > MAX_UNREAD_BYTES:
            session.broken = f"the peer sent more than {MAX_UNREAD_BYTES} bytes unasked"
            session.buf = bytearray()

    def _closed_by_peer(self, session: _Session) -> None:
        if session.state == _ENV:
            self._drop(session, "closed before sending an env block", logging.INFO)
            return
        session.broken = session.broken or "Asterisk closed the AGI stream"
        try:
            self._sel.unregister(session.sock)
        except (KeyError, ValueError):
            pass
        if session.state == _AGI:
            self._advance(session, error=ChannelClosed(session.broken))

    def _read_env(self, session: _Session) -> None:
        """The env block, within :class:`..agi.channel.LineStream`'s limits: whole, when its
        empty line is in (the usual case: it comes in one segment); else line by line so
        far, so that garbage is dropped at its first line, not at the time-out."""
        buf = session.buf
        limit = session.env_left
        end = buf.find(b"\n\n", 0, limit)
        if end >= 0 and not session.env:
            block = bytes(buf[:end + 2])
            del buf[:end + 2]
            lines = block.decode("utf-8", "replace").split("\n")[:-2]
            try:
                if len(lines) > MAX_ENV_LINES:
                    raise EnvBlockError(f"env block longer than {MAX_ENV_LINES} lines")
                if any(len(line) >= MAX_LINE_BYTES for line in lines) or b"\r" in block:
                    raise _Slowly()
                request = AgiRequest(parse_env_block(lines))
            except EnvBlockError as exc:
                self._drop(session, f"not an AGI env block: {exc}", logging.WARNING)
                return
            except _Slowly:
                session.buf = bytearray(block) + buf
            else:
                self._begin_hook(session, request)
                return
        buf = session.buf
        while True:
            limit = min(MAX_LINE_BYTES, session.env_left)
            end = buf.find(b"\n", 0, limit + 1)
            if end < 0:
                if len(buf) > limit:
                    self._drop(session, f"not an AGI env block: env block longer than {MAX_ENV_BYTES} bytes, "
                                        f"or a line longer than {MAX_LINE_BYTES}", logging.WARNING)
                return
            raw = bytes(buf[:end + 1])
            del buf[:end + 1]
            session.env_left -= len(raw)
            line = raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", "replace")
            try:
                if line == "":
                    request = AgiRequest(parse_env_block(session.env))
                    self._begin_hook(session, request)
                    return
                if len(session.env) == MAX_ENV_LINES:
                    raise EnvBlockError(f"env block longer than {MAX_ENV_LINES} lines")
                parse_env_line(line)
            except EnvBlockError as exc:
                self._drop(session, f"not an AGI env block: {exc}", logging.WARNING)
                return
            session.env.append(line)

    def _begin_hook(self, session: _Session, request: AgiRequest) -> None:
        settings = session.settings
        stage = request.stage_and_args[0]
        session.deadline = deadline = Deadline(settings.deadline_for(stage), clock=self._clock)
        session.state = _WAIT
        session.token += 1
        session.services, session.steps = session_steps(
            request, deadline, lambda: self._services_for(settings, settings.pbx_id or session.client))
        self._advance(session)

    def _services_for(self, settings: Settings, pbx: str) -> HookServices:
        if settings is not self._services_settings:
            self._services, self._services_settings = {}, settings
        key = pbx
        services = self._services.get(key)
        if services is None:
            if self._store_obj is None or self._store_obj.path != settings.store_location:
                if self._store_obj is not None:
                    self._store_obj.close()
                self._services.clear()
                self._store_obj = Store(settings.store_location, busy_timeout_s=settings.hook_deadline_s,
                                        spool_path=settings.spool_path, spool_on_failure=True)
                self._checkpoints_aside(self._store_obj)
            if len(self._services) > 1000:
                self._services.clear()
            services = self._services[key] = HookServices(settings, self._store_obj, self.sender, pbx=pbx)
        return services

    def _checkpoints_aside(self, store: Store) -> None:
        """SQLite copies its write-ahead log into the database (a checkpoint) in the commit
        that fills it past 1000 pages: some milliseconds every fraction of a second under
        load, during which every session on the loop would wait.  The loop's connection
        leaves that to a thread of its own (SQLite works without Python's lock), which
        checkpoints what no reader needs any more (PASSIVE: writers go on meanwhile)."""
        if store.shared or self._checkpointer is not None:
            return
        store.conn.execute("PRAGMA wal_autocheckpoint=0")
        stop = self._checkpointer = threading.Event()
        path = store.path

        def checkpoint():
            import sqlite3

            conn = sqlite3.connect(path, timeout=1.0, isolation_level=None, check_same_thread=False)
            try:
                while not stop.wait(CHECKPOINT_EVERY_S):
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.Error as exc:
                        log.warning("checkpoint of the call store failed: %s", exc)
            finally:
                conn.close()
        threading.Thread(target=checkpoint, name="clinica-checkpoint", daemon=True).start()

    def _read_answers(self, session: _Session) -> None:
        buf = session.buf
        while session.state == _AGI:
            end = buf.find(b"\n", 0, MAX_LINE_BYTES + 1)
            if end < 0:
                if len(buf) > MAX_LINE_BYTES:
                    session.broken = f"the peer sent a line longer than {MAX_LINE_BYTES} bytes"
                    session.buf = bytearray()
                    self._advance(session, error=LineTooLong(session.broken))
                return
            line = bytes(buf[:end]).rstrip(b"\r").decode("utf-8", "replace")
            del buf[:end + 1]
            if line.strip() == "HANGUP":
                session.hung_up = True  # the caller hung up; commands may still be answered
                continue
            try:
                reply = session.answer.feed(line)
            except AGIException as exc:
                self._advance(session, error=exc)
                continue
            if reply is not None:
                self._advance(session, reply)

    def _advance(self, session: _Session, value=None, error: Optional[BaseException] = None) -> None:
        """Run the session's steps until they wait for something."""
        while True:
            if session.sub is not None:
                try:
                    line = session.sub.send(value) if error is None else session.sub.throw(error)
                except StopIteration as stop:
                    session.sub, value, error = None, stop.value, None
                except Exception as exc:
                    session.sub, value, error = None, None, exc
                else:
                    value = error = None
                    if session.broken:
                        error = LineTooLong(session.broken) if "longer" in session.broken else ChannelClosed(session.broken)
                        continue
                    if session.op_deadline.remaining() <= 0:
                        error = DeadlineExceeded("waiting for Asterisk")
                        continue
                    try:
                        self._write(session, line.encode("utf-8"))
                    except ChannelClosed as exc:
                        error = exc
                        continue
                    session.state = _AGI
                    session.answer = AnswerLines()
                    session.token += 1
                    self._at(session.op_deadline.at, session, session.token, "agi")
                    if session.buf:
                        self._read_answers(session)
                    return
            session.state = _WAIT
            session.token += 1
            try:
                step = session.steps.send(value) if error is None else session.steps.throw(error)
            except StopIteration:
                self._close_session(session)
                return
            except Exception:  # hook_steps never raises; a bug must not take the loop down
                log.exception("session failed")
                self._close_session(session)
                return
            value = error = None
            kind = type(step)
            if kind is Read:
                session.sub, session.op_deadline = read_steps(step.names), session.deadline
            elif kind is Set:
                session.sub, session.op_deadline = set_steps(step.name, step.value), step.within or session.deadline
            elif kind is Say:
                session.sub, session.op_deadline = say_steps(step.message), step.within or session.deadline
            elif kind is Write:
                self._writes.append((session, step.work, None))
                return
            elif kind is Send:
                session.send = _Sending(step)
                self._send_next(session)
                return
            else:
                error = TypeError(f"not a hook step: {step!r}")

    def _write(self, session: _Session, data: bytes) -> None:
        if session.out:
            session.out += data
            return
        try:
            sent = session.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            session.broken = "Asterisk closed the AGI stream"
            raise ChannelClosed(session.broken) from exc
        if sent < len(data):
            session.out = data[sent:]
            self._sel.modify(session.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                             lambda mask, s=session: self._on_ready(s, mask))

    def _flush(self, session: _Session) -> None:
        try:
            sent = session.sock.send(session.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            session.out = b""
            session.broken = "Asterisk closed the AGI stream"
            return
        session.out = session.out[sent:]
        if not session.out:
            self._sel.modify(session.sock, selectors.EVENT_READ, lambda mask, s=session: self._on_ready(s, mask))

    def _drop(self, session: _Session, reason: str, level: int) -> None:
        self._dropped(session.client, session.accepted_at, reason, level)
        self._close_session(session)

    def _close_session(self, session: _Session) -> None:
        if session.state == _DONE:
            return
        session.state = _DONE
        session.token += 1
        self._sessions.pop(session.fd, None)
        self.pool.started.pop(session.fd, None)
        try:
            self._sel.unregister(session.sock)
        except (KeyError, ValueError):
            pass
        if session.out:  # the last command (the status) still on its way: give it a moment
            session.sock.setblocking(True)
            session.sock.settimeout(0.05)
            try:
                session.sock.sendall(session.out)
            except OSError:
                pass
        try:
            session.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        session.sock.close()
        # Timers of its waits may still name the session until they come due: let them hold
        # an empty shell, not the hook's frames and buffers.
        session.steps = session.sub = session.answer = session.services = session.send = None
        session.buf, session.env, session.out = bytearray(), [], b""
        self.pool.ended()

    # --- the store: group commit ------------------------------------------------------------

    def _commit_writes(self) -> None:
        batch, self._writes = self._writes, []
        outcomes: List[Tuple[Optional[_Session], object, Optional[BaseException], Optional[Callable]]] = []
        store = self._store_obj
        try:
            if store is None:
                raise StoreError("the call store is not open")
            with store.group():
                for session, work, then in batch:
                    try:
                        outcomes.append((session, work(), None, then))
                    except Exception as exc:  # that hook's savepoint is rolled back
                        outcomes.append((session, None, exc, then))
        except Exception as exc:  # BEGIN or COMMIT failed: none of it is stored
            if not isinstance(exc, StoreError):
                exc = StoreError(f"cannot commit to the call store: {exc}")
            outcomes = [(session, None, exc, then) for session, _, then in batch]
        for session, value, error, then in outcomes:
            if session is None:
                if error is not None:
                    log.warning("push outcome not recorded (the lease runs out and the event is sent again): %s",
                                error)
            elif session.state != _DONE:
                (then or LoopFastAgiServer._advance)(self, session, value, error)

    # --- pushes -----------------------------------------------------------------------------

    def _crm_client(self, settings: Settings) -> "_CrmClient":
        if self._crm is None or self._crm.url != settings.crm_push_url or self._crm.push_format != settings.push_format:
            if self._crm is not None:
                self._crm.close()
            self._crm = _CrmClient(self, settings.crm_push_url, settings.push_format, self.sender)
        return self._crm

    def _send_next(self, session: _Session) -> None:
        """:func:`..delivery.worker.send_leased_events`, on the loop: each event in turn,
        its outcome recorded (group commit) before the next; the session waits no later
        than its ``until``."""
        sending = session.send
        services = session.services
        outbox, max_backoff_s = services.outbox, services.settings.deliver_max_backoff_s
        if sending.n == len(sending.events):
            session.send = None
            self._advance(session, True)
            return
        left = sending.until - time.monotonic()
        event = sending.events[sending.n]
        owner = (lease_owner(),)
        rest = [e.id for e in sending.events[sending.n + 1:]]
        if left <= 0.01:
            unsent = [event.id, *rest]
            self._writes.append((session, lambda: outbox.release(unsent, owner[0]), _stop_sending))
            return
        session.token += 1
        token = session.token

        def answered(attempt: Attempt, late: bool) -> None:
            if late or session.state == _DONE or session.token != token:
                self._writes.append((None, lambda: record_attempt(outbox, event, owner, attempt, max_backoff_s,
                                                                  late=late), None))
                return
            session.token += 1

            def record():
                if record_attempt(outbox, event, owner, attempt, max_backoff_s) == "sent":
                    return True
                if rest:  # a failed event's lease ended with its failure; the later ones wait behind it
                    outbox.release(rest, owner[0])
                return False
            self._writes.append((session, record, _sent_one))

        sending.push = self._crm_client(services.settings).post(event.payload, max(sending.attempt_s, left), answered)
        self._at(sending.until, session, token, lambda: self._push_waited(session, token))

    def _push_waited(self, session: _Session, token: int) -> None:
        """The hook's wait is over and its push is not: it goes on (its lease covers it)."""
        if session.state == _DONE or session.token != token:
            return
        session.token += 1
        sending, services = session.send, session.services
        push = sending.push
        push.late = True
        event = sending.events[sending.n]
        rest = [e.id for e in sending.events[sending.n + 1:]]
        attempt = Attempt(False, f"no answer within {push.waited():.1f} s; the push goes on for up to "
                                 f"{push.limit_s:g} s", int(push.waited() * 1000), in_flight=True)

        def record():
            record_attempt(services.outbox, event, (lease_owner(),), attempt, services.settings.deliver_max_backoff_s)
            if rest:
                services.outbox.release(rest, lease_owner())
            return False
        self._writes.append((session, record, _stop_sending))


def _sent_one(server: LoopFastAgiServer, session: _Session, value, error) -> None:
    if error is None and value:
        session.send.n += 1
        server._send_next(session)
        return
    _stop_sending(server, session, value, error)


def _stop_sending(server: LoopFastAgiServer, session: _Session, value, error) -> None:
    session.send = None
    server._advance(session, False if error is None else None, error)


class _Push:
    __slots__ = ("payload", "body", "limit_s", "started", "done", "late", "answered", "conn", "counted")

    def __init__(self, payload, body: bytes, limit_s: float, answered):
        self.payload, self.body, self.limit_s, self.answered = payload, body, limit_s, answered
        self.started = time.monotonic()
        self.done = self.late = self.counted = False
        self.conn = None

    def waited(self) -> float:
        return time.monotonic() - self.started


class _CrmConnection:
    __slots__ = ("sock", "push", "inbuf", "reused", "connected", "out")

    def __init__(self, sock):
        self.sock, self.push, self.inbuf, self.reused, self.connected, self.out = sock, None, bytearray(), False, False, b""


class _CrmClient:
    """POSTs to a plain-HTTP CRM on kept-alive connections, on the loop (at most
    :data:`MAX_CRM_CONNECTIONS`; pushes beyond wait for one in order).  Anything else
    (https, a redirect) goes through the threaded :class:`PushSender`."""

    def __init__(self, server: LoopFastAgiServer, url: str, push_format: str, sender: PushSender):
        self.server, self.url, self.push_format, self.sender = server, url, push_format, sender
        parts = urlsplit(url)
        self.native = parts.scheme == "http" and parts.hostname is not None
        self.address = (parts.hostname, parts.port or 80) if self.native else None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else ""
        auth = _credentials(parts)
        self.head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: clinica-asterisk\r\n"
                     + (f"Authorization: {auth}\r\n" if auth else "")).encode("latin-1") if self.native else b""
        self.idle: List[_CrmConnection] = []
        self.conns = 0
        self.waiting: Deque[_Push] = collections.deque()
        self.in_flight = 0
        self._threads: Optional[ThreadPoolExecutor] = None

    def post(self, payload, limit_s: float, answered) -> _Push:
        body, content_type = encode_body(payload, self.push_format)
        push = _Push(payload, body, limit_s, answered)
        limit = self.server.pool.size
        if self.in_flight >= limit:
            self._finish(push, Attempt(False, f"{self.in_flight} pushes already under way (is the CRM slow?)", 0,
                                       tried=False))
            return push
        self.in_flight += 1
        push.counted = True
        if not self.native:
            self._threaded(push, payload)
            return push
        push.body = (self.head + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode("latin-1")
                     + body)
        self.server._at(push.started + limit_s, None, 0, lambda: self._cut(push))
        self._dispatch(push)
        return push

    # --- the threaded way -------------------------------------------------------------------

    def _threaded(self, push: _Push, payload) -> None:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(FALLBACK_THREADS, thread_name_prefix="clinica-push-loop")

        def attempt():
            result = self.sender.post(payload, push.limit_s)
            self.server.wake_soon(lambda: self._finish(push, result))
        self._threads.submit(attempt)

    def _redirected(self, push: _Push, status: int, location: Optional[str]) -> None:
        target, why_not = redirect_target(self.url, status, location, 0)
        if why_not:
            answer = HttpAnswer(status, target, why_not, 0, self.url)
            detail = answer_detail(answer, self.url)
            log.warning("push: the CRM push URL redirects: %s; set CLINICA_CRM_PUSH_URL to where the CRM is now", detail)
            self._finish(push, Attempt(False, detail, int(push.waited() * 1000)))
            return
        if self._threads is None:
            self._threads = ThreadPoolExecutor(FALLBACK_THREADS, thread_name_prefix="clinica-push-loop")
        body, content_type = encode_body(push.payload, self.push_format)
        limit_s = max(0.05, push.limit_s - push.waited())

        def attempt():
            sender = PushSender(target, self.push_format, self.sender.transport)
            result = sender.post(push.payload, limit_s)
            self.server.wake_soon(lambda: self._finish(push, result))
        self._threads.submit(attempt)

    # --- on the loop ------------------------------------------------------------------------

    def _dispatch(self, push: _Push) -> None:
        while self.idle:
            conn = self.idle.pop()
            if _dropped(conn.sock):
                self._discard(conn)
                continue
            self._send(conn, push)
            return
        if self.conns < MAX_CRM_CONNECTIONS:
            self._open(push)
        else:
            self.waiting.append(push)

    def _open(self, push: _Push) -> None:
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            self._finish(push, Attempt(False, failure_text(exc, self.url), int(push.waited() * 1000)))
            return
        sock.setblocking(False)
        _no_delay(sock)
        conn = _CrmConnection(sock)
        self.conns += 1
        conn.push = push
        push.conn = conn
        err = sock.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._failed(conn, OSError(err, os_strerror(err)))
            return
        conn.out = push.body
        self.server._sel.register(sock, selectors.EVENT_WRITE, lambda mask, c=conn: self._on_ready(c, mask))

    def _send(self, conn: _CrmConnection, push: _Push) -> None:
        conn.push, push.conn, conn.inbuf = push, conn, bytearray()
        conn.out = push.body
        self._flush(conn)
        if conn.push is push:
            self.server._sel.modify(conn.sock, selectors.EVENT_WRITE if conn.out else selectors.EVENT_READ,
                                    lambda mask, c=conn: self._on_ready(c, mask))

    def _flush(self, conn: _CrmConnection) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._failed(conn, exc)
            return
        conn.out = conn.out[sent:]

    def _on_ready(self, conn: _CrmConnection, mask: int) -> None:
        if conn.push is None:  # idle: the CRM closed it (or sent something unasked)
            self._discard(conn)
            return
        if mask & selectors.EVENT_WRITE:
            if not conn.connected:
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._failed(conn, OSError(err, os_strerror(err)))
                    return
                conn.connected = True
            self._flush(conn)
            if conn.push is not None and not conn.out:
                self.server._sel.modify(conn.sock, selectors.EVENT_READ, lambda mask, c=conn: self._on_ready(c, mask))
            return
        try:
            chunk = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._failed(conn, exc)
            return
        if not chunk:
            self._answer(conn, eof=True)
            return
        conn.inbuf += chunk
        self._answer(conn, eof=False)

    def _answer(self, conn: _CrmConnection, eof: bool) -> None:
        buf = conn.inbuf
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            if eof or len(buf) > MAX_ANSWER_BYTES:
                self._failed(conn, ConnectionResetError(errno.ECONNRESET, "Remote end closed connection without response"))
            return
        lines = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(None, 2)[1])
        except (IndexError, ValueError):
            self._failed(conn, OSError(errno.EPROTO, "not an HTTP answer"))
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = len(buf) - head_end - 4
        keep = headers.get("connection", "").lower() != "close" and lines[0].startswith("HTTP/1.1")
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                length, keep = 0, False
            if body < length and not eof and length <= MAX_ANSWER_BYTES:
                return  # more to come
            keep = keep and body == length
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            if not buf.endswith(b"0\r\n\r\n") and not eof and len(buf) < MAX_ANSWER_BYTES:
                return
        elif not eof and len(buf) < MAX_ANSWER_BYTES:
            return  # the answer ends when the CRM closes
        else:
            keep = False
        push = conn.push
        conn.push, push.conn = None, None
        if keep and not eof:
            conn.reused, conn.inbuf = True, bytearray()
            self.idle.append(conn)
            if self.waiting:
                self._dispatch(self.waiting.popleft())
        else:
            self._discard(conn)
        if 300 <= status < 400:
            # Redirects are the threaded transport's business: this push goes on from the
            # answer (to the new address, or failed with why not), the later ones that way.
            self.native = False
            self._redirected(push, status, headers.get("location"))
            return
        answer = HttpAnswer(status, url=self.url)
        self._finish(push, Attempt(200 <= status < 300, answer_detail(answer, self.url), int(push.waited() * 1000)))

    def _failed(self, conn: _CrmConnection, exc: BaseException) -> None:
        push = conn.push
        reused = conn.reused and not conn.inbuf
        self._discard(conn)
        if push is None or push.done:
            return
        push.conn = None
        if reused:
            # The CRM closed the idle connection just as we reused it (before answering
            # anything): once more on a fresh one, as HTTP clients do.
            self._open(push)
            return
        self._finish(push, Attempt(False, failure_text(exc, self.url), int(push.waited() * 1000)))

    def _discard(self, conn: _CrmConnection) -> None:
        if conn.sock is None:
            return
        if conn in self.idle:
            self.idle.remove(conn)
        try:
            self.server._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        conn.sock = None
        self.conns -= 1
        conn.push = None
        if self.waiting and self.conns < MAX_CRM_CONNECTIONS:
            self._dispatch(self.waiting.popleft())

    def _cut(self, push: _Push) -> None:
        if push.done:
            return
        if push.conn is not None:
            conn, push.conn = push.conn, None
            conn.push = None
            self._discard(conn)
        elif push in self.waiting:
            self.waiting.remove(push)
        self._finish(push, Attempt(False, f"no answer within {push.limit_s:g} s", int(push.waited() * 1000)))

    def _finish(self, push: _Push, attempt: Attempt) -> None:
        if push.done:
            return
        push.done = True
        if push.counted:
            self.in_flight -= 1
        answered, push.answered, push.body, push.payload = push.answered, None, b"", None
        answered(attempt, push.late)

    def close(self) -> None:
        for conn in list(self.idle):
            self._discard(conn)
        if self._threads is not None:
            self._threads.shutdown(wait=False)


def _dropped(sock) -> bool:
    """An idle kept-alive connection the CRM has closed (readable with nothing to read)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def os_strerror(err: int) -> str:
    import os

    return os.strerror(err)
