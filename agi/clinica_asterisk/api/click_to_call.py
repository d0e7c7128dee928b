"""calls/ext-to-phone: ring an extension, and when it answers dial the client's number.

Both numbers end up in a dial string and in AMI headers, so they are accepted only as
plain ASCII digits (:data:`EXTENSION`, :data:`PHONE`): no ``@`` or ``/`` to change the
Local channel's context or options, no ``&`` to add a second channel, no CR/LF to add a
header or an action.  The extension must exist: in FreePBX's extensions once its database
has been read, else in the directory file when there is one (else it is not checked).

The call is stored first (origin ``api``), so its id exists before Asterisk runs any hook;
the Originate hands the id to the new channels as the inherited variable
``__CLINICA_CALLID``, which every hook reads first: the pushes of this call carry the
``generalCallID`` this method answers.  It also names the first channel (``ChannelId``,
:func:`channel_id`): that uniqueid is the linkedid of every channel of the call, stored
with it, so :mod:`clinica_asterisk.reconcile` can tell whether Asterisk still has the call
even when no hook ever ran for it (an extension that never answered).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from ..call_flow import NumberFormat
from ..config import Settings
from ..hooks import CALLID_VARIABLE
from ..phone import digits_of
from ..store import Store, StoreError
from .ami import AmiClient, AmiError, AmiLoginFailed, AmiRefused, AmiTimeout
from .directory import Directory
from .errors import ApiError, Code
from .freepbx_db import FreePbxSource
from .names import extension_exists

log = logging.getLogger("clinica_asterisk.api.click_to_call")

EXTENSION = re.compile(r"[0-9]{2,6}")
PHONE = re.compile(r"\+?[0-9]{3,15}")
RING_SECONDS = (5, 300)  # accepted range of callTimeToExt
# What a uniqueid we give Asterisk may hold: no ';' (Local channels add ';2'), no ',' or '|'
# (dialplan argument separators), nothing a header or a log line could trip on.
_NOT_IN_CHANNEL_ID = re.compile(r"[^A-Za-z0-9._-]+")


def _digits(params: Mapping[str, Any], name: str, pattern: "re.Pattern[str]", allow_int: bool) -> str:
    if name not in params:
        raise ApiError(Code.MISSING_PARAMETER, f"missing parameter: {name}")
    value = params[name]
    if allow_int and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    # re.fullmatch with [0-9]: ASCII digits only, and no trailing newline slips through.
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ApiError(Code.INVALID_PARAMETER, f"{name} must be {_SHAPES[name]}")
    return value


_SHAPES = {
    "ext_number": "an extension of 2 to 6 digits",
    "phone_number": "a phone number of 3 to 15 digits, optionally after a +",
}


def parse_request(params: Mapping[str, Any], default_ring_s: int) -> Tuple[str, str, int]:
    """The extension, the phone number and how long to ring the extension."""
    ext = _digits(params, "ext_number", EXTENSION, allow_int=True)
    # An integer phone number has lost its leading zero: refuse rather than guess.
    phone = _digits(params, "phone_number", PHONE, allow_int=False)
    ring_s = default_ring_s
    if "callTimeToExt" in params:
        value = params["callTimeToExt"]
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 3:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not RING_SECONDS[0] <= value <= RING_SECONDS[1]:
            raise ApiError(Code.INVALID_PARAMETER,
                           f"callTimeToExt must be a number of seconds from {RING_SECONDS[0]} to {RING_SECONDS[1]}")
        ring_s = value
    return ext, phone, ring_s


def channel_id(pbx: str, call_id: int) -> str:
    """The uniqueid of the click-to-call's first channel, hence the linkedid of all its
    channels (the ``;2`` half of the Local channel gets ``<id>;2``): unique per call, of
    characters Asterisk keeps as they are, 8 + 40 + 1 + 19 characters at most (Asterisk
    allows 149 less the ``;2``)."""
    pbx_part = _NOT_IN_CHANNEL_ID.sub("-", pbx).strip("-")[:40] or "pbx"
    return f"clinica-{pbx_part}-{call_id}"


def originate_action(settings: Settings, ext: str, phone: str, call_id: int, ring_s: int,
                     linkedid: str) -> Dict[str, Union[str, List[str]]]:
    """The AMI action, exactly as sent (pyst2 adds the ActionID)."""
    return {
        "Action": "Originate",
        "Channel": f"Local/{ext}@{settings.originate_channel_context}",
        "Exten": phone,
        "Context": settings.originate_context,
        "Priority": "1",
        "Async": "yes",
        # The extension's phone shows the number it is about to call; the number part
        # stays the extension, which FreePBX uses to pick the outbound caller id.
        "CallerID": f'"{phone}" <{ext}>',
        "Timeout": str(ring_s * 1000),
        "Variable": [f"__{CALLID_VARIABLE}={call_id}"],
        "ChannelId": linkedid,
    }


_AMI_CODES = {AmiLoginFailed: Code.AMI_LOGIN_FAILED, AmiRefused: Code.AMI_REFUSED, AmiTimeout: Code.AMI_TIMEOUT}


def click_to_call(params: Mapping[str, Any], settings: Settings, store: Store, directory: Optional[Directory],
                  ami: Optional[AmiClient], pbx: str, now: Callable[[], float],
                  freepbx: Optional[FreePbxSource] = None) -> Dict[str, str]:
    if ami is None:
        raise ApiError(Code.CLICK_TO_CALL_OFF, "click-to-call is not configured on the PBX")
    ext, phone, ring_s = parse_request(params, settings.originate_timeout_s)
    if extension_exists(ext, directory, freepbx) is False:
        raise ApiError(Code.UNKNOWN_EXTENSION, "unknown extension")
    fmt = NumberFormat(settings.number_format, settings.country_code, settings.trunk_prefix)
    try:
        with store.transaction():
            call_id = store.new_call_id()
            linkedid = channel_id(pbx, call_id)
            store.insert_call({
                "id": call_id,
                "pbx": pbx,
                "linkedid": linkedid,
                "direction": "out",
                "origin": "api",
                "started_at": now(),
                "src_number": digits_of(phone),
                "external_number": fmt(phone),
                "internal_number": ext,
                "dst_numbers": [],
            })
    except StoreError as exc:
        log.warning("click-to-call ext=%s not stored: %s", ext, exc)
        raise ApiError(Code.STORE_UNAVAILABLE, "the call store is unavailable") from None

    try:
        ami.send(originate_action(settings, ext, phone, call_id, ring_s, linkedid))
    except AmiError as exc:
        log.warning("click-to-call call=%s ext=%s failed: %s", call_id, ext, exc)
        if not exc.action_sent:
            # Asterisk certainly did not start it: close the record rather than leave a
            # call that looks online forever.  An Originate that left without an answer
            # may still ring: then the hooks tell how the call went.
            _close_failed(store, call_id, now())
        code = _AMI_CODES.get(type(exc), Code.AMI_UNREACHABLE)
        message = f"the PBX refused the call: {exc}" if code == Code.AMI_REFUSED else str(exc)
        raise ApiError(code, message) from None
    log.info("click-to-call call=%s ext=%s originated", call_id, ext)
    return {"status": "success", "generalCallID": str(call_id)}


def _close_failed(store: Store, call_id: int, at: float) -> None:
    try:
        with store.transaction():
            store.update_call(call_id, {"ended_at": at, "billsec": 0, "disposition": "CHANUNAVAIL"})
    except StoreError as exc:
        log.warning("click-to-call call=%s could not be closed: %s", call_id, exc)
