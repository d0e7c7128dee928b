"""What each hook means for a call: pure decisions from the stored call and the facts read
from the channel, to the changes to store and the events to emit.

The dialplan may fire a hook more than once for one call (Local channel halves, ring-group
members, queue retries, trunk fail-over); every plan here is safe to apply again: events
are de-duplicated by the outbox (one of each type per call), and first facts win.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Mapping, Optional

from .dial_options import BLIND, CONSULT, EXT, GROUP, TRUNK
from .events import ANSWERED, HANGUP, INCOMING, OUTGOING, RECEIVED, transfer_keys
from .numbers import NumberFormat
from .phone import digits_of, is_digits
from ..values import Value
from ..variables import GROUP_DIAL_STRING

DIAL_STATUSES = frozenset({"ANSWER", "NOANSWER", "BUSY", "CANCEL", "CONGESTION", "CHANUNAVAIL"})
TRANSFER, VOICEMAIL, VOICEMAIL_LEFT = "TRANSFER", "VM", "VM-SUCCESS"
# The hangup handler's argument on a click-to-call's extension leg (the dialplan's others:
# INCOMING, OUTGOING).
CLICK_TO_CALL_LEG = "c2c"
# pending_transfer once the transferer left while the consultation still rang.
TRANSFERER_LEFT = "-"
# How an attended transfer's consultation channel stands when its transferer hangs up.
CONSULT_UP, CONSULT_RINGING, CONSULT_GONE = "up", "ringing", "gone"
CDR_DISPOSITIONS = {"BUSY": "BUSY", "FAILED": "CHANUNAVAIL", "CONGESTION": "CONGESTION"}
MAX_EXTENSION_DIGITS = 8


class Plan(Value):
    """``create``: fields of a new call; ``changes``: fields to update on an existing one;
    ``events``: keys of the events to emit, in order (:mod:`events`); ``answer_leg``: the
    leg of the answer routine to put into the Dial options (:mod:`dial_options`);
    ``arm_hangup``: the argument of a hangup handler to put on the hook's channel;
    ``note``: why nothing happens."""

    # create: Optional[Dict[str, Any]]; changes: Dict[str, Any]; events: Tuple[str, ...]
    __slots__ = ("create", "changes", "events", "note", "answer_leg", "arm_hangup")
    _defaults = {"create": None, "events": (), "note": "", "answer_leg": "", "arm_hangup": ""}
    _factories = {"changes": dict}


# A stage's plan: (the stored call or None, the facts read, the number format, now) -> Plan.
if TYPE_CHECKING:  # a type alias, for type checkers only
    PlanFn = Callable[[Optional[Mapping[str, Any]], Mapping[str, str], NumberFormat, float], Plan]


def extension_of(text: str) -> str:
    """An extension or number out of a dial string or DIALEDPEERNUMBER.

    ``801`` -> 801; ``802/802`` and ``801/sip:801@10.0.0.5:5060`` -> the device's
    extension; ``802@from-queue/n`` and ``801@ext-local`` -> the Local channel's extension;
    ``pstn1/0670219424`` -> the number dialled through trunk pstn1.
    """
    text = (text or "").strip()
    at, slash = text.find("@"), text.find("/")
    if at >= 0 and (slash < 0 or at < slash):
        return digits_of(text[:at]).lstrip("+")
    if slash >= 0:
        head, rest = text[:slash], text[slash + 1:]
        if is_digits(head):
            return head
        rest = rest.split("@", 1)[0]
        if rest.lower().startswith("sip:"):
            rest = rest[4:]
        return digits_of(rest)
    return digits_of(text)


def extension_of_channel(name: str) -> str:
    """The extension a channel belongs to: ``PJSIP/904-0000001a`` and
    ``Local/801@originate-skipvm-00000004;1`` -> the extension; a trunk's channel -> ''."""
    resource = (name or "").partition("/")[2]
    resource = resource.split("@", 1)[0] if "@" in resource else resource.rsplit("-", 1)[0]
    return as_extension(resource) if is_digits(resource) else ""


def party_of_channel(name: str) -> str:
    """Who a channel reaches: ``PJSIP/802-0000001a`` -> 802, ``Local/0671234567#@from-internal-0000000a;1``
    -> 0671234567 (a group's external member), a trunk's channel (``PJSIP/pstn1-…``) -> ''."""
    resource = (name or "").partition("/")[2]
    if "@" in resource:
        head = resource.split("@", 1)[0].rstrip("#")
    else:
        head = resource.rsplit("-", 1)[0]
    return head if is_digits(head) and len(head) <= 20 else ""


def party_of_dial_target(target: str) -> str:
    """Who one target of a dial string reaches: ``IAX2/801/801``, ``PJSIP/802``,
    ``PJSIP/802/sip:802@10.0.0.5:5060`` -> the device; ``Local/0671234567#@from-internal/n``
    -> the number; anything else -> ''."""
    resource = (target or "").strip().partition("/")[2]
    if "@" in resource.split("/", 1)[0]:
        head = resource.split("@", 1)[0].rstrip("#")
    else:
        head = resource.split("/", 1)[0]
    return head if is_digits(head) and len(head) <= 20 else ""


def as_extension(raw: str) -> str:
    """Digits of an extension, or '' when ``raw`` is no extension (too long, empty)."""
    digits = digits_of(raw).lstrip("+")
    return digits if 0 < len(digits) <= MAX_EXTENSION_DIGITS else ""


def _count(text: str) -> Optional[int]:
    text = (text or "").strip()
    return int(text) if is_digits(text) and len(text) <= 9 else None


def talk_seconds(call: Mapping[str, Any], facts: Mapping[str, str], now: float) -> int:
    """Billsec: the seconds the client talked with employees, from the first employee's
    answer to the end (transfers included).

    Dial's ANSWEREDTIME counts from when the *caller's* channel was answered: exact for a
    call put straight through (Dial answers the caller when the employee does, and it
    goes on counting across transfers), too long when an IVR, an announcement or a queue
    answered the client first, or a click-to-call's extension answered before the client
    was dialled (``pre_answered``).  Then, and when there is no
    ANSWEREDTIME (Queue() sets none), the time since the answer hook; else CDR(billsec)."""
    answered = bool(call.get("answered_at")) or facts.get("dialstatus", "").upper() == "ANSWER"
    if not answered:
        return 0
    answeredtime = _count(facts.get("answeredtime", ""))
    if answeredtime is not None and not (call.get("pre_answered") and call.get("answered_at")):
        return answeredtime
    if call.get("answered_at"):
        return max(0, int(now - call["answered_at"]))  # whole seconds, as Asterisk counts them
    return _count(facts.get("cdr_billsec", "")) or 0


def disposition(call: Mapping[str, Any], facts: Mapping[str, str]) -> str:
    """Binotel's vocabulary: TRANSFER, ANSWER, VM, VM-SUCCESS, NOANSWER, BUSY, CANCEL,
    CONGESTION, CHANUNAVAIL."""
    if call.get("transfers"):
        return TRANSFER
    if call.get("answered_at"):
        return "ANSWER"
    if facts.get("vmstatus", "").strip():
        # VoiceMail ran on the caller's channel; VM_MESSAGEFILE is set once it saved a message.
        return VOICEMAIL_LEFT if facts.get("vm_message", "").strip() else VOICEMAIL
    status = facts.get("dialstatus", "").strip().upper()
    if status in DIAL_STATUSES:
        return status
    # No Dial result (a queue, an IVR): the CDR says what it can; else the caller gave up.
    return CDR_DISPOSITIONS.get(facts.get("cdr_disposition", "").strip().upper(), "CANCEL")


def _with_target(call: Mapping[str, Any], target: str) -> Dict[str, Any]:
    changes: Dict[str, Any] = {}
    if target and target not in call.get("dst_numbers", []):
        changes["dst_numbers"] = [*call.get("dst_numbers", []), target]
    if target and not call.get("internal_number"):
        changes["internal_number"] = target
    return changes


def new_incoming(facts: Mapping[str, str], fmt: NumberFormat, now: float) -> Dict[str, Any]:
    return {
        "direction": INCOMING,
        "linkedid": facts.get("linkedid") or None,
        "started_at": now,
        "src_number": digits_of(facts.get("caller", "")),
        "external_number": fmt(facts.get("caller", "")),
        "did": fmt(facts.get("did", "")),
        "internal_number": "",
        "dst_numbers": [],
    }


def new_outgoing(facts: Mapping[str, str], fmt: NumberFormat, now: float) -> Dict[str, Any]:
    number = fmt(facts.get("number", ""))
    return {
        "direction": OUTGOING,
        "linkedid": facts.get("linkedid") or None,
        "started_at": now,
        "src_number": digits_of(facts.get("number", "")),
        "external_number": number,
        "internal_number": as_extension(facts.get("caller_extension", "")),
        "trunk": facts.get("trunk", "")[:40],
        "dst_numbers": [number] if number else [],
    }


def plan_ring_in(call: Optional[Mapping[str, Any]], facts: Mapping[str, str], fmt: NumberFormat, now: float) -> Plan:
    """A call from a trunk enters.  The destination is often not known yet (FreePBX routes
    it afterwards), so receivedTheCall waits for the first ``dial`` hook unless the
    dialplan names the target here."""
    target = as_extension(facts.get("target", ""))
    if call is None:
        fields = new_incoming(facts, fmt, now)
        if target:
            fields.update(internal_number=target, dst_numbers=[target])
        return Plan(create=fields, events=(RECEIVED,) if target else (),
                    note="" if target else "call stored; receivedTheCall waits for the dial hook")
    if call["direction"] != INCOMING:
        return Plan(note="ring-in on a call that is not incoming")
    return Plan(changes=_with_target(call, target), events=(RECEIVED,) if target else ())


def _with_numbers(call: Mapping[str, Any], changes: Dict[str, Any], numbers) -> Dict[str, Any]:
    """``changes`` plus the numbers not yet among the call's dst_numbers, in order."""
    dst = list(changes.get("dst_numbers", call.get("dst_numbers", [])))
    added = [n for n in dict.fromkeys(numbers) if n and n not in dst]
    if added:
        changes["dst_numbers"] = dst + added
    return changes


def _is_up(facts: Mapping[str, str]) -> bool:
    """The hook's channel was already answered before this Dial: an IVR, an announcement
    or a queue answered the client; a click-to-call's extension answered its ring."""
    return facts.get("caller_state", "").strip().lower() == "up"


def members_of(facts: Mapping[str, str]):
    """The extensions (or numbers) of a group as the dial hook found them (``members``:
    the dial strings, separated by ``&``)."""
    return [m for m in (party_of_dial_target(x) for x in facts.get("members", "").split("&")) if m]


def plan_dial(call: Optional[Mapping[str, Any]], facts: Mapping[str, str], fmt: NumberFormat, now: float) -> Plan:
    """An extension, ring group or queue is about to ring."""
    if call is None:
        return Plan(note="not an external call")
    member = as_extension(facts.get("target", ""))
    group = as_extension(facts.get("group", ""))
    leg = GROUP if facts.get("options_variable") == GROUP_DIAL_STRING else EXT
    if call["direction"] == OUTGOING:
        arm = ""
        if call.get("origin") == "api" and not call.get("trunk") and not call.get("ended_at"):
            # Click-to-call rings its extension first: if it never answers, no trunk leg
            # (and no hangup handler of its own) will ever end the call.
            arm = CLICK_TO_CALL_LEG
        return Plan(changes=_with_target(call, member), note="extension leg of an outgoing call",
                    answer_leg=leg, arm_hangup=arm)
    if call.get("answered_at"):
        # Someone already talks with the client: a transfer is under way - the
        # transferer's consultation (attended), or the client's channel dialling on (blind).
        changes = _with_numbers(call, {}, [group, member, *members_of(facts)])
        if facts.get("transferer"):
            changes["pending_transfer"] = ""  # a new consultation: forget an earlier one
        return Plan(changes=changes, note="transfer under way",
                    answer_leg=CONSULT if facts.get("transferer") else BLIND)
    changes = _with_target(call, group or member)
    changes = _with_numbers(call, changes, [member, *members_of(facts)])
    if _is_up(facts) and not call.get("pre_answered"):
        changes["pre_answered"] = 1  # an IVR, an announcement or a queue answered first
    return Plan(changes=changes, events=(RECEIVED,), answer_leg=leg)


def plan_ring_out(call: Optional[Mapping[str, Any]], facts: Mapping[str, str], fmt: NumberFormat, now: float) -> Plan:
    """A call leaves through a trunk (once per trunk tried)."""
    if call is None:
        fields = new_outgoing(facts, fmt, now)
        if _is_up(facts):
            fields["pre_answered"] = 1
        return Plan(create=fields, events=(RECEIVED,), answer_leg=TRUNK)
    if call["direction"] != OUTGOING:
        number = digits_of(facts.get("number", "")).lstrip("+")
        if call.get("answered_at"):
            # An employee transfers the client to an outside number.
            changes = _with_numbers(call, {}, [number])
            if facts.get("transferer"):
                changes["pending_transfer"] = ""
            return Plan(changes=changes, note="transfer to an outside number under way",
                        answer_leg=CONSULT if facts.get("transferer") else BLIND)
        return Plan(note="trunk leg of an incoming call (follow-me, forward)", answer_leg=TRUNK)
    changes: Dict[str, Any] = {}
    if facts.get("linkedid") and not call.get("linkedid"):
        changes["linkedid"] = facts["linkedid"]  # a click-to-call stored by the API before it rang
    if facts.get("trunk"):
        changes["trunk"] = facts["trunk"][:40]
    number = fmt(facts.get("number", ""))
    if number and not call.get("external_number"):
        changes.update(external_number=number, src_number=digits_of(facts["number"]))
    if number and number not in call.get("dst_numbers", []):
        changes["dst_numbers"] = [*call.get("dst_numbers", []), number]
    caller = as_extension(facts.get("caller_extension", ""))
    if caller and not call.get("internal_number"):
        changes["internal_number"] = caller
    if _is_up(facts) and not call.get("pre_answered"):
        changes["pre_answered"] = 1
    return Plan(changes=changes, events=(RECEIVED,), answer_leg=TRUNK)


def current_employee(call: Mapping[str, Any]) -> str:
    """Who has the client now: the last transfer's target, else who answered."""
    return call.get("transferred_to") or call.get("answered_by") or ""


def _transfer(call: Mapping[str, Any], who: str, note: str = "") -> Plan:
    """``who`` now has the client of an answered call."""
    n = int(call.get("transfers") or 0) + 1
    changes = _with_numbers(call, {"transferred_to": who, "transfers": n, "pending_transfer": ""}, [who])
    # The received/answered pair shows a CRM the new employee; an outside number is none.
    return Plan(changes=changes, events=transfer_keys(n, with_pair=bool(as_extension(who))), note=note)


def plan_answer(call: Optional[Mapping[str, Any]], facts: Mapping[str, str], fmt: NumberFormat, now: float) -> Plan:
    """A leg answered (Dial's U() routine, on the answering channel)."""
    if call is None:
        return Plan(note="not an external call")
    leg = facts.get("leg", "")
    who = ""
    if leg in (GROUP, CONSULT, BLIND):
        who = party_of_channel(facts.get("channel", ""))  # the member that answered
    who = (who or as_extension(facts.get("target", "")) or extension_of(facts.get("dialed_peer", ""))
           or (digits_of(facts.get("target", "")).lstrip("+") if leg in (BLIND, CONSULT, TRUNK) else ""))
    if call["direction"] == OUTGOING:
        if leg in (EXT, GROUP, CONSULT, BLIND) or (not leg and who and who == call.get("internal_number")):
            # Click-to-call: the extension picked up its own ring; the client has not.
            return Plan(note="extension leg of an outgoing call answered")
        changes = {} if call.get("answered_at") else {"answered_by": fmt(who), "answered_at": now}
        return Plan(changes=changes, events=(RECEIVED, ANSWERED))
    if leg == CONSULT:
        # An attended transfer's target took the consultation: the client is theirs once
        # the transferer hangs up (the ``transfer`` stage) - or now, if that happened first.
        if not call.get("answered_at") or not who:
            return Plan(note="consultation answered")
        if call.get("pending_transfer") == TRANSFERER_LEFT:
            return _transfer(call, who)
        return Plan(changes={"pending_transfer": who}, note="attended transfer: consultation answered")
    if call.get("answered_at"):
        if leg == BLIND and who and who != current_employee(call):
            # Dialled after an employee had answered (a blind transfer, a redirect): the
            # new party has the client.
            return _transfer(call, who)
        # A second leg of the same ring (two members picking up at once through Local
        # channels): the outbox keeps the first answer.
        return Plan(events=(ANSWERED,))
    changes: Dict[str, Any] = {"answered_by": who, "answered_at": now}
    changes.update(_with_target(call, who))
    return Plan(changes=changes, events=(RECEIVED, ANSWERED))


def plan_transfer(call: Optional[Mapping[str, Any]], facts: Mapping[str, str], fmt: NumberFormat, now: float) -> Plan:
    """The transferer of an attended transfer hung up (the hangup handler of an answered
    leg with a consultation under way); ``consult``: how its consultation channel stands."""
    if call is None or call["direction"] != INCOMING or call.get("ended_at") or not call.get("answered_at"):
        return Plan(note="no attended transfer of an external call")
    state = facts.get("consult", "")
    pending = call.get("pending_transfer") or ""
    if state == CONSULT_GONE:
        return Plan(changes={"pending_transfer": ""} if pending else {}, note="consultation over: no transfer")
    if pending and pending != TRANSFERER_LEFT:
        return _transfer(call, pending)
    if state == CONSULT_UP:
        who = party_of_channel(facts.get("consult_channel", ""))
        if who:
            return _transfer(call, who)
    # The target still rings: the transfer is done when it answers (plan_answer).
    return Plan(changes={"pending_transfer": TRANSFERER_LEFT}, note="attended transfer: the target still rings")


def plan_hangup(call: Optional[Mapping[str, Any]], facts: Mapping[str, str], fmt: NumberFormat, now: float) -> Plan:
    """The channel that entered hangs up: the call is over."""
    create = None
    if facts.get("direction") == CLICK_TO_CALL_LEG:
        return _plan_click_to_call_end(call, facts, now)
    if call is None:
        # The ring hook never stored this call (it failed, or the service was down then):
        # build it from what the channel still knows, so the CRM hears of it at all.
        direction = OUTGOING if facts.get("direction") == OUTGOING else INCOMING
        create = (new_outgoing if direction == OUTGOING else new_incoming)(facts, fmt, now)
        call = create
    elif facts.get("direction") == OUTGOING and call["direction"] == INCOMING:
        # A trunk leg of an incoming call (follow-me to a mobile, an external group
        # member) ended; the call goes on.
        return Plan(note="trunk leg of an incoming call hung up")
    if call.get("ended_at"):
        return Plan(events=(RECEIVED, HANGUP))
    ended = {
        "ended_at": now,
        "billsec": talk_seconds(call, facts, now),
        "disposition": disposition(call, facts),
        "recording_file": facts.get("recording", "")[:255],
    }
    if create is not None:
        create.update(ended)
        return Plan(create=create, events=(RECEIVED, HANGUP))
    return Plan(changes=ended, events=(RECEIVED, HANGUP))


def _plan_click_to_call_end(call: Optional[Mapping[str, Any]], facts: Mapping[str, str], now: float) -> Plan:
    """The extension leg of a click-to-call ended.  If the call never reached a trunk, the
    client was never called: the call ends here, without a push (the CRM has its id from
    the API, and call-details tells how it ended)."""
    if call is None or call.get("ended_at") or call.get("trunk") or call.get("answered_at"):
        return Plan(note="click-to-call: the trunk leg reports the call")
    status = facts.get("dialstatus", "").strip().upper()
    if status == "ANSWER":
        status = "CHANUNAVAIL"  # the extension answered, but no trunk took the number
    elif status == "CANCEL":
        status = "NOANSWER"  # the Originate gave up ringing the extension
    ended = {"ended_at": now, "billsec": 0,
             "disposition": status if status in DIAL_STATUSES else "NOANSWER"}
    return Plan(changes=ended, note="click-to-call: the extension did not take the call")
