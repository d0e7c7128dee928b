"""calls/hangup-call: end a call in progress, through AMI.

The call is found in the store by its ``generalCallID``; Asterisk's channels of it by its
linkedid, in one ``CoreShowChannels`` list (the same the reconciler reads).  The channel
that started the call (its uniqueid is the linkedid: the client's trunk channel, or a
click-to-call's first Local channel) is hung up, and with it the whole call; when that
channel is gone (after some transfers), every channel still carrying the linkedid is.
The hang-up hook then stores how the call ended and pushes hangupTheCall, as for any call.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Mapping, Optional

from ..pbx.channels import LIST_ACTION, LIST_END
from ..store.database import Store
from ..pbx.ami import AmiClient, AmiError
from .call_details import parse_id
from .click_to_call import ami_api_error
from .errors import ApiError, Code

log = logging.getLogger("clinica_asterisk.api.hangup")


def channels_to_hang_up(events: Iterable[Mapping[str, str]], linkedid: str) -> List[str]:
    """The channel names to hang up for the call of ``linkedid``, from a channel list."""
    listed = [e for e in events if e.get("Event") == "CoreShowChannel" and e.get("Channel")]
    first = [e["Channel"] for e in listed if e.get("Uniqueid") == linkedid]
    return first or [e["Channel"] for e in listed if e.get("Linkedid") == linkedid]


def hangup_call(params: Mapping[str, Any], store: Store, ami: Optional[AmiClient]) -> Dict[str, str]:
    if ami is None:
        raise ApiError(Code.CLICK_TO_CALL_OFF, "no AMI user is configured on the PBX: calls cannot be hung up")
    if "generalCallID" not in params:
        raise ApiError(Code.MISSING_PARAMETER, "missing parameter: generalCallID")
    call_id = parse_id(params["generalCallID"], "generalCallID")
    call = store.call(call_id)
    if call is None:
        raise ApiError(Code.NO_SUCH_CALL, "no such call")
    if call.get("ended_at") is not None or not call.get("linkedid"):
        raise ApiError(Code.CALL_NOT_ONLINE, "the call is not in progress")
    try:
        targets = channels_to_hang_up(ami.collect(LIST_ACTION, LIST_END), call["linkedid"])
        if not targets:
            raise ApiError(Code.CALL_NOT_ONLINE, "the call is not in progress")
        for channel in targets:
            ami.send({"Action": "Hangup", "Channel": channel})
    except AmiError as exc:
        log.warning("hangup-call call=%s failed: %s", call_id, exc)
        raise ami_api_error(exc, "the hang-up") from None
    log.info("hangup-call call=%s channels=%d", call_id, len(targets))
    return {"status": "success"}
