"""What each hook means for a call: pure decisions from the stored call and the facts read
from the channel, to the changes to store and the events to emit.

The dialplan may fire a hook more than once for one call (Local channel halves, ring-group
members, queue retries, trunk fail-over); every plan here is safe to apply again: events
are de-duplicated by the outbox (one of each type per call), and first facts win.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from .events import ANSWERED, HANGUP, INCOMING, OUTGOING, RECEIVED
from .phone import digits_of, normalize

DIAL_STATUSES = frozenset({"ANSWER", "NOANSWER", "BUSY", "CANCEL", "CONGESTION", "CHANUNAVAIL"})
CDR_DISPOSITIONS = {"BUSY": "BUSY", "FAILED": "CHANUNAVAIL", "CONGESTION": "CONGESTION"}
MAX_EXTENSION_DIGITS = 8


@dataclass(frozen=True)
class NumberFormat:
    number_format: str = "national"
    country_code: str = "380"
    trunk_prefix: str = "0"

    def __call__(self, raw: str) -> str:
        return normalize(raw, self.number_format, self.country_code, self.trunk_prefix)


@dataclass(frozen=True)
class Plan:
    """``create``: fields of a new call; ``changes``: fields to update on an existing one;
    ``events``: request types to emit, in order; ``note``: why nothing happens."""

    create: Optional[Dict[str, Any]] = None
    changes: Dict[str, Any] = field(default_factory=dict)
    events: Tuple[str, ...] = ()
    note: str = ""


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
        if head.isdigit():
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
    return as_extension(resource) if resource.isdigit() else ""


def as_extension(raw: str) -> str:
    """Digits of an extension, or '' when ``raw`` is no extension (too long, empty)."""
    digits = digits_of(raw).lstrip("+")
    return digits if 0 < len(digits) <= MAX_EXTENSION_DIGITS else ""


def talk_seconds(call: Mapping[str, Any], facts: Mapping[str, str], now: float) -> int:
    """Billsec: Dial's ANSWEREDTIME, else the time since the answer hook, else CDR(billsec)."""
    answered = bool(call.get("answered_at")) or facts.get("dialstatus", "").upper() == "ANSWER"
    if not answered:
        return 0
    answeredtime = facts.get("answeredtime", "")
    if answeredtime.isdigit():
        return int(answeredtime)
    if call.get("answered_at"):
        return max(0, int(round(now - call["answered_at"])))
    billsec = facts.get("cdr_billsec", "")
    return int(billsec) if billsec.isdigit() else 0


def disposition(call: Mapping[str, Any], facts: Mapping[str, str]) -> str:
    """Binotel's vocabulary: ANSWER, NOANSWER, BUSY, CANCEL, CONGESTION, CHANUNAVAIL."""
    if call.get("answered_at"):
        return "ANSWER"
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


def plan_dial(call: Optional[Mapping[str, Any]], facts: Mapping[str, str], fmt: NumberFormat, now: float) -> Plan:
    """An extension, ring group or queue is about to ring."""
    if call is None:
        return Plan(note="not an external call")
    member = as_extension(facts.get("target", ""))
    group = as_extension(facts.get("group", ""))
    if call["direction"] == OUTGOING:
        return Plan(changes=_with_target(call, member), note="extension leg of an outgoing call")
    changes = _with_target(call, group or member)
    if member and member != group and member not in changes.get("dst_numbers", call.get("dst_numbers", [])):
        changes["dst_numbers"] = [*changes.get("dst_numbers", call.get("dst_numbers", [])), member]
    return Plan(changes=changes, events=(RECEIVED,))


def plan_ring_out(call: Optional[Mapping[str, Any]], facts: Mapping[str, str], fmt: NumberFormat, now: float) -> Plan:
    """A call leaves through a trunk (once per trunk tried)."""
    if call is None:
        fields = new_outgoing(facts, fmt, now)
        return Plan(create=fields, events=(RECEIVED,))
    if call["direction"] != OUTGOING:
        return Plan(note="trunk leg of an incoming call (follow-me, forward)")
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
    return Plan(changes=changes, events=(RECEIVED,))


def plan_answer(call: Optional[Mapping[str, Any]], facts: Mapping[str, str], fmt: NumberFormat, now: float) -> Plan:
    """A leg answered (Dial's U() routine, on the answering channel)."""
    if call is None:
        return Plan(note="not an external call")
    who = as_extension(facts.get("target", "")) or extension_of(facts.get("dialed_peer", ""))
    leg = facts.get("leg", "")
    if call["direction"] == OUTGOING:
        if leg == "ext" or (not leg and who and who == call.get("internal_number")):
            # Click-to-call: the extension picked up its own ring; the client has not.
            return Plan(note="extension leg of an outgoing call answered")
        changes = {} if call.get("answered_at") else {"answered_by": fmt(who), "answered_at": now}
        return Plan(changes=changes, events=(RECEIVED, ANSWERED))
    if call.get("answered_at"):
        return Plan(events=(ANSWERED,))  # a second leg: the outbox keeps the first
    changes: Dict[str, Any] = {"answered_by": who, "answered_at": now}
    changes.update(_with_target(call, who))
    return Plan(changes=changes, events=(RECEIVED, ANSWERED))


def plan_hangup(call: Optional[Mapping[str, Any]], facts: Mapping[str, str], fmt: NumberFormat, now: float) -> Plan:
    """The channel that entered hangs up: the call is over."""
    create = None
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


PLANS = {
    "ring-in": plan_ring_in,
    "dial": plan_dial,
    "ring-out": plan_ring_out,
    "answer": plan_answer,
    "hangup": plan_hangup,
}
