"""The outbox's side of delivery: each attempt's outcome written to the outbox, the events
a hook leased sent in order, and the worker that sends what is left.

An attempt whose caller stopped waiting (a hook at its deadline) goes on: the event stays
leased until the attempt's limit has surely passed, so nobody sends it again while this
POST may still be in flight, and its outcome is recorded when it ends
(:class:`LateOutcome`).  A CRM slower than the hook's deadline thus gets each event once;
only a crash in the middle of a POST can make it get one twice.
"""

from __future__ import annotations

import threading
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import Dict, Mapping, Optional, Sequence

from ..deadline import LEASE_MARGIN_S
from ..logs import get_logger
from ..store.outbox import Outbox, OutboxEvent, lease_owner
from ..values import Record
from .sender import CUT_GRACE_S, Attempt, PushSender

log = get_logger(__name__)


# What became of an event's attempt (deliver_one).
SENT, FAILED, IN_FLIGHT, NOT_TRIED = "sent", "failed", "in-flight", "not-tried"


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


class LateOutcome(Record):
    """Where the outcome of an attempt that outlived its caller goes: the outbox at
    ``db_path``, through a connection of its own (it is recorded from the thread, or the
    process, that ran the attempt)."""

    # str, OutboxEvent, Tuple[str, ...], float, and the caller's outbox (Optional[Outbox]):
    # only for handed_to(), on the caller's thread.
    __slots__ = ("db_path", "event", "owners", "max_backoff_s", "outbox")
    _defaults = {"outbox": None}
    _hidden = _uncompared = frozenset({"outbox"})

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


class DeliverStats(Record):
    """What a delivery pass did, and what still waits."""

    __slots__ = ("sent", "failed", "waiting", "oldest_created_at")  # int, int, int, Optional[float]
    _defaults = {"sent": 0, "failed": 0, "waiting": 0, "oldest_created_at": None}


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


def deliver_woken(outbox: Outbox, sender: PushSender, call_ids: Sequence[int], timeout_s: float,
                  max_backoff_s: float, stop: Optional[threading.Event] = None,
                  stats: Optional[DeliverStats] = None) -> DeliverStats:
    """Send the new events of the calls whose hooks handed them over (:mod:`.wakeup`), in
    order, at once: not waiting for ``not_before`` (the time a hook that sends itself
    would take), since these hooks leased and sent nothing.  An event tried before keeps
    its backoff (the next pass sends it when due), and a later one waits behind it."""
    stats = stats or DeliverStats()
    owner = lease_owner()
    for call_id in call_ids:
        for event in outbox.pending_of_call(call_id):
            if (stop and stop.is_set()) or event.attempts:
                break
            if not outbox.claim(event, owner, outbox.store.clock() + timeout_s + CUT_GRACE_S + LEASE_MARGIN_S):
                break  # not its head any more, or someone else is on it
            if deliver_one(outbox, sender, event, timeout_s, max_backoff_s) != SENT:
                stats.failed += 1
                break
            stats.sent += 1
    return stats


# A wake-up may be lost when the socket's queue (net.unix.max_dgram_qlen, often 10) fills
# while the worker is busy: after a batch this large the worker looks for such calls too.
SWEEP_AFTER_WAKES = 10


def fresh_calls(outbox: Outbox) -> list[int]:
    """Calls whose oldest undelivered event nobody has tried yet nor holds: handed over by
    a hook whose wake-up was lost.  (A hook that sends its events itself leases them in
    the transaction that writes them: they are never free and untried.)"""
    return [e.call_id for e in outbox.heads(outbox.store.clock(), due_only=False) if not e.attempts]


def deliver_forever(outbox: Outbox, sender: PushSender, timeout_s: float, max_backoff_s: float,
                    stop: threading.Event, poll_s: float = 1.0, reconciler=None, wakeup=None) -> None:
    """The worker: a pass, then sleep until the next event is due (at most ``poll_s``).

    ``reconciler`` (a :class:`~clinica_asterisk.delivery.reconcile.Reconciler`): its ``tick()`` runs
    before each pass, so the events of the calls it closes go out in the same turn.
    ``wakeup`` (a :class:`~clinica_asterisk.delivery.wakeup.WakeupListener`): hooks that
    handed their events over wake the worker through it, and their calls' events go out
    at once (:func:`deliver_woken`), between passes."""
    last_purge = 0.0
    next_pass = 0.0
    woken: Sequence[int] = ()
    while not stop.is_set():
        try:
            if woken:
                deliver_woken(outbox, sender, woken, timeout_s, max_backoff_s, stop=stop)
                if len(woken) >= SWEEP_AFTER_WAKES:
                    deliver_woken(outbox, sender, fresh_calls(outbox), timeout_s, max_backoff_s, stop=stop)
            if time.monotonic() >= next_pass:
                if reconciler is not None:
                    reconciler.tick()
                deliver_pass(outbox, sender, timeout_s, max_backoff_s, due_only=True, stop=stop)
                if time.monotonic() - last_purge > 3600:
                    outbox.purge_delivered()
                    last_purge = time.monotonic()
                due = outbox.next_due_at()
                wait = poll_s if due is None else min(poll_s, max(0.05, due - outbox.store.clock()))
                next_pass = time.monotonic() + wait
        except Exception:  # the worker must outlive a locked or briefly missing database
            log.exception("outbox worker pass failed; retrying")
            next_pass = time.monotonic() + poll_s
        wait = max(0.0, next_pass - time.monotonic())
        if wakeup is None:
            stop.wait(wait)
            woken = ()
        elif not stop.is_set():
            woken = wakeup.wait(wait)
