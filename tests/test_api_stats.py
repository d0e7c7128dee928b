"""The stats methods that list calls, hangup-call and list-of-employees, over a store written
by the real hooks from the recorded FreePBX calls: Binotel's answer shape (JSON Schema, key
order, real PHP reading it as Binotel's samples do), the calls each selects, and Binotel's
kind of error for a period too long or an answer too large."""

import json

import pytest
from support.api import (CALLS, SECRET, T0, Clock, api_settings, php_reads, php_verifies, play, post, requires_php,
                         signed_body)
from support.binotel_shapes import check, check_call_details
from support.fake_ami import FakeAmi, header

from clinica_asterisk.api.app import build_context, create_app
from clinica_asterisk.api.errors import Code
from clinica_asterisk.api.stats import DAY_S, MAX_CALLS, day_bounds, number_forms
from clinica_asterisk.delivery.sender import PushSender
from clinica_asterisk.hooks.stages import HookServices
from clinica_asterisk.store.database import Store

DIRECTORY = """extension,name,email
801,Наталия Сторожук,nataliiastorozhuk@medakadem.com
802,"Петренко, Олег",oleg@clinic.example
904,Front desk,
"""


class Env:
    def __init__(self, tmp_path, crm_url, ami_port=None, **overrides):
        (tmp_path / "directory.csv").write_text(DIRECTORY, encoding="utf-8")
        values = dict(crm_push_url=crm_url, company_id="10881", directory_file=str(tmp_path / "directory.csv"),
                      trunk_numbers="1:0443334000")
        if ami_port is not None:
            values.update(ami_user="clinica", ami_secret="ami-secret", ami_port=ami_port, ami_timeout_ms=300)
        values.update(overrides)
        self.settings = api_settings(tmp_path, **values)
        self.clock = Clock(T0)
        self.store = Store(self.settings.db_path, clock=self.clock)
        self.services = HookServices(self.settings, self.store, PushSender(crm_url), "pbx1", clock=self.clock)
        self.client = create_app(self.settings, build_context(self.settings, clock=self.clock)).test_client()

    def play(self, name, without_hangup=False):
        sessions = [s for s in CALLS[name] if not (without_hangup and s.extra["hook"] == "hangup")]
        return play(self.services, self.clock, sessions)

    def raw(self, method, params):
        response = self.client.post(f"/api/2.0/{method}.json", data=json.dumps(signed_body(params)),
                                    content_type="application/json")
        assert response.status_code == 200
        return response.data.decode()

    def ask(self, method, params=None):
        """The answer of a stats method; its shape checked."""
        status, answer = post(self.client, f"/api/2.0/{method}.json", params or {})
        assert status == 200
        if answer["status"] == "success":
            check_call_details(answer)
        else:
            check(answer, "ErrorAnswer")
        return answer

    def ids(self, method, params=None):
        answer = self.ask(method, params)
        assert answer["status"] == "success", answer
        return [int(i) for i in answer["callDetails"]]

    def error(self, method, params=None):
        answer = self.ask(method, params)
        assert answer["status"] == "error", answer
        return answer["code"], answer["message"]


@pytest.fixture
def env(tmp_path, crm):
    return Env(tmp_path, crm.url)


@pytest.fixture
def ami():
    fake = FakeAmi().start()
    yield fake
    fake.stop()


def linkedid_of(name):
    return CALLS[name][0].variables["${CHANNEL(linkedid)}"]


# --- by period, since, per day, per extension ---------------------------------------------

def test_incoming_and_outgoing_calls_for_a_period_are_chosen_by_direction_and_start(env):
    in_801, out_answer, in_group = env.play("in-801"), env.play("out-answer"), env.play("in-group")
    period = {"startTime": int(T0), "stopTime": int(env.clock.now)}
    assert env.ids("stats/incoming-calls-for-period", period) == [in_801, in_group]
    assert env.ids("stats/outgoing-calls-for-period", period) == [out_answer]
    assert env.ids("stats/list-of-calls-for-period", period) == [in_801, out_answer, in_group]
    started = int(env.store.call(out_answer)["started_at"])
    # Both ends are included, as in Binotel's samples (00:00:00 to 23:59:59).
    assert env.ids("stats/outgoing-calls-for-period", {"startTime": started, "stopTime": started}) == [out_answer]
    assert env.ids("stats/outgoing-calls-for-period", {"startTime": str(started + 1),
                                                       "stopTime": str(started + 100)}) == []


def test_calls_since_a_moment_up_to_now(env):
    first = env.play("in-801")
    middle = env.clock.now
    second, third = env.play("in-miss"), env.play("out-busy")
    assert env.ids("stats/all-incoming-calls-since", {"timestamp": int(T0)}) == [first, second]
    assert env.ids("stats/all-incoming-calls-since", {"timestamp": int(middle)}) == [second]
    assert env.ids("stats/all-outgoing-calls-since", {"timestamp": str(int(middle))}) == [third]


def test_calls_per_day_take_the_pbx_s_local_day(env):
    today = env.play("in-801")
    start, stop = day_bounds(env.clock.now)
    env.clock.now = stop + 3600  # the next day
    tomorrow = env.play("out-answer")
    assert env.ids("stats/list-of-calls-per-day", {"dayInTimestamp": int(start) + 5}) == [today]
    assert env.ids("stats/list-of-calls-per-day", {"dayInTimestamp": int(stop)}) == [tomorrow]
    assert env.ids("stats/list-of-calls-per-day") == [tomorrow]  # no dayInTimestamp: today


def test_calls_by_internal_number_are_those_the_extension_rang_for_took_or_made(env):
    in_801, in_group, out_answer, in_busy = (env.play(n) for n in ("in-801", "in-group", "out-answer", "in-busy"))
    period = {"startTime": int(T0), "stopTime": int(env.clock.now)}
    by = {n: env.ids("stats/list-of-calls-by-internal-number-for-period", dict(period, internalNumber=n))
          for n in ("801", "802", "600", "904", "804", 805)}
    assert by == {"801": [in_801, in_group],  # 801 rang in the group call too, unanswered
                  "802": [in_group], "600": [in_group], "904": [out_answer], "804": [in_busy], 805: []}


def test_a_transferred_call_belongs_to_everyone_who_had_it(env):
    call_id = env.play("in-801")
    with env.store.transaction():
        env.store.update_call(call_id, {"transferred_to": "805", "transfers": 1, "dst_numbers": ["801", "805"],
                                        "disposition": "TRANSFER"})
    period = {"startTime": int(T0), "stopTime": int(env.clock.now)}
    for extension in ("801", "805"):
        assert env.ids("stats/list-of-calls-by-internal-number-for-period",
                       dict(period, internalNumber=extension)) == [call_id]
    entry = env.ask("stats/call-details", {"generalCallID": [call_id]})["callDetails"][str(call_id)]
    assert (entry["internalNumber"], entry["disposition"]) == ("805", "TRANSFER")
    assert [(d["dstNumber"], d["disposition"], d["billsec"]) for d in entry["dstNumbers"]] == [
        ("801", "TRANSFER", "0"), ("805", "ANSWER", "4")]


@pytest.mark.parametrize("method, days", [
    ("stats/incoming-calls-for-period", 31), ("stats/outgoing-calls-for-period", 31),
    ("stats/list-of-calls-for-period", 1), ("stats/list-of-calls-by-internal-number-for-period", 7),
])
def test_a_period_longer_than_binotel_allows_is_binotel_s_kind_of_error(env, method, days):
    period = {"startTime": int(T0), "stopTime": int(T0) + days * DAY_S, "internalNumber": "801"}
    assert env.ids(method, period) == []
    code, message = env.error(method, dict(period, stopTime=period["stopTime"] + 1))
    assert code == Code.PERIOD_TOO_LONG and "shorter" in message


def test_a_since_too_far_back_is_a_period_too_long(env):
    env.clock.now = T0 + 40 * DAY_S
    assert env.error("stats/all-incoming-calls-since", {"timestamp": int(T0)})[0] == Code.PERIOD_TOO_LONG
    assert env.ids("stats/all-incoming-calls-since", {"timestamp": int(env.clock.now) - 31 * DAY_S}) == []


@pytest.mark.parametrize("params, code", [
    ({}, Code.MISSING_PARAMETER),
    ({"startTime": 1795738000}, Code.MISSING_PARAMETER),
    ({"startTime": 1795738000, "stopTime": 1795737999}, Code.INVALID_PARAMETER),
    ({"startTime": "yesterday", "stopTime": 1795738000}, Code.INVALID_PARAMETER),
    ({"startTime": 1795738000.5, "stopTime": 1795738001}, Code.INVALID_PARAMETER),
    ({"startTime": -1, "stopTime": 1795738001}, Code.INVALID_PARAMETER),
    ({"startTime": True, "stopTime": 1795738001}, Code.INVALID_PARAMETER),
    ({"startTime": [1795738000], "stopTime": 1795738001}, Code.INVALID_PARAMETER),
    ({"startTime": 10 ** 12, "stopTime": 10 ** 12}, Code.INVALID_PARAMETER),
])
def test_bad_periods_are_clear_errors(env, params, code):
    assert env.error("stats/incoming-calls-for-period", params)[0] == code


def test_an_answer_larger_than_binotel_s_is_an_error_not_a_cut_list(env):
    with env.store.transaction():
        for n in range(MAX_CALLS + 1):
            env.store.insert_call({"id": 10 ** 12 + n, "direction": "in", "started_at": T0 + n,
                                   "external_number": f"067{n:07d}", "ended_at": T0 + n + 5, "billsec": 0,
                                   "disposition": "CANCEL"})
    period = {"startTime": int(T0), "stopTime": int(T0) + MAX_CALLS - 1}
    assert len(env.ids("stats/incoming-calls-for-period", period)) == MAX_CALLS
    code, message = env.error("stats/incoming-calls-for-period", dict(period, stopTime=period["stopTime"] + 1))
    assert (code, message) == (Code.TOO_MANY_CALLS, f"more than {MAX_CALLS} calls: ask for a shorter period")


# --- online, lost, history ---------------------------------------------------------------

def test_online_calls_without_an_ami_user_are_the_calls_not_ended(env):
    up = env.play("in-801", without_hangup=True)
    env.play("in-group")
    answer = env.ask("stats/online-calls")
    assert list(answer["callDetails"]) == [str(up)]
    assert answer["callDetails"][str(up)]["disposition"] == "ONLINE"


def test_online_calls_are_checked_against_asterisk_s_channels(tmp_path, crm, ami):
    env = Env(tmp_path, crm.url, ami_port=ami.port)
    up = env.play("in-801", without_hangup=True)
    env.play("in-group", without_hangup=True)  # its channels are gone
    env.clock.now += 60  # both older than the reconciler's grace
    ami.channels = [("PJSIP/pstn1-00000001", linkedid_of("in-801"), linkedid_of("in-801")),
                    ("PJSIP/801-00000002", "1795715101.9", linkedid_of("in-801"))]
    assert env.ids("stats/online-calls") == [up]  # Asterisk has no channel of the other one
    assert len(ami.listings()) == 1


def test_online_calls_answer_from_the_store_when_asterisk_does_not(tmp_path, crm):
    fake = FakeAmi("silent").start()
    try:
        env = Env(tmp_path, crm.url, ami_port=fake.port)
        up = env.play("in-801", without_hangup=True)
        assert env.ids("stats/online-calls") == [up]
    finally:
        fake.stop()


def test_lost_calls_today_are_unanswered_incoming_calls_nobody_reached_since(env):
    missed, busy, answered = env.play("in-miss"), env.play("in-busy"), env.play("in-801")
    env.play("out-answer")  # 0670219424 again: answered, but that client's call was answered anyway
    assert env.ids("stats/list-of-lost-calls-today") == [missed, busy]
    with env.store.transaction():  # the clinic calls 0670219428 back and the client answers
        env.store.insert_call({"direction": "out", "started_at": env.clock.now + 10, "external_number": "0670219428",
                               "answered_at": env.clock.now + 15, "answered_by": "0670219428"})
    env.clock.now += 60
    assert env.ids("stats/list-of-lost-calls-today") == [missed]
    start, stop = day_bounds(env.clock.now)
    env.clock.now = stop + 60
    assert env.ids("stats/list-of-lost-calls-today") == []  # a new day
    assert answered not in env.ids("stats/incoming-calls-for-period",
                                   {"startTime": int(T0), "stopTime": int(env.clock.now)})[:2]


@pytest.mark.parametrize("number", ["0670219424", "+380670219424", "380670219424", "+38 (067) 021-94-24"])
def test_history_by_number_finds_a_client_in_any_format_the_crm_sends(env, number):
    in_801, out_answer, in_group = env.play("in-801"), env.play("out-answer"), env.play("in-group")
    assert env.ids("stats/history-by-number", {"number": number}) == [in_801, out_answer]
    assert env.ids("stats/history-by-number", {"number": [number, "0670219425"]}) == [in_801, out_answer, in_group]
    # Binotel's official samples call it history-by-external-number, with externalNumbers.
    assert env.ids("stats/history-by-external-number", {"externalNumbers": [number]}) == [in_801, out_answer]


@pytest.mark.parametrize("params", [{}, {"number": []}, {"number": "12"}, {"number": "067-ABC"}, {"number": {}},
                                    {"number": ["0670219424"] * 101}, {"number": None}])
def test_bad_numbers_are_clear_errors(env, params):
    assert env.error("stats/history-by-number", params)[0] in (Code.MISSING_PARAMETER, Code.INVALID_PARAMETER)


def test_a_store_kept_raw_is_searched_under_every_spelling():
    assert set(number_forms(["0670219424"], "raw", "380", "0")) == {
        "0670219424", "+380670219424", "380670219424"}


# --- Binotel's shape, as real PHP reads it -----------------------------------------------

@requires_php
def test_php_reads_the_answers_as_binotel_s_samples_do(env):
    ids = {name: env.play(name) for name in ("in-group", "out-answer", "in-miss")}
    text = env.raw("stats/list-of-calls-for-period", {"startTime": int(T0), "stopTime": int(env.clock.now)})
    assert php_verifies(text, SECRET) == "ok"
    read = php_reads(text)
    assert read["count"] == 3
    by_id = {int(c["id"]): c for c in read["calls"]}
    group, out, miss = (by_id[ids[n]] for n in ("in-group", "out-answer", "in-miss"))
    assert group["recording"].endswith("_0670219425_incoming")
    assert out["recording"].endswith("_0670219424_outgoing")  # $call['dstNumbers'][0]['dstNumber']
    assert (group["disposition"], group["attempts"]) == ("ANSWER", "600:ANSWER:3,802:ANSWER:3,801:NOANSWER:0")
    assert (miss["disposition"], miss["seconds"], miss["customer"]) == ("CANCEL", 31, "")  # rang 31 s
    assert (out["trunk"], out["company"], group["employee"]) == ("0443334000", "10881", "Петренко, Олег")


@requires_php
def test_php_reads_errors_and_empty_answers_as_binotel_s_samples_do(env):
    assert php_reads(env.raw("stats/online-calls", {})) == {"count": 0, "calls": []}
    text = env.raw("stats/incoming-calls-for-period", {"startTime": 1, "stopTime": 2 * 31 * DAY_S})
    assert php_verifies(text, SECRET) == "ok"
    assert php_reads(text) == {"error": "REST API error 132: the period is longer than 31 days: ask for a shorter one"}


# --- hangup-call ----------------------------------------------------------------------------

def test_hangup_call_hangs_up_the_channel_that_started_the_call(tmp_path, crm, ami):
    env = Env(tmp_path, crm.url, ami_port=ami.port)
    call_id = env.play("in-801", without_hangup=True)
    linkedid = linkedid_of("in-801")
    ami.channels = [("PJSIP/pstn1-00000001", linkedid, linkedid), ("PJSIP/801-00000002", "1795715101.9", linkedid),
                    ("PJSIP/802-00000003", "1795715199.1", "1795715199.1")]
    answer = post(env.client, "/api/2.0/calls/hangup-call.json", {"generalCallID": str(call_id)})[1]
    check(answer, "SuccessAnswer")
    assert [header(h, "Channel") for h in ami.hangups()] == ["PJSIP/pstn1-00000001"]
    assert [c[0] for c in ami.channels] == ["PJSIP/801-00000002", "PJSIP/802-00000003"]


def test_hangup_call_without_the_first_channel_hangs_up_all_of_the_call(tmp_path, crm, ami):
    env = Env(tmp_path, crm.url, ami_port=ami.port)
    call_id = env.play("in-801", without_hangup=True)
    linkedid = linkedid_of("in-801")
    ami.channels = [("PJSIP/805-00000004", "1795715101.11", linkedid), ("PJSIP/801-00000002", "1795715101.9", linkedid)]
    assert post(env.client, "/api/2.0/calls/hangup-call.json", {"generalCallID": call_id})[1]["status"] == "success"
    assert [header(h, "Channel") for h in ami.hangups()] == ["PJSIP/805-00000004", "PJSIP/801-00000002"]


def test_hangup_call_errors(tmp_path, crm, ami):
    env = Env(tmp_path, crm.url, ami_port=ami.port)
    ended, up = env.play("in-801"), env.play("in-group", without_hangup=True)

    def code(params):
        answer = post(env.client, "/api/2.0/calls/hangup-call.json", params)[1]
        check(answer, "ErrorAnswer")
        return answer["code"]

    assert code({"generalCallID": 42}) == Code.NO_SUCH_CALL
    assert code({"generalCallID": ended}) == Code.CALL_NOT_ONLINE
    assert code({"generalCallID": up}) == Code.CALL_NOT_ONLINE  # Asterisk has no channel of it
    assert code({}) == Code.MISSING_PARAMETER
    assert code({"generalCallID": "12x"}) == Code.INVALID_PARAMETER
    assert ami.hangups() == []
    (tmp_path / "off").mkdir()
    off = Env(tmp_path / "off", crm.url)
    assert post(off.client, "/api/2.0/calls/hangup-call.json", {"generalCallID": up})[1]["code"] == \
        Code.CLICK_TO_CALL_OFF


# --- list-of-employees ----------------------------------------------------------------------

def test_list_of_employees_from_the_directory_file(env):
    status, answer = post(env.client, "/api/2.0/settings/list-of-employees.json", {})
    check(answer, "EmployeesAnswer")
    assert list(answer["listOfEmployees"]) == ["801", "802", "904"]
    assert answer["listOfEmployees"]["802"] == {
        "employeeID": "802", "name": "Петренко, Олег", "email": "oleg@clinic.example", "department": "",
        "presenceState": "", "extStatus": {"status": ""}, "endpointData": {"internalNumber": "802",
                                                                         "status": {"status": ""}}}


@requires_php
def test_php_reads_the_employees_as_crms_written_for_binotel_do(env):
    text = env.raw("settings/list-of-employees", {})
    assert php_verifies(text, SECRET) == "ok"
    # PHP's json_decode makes the numeric ids integer keys, as with Binotel's own ids.
    assert php_reads(text)["employees"][0] == [801, "801", "Наталия Сторожук", "nataliiastorozhuk@medakadem.com",
                                               False]


def test_without_any_source_the_list_of_employees_is_empty(tmp_path, crm):
    env = Env(tmp_path, crm.url, directory_file="")
    status, answer = post(env.client, "/api/2.0/settings/list-of-employees.json", {})
    assert answer["listOfEmployees"] == {}


# --- every list is read through an index ---------------------------------------------------

def test_every_list_of_calls_is_read_through_an_index(tmp_path):
    from clinica_asterisk.api import stats

    store = Store(str(tmp_path / "clinica.sqlite3"))
    statements = []
    store.conn.set_trace_callback(statements.append)  # the SQL as run, its values filled in
    stats.by_direction(store.conn, "in", T0, T0 + DAY_S)
    stats.in_period(store.conn, T0, T0 + DAY_S)
    stats.in_day(store.conn, T0, T0 + DAY_S)
    stats.by_extension(store.conn, "801", T0, T0 + DAY_S)
    stats.open_calls(store.conn)
    stats.lost_calls(store.conn, T0, T0 + DAY_S)
    stats.by_numbers(store.conn, ["0670219424", "+380670219424"])
    store.conn.set_trace_callback(None)
    assert len(statements) == 7
    for sql in statements:
        plan = [row[3] for row in store.conn.execute("EXPLAIN QUERY PLAN " + sql)]
        outer = [step for step in plan if " c " in f" {step} " or step.endswith(" c")]
        assert outer and all("USING INDEX calls_" in step or "USING COVERING INDEX calls_" in step
                             for step in outer), (sql, plan)
