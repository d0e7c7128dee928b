"""The API served by waitress (a production WSGI server) in a thread of its own.

``clinica-asterisk serve`` runs it beside the FastAGI server::

    api = ApiServer(settings)
    api.start()          # returns once the socket listens; raises OSError if it cannot
    ...
    api.stop()

Limits: a request body larger than ``CLINICA_API_MAX_BODY`` is answered 413 (by the
application, signed, up to four times the limit; by waitress beyond, before it is read);
headers are capped at 16 KiB; an idle connection is closed after 30 s; at most 100
connections at once, handled by 8 worker threads.  Forwarded headers (X-Forwarded-Proto,
-Host, -Port, -For) are believed only from 127.0.0.1, i.e. from a reverse proxy on the
PBX itself, and stripped from anyone else.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional, Tuple

from waitress import create_server, wasyncore

from ..config import Settings
from .app import ApiContext, build_context, create_app

log = logging.getLogger("clinica_asterisk.api.server")

THREADS = 8
CONNECTION_LIMIT = 100
CHANNEL_TIMEOUT_S = 30
MAX_HEADER_BYTES = 16 * 1024


class ApiServer:
    def __init__(self, settings: Settings, context: Optional[ApiContext] = None):
        self.settings = settings
        self.context = context or build_context(settings)
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
        self._server = create_server(
            self.app,
            host=host,
            port=port,
            threads=THREADS,
            connection_limit=CONNECTION_LIMIT,
            channel_timeout=CHANNEL_TIMEOUT_S,
            max_request_body_size=self.settings.api_max_body * 4,
            max_request_header_size=MAX_HEADER_BYTES,
            trusted_proxy="127.0.0.1",
            trusted_proxy_headers={"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port"},
            clear_untrusted_proxy_headers=True,
            log_untrusted_proxy_headers=False,
            asyncore_use_poll=True,
            ident="clinica-asterisk",
        )
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

        server.trigger.pull_trigger(close_listener)
        listener_closed.wait(max(0.0, deadline - time.monotonic()))
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=max(0.0, deadline - time.monotonic()))

        def close_everything():
            for channel in list(server._map.values()):
                if channel is server.trigger:
                    continue
                try:
                    channel.handle_close()
                except Exception:
                    pass
            server.trigger.close()

        server.trigger.pull_trigger(close_everything)
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        self.context.stores.close_all()
        log.info("api stopped")
