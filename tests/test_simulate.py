"""``clinica-asterisk simulate`` and ``crm-sink``: a newcomer without a PBX sees the pushes
of four recorded calls arrive at a local CRM stand-in.

Run this file as a script to regenerate ``clinica_asterisk/devtools/recorded_calls.json`` from the
recordings."""

import json
import os
import random
import subprocess
import sys
import urllib.request

from support.settings import make_settings
from support.fake_asterisk import ASTERISK22
from support.fastagi import WAIT_S, running_server
from support.net import free_port

from clinica_asterisk.cli import main as cli
from clinica_asterisk.devtools.asterisk_peer import session_from_recording
from clinica_asterisk.cli.crm_sink import format_push
from clinica_asterisk.devtools.simulation import CALLS, RECORDED_CALLS, recorded_calls, simulate, with_fresh_ids

CLI = os.path.join(os.path.dirname(sys.executable), "clinica-asterisk")
SHIPPED = RECORDED_CALLS


def render_recorded_calls() -> str:
    """The text of ``recorded_calls.json`` as the recordings give it."""
    sessions = []
    for line in (ASTERISK22 / "agi-script-sessions.jsonl").read_text().splitlines():
        s = session_from_recording(json.loads(line))
        sessions.append({"label": s.label, "env": s.env, "variables": s.variables, "dead": s.dead,
                         "channel_status": s.channel_status})
    return json.dumps(sessions, ensure_ascii=False, indent=1) + "\n"


def test_shipped_calls_are_the_recorded_ones():
    assert SHIPPED.read_text() == render_recorded_calls(), "run: python tests/test_simulate.py"


EXPECTED = [  # the CRM document's keys, companyID (not configured: empty), then Binotel's extra keys
    "receivedTheCall didNumber=0443334000 externalNumber=0670219424 internalNumber=801 callType=0 companyID= "
    "pbxNumber=0443334000 did=0443334000 srcNumber=0670219424",
    "answeredTheCall didNumber=0443334000 externalNumber=0670219424 internalNumber=801 callType=0 companyID= "
    "pbxNumber=0443334000",
    "hangupTheCall billsec=3 companyID= disposition=ANSWER",
    "receivedTheCall didNumber=0443334001 externalNumber=0670219425 internalNumber=600 callType=0 companyID= "
    "pbxNumber=0443334001 did=0443334001 srcNumber=0670219425",
    "answeredTheCall didNumber=0443334001 externalNumber=0670219425 internalNumber=802 callType=0 companyID= "
    "pbxNumber=0443334001",
    "hangupTheCall billsec=2 companyID= disposition=ANSWER",
    "receivedTheCall didNumber=0443334002 externalNumber=0670219426 internalNumber=803 callType=0 companyID= "
    "pbxNumber=0443334002 did=0443334002 srcNumber=0670219426",
    "hangupTheCall billsec=0 companyID= disposition=CANCEL",
    "receivedTheCall externalNumber=0670219424 internalNumber=904 callType=1 companyID=",
    "answeredTheCall externalNumber=0670219424 internalNumber=904 callType=1 companyID=",
    "hangupTheCall billsec=2 companyID= disposition=ANSWER",
]


def isolated_environment(monkeypatch, tmp_path):
    """The CLI in-process sees only an empty configuration file."""
    for key in [k for k in os.environ if k.startswith("CLINICA_")]:
        monkeypatch.delenv(key)
    (tmp_path / "empty.env").write_text("")
    monkeypatch.setenv("CLINICA_ENV_FILE", str(tmp_path / "empty.env"))


def summary(push):
    fields = {k: v for k, v in push.items() if k not in ("requestType", "generalCallID")}
    return " ".join([push["requestType"], *(f"{k}={v}" for k, v in fields.items())])


def test_simulate_command_plays_the_four_calls_against_the_server(crm, tmp_path, monkeypatch, capsys):
    settings = make_settings(tmp_path / "data", crm_push_url=crm.url)
    isolated_environment(monkeypatch, tmp_path)
    with running_server(settings) as server:
        host, port = server.address
        assert cli.main(["simulate", "--server", f"{host}:{port}"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}: {what}" in out for name, (what, _) in CALLS.items())
    assert out.count(" SENT ") == 11

    pushes = crm.pushes()
    assert [summary(p) for p in pushes] == EXPECTED
    assert len({p["generalCallID"] for p in pushes}) == 4


def test_every_simulation_is_a_new_set_of_calls(crm, tmp_path):
    with running_server(make_settings(tmp_path / "data", crm_push_url=crm.url)) as server:
        first = simulate(server.address, ["in-801"], random.Random(1))
        second = simulate(server.address, ["in-801"], random.Random(2))
    assert [p.status for p in first + second] == ["SENT"] * 6
    assert len({p["generalCallID"] for p in crm.pushes()}) == 2


def test_fresh_ids_keep_the_call_together_and_its_legs_apart():
    rng = random.Random(3)
    recording = recorded_calls()["in-801"]
    ring, answer, hangup = with_fresh_ids(recording, rng, now=1800000000)
    assert ring.variables["${CHANNEL(linkedid)}"] == answer.variables["${CHANNEL(linkedid)}"] == \
        hangup.variables["${CHANNEL(linkedid)}"]
    assert ring.env_value("agi_uniqueid") == ring.variables["UNIQUEID"] == hangup.variables["UNIQUEID"]
    assert answer.variables["UNIQUEID"] != ring.variables["UNIQUEID"]
    assert ring.variables["${CHANNEL(linkedid)}"].startswith("1800000000.")
    assert recording[0].variables["UNIQUEID"] == "1795713130.5", "the recording itself is left alone"


def test_simulate_without_a_server_says_what_to_start(tmp_path, monkeypatch, capsys):
    port = free_port()
    isolated_environment(monkeypatch, tmp_path)
    assert cli.main(["simulate", "--server", f"127.0.0.1:{port}", "--call", "out"]) == cli.ExitStatus.ERROR
    assert "is `clinica-asterisk serve` running?" in capsys.readouterr().out


def test_crm_sink_prints_each_push_on_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINICA_")}
    (tmp_path / "empty.env").write_text("")
    env["CLINICA_ENV_FILE"] = str(tmp_path / "empty.env")
    sink = subprocess.Popen([CLI, "crm-sink", "--bind", "127.0.0.1:0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = sink.stderr.readline().strip().rsplit(" ", 1)[1]
        body = b"requestType=receivedTheCall&generalCallID=42&externalNumber=0670219424&note=two%0Alines"
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=WAIT_S) as answer:
            assert answer.status == 200
        line = sink.stdout.readline()
    finally:
        sink.terminate()
        sink.wait(WAIT_S)
    assert sink.returncode == 0
    assert line.split(" ", 1)[1] == "receivedTheCall generalCallID=42 externalNumber=0670219424 note=two lines\n"


def test_push_line_puts_the_event_first():
    line = format_push({"billsec": "3", "generalCallID": "7", "requestType": "hangupTheCall"})
    assert line.split(" ", 1)[1] == "hangupTheCall generalCallID=7 billsec=3"


if __name__ == "__main__":
    SHIPPED.write_text(render_recorded_calls())
    print(f"wrote {SHIPPED}")
