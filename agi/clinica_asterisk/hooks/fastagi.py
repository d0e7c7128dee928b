"""The FastAGI server: the hooks over TCP, for PBXs that run them from another host (or
that prefer a long-running process to a script per hook).

``AGI(agi://host:4574/clinica-agi,<stage>,…)`` and ``AGI(agi://host:4574/<stage>,…)``
reach the very same session runner (:func:`.session.run_session`) as the ``clinica-agi`` script.

Two engines (``CLINICA_FASTAGI_ENGINE``, :func:`fastagi_server` picks): ``loop``, the
default, runs every session on one event loop (:mod:`.fastagi_loop`, which reuses this
module's listener, allow-list, descriptor reserve and reload); ``threads``, this module's
:class:`FastAgiServer`, runs each session on a thread of a bounded pool.

What keeps a call safe from this server:

* the listening socket has a real backlog, and sessions run on a **bounded** pool of
  worker threads; when every worker is busy a new connection is closed at once (and
  logged): Asterisk sets ``AGISTATUS=FAILURE`` and the dialplan goes on, where a queue
  would have held the call;
* a client has ``CLINICA_FASTAGI_SESSION_TIMEOUT_MS`` to send its env block, then the hook
  has ``CLINICA_HOOK_DEADLINE_MS``; a stalled or garbage-sending client is dropped;
* ``CLINICA_FASTAGI_ALLOW`` limits who may connect;
* out of file descriptors, a connection is still taken off the backlog and closed at
  once (a spare descriptor is kept for that), rather than left waiting with its call;
* stopping closes the listener first (new calls see a server that is down, which costs
  them nothing), then lets the sessions in flight finish;
* :meth:`FastAgiServer.healthy` is true only while the accept loop turns and no worker
  is stuck past the longest a session may take: the systemd watchdog is fed from it.

One log line per session: the hook's own (call id, stage, outcome, ms), or one here for a
connection refused or dropped before the hook could run.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import queue
import select
import socket
import threading
import time
from typing import Callable, Dict, Optional, Tuple

from ..agi.request import EnvBlockError
from ..agi.channel import ChannelClosed, LineStream
from ..config import ConfigError, Settings
from ..deadline import Deadline, DeadlineExceeded
from ..delivery.sender import PushSender
from ..delivery.transport import HttpTransport as KeepAliveTransport  # the one transport (name kept for hooks/)
from .session import NoSession, run_session
from .stages import HookServices
from ..store.database import Store

log = logging.getLogger("clinica_asterisk.hooks.fastagi")

# A worker may overrun the longest session by this much before the server counts as hung.
STUCK_MARGIN_S = 5.0
# Connections taken off the backlog per turn of the accept loop (then the loop ticks).
ACCEPT_BATCH = 64
# ``on_tick`` runs at most this often (and at once after a wake-up).
TICK_MIN_S = 0.05
# After running out of file descriptors, the listener rests this long.
OUT_OF_DESCRIPTORS_PAUSE_S = 0.1
# A session holds about this many descriptors (its socket, its worker's three SQLite
# files, its sender's connection to the CRM), and a process may open 1024 by default
# (the soft RLIMIT_NOFILE); the rest of the process (the API, the delivery worker, logs)
# needs the reserve.
DESCRIPTORS_PER_SESSION = 5
DEFAULT_OPEN_FILES = 1024
RESERVED_DESCRIPTORS = 200
MAX_THREADED_POOL = (DEFAULT_OPEN_FILES - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_SESSION
# The event loop (CLINICA_FASTAGI_ENGINE=loop, :mod:`.fastagi_loop`): a session holds its
# socket only (one store connection and at most 32 connections to the CRM are shared).
LOOP_SHARED_DESCRIPTORS = 32
MAX_POOL = DEFAULT_OPEN_FILES - RESERVED_DESCRIPTORS - LOOP_SHARED_DESCRIPTORS


def check_pool(settings: Settings, engine: Optional[str] = None) -> None:
    engine = engine or settings.fastagi_engine
    limit, each = (MAX_POOL, 1) if engine == "loop" else (MAX_THREADED_POOL, DESCRIPTORS_PER_SESSION)
    if settings.fastagi_pool > limit:
        raise ConfigError(f"CLINICA_FASTAGI_POOL: at most {limit} sessions at once in one process with "
                          f"CLINICA_FASTAGI_ENGINE={engine} (each needs about {each} file descriptor(s), and a "
                          f"process may open {DEFAULT_OPEN_FILES} by default); got {settings.fastagi_pool}")


def fastagi_server(settings: Settings, bind: Optional[Tuple[str, int]] = None, **kwargs) -> "FastAgiServer":
    """The server ``CLINICA_FASTAGI_ENGINE`` names: ``loop`` (the default: one event loop,
    :mod:`.fastagi_loop`) or ``threads`` (a thread per session, this module)."""
    if settings.fastagi_engine == "loop":
        from .fastagi_loop import LoopFastAgiServer

        return LoopFastAgiServer(settings, bind=bind, **kwargs)
    return FastAgiServer(settings, bind=bind, **kwargs)


def max_session_s(settings: Settings) -> float:
    """The longest a well-behaved session can take: env block, hook, last command."""
    return settings.fastagi_session_timeout_s + settings.hook_deadline_s + 1.0


def client_allowed(address: str, allow: Tuple[object, ...]) -> bool:
    """True when ``allow`` is empty or one of its networks holds ``address``."""
    if not allow:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if getattr(ip, "ipv4_mapped", None) is not None:  # a dual-stack listener
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in allow)


class WorkerPool:
    """At most ``size`` jobs at once, each on its own thread; never a queue of waiting jobs.

    :meth:`submit` hands a job to an idle worker (starting one if fewer than ``size``
    exist) or returns False at once.  Workers live on between jobs, so per-thread state
    (a SQLite connection, an HTTP session) is reused."""

    def __init__(self, size: int, work: Callable[[object], None], name: str = "fastagi",
                 clock=time.monotonic):
        self.size = size
        self._work = work
        self._name = name
        self._clock = clock
        self._lock = threading.Condition()
        self._jobs: "queue.SimpleQueue" = queue.SimpleQueue()
        self._threads = []
        self._idle = 0
        self._busy = 0
        self._busy_since: Dict[int, float] = {}
        self._closed = False

    @property
    def busy(self) -> int:
        with self._lock:
            return self._busy

    def submit(self, job) -> bool:
        with self._lock:
            if self._closed or self._busy >= self.size:
                return False
            self._busy += 1
            if self._idle > 0:
                self._idle -= 1  # that idle worker takes this job
            else:
                thread = threading.Thread(target=self._run, name=f"{self._name}-{len(self._threads) + 1}",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
            self._jobs.put(job)
        return True

    def _run(self) -> None:
        me = threading.get_ident()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._busy_since[me] = self._clock()
            try:
                self._work(job)
            except Exception:  # a bug in one session must not take a worker away
                log.exception("session failed")
            finally:
                with self._lock:
                    del self._busy_since[me]
                    self._busy -= 1
                    self._idle += 1
                    self._lock.notify_all()

    def longest_busy_s(self) -> float:
        """How long the oldest job still running has been running (0 when idle)."""
        with self._lock:
            if not self._busy_since:
                return 0.0
            return self._clock() - min(self._busy_since.values())

    def wait_idle(self, timeout_s: float) -> int:
        """Wait until no job runs or ``timeout_s`` passes; returns the jobs still running."""
        end = time.monotonic() + timeout_s
        with self._lock:
            while self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            return self._busy

    def close(self) -> None:
        """No new jobs; idle workers end (busy ones end after their job)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)


class FastAgiServer:
    """Bind, then :meth:`serve_forever` on one thread; stop with :meth:`request_stop`
    (safe from a signal handler), then :meth:`drain`."""

    engine = "threads"

    def __init__(self, settings: Settings, bind: Optional[Tuple[str, int]] = None,
                 sender: Optional[PushSender] = None, clock=time.monotonic):
        check_pool(settings, self.engine)
        self.settings = settings
        self.requested_bind = bind or settings.fastagi_bind
        self.sender = sender or _sender(settings)
        self._clock = clock
        self.pool = WorkerPool(settings.fastagi_pool, self._session, clock=clock)
        self._local = threading.local()
        self._sock: Optional[socket.socket] = None
        self._wake_r, self._wake_w = os.pipe()
        self._own_fds: Tuple[int, ...] = (self._wake_r, self._wake_w)
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._last_turn = clock()
        self._tick_s = 0.5
        self._thread: Optional[threading.Thread] = None
        self._spare: Optional[int] = _spare_descriptor()
        self._paused_until = 0.0

    # --- listening ------------------------------------------------------------------

    def bind(self) -> Tuple[str, int]:
        # The workers open the store together at their first session: create it first.
        Store(self.settings.store_location).close()
        host, port = self.requested_bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # A restart must not wait for the old connections' TIME_WAIT to expire.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(self.settings.fastagi_backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        return self.address

    @property
    def address(self) -> Tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def serve_forever(self, on_tick: Optional[Callable[[], None]] = None, tick_s: float = 0.5) -> None:
        """Accept until :meth:`request_stop`; ``on_tick`` runs on this thread every turn
        (at least every ``tick_s``).  Closes the listener before returning."""
        if self._sock is None:
            self.bind()
        self._tick_s = tick_s
        try:
            ticked = None
            while not self._stop.is_set():
                self._last_turn = now = self._clock()
                # Under load the loop turns per connection; the tick need not.
                if on_tick is not None and (ticked is None or now - ticked >= TICK_MIN_S):
                    ticked = now
                    on_tick()
                listening = [self._wake_r] if now < self._paused_until else [self._sock, self._wake_r]
                ready = select.select(listening, [], [], tick_s)[0]
                if self._wake_r in ready:
                    self._drain_wake_pipe()
                    ticked = None  # a wake-up asks for a tick (a reload)
                if self._sock in ready and not self._stop.is_set():
                    self._accept_some()
        finally:
            self._close_listener()
            self._stopped.set()

    def _accept_some(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._refuse_out_of_descriptors():
                    continue
                if exc.errno not in (errno.EMFILE, errno.ENFILE):  # reset while in the backlog
                    log.warning("accept failed: %s", exc)
                return
            client = addr[0]
            settings = self.settings
            if not client_allowed(client, settings.fastagi_allow):
                self._refuse(conn, client, "not in CLINICA_FASTAGI_ALLOW")
            elif not self.pool.submit((conn, client, self._clock())):
                self._refuse(conn, client, f"all {self.pool.size} workers busy (CLINICA_FASTAGI_POOL)")

    def _refuse_out_of_descriptors(self) -> bool:
        """Without a descriptor to accept with, a connection would wait in the backlog with
        Asterisk holding the call: give up the spare descriptor, take the connection and
        close it at once, so that Asterisk sees a refusal and the dialplan goes on.  False
        when there is no spare either: the listener then rests a moment."""
        if self._spare is None:
            self._spare = _spare_descriptor()
            if self._spare is None:
                log.error("out of file descriptors; not accepting for %.1f s", OUT_OF_DESCRIPTORS_PAUSE_S)
                self._paused_until = self._clock() + OUT_OF_DESCRIPTORS_PAUSE_S
                return False
        os.close(self._spare)
        self._spare = None
        try:
            conn, addr = self._sock.accept()
        except OSError:
            conn = None
        if conn is not None:
            self._refuse(conn, addr[0], "out of file descriptors")
        self._spare = _spare_descriptor()  # the connection's descriptor, now free again
        return conn is not None

    @staticmethod
    def _refuse(conn: socket.socket, client: str, reason: str) -> None:
        log.warning("session client=%s outcome=REFUSED ms=0 detail=%r", client, reason)
        conn.close()

    def _close_listener(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def wake(self) -> None:
        """Make the accept loop turn now (e.g. to run a reload in ``on_tick``)."""
        if self._wake_w not in self._own_fds:
            return  # closed: the number may belong to another file by now
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # a full pipe wakes the loop anyway; a closed one means we are done

    def request_stop(self) -> None:
        """Stop accepting.  Safe from a signal handler and from any thread."""
        self._stop.set()
        self.wake()

    # --- sessions -------------------------------------------------------------------

    def _store(self, settings: Settings) -> Store:
        store = getattr(self._local, "store", None)
        # A shared store's hook that spooled (its path is the spool's) tries the server again.
        if store is None or store.path != settings.store_location:
            if store is not None:
                store.close()
            store = self._local.store = Store(settings.store_location, busy_timeout_s=settings.hook_deadline_s,
                                              spool_path=settings.spool_path, spool_on_failure=True)
        return store

    def _session(self, job) -> None:
        conn, client, accepted_at = job
        settings = self.settings  # a reload applies from the next session on
        try:
            conn.setblocking(True)
            _no_delay(conn)
            try:
                run_session(LineStream(conn.fileno(), conn.fileno()),
                            Deadline(settings.fastagi_session_timeout_s, clock=self._clock),
                            lambda stage: Deadline(settings.deadline_for(stage), clock=self._clock),
                            lambda: HookServices(settings, self._store(settings), self.sender,
                                                 pbx=settings.pbx_id or client))
            except NoSession as exc:
                self._dropped(client, accepted_at, *self._why_no_session(exc.__cause__, settings))
        finally:
            _close(conn)

    @staticmethod
    def _why_no_session(cause: Optional[BaseException], settings: Settings) -> Tuple[str, int]:
        if isinstance(cause, DeadlineExceeded):
            return f"no complete env block within {int(settings.fastagi_session_timeout_s * 1000)} ms", logging.WARNING
        if isinstance(cause, EnvBlockError):
            return f"not an AGI env block: {cause}", logging.WARNING
        if isinstance(cause, ChannelClosed):
            return "closed before sending an env block", logging.INFO
        return f"connection failed before an env block: {cause}", logging.WARNING

    def _dropped(self, client: str, accepted_at: float, reason: str, level: int = logging.WARNING) -> None:
        ms = int((self._clock() - accepted_at) * 1000)
        log.log(level, "session client=%s outcome=DROPPED ms=%d detail=%r", client, ms, reason)

    # --- operations -----------------------------------------------------------------

    def healthy(self) -> bool:
        """The accept loop turned recently and no worker is stuck in a session."""
        if self._stop.is_set():
            return False
        now = self._clock()
        if now - self._last_turn > self._tick_s + STUCK_MARGIN_S:
            return False
        return self.pool.longest_busy_s() <= max_session_s(self.settings) + STUCK_MARGIN_S

    def reload(self, settings: Settings) -> None:
        """Apply new settings to the sessions that start from now on.

        The bind address needs a restart; everything else (allow-list, pool size, backlog,
        deadlines, CRM URL and format, numbers, data directory) applies at once."""
        check_pool(settings, self.engine)
        old = self.settings
        if settings.fastagi_bind != old.fastagi_bind and self.requested_bind == old.fastagi_bind:
            log.warning("CLINICA_FASTAGI_BIND changed to %s:%d; restart the service to listen there",
                        *settings.fastagi_bind)
            settings = settings.replace(fastagi_bind=old.fastagi_bind)
        if (settings.crm_push_url, settings.push_format) != (old.crm_push_url, old.push_format):
            self.sender, retired = _sender(settings), self.sender
            retired.close()
        if settings.fastagi_backlog != old.fastagi_backlog and self._sock is not None:
            self._sock.listen(settings.fastagi_backlog)
        self.pool.size = settings.fastagi_pool
        self.settings = settings

    def drain(self, timeout_s: Optional[float] = None) -> int:
        """Let the sessions in flight finish; returns how many were still running at the end."""
        if timeout_s is None:
            timeout_s = max_session_s(self.settings) + 1.0
        left = self.pool.wait_idle(timeout_s)
        self.pool.close()
        return left

    def close(self) -> None:
        """Release the listener, the pool and the descriptors; safe to call twice."""
        self._close_listener()
        self.pool.close()
        self.sender.close()
        fds, self._own_fds = self._own_fds, ()
        if self._spare is not None:
            fds, self._spare = (*fds, self._spare), None
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    # --- in a thread (tests, embedding) ---------------------------------------------

    def start(self) -> "FastAgiServer":
        if self._sock is None:
            self.bind()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"tick_s": 0.2},
                                        name="fastagi-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: Optional[float] = None) -> int:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(10)
        left = self.drain(timeout_s)
        self.close()
        return left


def _spare_descriptor() -> Optional[int]:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def _sender(settings: Settings) -> PushSender:
    # A slow CRM's pushes go on after their hooks: as many at most as sessions, so that
    # they hold a bounded number of threads and connections (the next hook queues).
    return PushSender(settings.crm_push_url, settings.push_format, KeepAliveTransport(),
                      max_in_flight=settings.fastagi_pool)


def _no_delay(conn: socket.socket) -> None:
    """Each command goes out at once: AGI is one short line each way, and Nagle's algorithm
    with the peer's delayed ACK could hold a command back for 40 ms."""
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (a test's socket pair)


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()
