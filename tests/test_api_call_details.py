"""stats/call-details over a store written by the real hooks, from the recorded FreePBX calls."""

import json
import os

import pytest
from support.api import CALLS, SECRET, T0, Clock, api_settings, php_verifies, play, post, requires_php, signed_body
from support.binotel_shapes import check_call_details

from clinica_asterisk.api.app import create_app
from clinica_asterisk.api.call_details import ENTRY_COLUMNS, SELECT_CALLS, call_and_seen, details, entries
from clinica_asterisk.api.directory import Directory, Employee, parse_directory
from clinica_asterisk.api.errors import Code
from clinica_asterisk.api.names import current_names
from clinica_asterisk.delivery.sender import PushSender
from clinica_asterisk.hooks.stages import HookServices
from clinica_asterisk.store.database import Store

DIRECTORY = """extension,name,email
# reception
801,Наталия Сторожук,nataliiastorozhuk@medakadem.com
802,"Петренко, Олег",oleg@clinic.example
904,Front desk,
"""


@pytest.fixture
def env(tmp_path, crm):
    (tmp_path / "directory.csv").write_text(DIRECTORY, encoding="utf-8")
    settings = api_settings(tmp_path, crm_push_url=crm.url, company_id="10881",
                            directory_file=str(tmp_path / "directory.csv"), trunk_numbers="1:+380443334000")
    clock = Clock(T0)
    services = HookServices(settings, Store(settings.db_path, clock=clock), PushSender(crm.url), "pbx1", clock=clock)
    app = create_app(settings)
    app.extensions["clinica_api"].clock = clock
    return settings, services, clock, app.test_client()


def ask(client, ids):
    status, answer = post(client, "/api/2.0/stats/call-details.json", {"generalCallID": ids})
    assert status == 200 and answer["status"] == "success", answer
    check_call_details(answer)
    return answer["callDetails"]


def test_every_recorded_call_is_described_with_the_seed_s_types(env):
    settings, services, clock, client = env
    ids = {name: play(services, clock, sessions) for name, sessions in CALLS.items() if name != "click-to-call"}
    found = ask(client, list(ids.values()))
    assert set(found) == {str(i) for i in ids.values()}
    for entry in found.values():  # ask() checked each entry's keys, their order and types
        assert isinstance(entry.pop("waitsec"), int)
        assert all(isinstance(n["dstNumber"], str) and isinstance(n["waitsec"], int) and isinstance(n["billsec"], str)
                   for n in entry.pop("dstNumbers"))
        assert all(isinstance(v, str) for v in entry.values())
    summary = {name: (found[str(i)]["disposition"], found[str(i)]["internalNumber"], found[str(i)]["billsec"])
               for name, i in ids.items()}
    assert summary == {
        "in-801": ("ANSWER", "801", "4"), "in-group": ("ANSWER", "802", "3"), "in-queue": ("ANSWER", "802", "3"),
        "in-miss": ("CANCEL", "803", "0"), "in-busy": ("BUSY", "804", "0"),
        "out-answer": ("ANSWER", "904", "3"), "out-noanswer": ("CANCEL", "904", "0"),
        "out-busy": ("BUSY", "904", "0"), "out-failover": ("ANSWER", "904", "2"),
    }


def test_a_ring_group_call_names_the_member_who_answered_and_the_group(env):
    settings, services, clock, client = env
    call_id = play(services, clock, CALLS["in-group"])
    started = T0 + 60
    assert ask(client, [call_id]) == {str(call_id): {
        "companyID": "10881",
        "generalCallID": str(call_id),
        "callID": str(call_id),
        "startTime": str(int(started)),
        "callType": "0",
        "internalNumber": "802",
        "internalAdditionalData": "600 > ",
        "externalNumber": "0670219425",
        "srcNumber": "0670219425",
        "customerData": "",
        "employeeName": "Петренко, Олег",
        "employeeEmail": "oleg@clinic.example",
        "dstNumbers": [  # the group and its members, in the order they rang
            {"dstNumber": "600", "waitsec": 8, "billsec": "3", "disposition": "ANSWER",
             "employeeName": "", "employeeEmail": ""},
            {"dstNumber": "802", "waitsec": 8, "billsec": "3", "disposition": "ANSWER",
             "employeeName": "Петренко, Олег", "employeeEmail": "oleg@clinic.example"},
            {"dstNumber": "801", "waitsec": 8, "billsec": "0", "disposition": "NOANSWER",
             "employeeName": "Наталия Сторожук", "employeeEmail": "nataliiastorozhuk@medakadem.com"},
        ],
        "waitsec": 8,  # ring-in, group, two members (1 s each), answer (5 s)
        "billsec": "3",
        "disposition": "ANSWER",
        "isNewCall": "1",
        "did": "0443334001",
        "didNumber": "0443334001",
        "didName": "",
        "trunkNumber": "",
    }}


def test_an_outgoing_call_names_the_caller_its_trunk_and_the_number_dialled(env):
    settings, services, clock, client = env
    call_id = play(services, clock, CALLS["out-answer"])
    entry = ask(client, [call_id])[str(call_id)]
    assert {k: entry[k] for k in ("callType", "internalNumber", "internalAdditionalData", "externalNumber",
                                  "employeeName", "employeeEmail", "dstNumbers", "trunkNumber", "did",
                                  "waitsec", "disposition")} == {
        "callType": "1", "internalNumber": "904", "internalAdditionalData": "", "externalNumber": "0670219424",
        "employeeName": "Front desk", "employeeEmail": "",
        "dstNumbers": [{"dstNumber": "0670219424", "waitsec": 5, "billsec": "3", "disposition": "ANSWER",
                        "employeeName": "", "employeeEmail": ""}],
        # The number trunk 1 presents (CLINICA_TRUNK_NUMBERS), in the API's number format.
        "trunkNumber": "0443334000",
        "did": "", "waitsec": 5, "disposition": "ANSWER",
    }


def test_a_call_still_up_is_online_with_its_times_so_far(env):
    settings, services, clock, client = env
    answered = play(services, clock, [s for s in CALLS["in-801"] if s.extra["hook"] != "hangup"])
    answered_at = clock.now
    ringing = play(services, clock, [s for s in CALLS["in-miss"] if s.extra["hook"] != "hangup"])
    ringing_since = clock.now - 1
    clock.now += 20
    found = ask(client, [answered, ringing])
    assert (found[str(answered)]["disposition"], found[str(answered)]["billsec"],
            found[str(answered)]["waitsec"]) == ("ONLINE", str(int(clock.now - answered_at)), 6)
    assert (found[str(ringing)]["disposition"], found[str(ringing)]["billsec"],
            found[str(ringing)]["waitsec"]) == ("ONLINE", "0", int(clock.now - ringing_since))
    assert found[str(ringing)]["internalNumber"] == "803"


def test_is_new_call_looks_at_every_earlier_call_with_that_number(env):
    settings, services, clock, client = env
    first = play(services, clock, CALLS["in-801"])      # 0670219424 calls for the first time
    second = play(services, clock, CALLS["out-answer"])  # we call 0670219424 back
    other = play(services, clock, CALLS["in-group"])     # 0670219425, first time
    found = ask(client, [first, second, other])
    assert [found[str(i)]["isNewCall"] for i in (first, second, other)] == ["1", "0", "1"]


def test_ids_may_be_numbers_strings_or_a_single_value_and_unknown_ones_are_absent(env):
    settings, services, clock, client = env
    call_id = play(services, clock, CALLS["in-801"])
    for ids in ([call_id], [str(call_id)], call_id, str(call_id), [call_id, str(call_id), 42, "43"]):
        assert list(ask(client, ids)) == [str(call_id)]
    assert ask(client, [42]) == {}
    assert ask(client, []) == {}


@requires_php
def test_an_answer_with_cyrillic_names_verifies_in_php(env):
    settings, services, clock, client = env
    call_id = play(services, clock, CALLS["in-801"])
    body = {"generalCallID": [call_id, 42]}
    response = client.post("/api/2.0/stats/call-details.json", data=json.dumps(signed_body(body)))
    assert json.loads(response.data)["callDetails"][str(call_id)]["employeeName"] == "Наталия Сторожук"
    assert php_verifies(response.data.decode(), SECRET) == "ok"


def test_a_database_that_cannot_be_opened_is_a_clear_error(tmp_path):
    settings = api_settings(tmp_path)
    client = create_app(settings).test_client()
    os.makedirs(settings.db_path)  # a directory where the database file should be
    status, answer = post(client, "/stats/call-details.json", {"generalCallID": [1]})
    assert (status, answer["code"]) == (200, Code.STORE_UNAVAILABLE)


def test_an_entry_is_made_of_the_columns_call_details_reads_and_no_other(env):
    settings, services, clock, client = env
    ids = [play(services, clock, sessions) for name, sessions in CALLS.items()]
    read = set()

    class Row(dict):  # a stored row that remembers which columns were read
        def __getitem__(self, key):
            read.add(key)
            return super().__getitem__(key)

        def get(self, key, default=None):
            read.add(key)
            return super().get(key, default)

    conn = services.store.conn
    rows = conn.execute(SELECT_CALLS + f"WHERE c.id IN ({','.join('?' * len(ids))})", ids).fetchall()
    found = [(Row(call), seen) for call, seen in map(call_and_seen, rows)]
    names = current_names(Directory(settings.directory_file), None, configured_trunks={"1": "+380443334000"})
    entries(found, names, "10881", clock())
    assert len(found) == len(ids) and read <= set(ENTRY_COLUMNS)


# --- pure parts ------------------------------------------------------------------------

def call(**fields):
    base = {"id": 7, "direction": "in", "started_at": 100.0, "src_number": "+380670219424",
            "external_number": "0670219424", "did": "0443334000", "internal_number": "801", "dst_numbers": ["801"],
            "answered_by": None, "answered_at": None, "ended_at": None, "billsec": None, "disposition": None,
            "recording_file": "", "trunk": ""}
    base.update(fields)
    return base


@pytest.mark.parametrize("fields, now, expected", [
    ({}, 130.0, {"disposition": "ONLINE", "waitsec": 30, "billsec": "0"}),
    ({"answered_at": 104.0, "answered_by": "801"}, 130.0, {"disposition": "ONLINE", "waitsec": 4, "billsec": "26"}),
    ({"answered_at": 104.0, "answered_by": "801", "ended_at": 150.0, "billsec": 44, "disposition": "ANSWER"}, 999.0,
     {"disposition": "ANSWER", "waitsec": 4, "billsec": "44"}),
    ({"ended_at": 125.0, "billsec": 0, "disposition": "NOANSWER"}, 999.0,
     {"disposition": "NOANSWER", "waitsec": 25, "billsec": "0"}),
    ({"ended_at": 125.0}, 999.0, {"disposition": "CANCEL", "waitsec": 25, "billsec": "0"}),
])
def test_times_and_disposition(fields, now, expected):
    entry = details(call(**fields), False, {}, "", now)
    assert {k: entry[k] for k in expected} == expected


def test_an_anonymous_caller_is_never_new():
    assert details(call(external_number="", src_number=""), False, {}, "", 200.0)["isNewCall"] == "0"


def test_an_extension_without_a_directory_entry_has_empty_employee_fields():
    employees = {"801": Employee("Наталия", "n@example.com")}
    entry = details(call(internal_number="999"), False, employees, "", 200.0)
    assert (entry["employeeName"], entry["employeeEmail"]) == ("", "")
    entry = details(call(), False, employees, "", 200.0)
    assert (entry["employeeName"], entry["employeeEmail"]) == ("Наталия", "n@example.com")
    assert Directory("").entries() == {}


def test_directory_file_format():
    entries, problems = parse_directory([
        "\ufeffextension,name,email\n", "\n", "# a comment\n", "801,Наталия Сторожук,n@example.com\n",
        '802,"Петренко, Олег",\n', "803,Only a name\n", "abc,Bad,b@x\n", "804,a,b,c\n", "  805 , Spaced , s@x \n",
    ])
    assert entries == {
        "801": Employee("Наталия Сторожук", "n@example.com"), "802": Employee("Петренко, Олег", ""),
        "803": Employee("Only a name", ""), "805": Employee("Spaced", "s@x"),
    }
    assert problems == ["line 7: expected extension,name,email with a numeric extension",
                        "line 8: expected extension,name,email with a numeric extension"]


def test_the_directory_is_read_again_when_the_file_changes(tmp_path):
    path = tmp_path / "directory.csv"
    path.write_text("801,Old name,\n", encoding="utf-8")
    directory = Directory(str(path))
    assert directory.entries().get("801").name == "Old name"
    path.write_text("801,New name,new@example.com\n802,Second,\n", encoding="utf-8")
    assert directory.entries().get("801") == Employee("New name", "new@example.com")
    assert "802" in directory
    path.unlink()
    assert directory.entries().get("801") is None


def test_a_click_to_call_s_attempts_are_the_numbers_dialled_not_its_own_extension():
    entry = details(call(direction="out", internal_number="801", dst_numbers=["801", "0670219424"], did="",
                         answered_at=110.0, answered_by="0670219424"), False, {}, "", 130.0)
    assert [(d["dstNumber"], d["disposition"], d["billsec"]) for d in entry["dstNumbers"]] == [
        ("0670219424", "ONLINE", "20")]


def test_attempts_of_a_call_nobody_answered_carry_its_disposition():
    entry = details(call(dst_numbers=["600", "801", "802"], internal_number="600", ended_at=125.0, billsec=0,
                         disposition="VM-SUCCESS"), False, {"801": Employee("Наталия", "n@example.com")}, "", 999.0)
    assert [(d["dstNumber"], d["disposition"], d["waitsec"], d["employeeName"]) for d in entry["dstNumbers"]] == [
        ("600", "VM-SUCCESS", 25, ""), ("801", "VM-SUCCESS", 25, "Наталия"), ("802", "VM-SUCCESS", 25, "")]
