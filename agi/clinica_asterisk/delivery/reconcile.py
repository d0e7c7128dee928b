"""No call stays ONLINE once Asterisk has no channel of it.

A stored call is ONLINE (``stats/call-details``) until it has an ``ended_at``, which the
hang-up hook sets.  When that hook never runs (a click-to-call whose extension never
answered, a call in progress while Asterisk restarted, a hang-up hook that found the
FastAGI server down) the call would stay ONLINE forever.  The reconciler is the safety net:
at start-up and then every ``CLINICA_RECONCILE_S`` seconds it lists Asterisk's live
channels over AMI (``CoreShowChannels``) and closes each stored call that

- has no ``ended_at``,
- started more than :func:`..pbx.channels.grace_s` ago (an Originate's channel may not exist yet), and
- whose linkedid was neither a channel's ``Linkedid`` nor its ``Uniqueid`` in two lists in
  a row (a single look may race with the call's channels coming and going).

Without an AMI user, and for a call that has no linkedid (rows older than linkedids for
click-to-call), a call is closed once it is ``CLINICA_ONLINE_MAX_S`` old (0: never).  When
the manager cannot be asked, nothing is closed, and the log says so once per outage.

Closing does what the hang-up hook would have done with what is known: ``ended_at`` the
moment the call was first found gone, ``billsec`` the talk time up to then, the
disposition :func:`call_flow.disposition` gives the stored facts without a Dial result
(``ANSWER`` when answered, else ``CANCEL``) but ``NOANSWER`` for a click-to-call that never
reached a trunk, and receivedTheCall + hangupTheCall through the outbox (which
keeps one event of each type per call, so an event already sent is not sent again); the
delivery worker sends them.  A click-to-call that never reached a trunk gets no push: the
client was never called.

Calls of ``CLINICA_PBX_ID`` when it is set, else every call of the store: the manager is
one PBX's, so where several PBXs send their calls to one store each needs a service of its
own with its own name, or the service no AMI user.

:func:`plan_sweep` and :func:`close_call` are pure (and :func:`..pbx.channels.parse_channel_list`);
:class:`Reconciler` does the I/O, on the delivery worker's thread (``serve`` and
``deliver --forever``), with the worker's store connection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from ..calls import plans as call_flow
from ..pbx.ami import AmiError, AmiRefused, ami_client
from ..pbx.channels import LIST_ACTION, LIST_END, ChannelListError, grace_s, parse_channel_list
from ..config import Settings
from ..calls.events import HANGUP, RECEIVED, build_payload
from ..store.outbox import Outbox
from ..store.database import Store, StoreError

log = logging.getLogger("clinica_asterisk.delivery.reconcile")

ORIGIN_API = "api"  # calls stored by calls/ext-to-phone


@dataclass(frozen=True)
class Sweep:
    """``gone``: call id -> when it was found gone, for the calls to close now;
    ``missing``: call id -> when it was first missed, for the calls one more list must
    confirm (the next sweep's ``missing``)."""

    gone: Dict[int, float]
    missing: Dict[int, float]


def plan_sweep(calls: Iterable[Mapping[str, Any]], live: Optional[FrozenSet[str]], looked_at: float,
               missing: Mapping[int, float], grace: float, max_age_s: float) -> Sweep:
    """Which of the open ``calls`` are over.  ``live``: the ids :func:`parse_channel_list`
    gave for a list asked for at ``looked_at``; None when there is no list (no AMI user),
    then only the age decides (``max_age_s``, 0: never).  ``missing``: the last sweep's."""
    gone: Dict[int, float] = {}
    still_missing: Dict[int, float] = {}
    for call in calls:
        if call.get("ended_at") is not None:
            continue
        call_id, linkedid = call["id"], call.get("linkedid") or ""
        if live is None or not linkedid:
            if max_age_s > 0 and call["started_at"] <= looked_at - max_age_s:
                gone[call_id] = looked_at
        elif linkedid in live or call["started_at"] > looked_at - grace:
            continue  # up, or too young to have a channel yet
        elif call_id in missing:
            gone[call_id] = missing[call_id]
        else:
            still_missing[call_id] = looked_at
    return Sweep(gone, still_missing)


@dataclass(frozen=True)
class Closing:
    """The changes to store and the events to queue for a call that ended unseen."""

    changes: Dict[str, Any]
    events: Tuple[str, ...]


def close_call(call: Mapping[str, Any], gone_at: float) -> Optional[Closing]:
    """What the hang-up hook would have stored and sent for ``call``, found gone at
    ``gone_at``; None when the call has ended meanwhile (its hook ran after all)."""
    if call.get("ended_at") is not None:
        return None
    ended_at = max(gone_at, call["started_at"])
    client_never_called = (call.get("origin") == ORIGIN_API and not call.get("trunk")
                           and not call.get("answered_at"))
    changes = {
        "ended_at": ended_at,
        "billsec": call_flow.talk_seconds(call, {}, ended_at),
        "disposition": "NOANSWER" if client_never_called else call_flow.disposition(call, {}),
    }
    return Closing(changes, () if client_never_called else (RECEIVED, HANGUP))


class Reconciler:
    """Sweeps between the delivery worker's passes: :meth:`tick` at every turn."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.store = store
        self.outbox = Outbox(store)
        self.ami = ami_client(settings)
        self.clock = clock
        self.monotonic = monotonic
        self.pbx = settings.pbx_id or None
        self.grace_s = grace_s(settings.ami_timeout_s)
        self._missing: Dict[int, float] = {}
        self._from_id = 0  # no open call of ours has a smaller id
        self._due_at: Optional[float] = None  # monotonic; None: now (start-up)
        self._ami_down = False

    @classmethod
    def for_worker(cls, settings: Settings, store: Store) -> Optional["Reconciler"]:
        """The delivery worker's reconciler; None when ``CLINICA_RECONCILE_S`` is 0."""
        return cls(settings, store) if settings.reconcile_s > 0 else None

    def tick(self) -> None:
        """Sweep when it is time: at the first call, then ``CLINICA_RECONCILE_S`` after the
        last sweep ended.  Never raises: the worker must go on delivering."""
        if self._due_at is not None and self.monotonic() < self._due_at:
            return
        try:
            self.sweep()
        except StoreError as exc:
            log.warning("reconcile outcome=failed detail=%r", str(exc))
        except Exception:  # a bug must cost a log line, never the delivery worker
            log.exception("reconcile sweep failed")
        finally:
            self._due_at = self.monotonic() + self.settings.reconcile_s

    def sweep(self) -> List[int]:
        """One look at Asterisk and what follows from it: the ids of the calls closed."""
        started = self.monotonic()
        looked_at = self.clock()
        live = None
        if self.ami is not None:
            live = self._live_channels()
            if live is None:
                return []
        highest = self.store.highest_call_id()  # before the calls: a call stored between stays above
        calls = self.store.open_calls(self.pbx, self._from_id)
        plan = plan_sweep(calls, live, looked_at, self._missing, self.grace_s, self.settings.online_max_s)
        self._missing = plan.missing
        closed = [call_id for call_id, gone_at in plan.gone.items() if self._close(call_id, gone_at)]
        done = set(closed)
        self._from_id = min((c["id"] for c in calls if c["id"] not in done), default=highest + 1)
        log.debug("reconcile outcome=swept open=%d channel_ids=%s missing=%d closed=%d ms=%d", len(calls),
                  "-" if live is None else len(live), len(plan.missing), len(closed),
                  int((self.monotonic() - started) * 1000))
        return closed

    def _live_channels(self) -> Optional[FrozenSet[str]]:
        try:
            live = parse_channel_list(self.ami.collect(LIST_ACTION, LIST_END))
        except (AmiError, ChannelListError) as exc:
            if not self._ami_down:
                refused = isinstance(exc, AmiRefused)
                hint = " (the AMI user needs write=reporting for CoreShowChannels)" if refused else ""
                log.warning("reconcile outcome=no-list detail=%r: cannot list Asterisk's channels%s; "
                            "no call is closed until the manager answers", str(exc), hint)
            self._ami_down = True
            return None
        if self._ami_down:
            log.info("reconcile: the manager lists Asterisk's channels again")
        self._ami_down = False
        return live

    def _close(self, call_id: int, gone_at: float) -> bool:
        with self.store.transaction():
            call = self.store.call(call_id)
            closing = close_call(call, gone_at) if call is not None else None
            if closing is None:
                return False
            self.store.update_call(call_id, closing.changes)
            ended = {**call, **closing.changes}
            for key in closing.events:
                self.outbox.enqueue(call_id, key, build_payload(key, ended, self.settings.company_id,
                                                                       self.settings.push_extra_keys))
        log.info("reconcile call=%s outcome=closed disposition=%s billsec=%d events=%s", call_id,
                 closing.changes["disposition"], closing.changes["billsec"], ",".join(closing.events) or "none")
        return True
