"""Send the push events waiting in the outbox, oldest first and in order per call.

Without options: one pass over everything waiting (backoff ignored), then a summary.
With --forever: keep running as the delivery worker, retrying with backoff, and closing
the calls Asterisk no longer has (:mod:`..reconcile`: in script mode no ``serve`` does it)."""

from __future__ import annotations

import logging
import signal
import threading
import time

from .. import logs
from .exit_status import ExitStatus
from ..delivery.sender import PushSender
from ..delivery.wakeup import WakeupListener, socket_path
from ..delivery.worker import deliver_forever, deliver_pass
from ..store.outbox import Outbox
from ..delivery.reconcile import Reconciler
from ..store.database import Store

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--forever", action="store_true", help="run as the delivery worker until stopped")


def run(args, settings) -> int:
    logs.configure(settings.log_level, settings.log_file)
    store = Store(settings.store_location, busy_timeout_s=5.0, spool_path=settings.spool_path)
    outbox = Outbox(store)
    sender = PushSender(settings.crm_push_url, settings.push_format)
    if args.forever:
        stop = threading.Event()
        # The script-mode hooks hand their events over through this socket (delivery.wakeup).
        wakeup = WakeupListener.bind(socket_path(settings.data_dir))
        if wakeup is None:
            log.warning(
                "not listening for hooks at %s (another worker does, or it cannot be bound): "
                "the hooks send their events themselves", socket_path(settings.data_dir))

        def on_signal(*_):
            stop.set()
            if wakeup is not None:
                wakeup.interrupt()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)
        try:
            deliver_forever(outbox, sender, settings.deliver_timeout_s, settings.deliver_max_backoff_s, stop,
                            reconciler=Reconciler.for_worker(settings, store), wakeup=wakeup)
        finally:
            if wakeup is not None:
                wakeup.close()
        return 0
    stats = deliver_pass(outbox, sender, settings.deliver_timeout_s, settings.deliver_max_backoff_s,
                         due_only=False)
    age = f", oldest queued {int(time.time() - stats.oldest_created_at)} s ago" if stats.oldest_created_at else ""
    print(f"sent {stats.sent}, failed {stats.failed}, waiting {stats.waiting}{age}")
    return ExitStatus.OK if stats.waiting == 0 else ExitStatus.PENDING
