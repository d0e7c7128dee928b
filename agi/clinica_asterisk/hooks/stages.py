"""Running a stage of a call: the hook proper, the same for every stage.

:func:`apply_stage` reads what the stage needs from the channel (its reads in one round
trip, then those that depend on them), makes the facts (pure, :mod:`..calls.stages`),
applies the stage's plan in one transaction, writes the events to the outbox and leaves
what the plan says on the channel.  :func:`run_hook` then tries to send the events within
the deadline and sets ``CLINICA_STATUS`` for the dialplan (:func:`finish`).  It never
raises into Asterisk.

The hook is written once, as steps (:func:`hook_steps`, :func:`stage_steps`,
:func:`finish_steps`): generators that yield what they need done (:class:`Read`,
:class:`Set`, :class:`Say`, :class:`Write`, :class:`Send`) and get the outcome back.
:func:`drive` does each on this thread with a blocking :class:`Channel` (script mode,
tests; ``apply_stage``, ``run_hook`` and ``finish`` are that); the FastAGI event loop
(:mod:`.fastagi_loop`) does them for many hooks at once, with one commit for the writes of
all the hooks that reach theirs together.
"""

from __future__ import annotations

import _socket  # socket.gethostname is _socket.gethostname; socket.py costs every hook start-up
import time

from ..agi.reply import agi_error
from ..agi.request import AgiRequest, EnvBlockError
from ..agi.channel import ChannelClosed
from ..calls.numbers import NumberFormat
from ..calls.stages import STAGES, Stage, channel_writes
from ..config import Settings
from ..deadline import CUT_GRACE_S, LEASE_MARGIN_S, RESERVE_S, Deadline, DeadlineExceeded
from ..calls.events import build_payload, wanted_events
from ..store.outbox import Outbox, lease_owner
from ..store.database import Store, StoreError, call_id_from_text
from ..logs import INFO, WARNING, get_logger
from ..values import Record, Value
from ..variables import CALLID_VARIABLE, STATUS_VARIABLE

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import Callable, Dict, Optional, Protocol, Sequence

    from ..delivery.sender import PushSender  # a hook that hands its events over never loads it
else:
    Protocol = object  # Channel is documentation at run time

log = get_logger("clinica_asterisk.hook")

SENT, QUEUED, SKIPPED, FAILED, NOTFOUND = "SENT", "QUEUED", "SKIPPED", "FAILED", "NOTFOUND"


class Channel(Protocol):
    """All a hook does with its channel (``agi.channel.AgiChannel`` over a stream; another driver,
    such as an event loop's, only needs these)."""

    def read(self, names: Sequence[str]) -> Dict[str, str]: ...

    def set(self, name: str, value: object) -> bool: ...

    def say(self, message: str) -> None: ...

    def within(self, deadline: Deadline) -> "Channel": ...


class HookServices(Record):
    """What a hook needs besides its channel; one per process or per worker thread.

    ``hands_off``: the delivery worker sends the events (script mode, delivery.wakeup):
    the hook stores them, leases and sends nothing, and reports QUEUED."""

    __slots__ = ("settings", "store", "sender", "pbx", "clock", "hands_off", "outbox", "fmt")

    def __init__(self, settings: Settings, store: Store, sender: PushSender, pbx: str = "",
                 clock: Callable[[], float] = time.time, hands_off: bool = False):
        self.settings, self.store, self.sender, self.clock, self.hands_off = settings, store, sender, clock, hands_off
        self.outbox = Outbox(store)
        self.fmt = NumberFormat(settings.number_format, settings.country_code, settings.trunk_prefix)
        self.pbx = pbx or settings.pbx_id or _socket.gethostname()

    def replace(self, **changes) -> "HookServices":
        values = {"settings": self.settings, "store": self.store, "sender": self.sender, "pbx": self.pbx,
                  "clock": self.clock, "hands_off": self.hands_off}
        values.update(changes)
        return HookServices(**values)

    @classmethod
    def open(cls, settings: Settings, sender: Optional[PushSender] = None, pbx: str = "",
             transport=None) -> "HookServices":
        store = Store(settings.store_location, busy_timeout_s=settings.hook_deadline_s,
                      spool_path=settings.spool_path, spool_on_failure=True)
        if not sender:
            from ..delivery.sender import PushSender

            sender = PushSender(settings.crm_push_url, settings.push_format, transport)
        return cls(settings, store, sender, pbx)


class HookResult(Record):
    """``leased``: the call's events, ours to send; ``leased_all``: no event of the call
    waits on another sender."""

    # str, str, Optional[int], str, int, List[OutboxEvent], bool
    __slots__ = ("stage", "status", "call_id", "detail", "ms", "leased", "leased_all")
    _defaults = {"call_id": None, "detail": "", "ms": 0, "leased_all": False}
    _factories = {"leased": list}


# --- what a hook asks of the outside world ----------------------------------------------------
# The hook itself (:func:`hook_steps`) is a generator that yields these and gets their
# outcome sent back (or their error raised in it), so that one hook logic runs on any
# driver: :func:`drive` over a blocking :class:`Channel` (script mode, tests), and the
# FastAGI event loop (:mod:`.fastagi_loop`), which runs many hooks at once on one thread.

# Each a Value (an immutable record): collections.namedtuple would build each class by exec()
# at every hook start-up.

class Read(Value):
    """Channel variables and expressions; answered with a dict (Channel.read)."""

    __slots__ = ("names",)


class Set(Value):
    """SET VARIABLE (Channel.set); ``within``: another deadline for this command."""

    __slots__ = ("name", "value", "within")
    _defaults = {"within": None}


class Say(Value):
    """A VERBOSE line (Channel.say)."""

    __slots__ = ("message", "within")
    _defaults = {"within": None}


class Write(Value):
    """``work()`` writes to the store, opening its own ``Store.transaction()``; answered
    with what it returns.  A driver may run several hooks' writes in one commit (the event
    loop's group commit); each hook is answered only after that commit."""

    __slots__ = ("work",)


class Send(Value):
    """Send the leased events in order, waiting until ``until_monotonic`` at most (see
    :func:`..delivery.worker.send_leased_events`); answered True when all were delivered."""

    __slots__ = ("events", "until_monotonic", "attempt_s")


def drive(steps, channel: Channel, services: Optional[HookServices] = None):
    """Run hook steps on this thread against a blocking channel; what they return."""
    answer = error = None
    while True:
        try:
            step = steps.send(answer) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        answer = error = None
        try:
            answer = _do(step, channel, services)
        except Exception as exc:
            error = exc


def _do(step, channel: Channel, services: Optional[HookServices]):
    kind = type(step)
    if kind is Read:
        return channel.read(step.names)
    if kind is Set:
        return (channel.within(step.within) if step.within is not None else channel).set(step.name, step.value)
    if kind is Say:
        return (channel.within(step.within) if step.within is not None else channel).say(step.message)
    if kind is Write:
        return step.work()
    if kind is Send:
        if not step.events:  # nothing leased (a hook that hands its events over): all sent there is
            return True
        from ..delivery.worker import send_leased_events

        return send_leased_events(services.outbox, services.sender, step.events, step.until_monotonic,
                                  services.settings.deliver_max_backoff_s, step.attempt_s)
    raise TypeError(f"not a hook step: {step!r}")


def read_steps(stage: Stage, args: Sequence[str]):
    """All the stage reads from its channel: its first reads in one round trip, then what
    depends on them or on its arguments."""
    values = yield Read(stage.first_reads())
    more = [name for name in stage.then_reads(values, args) if name not in values]
    if more:
        values.update((yield Read(more)))
    return values


def read_values(channel: Channel, stage: Stage, args: Sequence[str]) -> Dict[str, str]:
    return drive(read_steps(stage, args), channel)


def _known_call_id(services: HookServices, stage: Stage, values: Dict[str, str], args: Sequence[str],
                   facts: Dict[str, str]) -> Optional[int]:
    """Finding the call, as far as it can be done before the write transaction (no AGI
    round trip ever holds the store's write lock: every other hook would wait on it).  The
    call named by CLINICA_CALLID, if it exists; else the facts to find it by."""
    callid = call_id_from_text(values[CALLID_VARIABLE])
    if callid is not None and services.store.call(callid) is not None:
        return callid  # calls are never deleted: it is still there in the transaction
    if stage.fallback is not None:
        facts.update(stage.fallback_facts(values, args))
    return None


def _find_call(services: HookServices, known: Optional[int], stage: Stage, facts: Dict[str, str]):
    if known is not None:
        return services.store.call(known), False
    if stage.new_call and facts.get("linkedid"):
        call = services.store.call_by_linkedid(services.pbx, facts["linkedid"])
        return call, call is not None
    return None, False


class _Stored(Record):
    # object, Optional[int], int, List[OutboxEvent], bool, bool
    __slots__ = ("plan", "call_id", "queued", "leased", "leased_all", "found_by_linkedid")
    _defaults = {"call_id": None, "queued": 0, "leased_all": False, "found_by_linkedid": False}
    _factories = {"leased": list}


def _store_stage(services: HookServices, stage: Stage, known: Optional[int], facts: Dict[str, str],
                 now: float, lease_s: float) -> _Stored:
    """The stage's one write transaction: the call, its events, their lease."""
    with services.store.transaction():
        call, found_by_linkedid = _find_call(services, known, stage, facts)
        plan = stage.plan(call, facts, services.fmt, now)
        if plan.create is not None:
            fields = dict(plan.create, pbx=services.pbx)
            call_id = services.store.insert_call(fields)
        elif call is not None:
            call_id = call["id"]
            services.store.update_call(call_id, plan.changes)
        else:
            return _Stored(plan)
        after = services.store.call(call_id)
        queued = 0
        for key in wanted_events(plan.events, services.settings.transfer_pair):
            # One event per key and call: the outbox ignores a second one.  The hook
            # sends it itself right after; the worker takes over only if it could not.
            if services.outbox.enqueue(call_id, key, build_payload(key, after, services.settings.company_id,
                                                                         services.settings.push_extra_keys),
                                       not_before=services.store.clock() + services.settings.hook_deadline_s):
                queued += 1
        leased, leased_all = [], False
        if queued and lease_s > 0:
            leased, leased_all = services.outbox.lease_pending(call_id, lease_owner(), services.store.clock() + lease_s)
    return _Stored(plan, call_id, queued, leased, leased_all, found_by_linkedid)


def stage_steps(services: HookServices, stage_name: str, args: Sequence[str], lease_s: float = 0.0):
    """Read the facts, store what they change, queue the events and lease the call's
    undelivered ones for ``lease_s`` (to send them at once).  No network I/O but the
    channel's."""
    stage = STAGES[stage_name]
    values = yield from read_steps(stage, args)
    facts = stage.facts(values, args)
    known = _known_call_id(services, stage, values, args, facts)
    now = services.clock()
    stored = yield Write(lambda: _store_stage(services, stage, known, facts, now, lease_s))
    plan, call_id = stored.plan, stored.call_id
    if call_id is None:
        return HookResult(stage_name, SKIPPED, detail=plan.note)
    # Every later hook of the call (other legs inherit the variable) finds it by id.
    remember = plan.create is not None or stored.found_by_linkedid
    for name, value in channel_writes(stage, facts, plan, call_id, remember):
        yield Set(name, value)
    if not stored.queued:
        return HookResult(stage_name, SKIPPED, call_id, plan.note or "nothing new for this call")
    return HookResult(stage_name, QUEUED, call_id, leased=stored.leased, leased_all=stored.leased_all)


def apply_stage(services: HookServices, channel: Channel, stage_name: str, args: Sequence[str],
                lease_s: float = 0.0) -> HookResult:
    """:func:`stage_steps` on a blocking channel."""
    return drive(stage_steps(services, stage_name, args, lease_s), channel, services)


def hook_steps(request: AgiRequest, services: HookServices, deadline: Deadline):
    """One hook session, start to end, as steps.  Never raises; always leaves CLINICA_STATUS."""
    stage, args = request.stage_and_args
    result = HookResult(stage or "?", FAILED)
    try:
        if stage not in STAGES:
            result = HookResult(stage or "?", NOTFOUND, detail=f"unknown stage {stage!r}; known: {', '.join(sorted(STAGES))}")
        else:
            services.store.start_session(max(0.05, deadline.remaining() - RESERVE_S))
            # A push the CRM is slow to answer goes on after the hook, for the transport's
            # whole limit; the lease covers it, so nobody sends the event again meanwhile.
            attempt_s = services.settings.deliver_timeout_s
            lease_s = 0.0 if services.hands_off else deadline.remaining() + attempt_s + CUT_GRACE_S + LEASE_MARGIN_S
            result = yield from stage_steps(services, stage, args, lease_s)
            if result.status == QUEUED:
                until = time.monotonic() + deadline.remaining() - RESERVE_S
                if (yield Send(result.leased, until, attempt_s)) and result.leased_all:
                    result.status = SENT
    except DeadlineExceeded as exc:
        result.detail = f"deadline reached while {exc}"
        result.status = QUEUED if result.call_id else FAILED
    except StoreError as exc:
        result.detail = str(exc)
    except (agi_error(), ChannelClosed, EnvBlockError, OSError) as exc:
        result.detail = f"AGI: {type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug must cost a log line, never the call
        log.exception("hook %s failed", stage)
        result.detail = f"{type(exc).__name__}: {exc}"
    result.ms = deadline.elapsed_ms()
    yield from finish_steps(deadline, result)
    return result


def run_hook(request: AgiRequest, channel: Channel, services: HookServices, deadline: Deadline) -> HookResult:
    """One hook session on a blocking channel.  Never raises; always leaves CLINICA_STATUS."""
    return drive(hook_steps(request, services, deadline), channel, services)


def finish_steps(deadline: Deadline, result: HookResult):
    """Tell the dialplan (CLINICA_STATUS) and the log how the hook went."""
    level = INFO if result.status in (SENT, QUEUED, SKIPPED) else WARNING
    log.log(level, "hook call=%s stage=%s outcome=%s ms=%d%s", result.call_id or "-", result.stage,
            result.status, result.ms, f" detail={result.detail!r}" if result.detail else "")
    # The last command gets a short grace of its own, so a hook that used its whole
    # deadline still reports; a dead or closed channel simply does not answer.
    within = Deadline(max(0.02, min(RESERVE_S, deadline.remaining())))
    try:
        yield Set(STATUS_VARIABLE, result.status, within)
        if result.status in (FAILED, NOTFOUND):
            yield Say(f"clinica: {result.stage} {result.status}: {result.detail}"[:300], within)
    except (DeadlineExceeded, ChannelClosed, OSError):
        pass


def finish(channel: Channel, deadline: Deadline, result: HookResult) -> None:
    drive(finish_steps(deadline, result), channel)
