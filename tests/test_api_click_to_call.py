"""calls/ext-to-phone against a fake Asterisk manager on a real socket: the exact Originate
sent, AMI failures as clear errors, and injection attempts that never reach Asterisk."""

import pytest
from support.api import api_settings, post
from support.binotel_shapes import check
from support.fake_ami import FakeAmi, header
from support.fake_asterisk import FakeCall, freepbx_calls
from support.player import our_args, run_over_socket

from clinica_asterisk.pbx.ami import AmiClient
from clinica_asterisk.api.app import build_context, create_app
from clinica_asterisk.api.click_to_call import channel_id
from clinica_asterisk.api.errors import Code
from clinica_asterisk.delivery.sender import PushSender
from clinica_asterisk.hooks.stages import HookServices
from clinica_asterisk.store.database import Store

NOW = 1795715147.0
REQUEST = {"ext_number": "902", "phone_number": "0639798793"}


@pytest.fixture
def ami():
    fake = FakeAmi().start()
    yield fake
    fake.stop()


def client_for(tmp_path, ami_port, directory=None, **overrides):
    values = dict(ami_user="clinica", ami_secret="ami-secret", ami_port=ami_port, ami_timeout_ms=300, pbx_id="pbx1")
    if directory is not None:
        (tmp_path / "directory.csv").write_text(directory, encoding="utf-8")
        values["directory_file"] = str(tmp_path / "directory.csv")
    values.update(overrides)
    settings = api_settings(tmp_path, **values)
    app = create_app(settings, build_context(settings, clock=lambda: NOW))
    return settings, app.test_client()


def ext_to_phone(client, params=REQUEST):
    return post(client, "/api/2.0/calls/ext-to-phone.json", params)


def test_the_originate_sent_is_exactly_freepbx_s_click_to_call_carrying_the_call_id(tmp_path, ami):
    settings, client = client_for(tmp_path, ami.port)
    status, answer = ext_to_phone(client)
    assert (status, answer["status"]) == (200, "success")
    call_id = int(answer["generalCallID"])
    assert list(answer) == ["status", "generalCallID", "signature"]
    check(answer, "ExtToPhoneAnswer")  # Binotel's shape

    login, originate, logoff = ami.actions
    assert [kv for kv in login if kv[0] != "ActionID"] == [("Action", "Login"), ("Username", "clinica"),
                                                          ("Secret", "ami-secret")]
    assert [kv for kv in originate if kv[0] != "ActionID"] == [
        ("Action", "Originate"),
        ("Channel", "Local/902@originate-skipvm"),
        ("Exten", "0639798793"),
        ("Context", "from-internal"),
        ("Priority", "1"),
        ("Async", "yes"),
        ("CallerID", '"0639798793" <902>'),
        ("Timeout", "30000"),
        ("Variable", f"__CLINICA_CALLID={call_id}"),
        ("ChannelId", f"clinica-pbx1-{call_id}"),
    ]
    assert header(originate, "ActionID")
    assert header(logoff, "Action") == "Logoff"

    # The first channel's uniqueid, so the linkedid of every channel of the call: stored
    # with the call before the Originate left, for the reconciler to look for.
    stored = Store(settings.db_path).call(call_id)
    assert {k: stored[k] for k in ("pbx", "linkedid", "direction", "origin", "started_at", "internal_number",
                                   "external_number", "src_number", "ended_at")} == {
        "pbx": "pbx1", "linkedid": f"clinica-pbx1-{call_id}", "direction": "out", "origin": "api",
        "started_at": NOW, "internal_number": "902", "external_number": "0639798793",
        "src_number": "0639798793", "ended_at": None}


@pytest.mark.parametrize("pbx, expected", [
    ("pbx1", "clinica-pbx1-1795715147000"),
    ("freepbx.clinic.example", "clinica-freepbx.clinic.example-1795715147000"),
    ("10.0.0.5", "clinica-10.0.0.5-1795715147000"),
    ("pbx;2,evil|name with spaces/@", "clinica-pbx-2-evil-name-with-spaces-1795715147000"),
    ("кліника", "clinica-pbx-1795715147000"),
    ("", "clinica-pbx-1795715147000"),
    ("x" * 300, f"clinica-{'x' * 40}-1795715147000"),
])
def test_the_channel_id_is_unique_per_call_and_of_characters_asterisk_keeps(pbx, expected):
    assert channel_id(pbx, 1795715147000) == expected
    assert len(channel_id(pbx, 2 ** 63 - 1)) <= 127


def test_two_click_to_calls_get_two_linkedids(tmp_path, ami):
    settings, client = client_for(tmp_path, ami.port)
    ids = [int(ext_to_phone(client)[1]["generalCallID"]) for _ in range(2)]
    sent = [header(o, "ChannelId") for o in ami.originates()]
    store = Store(settings.db_path)
    assert sent == [store.call(i)["linkedid"] for i in ids] == [f"clinica-pbx1-{i}" for i in ids]
    assert ids[0] != ids[1]


def test_contexts_ring_time_and_number_format_come_from_settings(tmp_path, ami):
    settings, client = client_for(tmp_path, ami.port, originate_context="clinica-out",
                                  originate_channel_context="clinica-ring", number_format="e164")
    status, answer = ext_to_phone(client, {"ext_number": 77, "phone_number": "+380639798793", "callTimeToExt": "45"})
    (originate,) = ami.originates()
    assert (header(originate, "Channel"), header(originate, "Context"), header(originate, "Exten"),
            header(originate, "Timeout")) == ("Local/77@clinica-ring", "clinica-out", "+380639798793", "45000")
    assert Store(settings.db_path).call(int(answer["generalCallID"]))["external_number"] == "+380639798793"


@pytest.mark.parametrize("params", [
    {"ext_number": "900@from-internal/", "phone_number": "0639798793"},
    {"ext_number": "902/n", "phone_number": "0639798793"},
    {"ext_number": "902&Local/903@from-internal", "phone_number": "0639798793"},
    {"ext_number": "902\r\nAction: Hangup", "phone_number": "0639798793"},
    {"ext_number": "902\n", "phone_number": "0639798793"},
    {"ext_number": "902", "phone_number": "0639798793\r\nVariable: X=1"},
    {"ext_number": "902", "phone_number": "0639798793&SIP/evil"},
    {"ext_number": "902", "phone_number": "0639798793@from-trunk"},
    {"ext_number": "902", "phone_number": "*97"},
    {"ext_number": "902", "phone_number": "06 39 79 87 93"},
    {"ext_number": "٩٠٢", "phone_number": "0639798793"},
    {"ext_number": "902", "phone_number": "０６３９７９８７９３"},
    {"ext_number": "9", "phone_number": "0639798793"},
    {"ext_number": "1234567", "phone_number": "0639798793"},
    {"ext_number": "902", "phone_number": "12"},
    {"ext_number": "902", "phone_number": "+1234567890123456"},
    {"ext_number": "902", "phone_number": "++380639798793"},
    {"ext_number": "902", "phone_number": 639798793},
    {"ext_number": True, "phone_number": "0639798793"},
    {"ext_number": -902, "phone_number": "0639798793"},
    {"ext_number": ["902"], "phone_number": "0639798793"},
    {"ext_number": "902", "phone_number": None},
    {"ext_number": "902", "phone_number": "0639798793", "callTimeToExt": 1},
    {"ext_number": "902", "phone_number": "0639798793", "callTimeToExt": "30\r\nX: y"},
    {"ext_number": "902", "phone_number": "0639798793", "callTimeToExt": 30.5},
])
def test_injection_attempts_and_bad_numbers_never_reach_asterisk(tmp_path, ami, params):
    settings, client = client_for(tmp_path, ami.port)
    status, answer = ext_to_phone(client, params)
    assert (status, answer["status"], answer["code"]) == (200, "error", Code.INVALID_PARAMETER)
    assert ami.connections == 0 and ami.actions == []
    assert Store(settings.db_path).conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 0


def test_an_extension_missing_from_the_directory_is_refused(tmp_path, ami):
    settings, client = client_for(tmp_path, ami.port, directory="801,Наталия,\n")
    status, answer = ext_to_phone(client)
    assert answer["code"] == Code.UNKNOWN_EXTENSION and ami.connections == 0
    status, answer = ext_to_phone(client, {"ext_number": "801", "phone_number": "0639798793"})
    assert answer["status"] == "success"


def test_without_an_ami_user_click_to_call_is_off(tmp_path, ami):
    settings, client = client_for(tmp_path, ami.port, ami_user="")
    status, answer = ext_to_phone(client)
    assert answer["code"] == Code.CLICK_TO_CALL_OFF and ami.connections == 0


@pytest.mark.parametrize("behaviour, code, message, closed", [
    ("bad-login", Code.AMI_LOGIN_FAILED, "the manager refused the login", True),
    ("refuse", Code.AMI_REFUSED, "the PBX refused the call: Extension does not exist.", True),
    ("silent", Code.AMI_TIMEOUT, "no answer from the manager while connecting", True),
    ("mute-after-login", Code.AMI_TIMEOUT, "no answer from the manager while waiting for the Originate response",
     False),
    ("close-after-login", Code.AMI_UNREACHABLE,
     "the manager closed the connection while waiting for the Originate response", False),
])
def test_ami_failures_are_clear_signed_errors(tmp_path, behaviour, code, message, closed):
    fake = FakeAmi(behaviour).start()
    try:
        settings, client = client_for(tmp_path, fake.port)
        status, answer = ext_to_phone(client)
    finally:
        fake.stop()
    assert (status, answer["status"], answer["code"], answer["message"]) == (200, "error", code, message)
    (call,) = [dict(r) for r in Store(settings.db_path).conn.execute("SELECT * FROM calls")]
    if closed:
        # Asterisk certainly did not start it: the record is closed, not left online.
        assert (call["ended_at"], call["disposition"]) == (NOW, "CHANUNAVAIL")
    else:
        assert call["ended_at"] is None  # the Originate left: it may still ring, the hooks will tell


def test_a_wrong_ami_secret_is_a_login_failure(tmp_path, ami):
    settings, client = client_for(tmp_path, ami.port, ami_secret="wrong")
    status, answer = ext_to_phone(client)
    assert answer["code"] == Code.AMI_LOGIN_FAILED
    assert ami.originates() == []


def test_a_manager_that_is_down_is_unreachable(tmp_path, closed_port_url):
    port = int(closed_port_url.split(":")[2].split("/")[0])
    settings, client = client_for(tmp_path, port)
    status, answer = ext_to_phone(client)
    assert (answer["code"], answer["message"]) == (Code.AMI_UNREACHABLE,
                                                    f"cannot connect to the manager at 127.0.0.1:{port}")


def test_header_values_with_line_breaks_are_never_sent():
    client = AmiClient("127.0.0.1", 1, "u", "s", 0.2)
    for value in ("a\r\nAction: Hangup", "a\n", ["ok", "b\r"]):
        with pytest.raises(ValueError):
            client.send({"Action": "Originate", "Exten": value})


def test_the_pushes_of_the_call_carry_the_id_the_api_answered(tmp_path, ami, crm):
    settings, client = client_for(tmp_path, ami.port, crm_push_url=crm.url)
    status, answer = ext_to_phone(client, {"ext_number": "801", "phone_number": "0670219424"})
    call_id = answer["generalCallID"]
    # Asterisk runs the originated call through the hooks, every channel inheriting
    # __CLINICA_CALLID from the Originate.
    services = HookServices.open(settings, sender=PushSender(crm.url))
    call = FakeCall()
    call.inherited["CLINICA_CALLID"] = header(ami.originates()[0], "Variable").split("=", 1)[1]
    for session in freepbx_calls()["click-to-call"]:
        run_over_socket(services, call, session.with_args(our_args(session)))
    assert crm.pushes() and {p["generalCallID"] for p in crm.pushes()} == {call_id}
    status, details = post(client, "/stats/call-details.json", {"generalCallID": call_id})
    entry = details["callDetails"][call_id]
    assert (entry["callType"], entry["internalNumber"], entry["externalNumber"], entry["disposition"]) == \
        ("1", "801", "0670219424", "ANSWER")


# --- Binotel's optional parameters -------------------------------------------------------

def headers_named(action, name):
    return [v for k, v in action if k == name]


def test_binotel_s_optional_parameters_are_honoured(tmp_path, ami):
    settings, client = client_for(tmp_path, ami.port)
    status, answer = ext_to_phone(client, dict(REQUEST, callTimeToExt=20, limitCallTime="120",
                                               callerIdForEmployee="CRM client 3320", playbackWaiting="FALSE",
                                               **{"async": "TRUE"}))
    assert answer["status"] == "success", answer
    (originate,) = ami.originates()
    assert header(originate, "CallerID") == '"CRM client 3320" <902>'  # the employee's phone shows this
    assert header(originate, "Timeout") == "20000"
    assert header(originate, "Async") == "yes"
    # The call's first channel ends at the latest the extension's ring time plus the limit after the Originate.
    assert headers_named(originate, "Variable") == [f"__CLINICA_CALLID={answer['generalCallID']}",
                                                   "__CLINICA_TALK_LIMIT_MS=120000"]


def test_async_false_waits_for_the_extension(tmp_path, ami):
    settings, client = client_for(tmp_path, ami.port)
    status, answer = ext_to_phone(client, dict(REQUEST, **{"async": "FALSE"}))
    assert answer["status"] == "success"
    assert header(ami.originates()[0], "Async") == "no"


def test_async_false_and_an_extension_that_does_not_answer_is_a_clear_error(tmp_path):
    fake = FakeAmi("refuse", refusal="Originate failed").start()
    try:
        settings, client = client_for(tmp_path, fake.port)
        status, answer = ext_to_phone(client, dict(REQUEST, **{"async": False}))
    finally:
        fake.stop()
    assert (answer["code"], answer["message"]) == (Code.EXTENSION_NO_ANSWER, "the extension did not take the call")
    (call,) = [dict(r) for r in Store(settings.db_path).conn.execute("SELECT * FROM calls")]
    assert (call["ended_at"], call["disposition"]) == (NOW, "NOANSWER")


@pytest.mark.parametrize("extra, fragment", [
    ({"playbackWaiting": "TRUE"}, "playbackWaiting"),
    ({"playbackWaiting": True}, "playbackWaiting"),
    ({"trunkNumber": "0443334000"}, "trunkNumber"),
])
def test_what_asterisk_cannot_do_here_is_refused_not_ignored(tmp_path, ami, extra, fragment):
    settings, client = client_for(tmp_path, ami.port)
    status, answer = ext_to_phone(client, dict(REQUEST, **extra))
    assert (answer["status"], answer["code"]) == ("error", Code.UNSUPPORTED_PARAMETER)
    assert answer["message"].startswith(fragment)
    assert ami.connections == 0


@pytest.mark.parametrize("extra", [
    {"limitCallTime": 0}, {"limitCallTime": "two minutes"}, {"limitCallTime": 86401},
    {"callerIdForEmployee": 'Private" <900>'}, {"callerIdForEmployee": "line\r\nAction: Hangup"},
    {"callerIdForEmployee": ""}, {"callerIdForEmployee": "x" * 41}, {"callerIdForEmployee": 3320},
    {"async": "maybe"}, {"async": 2}, {"playbackWaiting": "no"},
])
def test_optional_parameters_of_the_wrong_form_are_refused(tmp_path, ami, extra):
    settings, client = client_for(tmp_path, ami.port)
    status, answer = ext_to_phone(client, dict(REQUEST, **extra))
    assert (answer["status"], answer["code"]) == ("error", Code.INVALID_PARAMETER)
    assert ami.connections == 0
