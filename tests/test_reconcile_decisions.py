"""The reconciler's pure decisions, as tables: what Asterisk's channel list says, which open
calls are over, and what closing one stores and sends."""

import pytest

from clinica_asterisk.delivery.reconcile import close_call, plan_sweep
from clinica_asterisk.pbx.channels import ChannelListError, grace_s, parse_channel_list

AID = "clinica-4242-1"


def item(uniqueid, linkedid, channel="PJSIP/801-00000001", **extra):
    return {"Event": "CoreShowChannel", "ActionID": AID, "Channel": channel, "ChannelState": "6",
            "ChannelStateDesc": "Up", "Uniqueid": uniqueid, "Linkedid": linkedid, "Duration": "00:00:42", **extra}


def end(count):
    return {"Event": "CoreShowChannelsComplete", "ActionID": AID, "EventList": "Complete", "ListItems": str(count)}


CLICK = "clinica-pbx1-1795715147000"


@pytest.mark.parametrize("events, ids", [
    ([end(0)], set()),
    # An incoming call answered by 801: the trunk's channel is the first, its uniqueid the linkedid.
    ([item("1795715093.0", "1795715093.0", "PJSIP/pstn1-00000000"),
      item("1795715093.1", "1795715093.0", "PJSIP/801-00000001"), end(2)],
     {"1795715093.0", "1795715093.1"}),
    # A click-to-call ringing its extension: both halves of the Local channel carry our ChannelId.
    ([item(CLICK, CLICK, "Local/902@originate-skipvm-00000004;1"),
      item(CLICK + ";2", CLICK, "Local/902@originate-skipvm-00000004;2"),
      item("1795715147.31", CLICK, "PJSIP/902-00000005"), end(3)],
     {CLICK, CLICK + ";2", "1795715147.31"}),
    # After a transfer a channel may carry another call's linkedid: its own uniqueid counts too.
    ([item("1795715101.2", "1795715090.0"), end(1)], {"1795715101.2", "1795715090.0"}),
    ([item("1795715093.1", ""), end(1)], {"1795715093.1"}),
    ([item(" 1795715093.1 ", "1795715093.0\t"), end(1)], {"1795715093.1", "1795715093.0"}),
    # Other events on the session (the user's read=call events) and anything after the end.
    ([{"Event": "FullyBooted", "Privilege": "system,all", "Status": "Fully Booted"},
      item("1795715093.1", "1795715093.0"),
      {"Event": "Newchannel", "ActionID": AID, "Uniqueid": "1795715200.9", "Linkedid": "1795715200.9"},
      {"Response": "Generated Header"}, end(1), item("1795715300.1", "1795715300.1")],
     {"1795715093.1", "1795715093.0"}),
    # Older Asterisks may leave ListItems out.
    ([item("1795715093.1", "1795715093.0"), {"Event": "CoreShowChannelsComplete", "EventList": "Complete"}],
     {"1795715093.1", "1795715093.0"}),
])
def test_a_whole_list_gives_every_channel_s_linkedid_and_uniqueid(events, ids):
    assert parse_channel_list(events) == frozenset(ids)


@pytest.mark.parametrize("events, message", [
    ([], "the list ended before CoreShowChannelsComplete"),
    ([item("1795715093.1", "1795715093.0")], "the list ended before CoreShowChannelsComplete"),
    ([{"Response": "Success", "EventList": "start", "Message": "Channels will follow"}],
     "the list ended before CoreShowChannelsComplete"),
    ([item("1795715093.1", "1795715093.0"), end(2)], "2 channels announced, 1 listed"),
    ([end(1)], "1 channels announced, 0 listed"),
    # A channel under a name we do not know is not counted, so the count tells it was lost.
    ([dict(item("1795715093.1", "1795715093.0"), Event="coreshowchannel"), end(1)],
     "1 channels announced, 0 listed"),
    ([item("1795715093.1", "1795715093.0"), dict(end(1), ListItems="one")], "ListItems is not a number"),
    ([item("1795715093.1", "1795715093.0"), dict(end(1), ListItems="")], "ListItems is not a number"),
    ([item("1795715093.1", "1795715093.0"), dict(end(1), ListItems="١")], "ListItems is not a number"),
    ([item("", ""), end(1)], "a channel without Uniqueid and Linkedid"),
    ([item(" ", None), end(1)], "a channel without Uniqueid and Linkedid"),
    ([{"Event": "CoreShowChannel", "Channel": "PJSIP/801-00000001"}, end(1)],
     "a channel without Uniqueid and Linkedid"),
    ([item(42, ["1795715093.0"]), end(1)], "a channel without Uniqueid and Linkedid"),
    (["Event: CoreShowChannel\r\nUniqueid: 1795715093.1\r\n", end(1)], "not an AMI event: str"),
    ([None, end(0)], "not an AMI event: NoneType"),
])
def test_a_list_that_is_not_whole_is_refused(events, message):
    with pytest.raises(ChannelListError) as raised:
        parse_channel_list(events)
    assert str(raised.value) == message


T = 1795715000.0
GRACE = 30.0
MAX_AGE = 14400.0


def call(call_id=1, linkedid="1795715093.0", started_at=T - 600, **fields):
    return {"id": call_id, "linkedid": linkedid, "started_at": started_at, "ended_at": None, **fields}


LIVE = frozenset({"1795715093.0", "1795715093.1"})
NONE_LIVE = frozenset({"1795715200.0"})


@pytest.mark.parametrize("calls, live, missing, gone, still_missing", [
    # up: in the list
    ([call()], LIVE, {}, {}, {}),
    # up after all: missed once, then seen again
    ([call()], LIVE, {1: T - 60}, {}, {}),
    # a channel whose uniqueid is the call's linkedid (its Linkedid changed in a transfer)
    ([call(linkedid="1795715093.1")], LIVE, {}, {}, {}),
    # missing once: noted, not closed
    ([call()], NONE_LIVE, {}, {}, {1: T}),
    # an empty list counts like any other
    ([call()], frozenset(), {}, {}, {1: T}),
    # missing twice in a row: closed, found gone at the first miss
    ([call()], NONE_LIVE, {1: T - 60}, {1: T - 60}, {}),
    # too young to have a channel yet (an Originate on its way): neither
    ([call(started_at=T - GRACE + 1)], NONE_LIVE, {}, {}, {}),
    ([call(started_at=T - GRACE + 1)], NONE_LIVE, {1: T - 60}, {}, {}),
    ([call(started_at=T - GRACE)], NONE_LIVE, {}, {}, {1: T}),
    # ended meanwhile (its hook ran after all): left alone and forgotten
    ([call(ended_at=T - 5)], NONE_LIVE, {1: T - 60}, {}, {}),
    # a call no longer open is no longer among the calls: forgotten
    ([], NONE_LIVE, {1: T - 60}, {}, {}),
    # several at once, each on its own
    ([call(1), call(2, "1795715150.3"), call(3, "1795715160.4"), call(4, "1795715093.1")],
     NONE_LIVE | {"1795715093.1"}, {2: T - 60},
     {2: T - 60}, {1: T, 3: T}),
    # no linkedid (an old row): only the age decides, even with a list
    ([call(linkedid=None, started_at=T - MAX_AGE)], LIVE, {}, {1: T}, {}),
    ([call(linkedid="", started_at=T - MAX_AGE + 1)], LIVE, {}, {}, {}),
    # no list (no AMI user): only the age decides
    ([call(started_at=T - MAX_AGE)], None, {}, {1: T}, {}),
    ([call(started_at=T - MAX_AGE - 86400)], None, {}, {1: T}, {}),
    ([call(started_at=T - MAX_AGE + 1)], None, {}, {}, {}),
    ([call(started_at=T - MAX_AGE)], None, {1: T - 60}, {1: T}, {}),
])
def test_which_open_calls_are_over(calls, live, missing, gone, still_missing):
    sweep = plan_sweep(calls, live, T, missing, GRACE, MAX_AGE)
    assert (sweep.gone, sweep.missing) == (gone, still_missing)


def test_a_max_age_of_zero_never_closes_a_call_it_cannot_look_for():
    old = [call(started_at=T - 10 * MAX_AGE), call(2, None, started_at=T - 10 * MAX_AGE)]
    assert plan_sweep(old, None, T, {}, GRACE, 0).gone == {}
    assert plan_sweep(old, LIVE, T, {}, GRACE, 0).gone == {}


def test_the_grace_covers_an_ami_session_that_takes_its_time_before_the_originate_leaves():
    assert grace_s(5.0) == 30.0 and grace_s(0.3) == pytest.approx(15.9)


STARTED, ANSWERED, GONE = T, T + 5, T + 100


@pytest.mark.parametrize("fields, changes, events", [
    # answered, incoming or outgoing: ANSWER, talk time up to when it was found gone
    (dict(direction="in", origin="pbx", answered_at=ANSWERED),
     dict(billsec=95, disposition="ANSWER"), ("receivedTheCall", "hangupTheCall")),
    (dict(direction="out", origin="pbx", trunk="pstn1", answered_at=ANSWERED),
     dict(billsec=95, disposition="ANSWER"), ("receivedTheCall", "hangupTheCall")),
    # never answered: the caller gave up, or nobody knows better
    (dict(direction="in", origin="pbx"), dict(billsec=0, disposition="CANCEL"), ("receivedTheCall", "hangupTheCall")),
    (dict(direction="out", origin="pbx", trunk="pstn1"),
     dict(billsec=0, disposition="CANCEL"), ("receivedTheCall", "hangupTheCall")),
    # click-to-call whose extension never answered: the client was never called, no push
    (dict(direction="out", origin="api", trunk=""), dict(billsec=0, disposition="NOANSWER"), ()),
    # click-to-call that reached a trunk: the CRM heard receivedTheCall, it hears the end
    (dict(direction="out", origin="api", trunk="pstn1"),
     dict(billsec=0, disposition="CANCEL"), ("receivedTheCall", "hangupTheCall")),
    (dict(direction="out", origin="api", trunk="pstn1", answered_at=ANSWERED),
     dict(billsec=95, disposition="ANSWER"), ("receivedTheCall", "hangupTheCall")),
])
def test_closing_stores_what_the_hangup_hook_would_have(fields, changes, events):
    closing = close_call(call(started_at=STARTED, **fields), GONE)
    assert closing.changes == dict(ended_at=GONE, **changes)
    assert closing.events == events


def test_a_call_that_ended_meanwhile_is_not_closed_again():
    assert close_call(call(direction="in", ended_at=T + 50, billsec=40, disposition="ANSWER"), GONE) is None


def test_a_call_found_gone_before_it_started_ends_when_it_started():
    # A clock stepped back between the look and the store: never a negative duration.
    closing = close_call(call(direction="in", started_at=GONE + 10, answered_at=GONE + 12), GONE)
    assert (closing.changes["ended_at"], closing.changes["billsec"]) == (GONE + 10, 0)
