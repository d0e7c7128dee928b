"""Asterisk's answers, parsed by one pure function; several values in one round trip."""

import socket
import threading

import pytest
from asterisk.agi import AGIAppError, AGIInvalidCommand, AGIResultHangup, AGIUnknownError, AGIUsageError
from support.fake_asterisk import FakeCall, RecordedSession, serve_session

from clinica_asterisk.agi.reply import batch_expression, parse_reply, split_batch
from clinica_asterisk.agi import channel as channel_module
from clinica_asterisk.devtools.asterisk_peer import substitute
from clinica_asterisk.agi.channel import AgiChannel, LineStream
from clinica_asterisk.deadline import Deadline


@pytest.mark.parametrize("line, fields", [
    ("200 result=1 (801)", {"result": ("1", "801")}),
    ("200 result=0", {"result": ("0", "")}),
    ("200 result=1 ()", {"result": ("1", "")}),
    ("200 result=1", {"result": ("1", "")}),
    ("200 result=1 (Клієнт (VIP))", {"result": ("1", "Клієнт (VIP)")}),
    ("200 result=1 (a) b (c))", {"result": ("1", "a) b (c)")}),
    ("200 result=1 (=x=)", {"result": ("1", "=x=")}),
    ("200 result=0 endpos=8000", {"result": ("0", ""), "endpos": ("8000", "")}),
    ("200 result=1 (timeout) endpos=12", {"result": ("1", "timeout"), "endpos": ("12", "")}),
    ("200 result=1 (x)\r", {"result": ("1", "x")}),
])
def test_successful_answers(line, fields):
    assert parse_reply(line) == fields


@pytest.mark.parametrize("line, error", [
    ("510 Invalid or unknown command", AGIInvalidCommand),
    ("511 Command Not Permitted on a dead channel or intercept routine", AGIUnknownError),
    ("200 result=-1", AGIAppError),
    ("200 result=1 (hangup)", AGIResultHangup),
    ("", AGIUnknownError),
    ("garbage", AGIUnknownError),
    ("2000 result=1", AGIUnknownError),
    ("HTTP/1.1 200 OK", AGIUnknownError),
])
def test_failures_raise_pyst2s_errors(line, error):
    with pytest.raises(error):
        parse_reply(line)


def test_usage_answer_carries_its_lines():
    with pytest.raises(AGIUsageError) as raised:
        parse_reply("520-Invalid command syntax.  Proper usage follows:", ["Usage: GET VARIABLE <name>", "520 End of proper usage."])
    assert "Usage: GET VARIABLE" in str(raised.value)


def test_batch_expression_quotes_each_value_after_a_mark():
    assert batch_expression(["FROM_DID", "${CDR(billsec)}"]) == \
        "${CSV_QUOTE(clinica)},${CSV_QUOTE(${FROM_DID})},${CSV_QUOTE(${CDR(billsec)})}"


ODD_VALUES = ["", "0670219424", 'say "hi", then (go)', "a,b,,c", '"', "Клієнт, VIP", "back\\slash", "${X}"]


@pytest.mark.parametrize("value", ODD_VALUES)
def test_any_value_comes_back_whole_through_asterisks_csv_quote(value):
    variables = {"${CALLERID(num)}": value, "${FROM_DID}": "0443334000"}
    names = ["${CALLERID(num)}", "FROM_DID", "${CALLERID(num)}"]
    answer = substitute(batch_expression(names), lambda e: variables.get(e, ""))
    assert split_batch(answer, 3) == [value, "0443334000", value]


@pytest.mark.parametrize("answer", [
    ",,",                    # an Asterisk without CSV_QUOTE substitutes nothing
    '"clinica","1"',         # one value short
    '"clinica","1","2","3"',  # one too many
    '"other","1","2"',
    '"clinica","1"x,"2"',    # not quoted the CSV way
    "",
])
def test_an_answer_not_shaped_as_asked_is_refused(answer):
    assert split_batch(answer, 2) is None


def _session(variables):
    return RecordedSession(env=["agi_request: clinica-agi", "agi_channel: PJSIP/801-00000001"], variables=variables)


def _reading(variables, names, no_csv_quote=False):
    """Read ``names`` over a socket pair against the fake Asterisk; what was sent,
    and the values the channel then answers."""
    asterisk, script = socket.socketpair()
    call = FakeCall()
    if no_csv_quote:
        original = call.answer

        def answer(session, line, local):  # as if CSV_QUOTE were unknown: it substitutes to ''
            return original(session, line.replace("CSV_QUOTE", "NO_SUCH_FUNCTION"), local)

        call.answer = answer
    served = {}
    peer = threading.Thread(target=lambda: served.update(
        conv=serve_session(call, _session(variables), asterisk.fileno(), asterisk.fileno())))
    peer.start()
    stream = LineStream(script.fileno(), script.fileno())
    channel = AgiChannel(stream, Deadline(5))
    stream.read_request(Deadline(5))
    read = channel.read(names)
    values = [read[n] for n in names]
    script.close()
    peer.join(5)
    asterisk.close()
    return served["conv"].commands, values


def test_several_values_are_read_in_one_command():
    variables = {"FROM_DID": "0443334000", "${CALLERID(num)}": 'Dr "House", MD', "DEXTEN": None}
    commands, values = _reading(variables, ["FROM_DID", "${CALLERID(num)}", "DEXTEN"])
    assert len(commands) == 1 and commands[0].startswith("GET FULL VARIABLE")
    assert values == ["0443334000", 'Dr "House", MD', ""]


def test_without_csv_quote_the_values_are_read_one_by_one(caplog, monkeypatch):
    monkeypatch.setattr(channel_module, "_batch_refused", threading.Event())
    variables = {"FROM_DID": "0443334000", "${CALLERID(num)}": "0670219424"}
    commands, values = _reading(variables, ["FROM_DID", "${CALLERID(num)}"], no_csv_quote=True)
    _reading(variables, ["FROM_DID", "${CALLERID(num)}"], no_csv_quote=True)
    assert [r.getMessage()[:50] for r in caplog.records if r.levelname == "WARNING"] == \
        ["Asterisk did not answer a CSV_QUOTE batch as expec"]  # once, not once per hook
    assert values == ["0443334000", "0670219424"]
    assert [c.split()[:3] for c in commands[1:]] == [["GET", "VARIABLE", '"FROM_DID"'],
                                                     ["GET", "FULL", "VARIABLE"]]


def test_every_stages_batch_fits_asterisks_agi_line():
    """res_agi reads a command into a buffer of AGI_BUF_LEN (2048) bytes; a longer one
    would be cut, and the hook would fall back to a round trip per value."""
    from clinica_asterisk.agi.channel import quote_argument
    from clinica_asterisk.calls.stages import STAGES

    for stage in STAGES.values():
        line = "GET FULL VARIABLE " + quote_argument(batch_expression(stage.first_reads())) + "\n"
        assert len(line.encode()) < 2048, stage.name
