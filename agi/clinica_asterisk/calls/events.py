"""Binotel's push events, built from a call record.  Pure.

Keys are camelCase exactly as Binotel receivers read them; every value is a string.  The
keys of the CRM's document come first, in its order, and ``companyID`` is always there (empty
when not configured), as in the API's answers.  Binotel's own pushes carry a few keys more
(:data:`EXTRA_KEYS`): ``disposition`` in hangupTheCall, ``pbxNumber`` (the company's number
the client called), ``did`` and ``srcNumber`` beside ``didNumber``; they are sent too, unless
``CLINICA_PUSH_EXTRA_KEYS=no``.  ``requestType`` is always last.

An event is named by its *key* in the outbox (one event per key and call).  The key is the
request type, or ``<request type>/<n>`` for an event about the call's n-th transfer:
``transferredTheCall/1`` and, for a CRM that only knows the first events, the
``receivedTheCall/1`` + ``answeredTheCall/1`` pair naming the extension that now has the
client (:data:`TRANSFER_PAIR`).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import Dict, Mapping, Tuple

RECEIVED = "receivedTheCall"
ANSWERED = "answeredTheCall"
HANGUP = "hangupTheCall"
TRANSFERRED = "transferredTheCall"
TRANSFER_PAIR = (RECEIVED, ANSWERED)

INCOMING = "in"
OUTGOING = "out"

# The keys Binotel's pushes carry beyond the CRM's document, per request type.
EXTRA_KEYS = {
    RECEIVED: ("pbxNumber", "did", "srcNumber"),
    ANSWERED: ("pbxNumber",),
    HANGUP: ("disposition",),
    TRANSFERRED: (),
}


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


def build_payload(key: str, call: Mapping, company_id: str = "", extra_keys: bool = True) -> Dict[str, str]:
    """The form fields of one event for ``call`` (a row of the call store, as a mapping);
    ``extra_keys``: also the keys Binotel sends beyond the CRM's document."""
    request_type, _, transfer = key.partition("/")
    if transfer:
        # The client is now with the transfer's target, the call's current employee.
        call = dict(call, internal_number=call.get("transferred_to") or "",
                    answered_by=call.get("transferred_to") or "")
    incoming = call["direction"] == INCOMING
    if request_type == TRANSFERRED:
        payload = {"generalCallID": str(call["id"]), "internalNumber": call.get("internal_number") or ""}
    elif request_type == HANGUP:
        payload = {"generalCallID": str(call["id"]), "billsec": str(call.get("billsec") or 0)}
    else:
        payload = {}
        if incoming:
            payload["didNumber"] = call.get("did") or ""
        payload["externalNumber"] = call.get("external_number") or ""
        if request_type == ANSWERED and incoming:
            payload["internalNumber"] = call.get("answered_by") or call.get("internal_number") or ""
        else:
            payload["internalNumber"] = call.get("internal_number") or ""
        payload["generalCallID"] = str(call["id"])
        payload["callType"] = call_type(call)
    payload["companyID"] = company_id
    if extra_keys:
        extras = {
            # The company's number the client called; an outgoing call's is its trunk's
            # number, which the hooks do not know (the API's trunkNumber does).
            "pbxNumber": (call.get("did") or "") if incoming else None,
            "did": (call.get("did") or "") if incoming else None,
            "srcNumber": (call.get("src_number") or "") if incoming else None,
            "disposition": call.get("disposition") or "",
        }
        for name in EXTRA_KEYS.get(request_type, ()):
            if extras[name] is not None:
                payload[name] = extras[name]
    payload["requestType"] = request_type
    return payload
