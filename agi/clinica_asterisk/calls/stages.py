"""The stages of a call, each defined once: what the dialplan passes it, what it reads from
the channel, the facts it makes of that, its plan (:mod:`.plans`), and what it may write
back.  Pure: the table names channel variables and expressions, it never reads them.

The session runner (:func:`clinica_asterisk.hooks.stages.apply_stage`) does the channel
I/O, in the same order for every stage:

1. :meth:`Stage.first_reads` in one round trip, then :meth:`Stage.then_reads` (what
   depends on a value read or on an argument: ``${${HuntMember}}``,
   ``IMPORT(<consultation>,CHANNEL(state))``);
2. :meth:`Stage.facts` over those values (a function of a mapping; no I/O);
3. the stage's plan, in the store's transaction;
4. :func:`channel_writes`: what the plan leaves on the channel (the call's id, the answer
   routine in Dial's options, a hangup handler), limited to what the stage declares.

``dialplan/extensions_clinica.conf`` runs these stages as
``Gosub(clinica-sub,run,1(<stage>,<arg>,…))``; ``tests/test_dialplan.py`` checks it
against :data:`STAGES` (names and argument shapes).
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import plans
from .events import INCOMING, OUTGOING
from .dial_options import dial_string_with_answer_routine, dial_targets, with_answer_routine
from .phone import digits_of
from ..values import Value
from ..variables import (CALLID_VARIABLE, GROUP_DIAL_STRING, HANGUP_HANDLER, HANGUP_HANDLER_PUSH,
                         LINKEDID_VARIABLE)

if TYPE_CHECKING:  # type aliases, for type checkers only
    Values = Mapping[str, str]  # a channel variable's name or an expression -> its value ('' when unset)
    Args = Sequence[str]
    FactsFn = Callable[[Values, Args], Dict[str, str]]
    ReadsFn = Callable[[Values, Args], Tuple[str, ...]]

# What a stage may write back to its channel (:func:`channel_writes`).
CALL_ID = "call id"                # __CLINICA_CALLID, which every later leg inherits
ANSWER_ROUTINE = "answer routine"  # Dial's U() in D_OPTIONS, ${ds} or DIAL_TRUNK_OPTIONS
HANGUP_ROUTINE = "hangup handler"  # [clinica-hangup] on the hook's channel
WRITES = (CALL_ID, ANSWER_ROUTINE, HANGUP_ROUTINE)


class Arg(Value):
    """One argument the dialplan passes a stage; ``choices``: the only values it takes,
    when it is one of a few words."""

    __slots__ = ("name", "required", "choices")  # str, bool, Tuple[str, ...]
    _defaults = {"required": True, "choices": ()}


class Reads(Value):
    """Facts and what they are made of: the names read from the channel (variables, or
    expressions such as ``${CDR(billsec)}``) and the pure function turning their values
    (and the stage's arguments) into facts."""

    __slots__ = ("names", "facts")  # Tuple[str, ...], FactsFn


def _no_more(values: Values, args: Args) -> Tuple[str, ...]:
    return ()


class Stage(Value):
    """One stage of a call.

    ``reads``: what its facts are made of; ``then_reads``: names to read once the first
    values are in (they depend on a value or an argument); ``plan``: its decision
    (:mod:`.plans`); ``writes``: what it may leave on the channel (:data:`WRITES`);
    ``new_call``: it may store a call no earlier hook stored (it then looks the call up by
    linkedid first, and leaves its id on the channel); ``fallback``: the facts that
    describe such a call when the stage's own facts do not (read with the rest, used only
    when the channel names no stored call)."""

    # str, Tuple[Arg, ...], Reads, plans.PlanFn, Tuple[str, ...], ReadsFn, bool, Optional[Reads]
    __slots__ = ("name", "args", "reads", "plan", "writes", "then_reads", "new_call", "fallback")
    _defaults = {"writes": (), "then_reads": _no_more, "new_call": False, "fallback": None}

    def first_reads(self) -> Tuple[str, ...]:
        """Everything read in the first round trip: the facts', the fallback's, and the
        call's id (every stage needs it to find its call)."""
        extra = self.fallback.names if self.fallback else ()
        return tuple(dict.fromkeys((*self.reads.names, *extra, CALLID_VARIABLE)))

    def facts(self, values: Values, args: Args) -> Dict[str, str]:
        return self.reads.facts(values, args)

    def fallback_facts(self, values: Values, args: Args) -> Dict[str, str]:
        return self.fallback.facts(values, args) if self.fallback else {}


def _arg(args: Args, n: int) -> str:
    return args[n].strip() if len(args) > n else ""


# --- ring-in, ring-out, and a hang-up nobody stored ------------------------------------

# The dialplan freezes the linkedid at entry; bridging (attended transfer) can change the
# live one.
LINKEDID_READS = (LINKEDID_VARIABLE, "${CHANNEL(linkedid)}")


def _linkedid(values: Values) -> str:
    return values[LINKEDID_VARIABLE] or values["${CHANNEL(linkedid)}"]


def _origin_facts(values: Values, args: Args) -> Dict[str, str]:
    """What a hang-up needs to describe a call that no earlier hook stored."""
    return {
        "linkedid": _linkedid(values),
        "caller": values["${CALLERID(num)}"],
        "did": values["FROM_DID"],
        "number": values["DIAL_NUMBER"],
        "caller_extension": values["AMPUSER"],
    }


CALL_ORIGIN = Reads((*LINKEDID_READS, "${CALLERID(num)}", "FROM_DID", "DIAL_NUMBER", "AMPUSER"), _origin_facts)


def _ring_in(values: Values, args: Args) -> Dict[str, str]:
    """AGI(clinica-agi,ring-in,<DID>[,<target>]) when a call enters from a trunk."""
    return {
        "linkedid": _linkedid(values),
        "caller": values["${CALLERID(num)}"],
        "did": _arg(args, 0) or values["FROM_DID"],
        "target": _arg(args, 1),
    }


def _ring_out(values: Values, args: Args) -> Dict[str, str]:
    """AGI(clinica-agi,ring-out,<AMPUSER>,<number>,<trunk>) before a trunk is dialled."""
    number = _arg(args, 1) or values["DIAL_NUMBER"]
    return {
        "target": digits_of(number).lstrip("+"),
        "options_variable": "DIAL_TRUNK_OPTIONS",
        "options": values["DIAL_TRUNK_OPTIONS"],
        "transferer": values["TRANSFERERNAME"],
        "linkedid": _linkedid(values),
        # AMPUSER from the dialplan; else the calling device (click-to-call has no AMPUSER).
        # Not CALLERID(num): FreePBX has already set the trunk's outbound caller id.
        "caller_extension": _arg(args, 0) or plans.extension_of_channel(values["CHANNEL"]),
        "number": number,
        "trunk": _arg(args, 2),
        # Up for a click-to-call: its extension answered before the client was dialled.
        "caller_state": values["${CHANNEL(state)}"],
    }


# --- dial -------------------------------------------------------------------------------

# What rings, as the dialplan's predial hooks say: one extension (macro-dial-one), or a
# ring group's members at once or one by one (macro-dial: ${ds}, FreePBX core's dialparties).
ONE, GROUP_DIAL = "one", "group"
# A variable's name, as FreePBX's hunt groups name their members (HuntMember0, …): what
# ${HuntMember} holds is read as a variable in its own right, and nothing else is.  (Its
# pattern and the next are compiled by re at their first use: most hooks never need them.)
_VARIABLE_NAME = r"[A-Za-z0-9_]{1,80}"


def _dial_kind(values: Values, args: Args) -> str:
    return _arg(args, 1) or (ONE if values["DEXTEN"] else "")


def _hunt_member_variable(values: Values, args: Args) -> str:
    """A hunt group dials one member at a time: ``${${HuntMember}}`` names it."""
    if not (plans.as_extension(_arg(args, 0)) and _dial_kind(values, args) == GROUP_DIAL):
        return ""
    hunt = values["HuntMember"]
    return hunt if re.fullmatch(_VARIABLE_NAME, hunt) else ""


def _dial_then_reads(values: Values, args: Args) -> Tuple[str, ...]:
    hunt = _hunt_member_variable(values, args)
    return (hunt,) if hunt else ()


def _dial(values: Values, args: Args) -> Dict[str, str]:
    """AGI(clinica-agi,dial,<extension or group>,<one|group>) before an extension, ring
    group or queue rings (FreePBX's predial hooks).  The plan says which answer routine
    goes into the options of the Dial about to run: D_OPTIONS for one extension, ${ds}
    (the whole Dial argument) for a group."""
    member = plans.as_extension(_arg(args, 0))
    kind = _dial_kind(values, args)
    facts = {"target": member, "group": values["NODEST"],
             # An attended transfer dials its target from a channel naming the transferer.
             "transferer": values["TRANSFERERNAME"],
             "caller_state": values["${CHANNEL(state)}"]}
    if member and kind == ONE:
        facts.update(options_variable="D_OPTIONS", options=values["D_OPTIONS"])
    elif member and kind == GROUP_DIAL:
        ds = values[GROUP_DIAL_STRING]
        facts.update(options_variable=GROUP_DIAL_STRING, options=ds)
        hunt = _hunt_member_variable(values, args)
        facts["members"] = "&".join([*dial_targets(ds), values[hunt] if hunt else ""])
    return facts


# --- answer, transfer, hangup -----------------------------------------------------------

def _answer(values: Values, args: Args) -> Dict[str, str]:
    """AGI(clinica-agi,answer,<extension, group or number>,<leg>) from Dial's U(), on the
    answering channel."""
    facts = {"target": _arg(args, 0), "leg": _arg(args, 1), "channel": values["CHANNEL"]}
    if not plans.as_extension(facts["target"]):
        facts["dialed_peer"] = values["DIALEDPEERNUMBER"]
    return facts


# A channel name as Asterisk makes them (Local/805@from-internal-0000001a;2): nothing that
# could end the IMPORT() it is read through.
_CHANNEL_NAME = r"[A-Za-z0-9][A-Za-z0-9/@;._+#:-]{0,127}"


def _consult_state_expression(args: Args) -> str:
    """How the consultation channel stands, read from the transferer's (dead) channel:
    CHANNEL STATUS is refused on a hangup handler's channel, IMPORT() is not."""
    consult = _arg(args, 0)
    return f"${{IMPORT({consult},CHANNEL(state))}}" if re.fullmatch(_CHANNEL_NAME, consult) else ""


def _transfer_then_reads(values: Values, args: Args) -> Tuple[str, ...]:
    expression = _consult_state_expression(args)
    return (expression,) if expression else ()


def _transfer(values: Values, args: Args) -> Dict[str, str]:
    """AGI(clinica-agi,transfer,<consultation channel>) from the hangup handler of an
    answered leg whose employee started an attended transfer: hanging up completes it."""
    expression = _consult_state_expression(args)
    state = values[expression].strip().lower() if expression else ""
    return {"consult": (plans.CONSULT_GONE if not state
                        else plans.CONSULT_UP if state == "up" else plans.CONSULT_RINGING),
            "consult_channel": _arg(args, 0)}


def _hangup(values: Values, args: Args) -> Dict[str, str]:
    """AGI(clinica-agi,hangup,<in|out|c2c>) from the hangup handler of the entering channel
    (c2c: of a click-to-call's extension leg)."""
    return {
        "direction": _arg(args, 0),
        "dialstatus": values["DIALSTATUS"],
        "answeredtime": values["ANSWEREDTIME"],
        "cdr_billsec": values["${CDR(billsec)}"],
        "cdr_disposition": values["${CDR(disposition)}"],
        "recording": values["${CDR(recordingfile)}"],
        "vmstatus": values["VMSTATUS"],
        "vm_message": values["VM_MESSAGEFILE"],
    }


# --- the table --------------------------------------------------------------------------

_STAGES = (
    Stage("ring-in", (Arg("did"), Arg("target", required=False)),
          Reads((*LINKEDID_READS, "${CALLERID(num)}", "FROM_DID"), _ring_in),
          plans.plan_ring_in, writes=(CALL_ID,), new_call=True),
    Stage("dial", (Arg("extension or group"), Arg("kind", required=False, choices=(ONE, GROUP_DIAL))),
          Reads(("DEXTEN", "D_OPTIONS", "NODEST", GROUP_DIAL_STRING, "HuntMember", "TRANSFERERNAME",
                 "${CHANNEL(state)}"), _dial),
          plans.plan_dial, writes=(ANSWER_ROUTINE, HANGUP_ROUTINE), then_reads=_dial_then_reads),
    Stage("ring-out", (Arg("calling extension"), Arg("number"), Arg("trunk")),
          Reads(("DIAL_NUMBER", "DIAL_TRUNK_OPTIONS", *LINKEDID_READS, "CHANNEL", "${CHANNEL(state)}",
                 "TRANSFERERNAME"), _ring_out),
          plans.plan_ring_out, writes=(CALL_ID, ANSWER_ROUTINE), new_call=True),
    Stage("answer", (Arg("extension, group or number"), Arg("leg")),
          Reads(("DIALEDPEERNUMBER", "CHANNEL"), _answer), plans.plan_answer),
    Stage("transfer", (Arg("consultation channel"),),
          Reads((), _transfer), plans.plan_transfer, then_reads=_transfer_then_reads),
    Stage("hangup", (Arg("direction", choices=(INCOMING, OUTGOING, plans.CLICK_TO_CALL_LEG)),),
          Reads(("DIALSTATUS", "ANSWEREDTIME", "${CDR(billsec)}", "${CDR(disposition)}", "${CDR(recordingfile)}",
                 "VMSTATUS", "VM_MESSAGEFILE"), _hangup),
          plans.plan_hangup, writes=(CALL_ID,), new_call=True, fallback=CALL_ORIGIN),
)


def _table(stages: Sequence[Stage]) -> Dict[str, Stage]:
    table: Dict[str, Stage] = {}
    for stage in stages:
        if stage.name in table:  # a second definition is a bug, found at import
            raise RuntimeError(f"two stages named {stage.name!r}")
        unknown = set(stage.writes) - set(WRITES)
        if unknown:
            raise RuntimeError(f"stage {stage.name!r} writes {sorted(unknown)}: not one of {WRITES}")
        table[stage.name] = stage
    return table


STAGES: Mapping[str, Stage] = _table(_STAGES)


# --- what a plan leaves on the channel --------------------------------------------------

def channel_writes(stage: Stage, facts: Mapping[str, str], plan: plans.Plan, call_id: Optional[int],
                   remember_call_id: bool) -> List[Tuple[str, str]]:
    """The variables to set on the hook's channel, in order, once the plan is stored.

    ``remember_call_id``: the call was just stored or found by its linkedid, so later hooks
    must find it by id.  A plan asking for a write its stage does not declare is a bug."""
    writes: List[Tuple[str, str]] = []
    if remember_call_id and call_id is not None:
        writes.append((_declared(stage, CALL_ID, "__" + CALLID_VARIABLE), str(call_id)))
    if plan.answer_leg:
        routine = _answer_routine(facts, plan.answer_leg)
        if routine is not None:
            writes.append((_declared(stage, ANSWER_ROUTINE, routine[0]), routine[1]))
    if plan.arm_hangup:
        writes.append((_declared(stage, HANGUP_ROUTINE, HANGUP_HANDLER_PUSH),
                       f"{HANGUP_HANDLER},s,1({plan.arm_hangup})"))
    return writes


def _declared(stage: Stage, kind: str, variable: str) -> str:
    if kind not in stage.writes:
        raise RuntimeError(f"stage {stage.name!r} does not write the {kind} ({variable})")
    return variable


def _answer_routine(facts: Mapping[str, str], leg: str) -> Optional[Tuple[str, str]]:
    """The Dial options the stage read (``options_variable``) with the answer routine for
    ``leg``; None when they need no change or the stage read none."""
    variable, options, who = facts.get("options_variable"), facts.get("options", ""), facts.get("target", "")
    if variable == GROUP_DIAL_STRING:
        changed = dial_string_with_answer_routine(options, who, leg)
    elif variable:
        changed = with_answer_routine(options, who, leg)
    else:
        return None
    return (variable, changed) if changed != options else None
