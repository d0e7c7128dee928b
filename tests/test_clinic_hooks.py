"""The hooks of a clinic's everyday calls, end to end over real sockets against the
stand-in Asterisk, with a real store and a real CRM stand-in: a ring group dialled from
${ds}, an IVR before the extension, blind and attended transfers, voicemail, and a
click-to-call whose extension never answers.  The real-Asterisk version of the same calls
is tests/test_real_calls.py."""

from __future__ import annotations

from typing import Dict, List, Optional

from support.binotel_shapes import check_push
from support.fake_asterisk import FakeCall, RecordedSession
from support.player import run_over_socket

from clinica_asterisk.hooks.stages import HookServices


class Clock:
    def __init__(self, t: float = 1795738000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def session(channel: str, args: List[str], variables: Optional[Dict[str, Optional[str]]] = None,
            dead: bool = False) -> RecordedSession:
    env = ["agi_request: clinica-agi", f"agi_channel: {channel}", "agi_language: en",
           f"agi_type: {channel.split('/', 1)[0]}", "agi_uniqueid: 1795738000.1", "agi_version: 22.0.0",
           "agi_callerid: 0670219424", "agi_calleridname: Client", "agi_context: clinica-push",
           "agi_extension: run", "agi_priority: 5", "agi_enhanced: 0.0", "agi_accountcode: ",
           "agi_threadid: 1"]
    env += [f"agi_arg_{n}: {value}" for n, value in enumerate(args, 1)]
    return RecordedSession(env, dict(variables or {}), dead=dead, label=args[0])


CLIENT = "PJSIP/pstn1-00000001"
INCOMING = {"${CALLERID(num)}": "0670219424", "CLINICA_LINKEDID": "1795738000.1", "FROM_DID": "0443334000",
            "${CHANNEL(linkedid)}": "1795738000.1"}


class Call:
    """One call's hooks, played in order with a clock the test moves."""

    def __init__(self, settings):
        self.clock = Clock()
        self.services = HookServices.open(settings)
        self.services.clock = self.clock
        self.call = FakeCall()
        self.conversations = []

    def hook(self, after_s: float, channel: str, args: List[str], variables=None, dead=False):
        self.clock.t += after_s
        result, conv = run_over_socket(self.services, self.call, session(channel, args, variables, dead))
        self.conversations.append(conv)
        return result

    def stored(self):
        return self.services.store.call(int(self.call.inherited["CLINICA_CALLID"]))

    def sets(self, name: str) -> List[str]:
        return [value for _, n, value in self.call.set_on_channel if n == name]


def summary(pushes):
    return [(p["requestType"], p.get("internalNumber", p.get("billsec"))) for p in pushes]


def test_ring_group_dialled_from_ds_names_the_member_who_answered(crm, settings_for):
    c = Call(settings_for(crm.url))
    c.hook(0, CLIENT, ["ring-in", "0443334001"], INCOMING)
    ds = "PJSIP/801&PJSIP/802,20,HhtrU(macro-auto-blkvm)"
    c.hook(0.1, CLIENT, ["dial", "600", "group"], {"NODEST": "600", "ds": ds, "${CHANNEL(state)}": "Ring"})
    assert c.sets("ds") == ["PJSIP/801&PJSIP/802,20,HhtrU(clinica-answer^600^grp^macro-auto-blkvm)"]
    c.hook(1, "PJSIP/802-00000003", ["answer", "600", "grp"], {"CHANNEL": "PJSIP/802-00000003"})
    c.hook(3, CLIENT, ["hangup", "in"], {"DIALSTATUS": "ANSWER", "ANSWEREDTIME": "3"}, dead=True)
    assert summary(crm.pushes()) == [("receivedTheCall", "600"), ("answeredTheCall", "802"), ("hangupTheCall", "3")]
    stored = c.stored()
    assert stored["dst_numbers"] == ["600", "801", "802"] and stored["disposition"] == "ANSWER"


def test_ivr_time_is_waiting_not_talking(crm, settings_for):
    c = Call(settings_for(crm.url))
    c.hook(0, CLIENT, ["ring-in", "0443334006"], INCOMING)
    # The IVR answered the client; 8 s later it dials 801.
    c.hook(8, CLIENT, ["dial", "801", "one"], {"DEXTEN": "801", "D_OPTIONS": "HhtrI", "${CHANNEL(state)}": "Up"})
    c.hook(2, "PJSIP/801-00000002", ["answer", "801", "ext"], {"CHANNEL": "PJSIP/801-00000002"})
    # Dial's ANSWEREDTIME counts from the IVR's Answer(): 14 s; the client talked 4.
    c.hook(4, CLIENT, ["hangup", "in"], {"DIALSTATUS": "ANSWER", "ANSWEREDTIME": "14"}, dead=True)
    assert summary(crm.pushes())[-1] == ("hangupTheCall", "4")
    stored = c.stored()
    assert (stored["billsec"], round(stored["answered_at"] - stored["started_at"])) == (4, 10)


def test_blind_transfer_tells_the_crm_who_has_the_client(crm, settings_for):
    c = Call(settings_for(crm.url))
    c.hook(0, CLIENT, ["ring-in", "0443334008"], INCOMING)
    c.hook(0.1, CLIENT, ["dial", "806", "one"], {"DEXTEN": "806", "D_OPTIONS": "HhtrI"})
    c.hook(1, "PJSIP/806-00000002", ["answer", "806", "ext"], {"CHANNEL": "PJSIP/806-00000002"})
    # 806 sends ##805: the client's channel dials 805 (BLINDTRANSFER names 806).
    c.hook(5, CLIENT, ["dial", "805", "one"], {"DEXTEN": "805", "D_OPTIONS": "HhtrI", "${CHANNEL(state)}": "Up",
                                               "BLINDTRANSFER": "PJSIP/806-00000002"})
    assert c.sets("D_OPTIONS")[-1] == "HhtrIU(clinica-answer^805^bxfer)"
    c.hook(1, "PJSIP/805-00000004", ["answer", "805", "bxfer"], {"CHANNEL": "PJSIP/805-00000004"})
    c.hook(8, CLIENT, ["hangup", "in"], {"DIALSTATUS": "ANSWER", "ANSWEREDTIME": "14"}, dead=True)
    assert summary(crm.pushes()) == [
        ("receivedTheCall", "806"), ("answeredTheCall", "806"),
        ("transferredTheCall", "805"), ("receivedTheCall", "805"), ("answeredTheCall", "805"),
        ("hangupTheCall", "14")]
    assert len({p["generalCallID"] for p in crm.pushes()}) == 1
    for push in crm.pushes():
        check_push(push)  # Binotel's shape, transferredTheCall and the pair included
    assert crm.pushes()[-1]["disposition"] == "TRANSFER"
    stored = c.stored()
    assert (stored["disposition"], stored["transferred_to"], stored["dst_numbers"]) == ("TRANSFER", "805", ["806", "805"])


def test_attended_transfer_without_the_pair_when_the_crm_knows_transferred_the_call(crm, settings_for):
    c = Call(settings_for(crm.url, transfer_pair="no"))
    c.hook(0, CLIENT, ["ring-in", "0443334009"], INCOMING)
    c.hook(0.1, CLIENT, ["dial", "807", "one"], {"DEXTEN": "807", "D_OPTIONS": "HhtrI"})
    c.hook(1, "PJSIP/807-00000002", ["answer", "807", "ext"], {"CHANNEL": "PJSIP/807-00000002"})
    # 807 sends *2805: the consultation channel names the transferer.
    consult = "Local/805@from-internal-00000001;2"
    c.hook(5, consult, ["dial", "805", "one"], {"DEXTEN": "805", "D_OPTIONS": "HhtrI",
                                                "TRANSFERERNAME": "PJSIP/807-00000002"})
    assert c.sets("D_OPTIONS")[-1] == "HhtrIU(clinica-answer^805^xfer)"
    c.hook(1, "PJSIP/805-00000004", ["answer", "805", "xfer"], {"CHANNEL": "PJSIP/805-00000004"})
    assert summary(crm.pushes()) == [("receivedTheCall", "807"), ("answeredTheCall", "807")]  # internal so far
    # 807 hangs up: its leg's hangup handler finds the consultation up.
    c.hook(3, "PJSIP/807-00000002", ["transfer", consult],
           {f"${{IMPORT({consult},CHANNEL(state))}}": "Up"}, dead=True)
    c.hook(5, CLIENT, ["hangup", "in"], {"DIALSTATUS": "ANSWER", "ANSWEREDTIME": "15"}, dead=True)
    assert summary(crm.pushes()) == [("receivedTheCall", "807"), ("answeredTheCall", "807"),
                                     ("transferredTheCall", "805"), ("hangupTheCall", "15")]
    assert c.stored()["disposition"] == "TRANSFER"


def test_attended_transfer_given_up_is_no_transfer(crm, settings_for):
    c = Call(settings_for(crm.url))
    c.hook(0, CLIENT, ["ring-in", "0443334009"], INCOMING)
    c.hook(0.1, CLIENT, ["dial", "807", "one"], {"DEXTEN": "807", "D_OPTIONS": "HhtrI"})
    c.hook(1, "PJSIP/807-00000002", ["answer", "807", "ext"], {"CHANNEL": "PJSIP/807-00000002"})
    consult = "Local/805@from-internal-00000001;2"
    c.hook(5, consult, ["dial", "805", "one"], {"DEXTEN": "805", "TRANSFERERNAME": "PJSIP/807-00000002"})
    c.hook(1, "PJSIP/805-00000004", ["answer", "805", "xfer"], {"CHANNEL": "PJSIP/805-00000004"})
    # 805 hung up, 807 went back to the client and hangs up at the end: no consultation left.
    c.hook(9, "PJSIP/807-00000002", ["transfer", consult], {}, dead=True)
    # A name that could break out of IMPORT() is not even read.
    c.hook(0, "PJSIP/807-00000002", ["transfer", "x,CHANNEL(state)}${SHELL(id)"], {}, dead=True)
    c.hook(0, CLIENT, ["hangup", "in"], {"DIALSTATUS": "ANSWER", "ANSWEREDTIME": "16"}, dead=True)
    assert [p["requestType"] for p in crm.pushes()] == ["receivedTheCall", "answeredTheCall", "hangupTheCall"]
    assert c.stored()["disposition"] == "ANSWER"
    assert not any("SHELL" in line for conv in c.conversations for line in conv.commands)


def test_voicemail_with_and_without_a_message(crm, settings_for):
    for n, (message, disposition) in enumerate((("", "VM"),
                                                 ("/var/spool/asterisk/voicemail/default/808/INBOX/msg0000", "VM-SUCCESS"))):
        c = Call(settings_for(crm.url))
        c.hook(0, CLIENT, ["ring-in", "0443334010"], dict(INCOMING, CLINICA_LINKEDID=f"1795738100.{n}"))
        c.hook(0.1, CLIENT, ["dial", "808", "one"], {"DEXTEN": "808", "D_OPTIONS": "HhtrI"})
        c.hook(25, CLIENT, ["hangup", "in"], {"DIALSTATUS": "NOANSWER", "VMSTATUS": "SUCCESS",
                                             "VM_MESSAGEFILE": message}, dead=True)
        assert (c.stored()["disposition"], c.stored()["billsec"]) == (disposition, 0)


def test_click_to_call_nobody_answers_ends_the_call_without_a_push(crm, settings_for):
    c = Call(settings_for(crm.url))
    store = c.services.store
    with store.transaction():
        call_id = store.insert_call({"pbx": c.services.pbx, "direction": "out", "origin": "api",
                                     "started_at": c.clock.t, "external_number": "0670219424",
                                     "internal_number": "803", "dst_numbers": []})
    c.call.inherited["CLINICA_CALLID"] = str(call_id)
    leg = "Local/803@originate-skipvm-00000000;2"
    c.hook(0.1, leg, ["dial", "803", "one"], {"DEXTEN": "803", "D_OPTIONS": "HhtrI"})
    assert c.sets("CHANNEL(hangup_handler_push)") == ["clinica-hangup,s,1(c2c)"]
    c.hook(30, leg, ["hangup", "c2c"], {"DIALSTATUS": "CANCEL"}, dead=True)
    stored = store.call(call_id)
    assert (stored["ended_at"] is not None, stored["disposition"], stored["billsec"]) == (True, "NOANSWER", 0)
    assert crm.pushes() == []
