"""Routes and bad input: every answer signed, every error clear, nothing crashes."""

import json
import re
import sqlite3
from pathlib import Path

import pytest
from support.api import KEY, OTHER_KEY, OTHER_SECRET, SECRET, api_settings, post, signed_body

from clinica_asterisk.api import call_details
from clinica_asterisk.api.app import create_app, resolve_method
from clinica_asterisk.api.errors import Code
from clinica_asterisk.api.signature import sign


@pytest.fixture
def settings(tmp_path):
    return api_settings(tmp_path)


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


def answer_of(response):
    answer = json.loads(response.data)
    return answer


def signed_with(answer, secret):
    return answer["signature"] == sign(secret, answer)


@pytest.mark.parametrize("path, method, prefix", [
    ("stats/call-details.json", "stats/call-details", ""),
    ("stats/call-details", "stats/call-details", ""),
    ("api/2.0/stats/call-details.json", "stats/call-details", "api/2.0"),
    ("clinica/api/2.0/stats/call-record", "stats/call-record", "clinica/api/2.0"),
    ("api/2.0/calls/ext-to-phone.json", "calls/ext-to-phone", "api/2.0"),
    ("stats/calls/ext-to-phone.json", "calls/ext-to-phone", ""),
    ("api/2.0/stats/calls/ext-to-phone", "calls/ext-to-phone", "api/2.0"),
    ("api/2.0/xstats/call-details.json", None, ""),
    ("stats/call-details.json/more", None, ""),
    ("stats/call-details.jsonx", None, ""),
    ("", None, ""),
])
def test_methods_are_found_under_any_prefix_with_or_without_json(path, method, prefix):
    assert resolve_method(path) == (method, prefix)


@pytest.mark.parametrize("path", ["/stats/call-details.json", "/stats/call-details", "/api/2.0/stats/call-details.json",
                                  "/some/proxy/prefix/stats/call-details"])
def test_call_details_answers_on_every_spelling(client, path):
    status, answer = post(client, path, {"generalCallID": [1]})
    assert (status, answer["status"]) == (200, "success")


@pytest.mark.parametrize("path", ["/api/2.0/calls/ext-to-phone.json", "/stats/calls/ext-to-phone.json"])
def test_both_spellings_of_click_to_call_reach_it(client, path):
    status, answer = post(client, path, {"ext_number": "902", "phone_number": "0639798793"})
    assert answer["code"] == Code.CLICK_TO_CALL_OFF  # reached the method: no AMI user configured here


def test_no_such_route_is_a_404_with_a_signed_json_error(client):
    response = client.post("/api/2.0/stats/all-calls.json", data="{}")
    assert response.status_code == 404
    answer = answer_of(response)
    assert answer["code"] == Code.NO_SUCH_METHOD and signed_with(answer, SECRET)


@pytest.mark.parametrize("verb", ["get", "put", "delete"])
def test_methods_want_post(client, verb):
    response = getattr(client, verb)("/api/2.0/stats/call-details.json")
    assert response.status_code == 405
    assert answer_of(response)["code"] == Code.METHOD_NOT_ALLOWED


def test_a_body_over_the_limit_is_a_413_without_being_parsed(client, settings):
    body = json.dumps(signed_body({"generalCallID": [1], "pad": "x" * settings.api_max_body}))
    response = client.post("/stats/call-details.json", data=body)
    assert response.status_code == 413
    answer = answer_of(response)
    assert answer["code"] == Code.BODY_TOO_LARGE and signed_with(answer, SECRET)


def test_a_body_just_under_the_limit_is_served(client, settings):
    params = {"generalCallID": [1], "pad": ""}
    overhead = len(json.dumps(signed_body(params)))
    params["pad"] = "x" * (settings.api_max_body - overhead)
    body = json.dumps(signed_body(params))
    assert len(body) == settings.api_max_body
    assert answer_of(client.post("/stats/call-details.json", data=body))["status"] == "success"


@pytest.mark.parametrize("body, code", [
    (b"{bad json", Code.BAD_JSON),
    (b"", Code.BAD_JSON),
    (b"\xff\xfe\x00", Code.BAD_JSON),
    (b"[1,2]", Code.BAD_JSON),
    (b'"a string"', Code.BAD_JSON),
    (b'{"generalCallID":[1],"key":"' + KEY.encode() + b'","signature":"x","n":NaN}', Code.BAD_JSON),
    (b'{"a":"\\ud800"}', Code.BAD_JSON),
    (b"[" * 5000 + b"]" * 5000, Code.BAD_JSON),
    (b'{"generalCallID":[1]}', Code.MISSING_KEY),
    (b'{"generalCallID":[1],"key":"' + KEY.encode() + b'"}', Code.MISSING_KEY),
    (b'{"generalCallID":[1],"key":12,"signature":"00000000000000000000000000000000"}', Code.MISSING_KEY),
    (b'{"generalCallID":[1],"key":"' + KEY.encode() + b'","signature":["x"]}', Code.MISSING_KEY),
    (b'{"generalCallID":[1],"key":"nobody","signature":"00000000000000000000000000000000"}', Code.UNKNOWN_KEY),
    (b'{"generalCallID":[1],"key":"' + KEY.encode() + b'","signature":"00000000000000000000000000000000"}',
     Code.BAD_SIGNATURE),
])
def test_bad_requests_get_a_clear_signed_error(client, body, code):
    response = client.post("/api/2.0/stats/call-details.json", data=body, content_type="application/json")
    assert response.status_code == 200
    answer = answer_of(response)
    assert answer["status"] == "error" and answer["code"] == code and answer["message"]
    # Signed with the secret of the key that asked; when there is none, with the first key's.
    assert signed_with(answer, SECRET)


def test_an_unknown_key_is_not_told_any_secret_but_the_first(client):
    body = json.dumps(signed_body({"generalCallID": [1]}, key="intruder", secret=OTHER_SECRET))
    answer = answer_of(client.post("/stats/call-details.json", data=body))
    assert answer["code"] == Code.UNKNOWN_KEY
    assert signed_with(answer, SECRET) and not signed_with(answer, OTHER_SECRET)


def test_without_configured_keys_every_request_is_refused(tmp_path):
    client = create_app(api_settings(tmp_path, api_keys="")).test_client()
    status, answer = post(client, "/stats/call-details.json", {"generalCallID": [1]})
    assert answer["code"] == Code.NO_KEYS
    assert signed_with(answer, "")


@pytest.mark.parametrize("value", [
    {"a": 1}, [True], True, [1.5], 1.5, "12a", -1, 0, "", [None], "٣", "1" * 20, 2 ** 63, [[1]], ["1 "], "+1",
])
def test_call_ids_of_the_wrong_shape_are_refused(client, value):
    status, answer = post(client, "/stats/call-details.json", {"generalCallID": value})
    assert (status, answer["code"]) == (200, Code.INVALID_PARAMETER)
    assert "generalCallID" in answer["message"]


def test_too_many_ids_at_once_are_refused(client):
    status, answer = post(client, "/stats/call-details.json", {"generalCallID": list(range(1, 502))})
    assert answer["code"] == Code.INVALID_PARAMETER


@pytest.mark.parametrize("path, params, missing", [
    ("/stats/call-details.json", {}, "generalCallID"),
    ("/stats/call-record.json", {"id": "1"}, "callID"),
    ("/calls/ext-to-phone.json", {"phone_number": "0639798793"}, None),
])
def test_missing_parameters_are_named(tmp_path, path, params, missing):
    client = create_app(api_settings(tmp_path, ami_user="clinica", ami_secret="x")).test_client()
    status, answer = post(client, path, params)
    assert answer["code"] == Code.MISSING_PARAMETER
    assert answer["message"] == f"missing parameter: {missing or 'ext_number'}"


def test_a_bug_in_a_method_costs_one_signed_error_and_the_next_request_is_served(client, monkeypatch):
    from clinica_asterisk.api import app as app_module

    def broken(*args):
        raise ZeroDivisionError("bug")

    monkeypatch.setitem(app_module.METHODS, "stats/call-details", broken)
    status, answer = post(client, "/stats/call-details.json", {"generalCallID": [1]})
    assert (status, answer["code"], answer["message"]) == (200, Code.INTERNAL, "internal error")
    monkeypatch.undo()
    status, answer = post(client, "/stats/call-details.json", {"generalCallID": [1]})
    assert answer["status"] == "success"


def test_error_messages_never_echo_the_request(client):
    status, answer = post(client, "/stats/call-details.json", {"generalCallID": "<script>alert(1)</script>"})
    assert "script" not in answer["message"]
    status, answer = post(client, "/stats/call-details.json", {"generalCallID": [1]}, key="<b>who</b>",
                          secret=OTHER_SECRET)
    assert "who" not in json.dumps(answer)


def test_extra_parameters_are_signed_but_otherwise_ignored(client):
    status, answer = post(client, "/stats/call-details.json", {"generalCallID": [1], "companyID": "10881"})
    assert answer["status"] == "success"


def test_the_other_key_works_too(client):
    status, answer = post(client, "/stats/call-details.json", {"generalCallID": [1]}, OTHER_KEY, OTHER_SECRET)
    assert answer["status"] == "success" and signed_with(answer, OTHER_SECRET)


def test_the_error_table_of_the_docs_is_the_one_in_the_code():
    text = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text(encoding="utf-8")
    documented = {int(code): int(status) for code, status in re.findall(r"^\| (\d{3}) \| (\d{3}) \|", text, re.M)}
    statuses = {Code.BODY_TOO_LARGE: 413, Code.NO_SUCH_METHOD: 404, Code.METHOD_NOT_ALLOWED: 405}
    assert documented == {int(code): statuses.get(code, 200) for code in Code}


def test_a_call_store_that_fails_mid_query_is_a_clear_error(client, monkeypatch):
    def locked(*args):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(call_details, "fetch", locked)
    status, answer = post(client, "/stats/call-details.json", {"generalCallID": [1]})
    assert (status, answer["code"]) == (200, Code.STORE_UNAVAILABLE)
