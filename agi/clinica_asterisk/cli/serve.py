"""Run the service: the FastAGI server, the outbox delivery worker and the CRM API.

Signals: SIGTERM or SIGINT stops accepting at once, lets the sessions in flight finish
(each is bounded by its deadlines), then exits 0; a second one exits at once.  SIGHUP re-reads the configuration
(the environment file and the environment the service was started with); an invalid
file is logged and the running configuration kept.  Under systemd (Type=notify) the
service reports READY, RELOADING and STOPPING, and feeds the watchdog only while the
accept loop, the session workers, the delivery worker and the API are healthy."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Optional

from .. import logs
from .exit_status import ExitStatus
from ..config import ConfigError, Settings, load_settings, parse_bind
from ..delivery.sender import PushSender
from ..delivery.worker import deliver_forever
from ..hooks.fastagi import check_pool, fastagi_server
from ..store.outbox import Outbox
from ..delivery.reconcile import Reconciler
from ..redact import shown_url
from ..store.database import Store
from .systemd_notify import SystemdNotifier

log = logging.getLogger("clinica_asterisk.serve")


def add_arguments(parser) -> None:
    parser.add_argument("--no-api", action="store_true",
                        help="do not start the CRM API (FastAGI server and delivery worker only)")
    parser.add_argument("--bind", metavar="ADDRESS:PORT",
                        help="listen for FastAGI here instead of CLINICA_FASTAGI_BIND (port 0: any free port)")


@dataclass
class DeliveryWorker:
    """The outbox worker on its own thread, with its own store connection; between its
    passes the reconciler closes the calls Asterisk no longer has (:mod:`..reconcile`)."""

    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    thread: Optional[threading.Thread] = None
    sender: Optional[PushSender] = None

    def start(self) -> "DeliveryWorker":
        s = self.settings
        outbox = Outbox(Store(s.store_location, busy_timeout_s=5.0, spool_path=s.spool_path))
        self.sender = PushSender(s.crm_push_url, s.push_format)
        self.thread = threading.Thread(
            target=self._run, name="clinica-deliver", daemon=True,
            args=(outbox, s.deliver_timeout_s, s.deliver_max_backoff_s))
        self.thread.start()
        return self

    def _run(self, outbox: Outbox, timeout_s: float, max_backoff_s: float) -> None:
        try:
            deliver_forever(outbox, self.sender, timeout_s, max_backoff_s, self.stop,
                            reconciler=Reconciler.for_worker(self.settings, outbox.store))
        finally:
            self.sender.close()
            outbox.store.close()

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def shutdown(self, wait_s: float) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(wait_s)


def start_api(settings: Settings):
    try:
        from ..api.server import ApiServer
    except ImportError as exc:
        raise RuntimeError(f"the CRM API is not available ({exc}); run with --no-api") from exc
    api = ApiServer(settings)
    try:
        api.start()
    except OSError as exc:
        host, port = settings.api_bind
        raise RuntimeError(f"cannot listen for the CRM API on {host}:{port}: {exc.strerror or exc}") from None
    return api


class Service:
    """The parts of ``serve`` and what happens to them on a signal."""

    def __init__(self, settings: Settings, bind=None, with_api: bool = True,
                 notifier: Optional[SystemdNotifier] = None):
        self.settings = settings
        self.notifier = notifier or SystemdNotifier()
        self.server = fastagi_server(settings, bind=bind)
        self.with_api = with_api
        self.api = None
        self.delivery: Optional[DeliveryWorker] = None
        self._reload_requested = False
        self.stopping = False

    def start(self) -> None:
        try:
            host, port = self.server.bind()
        except OSError as exc:
            host, port = self.server.requested_bind
            raise RuntimeError(f"cannot listen for FastAGI on {host}:{port}: {exc.strerror or exc}") from None
        self.delivery = DeliveryWorker(self.settings).start()
        if self.with_api:
            self.api = start_api(self.settings)
        log.info("FastAGI listening on %s:%d (%s, pool %d, backlog %d); delivering to %s%s", host, port,
                 self.server.engine, self.settings.fastagi_pool, self.settings.fastagi_backlog,
                 shown_url(self.settings.crm_push_url), "" if self.api else "; CRM API off")

    @property
    def status(self) -> str:
        host, port = self.server.address
        status = f"FastAGI on {host}:{port}"
        if self.api is not None:
            status += " and API on {}:{}".format(*self.api.address)
        return status

    def healthy(self) -> bool:
        return (self.server.healthy() and self.delivery is not None and self.delivery.alive()
                and (self.api is None or self.api.healthy()))

    def tick(self) -> None:
        """Runs on the accept loop's thread at every turn."""
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        if self.healthy():
            self.notifier.ping()

    def request_reload(self) -> None:
        self._reload_requested = True
        self.server.wake()

    def reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_settings()
            check_pool(new, self.server.engine)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            self.notifier.ready(self.status)
            return
        logging.getLogger().setLevel(new.log_level)
        self.server.reload(new)
        # The old worker finishes its attempt in the background; leases keep the two apart.
        old, self.delivery = self.delivery, DeliveryWorker(new).start()
        old.stop.set()
        if self.api is not None and _api_settings(new) != _api_settings(self.settings):
            log.warning("CLINICA_API_*, CLINICA_AMI_* or CLINICA_FREEPBX_* changed: "
                        "restart the service to apply them to the API")
        self.settings = new
        log.info("configuration reloaded from %s", new.source or "the environment")
        self.notifier.ready(self.status)

    def run(self) -> int:
        """Serve until stopped; then finish the sessions in flight."""
        self.notifier.ready(self.status)
        tick_s = min(0.5, self.notifier.ping_interval_s or 0.5)
        announced = []

        def stopping(in_flight: int) -> None:
            announced.append(in_flight)
            log.info("stopping: listener closed, %d session(s) in flight", in_flight)
            self.notifier.stopping(f"finishing {in_flight} session(s)")

        # The event loop finishes its sessions before serve_forever returns: it says when it
        # closes its listener.
        self.server.on_stopping = stopping
        self.server.serve_forever(on_tick=self.tick, tick_s=tick_s)
        if not announced:
            stopping(self.server.pool.busy)
        left = self.server.drain()
        if left:
            log.warning("stopped with %d session(s) still running past their deadline", left)
        # Pushes that outlived their hooks end within their own limit: let them end, rather
        # than cut them (the CRM may have acted on one, and it would be sent again).  The
        # delivery worker finishes its own attempt meanwhile.
        self.delivery.stop.set()
        self.server.sender.wait_idle(self.settings.deliver_timeout_s + 1.0)
        self.delivery.shutdown(self.settings.deliver_timeout_s + 1.0)
        if self.api is not None:
            self.api.stop()
        self.server.close()
        self.notifier.close()
        log.info("stopped")
        return ExitStatus.OK


def _api_settings(s: Settings):
    return (s.api_bind, s.api_public_url, tuple(sorted(s.api_keys.items())), s.api_max_body, s.recordings_dir,
            s.record_link_ttl_s, s.directory_file, s.ami_host, s.ami_port, s.ami_user, s.ami_secret,
            s.freepbx_db, s.freepbx_conf, s.freepbx_refresh_s)


def run(args, settings: Settings) -> int:
    logs.configure(settings.log_level, settings.log_file)
    bind = parse_bind(args.bind, "--bind") if args.bind else None
    service = Service(settings, bind=bind, with_api=not args.no_api)

    def stop(signum, frame):
        if service.stopping:  # asked twice: stop now, without waiting for the sessions
            raise KeyboardInterrupt
        service.stopping = True
        service.server.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: service.request_reload())
    service.start()
    return service.run()
