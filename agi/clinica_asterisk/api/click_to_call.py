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
with it, so :mod:`clinica_asterisk.delivery.reconcile` can tell whether Asterisk still has the call
even when no hook ever ran for it (an extension that never answered).

Binotel's optional parameters (:func:`parse_request`): ``callTimeToExt`` (how long the
extension rings), ``limitCallTime`` (the longest talk with the client: the dialplan's trunk hook
adds Dial's ``L()`` for ``CLINICA_TALK_LIMIT_MS``), ``callerIdForEmployee`` (what the extension's phone
shows), ``async`` (``FALSE``: the answer waits until the extension takes the call).  What
Asterisk cannot do here is refused, never ignored: ``playbackWaiting`` ``TRUE`` (no waiting
message is played) and ``trunkNumber`` (FreePBX's outbound routes choose the trunk).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from ..calls.numbers import NumberFormat
from ..config import Settings
from ..variables import CALLID_VARIABLE
from ..calls.phone import digits_of
from ..store.database import Store, StoreError
from ..pbx.ami import AmiClient, AmiError, AmiLoginFailed, AmiRefused, AmiTimeout
from .directory import Directory
from .errors import ApiError, Code
from .freepbx_db import FreePbxSource
from .names import extension_exists

log = logging.getLogger("clinica_asterisk.api.click_to_call")

EXTENSION = re.compile(r"[0-9]{2,6}")
PHONE = re.compile(r"\+?[0-9]{3,15}")
RING_SECONDS = (5, 300)  # accepted range of callTimeToExt
LIMIT_SECONDS = (1, 86400)  # accepted range of limitCallTime
TALK_LIMIT_VARIABLE = "CLINICA_TALK_LIMIT_MS"  # read by the dialplan's trunk hook
# What the extension's phone may be shown instead of the number (callerIdForEmployee):
# printable, and nothing that ends the quoted name of a CallerID header.
_CALLER_NAME = re.compile(r'[^"<>\\\x00-\x1f\x7f-\x9f\u2028\u2029]{1,40}')
_FLAGS = {"TRUE": True, "FALSE": False, "1": True, "0": False}
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


@dataclasses.dataclass(frozen=True)
class ClickToCall:
    """A click-to-call request, checked."""

    ext: str
    phone: str
    ring_s: int
    limit_s: Optional[int] = None  # limitCallTime
    shown_to_employee: str = ""  # callerIdForEmployee; empty: the phone number
    wait_for_extension: bool = False  # async FALSE


def _seconds(params: Mapping[str, Any], name: str, bounds) -> Optional[int]:
    if name not in params:
        return None
    value = params[name]
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 6:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise ApiError(Code.INVALID_PARAMETER, f"{name} must be a number of seconds from {bounds[0]} to {bounds[1]}")
    return value


def _flag(params: Mapping[str, Any], name: str) -> Optional[bool]:
    """Binotel's TRUE / FALSE (also true/false, 1/0, JSON booleans); None when absent."""
    if name not in params:
        return None
    value = params[name]
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().upper() in _FLAGS:
        return _FLAGS[value.strip().upper()]
    raise ApiError(Code.INVALID_PARAMETER, f"{name} must be TRUE or FALSE")


def parse_request(params: Mapping[str, Any], default_ring_s: int) -> ClickToCall:
    """The extension, the phone number and Binotel's optional parameters, each honoured or
    refused with a message naming it."""
    ext = _digits(params, "ext_number", EXTENSION, allow_int=True)
    # An integer phone number has lost its leading zero: refuse rather than guess.
    phone = _digits(params, "phone_number", PHONE, allow_int=False)
    ring_s = _seconds(params, "callTimeToExt", RING_SECONDS)
    limit_s = _seconds(params, "limitCallTime", LIMIT_SECONDS)
    shown = ""
    if "callerIdForEmployee" in params:
        shown = params["callerIdForEmployee"]
        if not isinstance(shown, str) or not _CALLER_NAME.fullmatch(shown.strip()):
            raise ApiError(Code.INVALID_PARAMETER, "callerIdForEmployee must be 1 to 40 printable characters "
                                                   "without quotes, < or >")
        shown = shown.strip()
    if _flag(params, "playbackWaiting"):
        raise ApiError(Code.UNSUPPORTED_PARAMETER, "playbackWaiting TRUE: this PBX plays no waiting message to the "
                                                   "employee; send FALSE or leave it out")
    if params.get("trunkNumber") not in (None, ""):
        raise ApiError(Code.UNSUPPORTED_PARAMETER, "trunkNumber: this PBX does not choose the trunk per call "
                                                   "(FreePBX's outbound routes do); leave it out")
    asynchronous = _flag(params, "async")
    return ClickToCall(ext, phone, default_ring_s if ring_s is None else ring_s, limit_s, shown,
                       wait_for_extension=asynchronous is False)


def channel_id(pbx: str, call_id: int) -> str:
    """The uniqueid of the click-to-call's first channel, hence the linkedid of all its
    channels (the ``;2`` half of the Local channel gets ``<id>;2``): unique per call, of
    characters Asterisk keeps as they are, 8 + 40 + 1 + 19 characters at most (Asterisk
    allows 149 less the ``;2``)."""
    pbx_part = _NOT_IN_CHANNEL_ID.sub("-", pbx).strip("-")[:40] or "pbx"
    return f"clinica-{pbx_part}-{call_id}"


def originate_action(settings: Settings, request: ClickToCall, call_id: int,
                     linkedid: str) -> Dict[str, Union[str, List[str]]]:
    """The AMI action, exactly as sent (pyst2 adds the ActionID)."""
    variables = [f"__{CALLID_VARIABLE}={call_id}"]
    if request.limit_s is not None:
        # Inherited down to the trunk's Dial, where the dialplan turns it into L(): the
        # talk with the client, from its answer, lasts no longer.
        variables.append(f"__{TALK_LIMIT_VARIABLE}={request.limit_s * 1000}")
    return {
        "Action": "Originate",
        "Channel": f"Local/{request.ext}@{settings.originate_channel_context}",
        "Exten": request.phone,
        "Context": settings.originate_context,
        "Priority": "1",
        "Async": "no" if request.wait_for_extension else "yes",
        # The extension's phone shows the number it is about to call (or what the CRM
        # asked it to show); the number part stays the extension, which FreePBX uses to
        # pick the outbound caller id.
        "CallerID": f'"{request.shown_to_employee or request.phone}" <{request.ext}>',
        "Timeout": str(request.ring_s * 1000),
        "Variable": variables,
        "ChannelId": linkedid,
    }


_AMI_CODES = {AmiLoginFailed: Code.AMI_LOGIN_FAILED, AmiRefused: Code.AMI_REFUSED, AmiTimeout: Code.AMI_TIMEOUT}


def ami_api_error(exc: AmiError, what: str, refused: Code = Code.AMI_REFUSED) -> ApiError:
    """The API's answer to a failed AMI session; ``refused``: its code when Asterisk
    answered the action (``what``) with an error."""
    code = _AMI_CODES.get(type(exc), Code.AMI_UNREACHABLE)
    if code == Code.AMI_REFUSED:
        return ApiError(refused, f"the PBX refused {what}: {exc}")
    return ApiError(code, str(exc))


def click_to_call(params: Mapping[str, Any], settings: Settings, store: Store, directory: Optional[Directory],
                  ami: Optional[AmiClient], pbx: str, now: Callable[[], float],
                  freepbx: Optional[FreePbxSource] = None) -> Dict[str, str]:
    if ami is None:
        raise ApiError(Code.CLICK_TO_CALL_OFF, "click-to-call is not configured on the PBX")
    request = parse_request(params, settings.originate_timeout_s)
    ext, phone = request.ext, request.phone
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

    session = ami
    if request.wait_for_extension:
        # Asterisk answers a synchronous Originate once the extension took the call or
        # gave up: its ring time more than the usual wait for an answer.
        session = dataclasses.replace(ami, timeout_s=ami.timeout_s + request.ring_s)
    try:
        session.send(originate_action(settings, request, call_id, linkedid))
    except AmiError as exc:
        log.warning("click-to-call call=%s ext=%s failed: %s", call_id, ext, exc)
        no_answer = request.wait_for_extension and isinstance(exc, AmiRefused)
        if not exc.action_sent:
            # Asterisk certainly did not start it (or, waited for, the extension did not
            # take it): close the record rather than leave a call that looks online
            # forever.  An Originate that left without an answer may still ring: then the
            # hooks tell how the call went.
            _close_failed(store, call_id, now(), "NOANSWER" if no_answer else "CHANUNAVAIL")
        if no_answer:
            raise ApiError(Code.EXTENSION_NO_ANSWER, "the extension did not take the call") from None
        raise ami_api_error(exc, "the call") from None
    log.info("click-to-call call=%s ext=%s originated", call_id, ext)
    return {"status": "success", "generalCallID": str(call_id)}


def _close_failed(store: Store, call_id: int, at: float, disposition: str) -> None:
    try:
        # Unless a hook has ended it meanwhile: its facts are better.
        store.write("UPDATE calls SET ended_at = ?, billsec = 0, disposition = ? WHERE id = ? AND ended_at IS NULL",
                    (at, disposition, call_id))
    except StoreError as exc:
        log.warning("click-to-call call=%s could not be closed: %s", call_id, exc)
