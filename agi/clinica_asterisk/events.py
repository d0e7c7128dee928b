"""Binotel's push events, built from a call record.  Pure.

Keys are camelCase exactly as Binotel receivers read them; every value is a string;
``companyID`` is left out when it is not configured.

An event is named by its *key* in the outbox (one event per key and call).  The key is the
request type, or ``<request type>/<n>`` for an event about the call's n-th transfer:
``transferredTheCall/1`` and, for a CRM that only knows the first events, the
``receivedTheCall/1`` + ``answeredTheCall/1`` pair naming the extension that now has the
client (:data:`TRANSFER_PAIR`).
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

RECEIVED = "receivedTheCall"
ANSWERED = "answeredTheCall"
HANGUP = "hangupTheCall"
TRANSFERRED = "transferredTheCall"
EVENT_ORDER = (RECEIVED, ANSWERED, TRANSFERRED, HANGUP)
TRANSFER_PAIR = (RECEIVED, ANSWERED)

INCOMING = "in"
OUTGOING = "out"


def call_type(call: Mapping) -> str:
    return "0" if call["direction"] == INCOMING else "1"


def transfer_keys(n: int, with_pair: bool) -> Tuple[str, ...]:
    """The keys of the events of the n-th transfer of a call."""
    pair = tuple(f"{t}/{n}" for t in TRANSFER_PAIR) if with_pair else ()
    return (f"{TRANSFERRED}/{n}", *pair)


def wanted_events(keys: Tuple[str, ...], transfer_pair: bool) -> Tuple[str, ...]:
    """``keys`` less the transfer pairs when the setting leaves them out."""
    if transfer_pair:
        return tuple(keys)
    return tuple(k for k in keys if "/" not in k or request_type_of(k) not in TRANSFER_PAIR)


def request_type_of(key: str) -> str:
    return key.partition("/")[0]


def build_payload(key: str, call: Mapping, company_id: str = "") -> Dict[str, str]:
    """The form fields of one event for ``call`` (a row of the call store, as a mapping)."""
    request_type, _, transfer = key.partition("/")
    if transfer:
        # The client is now with the transfer's target, the call's current employee.
        call = dict(call, internal_number=call.get("transferred_to") or "",
                    answered_by=call.get("transferred_to") or "")
    if request_type == TRANSFERRED:
        payload = {"generalCallID": str(call["id"]), "internalNumber": call.get("internal_number") or ""}
    elif request_type == HANGUP:
        payload = {"generalCallID": str(call["id"]), "billsec": str(call.get("billsec") or 0)}
    else:
        payload = {}
        if call["direction"] == INCOMING:
            payload["didNumber"] = call.get("did") or ""
        payload["externalNumber"] = call.get("external_number") or ""
        if request_type == ANSWERED and call["direction"] == INCOMING:
            payload["internalNumber"] = call.get("answered_by") or call.get("internal_number") or ""
        else:
            payload["internalNumber"] = call.get("internal_number") or ""
        payload["generalCallID"] = str(call["id"])
        payload["callType"] = call_type(call)
    if company_id:
        payload["companyID"] = company_id
    payload["requestType"] = request_type
    return payload
