"""The four Binotel push events, built from a call record.  Pure.

Keys are camelCase exactly as Binotel receivers read them; every value is a string;
``companyID`` is left out when it is not configured.
"""

from __future__ import annotations

from typing import Dict, Mapping

RECEIVED = "receivedTheCall"
ANSWERED = "answeredTheCall"
HANGUP = "hangupTheCall"
EVENT_ORDER = (RECEIVED, ANSWERED, HANGUP)

INCOMING = "in"
OUTGOING = "out"


def call_type(call: Mapping) -> str:
    return "0" if call["direction"] == INCOMING else "1"


def build_payload(request_type: str, call: Mapping, company_id: str = "") -> Dict[str, str]:
    """The form fields of one event for ``call`` (a row of the call store, as a mapping)."""
    if request_type == HANGUP:
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
