"""The hook handlers: one plain function per stage, registered under the stage's name (the
first AGI argument in script mode, the script name under FastAGI).

A handler only reads what its stage needs from the channel; it names those variables when
it registers, so that they all come in one round trip (:meth:`AgiChannel.prefetch`).
:func:`run_hook` does the rest the same way for every stage: apply the pure plan (:mod:`call_flow`) in one
transaction, write the events to the outbox, try to send them within the deadline, and set
``CLINICA_STATUS`` for the dialplan.  It never raises into Asterisk.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from asterisk.agi import AGIException

from ..calls import plans as call_flow
from ..agi.request import AgiRequest, EnvBlockError
from ..agi.channel import AgiChannel, ChannelClosed
from ..config import Settings
from ..deadline import Deadline, DeadlineExceeded
from ..calls.dial_options import dial_string_with_answer_routine, dial_targets, with_answer_routine
from ..delivery.push import CUT_GRACE_S, LEASE_MARGIN_S, RESERVE_S, PushSender, send_leased_events
from ..calls.events import build_payload, wanted_events
from ..store.outbox import Outbox, OutboxEvent, lease_owner
from ..calls.phone import digits_of
from ..store.database import Store, StoreError, call_id_from_text
from ..variables import CALLID_VARIABLE, HANGUP_HANDLER, STATUS_VARIABLE

log = logging.getLogger("clinica_asterisk.hook")

SENT, QUEUED, SKIPPED, FAILED, NOTFOUND = "SENT", "QUEUED", "SKIPPED", "FAILED", "NOTFOUND"

FactReader = Callable[[AgiChannel, Sequence[str]], Dict[str, str]]
HANDLERS: Dict[str, FactReader] = {}
# What each stage reads from the channel, fetched at once before its handler runs.
READS: Dict[str, Tuple[str, ...]] = {}
# Stages that may have to describe a call no earlier hook stored.
FALLBACK_STAGES = ("ring-in", "ring-out", "hangup")
LINKEDID_KEYS = ("CLINICA_LINKEDID", "${CHANNEL(linkedid)}")
# What _fallback_facts reads.
FALLBACK_KEYS = (*LINKEDID_KEYS, "${CALLERID(num)}", "FROM_DID", "DIAL_NUMBER", "AMPUSER")


def handler(stage: str, reads: Sequence[str] = ()):
    """Register a stage's fact reader and the variables it reads; a second one under the
    same name is a bug."""

    def register(fn: FactReader) -> FactReader:
        if stage in HANDLERS:
            raise RuntimeError(f"two handlers for stage {stage!r}")
        if stage not in call_flow.PLANS:
            raise RuntimeError(f"no plan for stage {stage!r}")
        HANDLERS[stage] = fn
        READS[stage] = tuple(dict.fromkeys((*reads, CALLID_VARIABLE)))  # see _known_call_id
        return fn

    return register


def _arg(args: Sequence[str], n: int) -> str:
    return args[n].strip() if len(args) > n else ""


def _linkedid(channel: AgiChannel) -> str:
    # The dialplan freezes it at entry; bridging (attended transfer) can change the live one.
    return channel.first_of("CLINICA_LINKEDID", "${CHANNEL(linkedid)}")


@handler("ring-in", reads=(*LINKEDID_KEYS, "${CALLERID(num)}", "FROM_DID"))
def ring_in(channel: AgiChannel, args: Sequence[str]) -> Dict[str, str]:
    """AGI(clinica-agi,ring-in,<DID>[,<target>]) when a call enters from a trunk."""
    return {
        "linkedid": _linkedid(channel),
        "caller": channel.expression("${CALLERID(num)}"),
        "did": _arg(args, 0) or channel.variable("FROM_DID"),
        "target": _arg(args, 1),
    }


# What rings, as the dialplan's predial hooks say: one extension (macro-dial-one), or a
# ring group's members at once or one by one (macro-dial: ${ds}, FreePBX core's dialparties).
ONE, GROUP_DIAL = "one", "group"


@handler("dial", reads=("DEXTEN", "D_OPTIONS", "NODEST", "ds", "HuntMember", "TRANSFERERNAME", "${CHANNEL(state)}"))
def dial(channel: AgiChannel, args: Sequence[str]) -> Dict[str, str]:
    """AGI(clinica-agi,dial,<extension or group>,<one|group>) before an extension, ring
    group or queue rings (FreePBX's predial hooks).  The plan says which answer routine
    goes into the options of the Dial about to run: D_OPTIONS for one extension, ${ds}
    (the whole Dial argument) for a group."""
    member = call_flow.as_extension(_arg(args, 0))
    kind = _arg(args, 1) or (ONE if channel.variable("DEXTEN") else "")
    facts = {"target": member, "group": channel.variable("NODEST"),
             # An attended transfer dials its target from a channel naming the transferer.
             "transferer": channel.variable("TRANSFERERNAME"),
             "caller_state": channel.expression("${CHANNEL(state)}")}
    if member and kind == ONE:
        facts.update(options_variable="D_OPTIONS", options=channel.variable("D_OPTIONS"))
    elif member and kind == GROUP_DIAL:
        ds = channel.variable("ds")
        facts.update(options_variable="ds", options=ds)
        # A hunt group dials one member at a time: ${${HuntMember}} names it.
        hunt = channel.variable("HuntMember")
        facts["members"] = "&".join([*dial_targets(ds), channel.variable(hunt) if hunt else ""])
    return facts


def _install_planned_answer_routine(channel: AgiChannel, facts: Mapping[str, str], leg: str) -> None:
    """Put the answer routine with the plan's leg into the Dial options the dial hook read."""
    variable, options, who = facts.get("options_variable"), facts.get("options", ""), facts.get("target", "")
    if variable == "ds":
        changed = dial_string_with_answer_routine(options, who, leg)
    elif variable:
        changed = with_answer_routine(options, who, leg)
    else:
        return
    if changed != options:
        channel.set(variable, changed)


@handler("ring-out", reads=("DIAL_NUMBER", "DIAL_TRUNK_OPTIONS", *LINKEDID_KEYS, "CHANNEL",
                             "${CHANNEL(state)}", "TRANSFERERNAME"))
def ring_out(channel: AgiChannel, args: Sequence[str]) -> Dict[str, str]:
    """AGI(clinica-agi,ring-out,<AMPUSER>,<number>,<trunk>) before a trunk is dialled."""
    number = _arg(args, 1) or channel.variable("DIAL_NUMBER")
    return {
        "target": digits_of(number).lstrip("+"),
        "options_variable": "DIAL_TRUNK_OPTIONS",
        "options": channel.variable("DIAL_TRUNK_OPTIONS"),
        "transferer": channel.variable("TRANSFERERNAME"),
        "linkedid": _linkedid(channel),
        # AMPUSER from the dialplan; else the calling device (click-to-call has no AMPUSER).
        # Not CALLERID(num): FreePBX has already set the trunk's outbound caller id.
        "caller_extension": _arg(args, 0) or call_flow.extension_of_channel(channel.variable("CHANNEL")),
        "number": number,
        "trunk": _arg(args, 2),
        # Up for a click-to-call: its extension answered before the client was dialled.
        "caller_state": channel.expression("${CHANNEL(state)}"),
    }


@handler("answer", reads=("DIALEDPEERNUMBER", "CHANNEL"))
def answer(channel: AgiChannel, args: Sequence[str]) -> Dict[str, str]:
    """AGI(clinica-agi,answer,<extension, group or number>,<leg>) from Dial's U(), on the
    answering channel."""
    facts = {"target": _arg(args, 0), "leg": _arg(args, 1), "channel": channel.variable("CHANNEL")}
    if not call_flow.as_extension(facts["target"]):
        facts["dialed_peer"] = channel.variable("DIALEDPEERNUMBER")
    return facts


# A channel name as Asterisk makes them (Local/805@from-internal-0000001a;2): nothing that
# could end the IMPORT() it is read through.
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9/@;._+#:-]{0,127}")


@handler("transfer")
def transfer(channel: AgiChannel, args: Sequence[str]) -> Dict[str, str]:
    """AGI(clinica-agi,transfer,<consultation channel>) from the hangup handler of an
    answered leg whose employee started an attended transfer: hanging up completes it.
    (A hangup handler's channel is dead: CHANNEL STATUS is refused there, IMPORT() is not.)"""
    consult = _arg(args, 0)
    state = ""
    if _CHANNEL_NAME.fullmatch(consult):
        state = channel.expression(f"${{IMPORT({consult},CHANNEL(state))}}").strip().lower()
    return {"consult": (call_flow.CONSULT_GONE if not state
                        else call_flow.CONSULT_UP if state == "up" else call_flow.CONSULT_RINGING),
            "consult_channel": consult}


@handler("hangup", reads=("DIALSTATUS", "ANSWEREDTIME", "${CDR(billsec)}", "${CDR(disposition)}",
                          "${CDR(recordingfile)}", "VMSTATUS", "VM_MESSAGEFILE", *FALLBACK_KEYS))
def hangup(channel: AgiChannel, args: Sequence[str]) -> Dict[str, str]:
    """AGI(clinica-agi,hangup,<in|out|c2c>) from the hangup handler of the entering channel
    (c2c: of a click-to-call's extension leg)."""
    return {
        "direction": _arg(args, 0),
        "dialstatus": channel.variable("DIALSTATUS"),
        "answeredtime": channel.variable("ANSWEREDTIME"),
        "cdr_billsec": channel.expression("${CDR(billsec)}"),
        "cdr_disposition": channel.expression("${CDR(disposition)}"),
        "recording": channel.expression("${CDR(recordingfile)}"),
        "vmstatus": channel.variable("VMSTATUS"),
        "vm_message": channel.variable("VM_MESSAGEFILE"),
    }


def _fallback_facts(channel: AgiChannel, stage: str) -> Dict[str, str]:
    """What a hang-up needs to describe a call that no earlier hook stored."""
    return {
        "linkedid": _linkedid(channel),
        "caller": channel.expression("${CALLERID(num)}"),
        "did": channel.variable("FROM_DID"),
        "number": channel.variable("DIAL_NUMBER"),
        "caller_extension": channel.variable("AMPUSER"),
    }


@dataclass
class HookServices:
    """What a hook needs besides its channel; one per process or per worker thread."""

    settings: Settings
    store: Store
    sender: PushSender
    pbx: str = ""
    clock: Callable[[], float] = time.time
    outbox: Outbox = field(init=False)
    fmt: call_flow.NumberFormat = field(init=False)

    def __post_init__(self):
        self.outbox = Outbox(self.store)
        s = self.settings
        self.fmt = call_flow.NumberFormat(s.number_format, s.country_code, s.trunk_prefix)
        self.pbx = self.pbx or s.pbx_id or socket.gethostname()

    @classmethod
    def open(cls, settings: Settings, sender: Optional[PushSender] = None, pbx: str = "",
             transport=None) -> "HookServices":
        store = Store(settings.db_path, busy_timeout_s=settings.hook_deadline_s)
        sender = sender or PushSender(settings.crm_push_url, settings.push_format, transport)
        return cls(settings, store, sender, pbx)


@dataclass
class HookResult:
    stage: str
    status: str
    call_id: Optional[int] = None
    detail: str = ""
    ms: int = 0
    leased: List[OutboxEvent] = field(default_factory=list)  # the call's events, ours to send
    leased_all: bool = False  # no event of the call waits on another sender


def _known_call_id(services: HookServices, channel: AgiChannel, stage: str, facts: Dict[str, str]) -> Optional[int]:
    """What finding the call needs from the channel, read before the write transaction: an
    AGI round trip must never hold the store's write lock (every other hook would wait on
    it).  The call named by CLINICA_CALLID, if it exists; else the facts to find it by."""
    callid = call_id_from_text(channel.variable(CALLID_VARIABLE))
    if callid is not None and services.store.call(callid) is not None:
        return callid  # calls are never deleted: it is still there in the transaction
    if stage in FALLBACK_STAGES and "linkedid" not in facts:
        facts.update(_fallback_facts(channel, stage))
    return None


def _find_call(services: HookServices, known: Optional[int], stage: str, facts: Dict[str, str]):
    if known is not None:
        return services.store.call(known), False
    if stage in FALLBACK_STAGES and facts.get("linkedid"):
        call = services.store.call_by_linkedid(services.pbx, facts["linkedid"])
        return call, call is not None
    return None, False


def apply_stage(services: HookServices, channel: AgiChannel, stage: str, args: Sequence[str],
                lease_s: float = 0.0) -> HookResult:
    """Read the facts, store what they change, queue the events and lease the call's
    undelivered ones for ``lease_s`` (to send them at once).  No network I/O."""
    channel.prefetch(READS[stage])
    facts = HANDLERS[stage](channel, args)
    known = _known_call_id(services, channel, stage, facts)
    now = services.clock()
    with services.store.transaction():
        call, found_by_linkedid = _find_call(services, known, stage, facts)
        plan = call_flow.PLANS[stage](call, facts, services.fmt, now)
        if plan.create is not None:
            fields = dict(plan.create, pbx=services.pbx)
            call_id = services.store.insert_call(fields)
        elif call is not None:
            call_id = call["id"]
            services.store.update_call(call_id, plan.changes)
        else:
            return HookResult(stage, SKIPPED, detail=plan.note)
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
    if plan.create is not None or found_by_linkedid:
        # Every later hook of the call (other legs inherit the variable) finds it by id.
        channel.set("__" + CALLID_VARIABLE, call_id)
    if plan.answer_leg:
        _install_planned_answer_routine(channel, facts, plan.answer_leg)
    if plan.arm_hangup:
        channel.set("CHANNEL(hangup_handler_push)", f"{HANGUP_HANDLER},s,1({plan.arm_hangup})")
    if not queued:
        return HookResult(stage, SKIPPED, call_id, plan.note or "nothing new for this call")
    return HookResult(stage, QUEUED, call_id, leased=leased, leased_all=leased_all)


def run_hook(request: AgiRequest, channel: AgiChannel, services: HookServices, deadline: Deadline) -> HookResult:
    """One hook session, start to end.  Never raises; always leaves CLINICA_STATUS."""
    stage, args = request.stage_and_args
    result = HookResult(stage or "?", FAILED)
    try:
        if stage not in HANDLERS:
            result = HookResult(stage or "?", NOTFOUND, detail=f"unknown stage {stage!r}; known: {', '.join(sorted(HANDLERS))}")
        else:
            services.store.set_busy_timeout(max(0.05, deadline.remaining() - RESERVE_S))
            # A push the CRM is slow to answer goes on after the hook, for the transport's
            # whole limit; the lease covers it, so nobody sends the event again meanwhile.
            attempt_s = services.settings.deliver_timeout_s
            result = apply_stage(services, channel, stage, args,
                                 deadline.remaining() + attempt_s + CUT_GRACE_S + LEASE_MARGIN_S)
            if result.status == QUEUED:
                until = time.monotonic() + deadline.remaining() - RESERVE_S
                if send_leased_events(services.outbox, services.sender, result.leased, until,
                                      services.settings.deliver_max_backoff_s, attempt_s) and result.leased_all:
                    result.status = SENT
    except DeadlineExceeded as exc:
        result.detail = f"deadline reached while {exc}"
        result.status = QUEUED if result.call_id else FAILED
    except StoreError as exc:
        result.detail = str(exc)
    except (AGIException, ChannelClosed, EnvBlockError, OSError) as exc:
        result.detail = f"AGI: {type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug must cost a log line, never the call
        log.exception("hook %s failed", stage)
        result.detail = f"{type(exc).__name__}: {exc}"
    result.ms = deadline.elapsed_ms()
    finish(channel, deadline, result)
    return result


def finish(channel: AgiChannel, deadline: Deadline, result: HookResult) -> None:
    """Tell the dialplan (CLINICA_STATUS) and the log how the hook went."""
    level = logging.INFO if result.status in (SENT, QUEUED, SKIPPED) else logging.WARNING
    log.log(level, "hook call=%s stage=%s outcome=%s ms=%d%s", result.call_id or "-", result.stage,
            result.status, result.ms, f" detail={result.detail!r}" if result.detail else "")
    # The last command gets a short grace of its own, so a hook that used its whole
    # deadline still reports; a dead or closed channel simply does not answer.
    channel.stream.deadline = Deadline(max(0.02, min(RESERVE_S, deadline.remaining())))
    try:
        channel.set(STATUS_VARIABLE, result.status)
        if result.status in (FAILED, NOTFOUND):
            channel.say(f"clinica: {result.stage} {result.status}: {result.detail}"[:300])
    except (DeadlineExceeded, ChannelClosed, OSError):
        pass
