"""The API served by waitress (a production WSGI server) in a thread of its own.

``clinica-asterisk serve`` runs it beside the FastAGI server::

    api = ApiServer(settings)
    api.start()          # returns once the socket listens; raises OSError if it cannot
    ...
    api.stop()

Limits: a request body larger than ``CLINICA_API_MAX_BODY`` is answered 413 (by the
application, signed, up to four times the limit; by waitress beyond, before it is read);
headers are capped at 16 KiB; at most 100 connections at once, handled by 16 worker
threads.  Forwarded headers (X-Forwarded-Proto, -Host, -Port, -For) are believed only
from 127.0.0.1, i.e. from a reverse proxy on the PBX itself, and stripped from anyone else.

What can keep a signed request waiting is bounded so that it answers within a second:

* connections that say nothing (or half a request) fill every slot: when all are taken,
  the one idle longest is closed to make room for the next (as nginx drains its idle
  keep-alive connections), instead of new connections waiting in the listen backlog until
  an idle one times out; an idle connection is closed after 10 s anyway;
* a manager (AMI) that does not answer holds a click-to-call for its time limit (and a
  click-to-call with ``async`` FALSE holds one while the extension rings): at most 12 of
  the 16 workers may be in a session with it (:class:`~.ami.SessionLimit`); one more
  click-to-call is answered 164 at once, and 4 workers are always left for the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional, Tuple

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.server import TcpWSGIServer

from ..config import Settings
from ..pbx.ami import SessionLimit, ami_client
from .app import ApiContext, build_context, create_app

log = logging.getLogger("clinica_asterisk.api.server")

THREADS = 16
CONNECTION_LIMIT = 100
CHANNEL_TIMEOUT_S = 10
# waitress closes idle connections only when it looks (its default: every 30 s).
CLEANUP_INTERVAL_S = 1
MAX_HEADER_BYTES = 16 * 1024
# Sessions with the manager at once, and how long a click-to-call waits for one.
AMI_SESSIONS = THREADS - 4
AMI_SESSION_WAIT_S = 0.2
# At most one log line a minute about connections closed to make room.
EVICTION_LOG_S = 60.0


def idlest(channels):
    """The connection idle longest among those that neither serve a request nor have an
    answer to send, or None."""
    idle = [c for c in channels if not (c.requests or c.total_outbufs_len or c.will_close or c.close_when_flushed)]
    return min(idle, key=lambda c: c.last_activity, default=None)


class _Server(TcpWSGIServer):
    """waitress's server, except at the connection limit: there it closes the connection
    idle longest to take the next one, rather than stop accepting until one times out.
    Both run on the server's loop thread; whatever goes wrong in them falls back to
    waitress's own behaviour rather than end the loop."""

    evicted = 0
    _logged_at = 0.0

    def readable(self):
        now = time.time()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            self.maintenance(now)
        if not self.accepting:
            return False
        if len(self._map) < self.adj.connection_limit:
            return True
        try:
            return idlest(list(self.active_channels.values())) is not None
        except Exception:  # a bug here must not stop the API
            log.exception("api: looking for an idle connection failed")
            return False

    def handle_accept(self):
        if len(self._map) >= self.adj.connection_limit:
            try:
                channel = idlest(list(self.active_channels.values()))
                if channel is None:
                    return  # every slot serves a request: the connection waits in the backlog
                channel.handle_close()
            except Exception:
                log.exception("api: closing an idle connection failed")
                return
            self.evicted += 1
            if time.monotonic() - self._logged_at > EVICTION_LOG_S:
                self._logged_at = time.monotonic()
                log.info("api: all %d connections taken: closed the one idle longest to make room "
                         "(%d so far)", self.adj.connection_limit, self.evicted)
        super().handle_accept()


class ApiServer:
    def __init__(self, settings: Settings, context: Optional[ApiContext] = None):
        self.settings = settings
        self.context = context or build_context(
            settings, ami=ami_client(settings, SessionLimit(AMI_SESSIONS, AMI_SESSION_WAIT_S)))
        self.app = create_app(settings, self.context)
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    @property
    def address(self) -> Tuple[str, int]:
        """Where it listens (after :meth:`start`)."""
        if self._server is None:
            return self.settings.api_bind
        return self._server.effective_host, int(self._server.effective_port)

    def start(self) -> None:
        """Bind and serve in a background thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("the API server is already started")
        host, port = self.settings.api_bind
        if not self.settings.api_keys:
            log.warning("CLINICA_API_KEYS is empty: every API request will be refused")
        adjustments = Adjustments(
            host=host,
            port=port,
            threads=THREADS,
            connection_limit=CONNECTION_LIMIT,
            channel_timeout=CHANNEL_TIMEOUT_S,
            cleanup_interval=CLEANUP_INTERVAL_S,
            max_request_body_size=self.settings.api_max_body * 4,
            max_request_header_size=MAX_HEADER_BYTES,
            trusted_proxy="127.0.0.1",
            trusted_proxy_headers={"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port"},
            clear_untrusted_proxy_headers=True,
            log_untrusted_proxy_headers=False,
            asyncore_use_poll=True,
            ident="clinica-asterisk",
        )
        # One address (CLINICA_API_BIND is an IP address and a port): one listener, as
        # waitress's create_server would make it.
        self._server = _Server(self.app, map={}, adj=adjustments, sockinfo=adjustments.listen[0])
        self._thread = threading.Thread(target=self._serve, name="clinica-api", daemon=True)
        self._thread.start()
        if self.context.freepbx is not None:
            self.context.freepbx.refresh_in_background()  # the first request need not wait for it
        log.info("api listening on %s:%s", *self.address)

    def _serve(self) -> None:
        try:
            self._server.run()
        except Exception:
            if not self._stopping:
                log.exception("the API server stopped")

    def _on_loop(self, job) -> None:
        """Run ``job`` on the server's loop thread (if it still runs)."""
        try:
            self._server.trigger.pull_trigger(job)
        except OSError:
            pass  # the loop and its trigger are gone: stop() closes what is left itself

    def healthy(self) -> bool:
        """Serving: the thread runs and the socket accepts connections."""
        server = self._server
        return (not self._stopping and self._thread is not None and self._thread.is_alive()
                and server is not None and server.accepting and server.socket is not None)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish (within ``timeout``), close."""
        if self._server is None or self._stopping:
            return
        self._stopping = True
        deadline = time.monotonic() + timeout
        server = self._server
        listener_closed = threading.Event()

        def close_listener():
            # The dispatcher's own close: the server's would close the trigger too.
            wasyncore.dispatcher.close(server)
            listener_closed.set()

        self._on_loop(close_listener)
        listener_closed.wait(max(0.0, deadline - time.monotonic()))
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=max(0.0, deadline - time.monotonic()))
        everything_closed = threading.Event()

        def close_everything():
            for channel in list(server._map.values()):
                if channel is server.trigger:
                    continue
                try:
                    channel.handle_close()
                except Exception:
                    pass
            server.trigger.close()
            everything_closed.set()

        self._on_loop(close_everything)
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        if not everything_closed.is_set() and not (self._thread is not None and self._thread.is_alive()):
            # The loop had already ended: nothing else touches its sockets now.  Left
            # open, they would be closed by the garbage collector one day, by number,
            # whatever that number is by then.
            if not listener_closed.is_set():
                close_listener()
            close_everything()
        self.context.stores.close_all()
        log.info("api stopped")
