"""Asterisk's live channels as the manager lists them (``CoreShowChannels``): the action,
its events, and the ids they name.  Pure.  The reconciler closes the calls that have none
left (:mod:`clinica_asterisk.delivery.reconcile`); the API asks the same list whether a
call is still up, and which channels to hang up."""

from __future__ import annotations

from typing import Any, FrozenSet, Iterable, Mapping

LIST_ACTION = {"Action": "CoreShowChannels"}
LIST_ITEM, LIST_END = "CoreShowChannel", "CoreShowChannelsComplete"
# Longer than Asterisk takes to create an originated channel once the Originate arrived.
GRACE_S = 15.0


def grace_s(ami_timeout_s: float) -> float:
    """How old a call must be before a list without it counts.  A click-to-call is stored
    before its AMI session, whose connect, greeting and login may each take the AMI time
    limit before the Originate leaves."""
    return GRACE_S + 3 * ami_timeout_s


class ChannelListError(ValueError):
    """Asterisk's answer is not a whole channel list: nothing may be concluded from it."""


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def parse_channel_list(events: Iterable[Any]) -> FrozenSet[str]:
    """The ids of Asterisk's live channels (each channel's ``Linkedid`` and ``Uniqueid``)
    from the events that answered one ``CoreShowChannels``, in the order they came.

    Events of other kinds are passed over.  A list that is not whole raises
    :class:`ChannelListError`: no ``CoreShowChannelsComplete``, a number of channels other
    than its ``ListItems``, or a channel without either id (it could be any call's)."""
    ids = set()
    count = 0
    for event in events:
        if not isinstance(event, Mapping):
            raise ChannelListError(f"not an AMI event: {type(event).__name__}")
        name = _text(event.get("Event"))
        if name == LIST_ITEM:
            linkedid, uniqueid = _text(event.get("Linkedid")), _text(event.get("Uniqueid"))
            if not (linkedid or uniqueid):
                raise ChannelListError("a channel without Uniqueid and Linkedid")
            ids.update(i for i in (linkedid, uniqueid) if i)
            count += 1
        elif name == LIST_END:
            announced = event.get("ListItems")
            if announced is not None:
                if not (_text(announced).isascii() and _text(announced).isdigit()):
                    raise ChannelListError("ListItems is not a number")
                if int(_text(announced)) != count:
                    raise ChannelListError(f"{_text(announced)} channels announced, {count} listed")
            return frozenset(ids)
    raise ChannelListError(f"the list ended before {LIST_END}")
