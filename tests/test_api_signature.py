"""Signatures: requests signed by real PHP are accepted, answers verify the PHP client's way,
and nothing else gets through."""

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support.api import KEY, OTHER_KEY, OTHER_SECRET, SECRET, api_settings, php, php_verifies, post, requires_php

from clinica_asterisk.api import php_json, signature
from clinica_asterisk.api.app import answer_text, create_app, signed_answer_text, signed_response


@pytest.fixture
def client(tmp_path):
    return create_app(api_settings(tmp_path)).test_client()


def php_vectors():
    return [json.loads(line) for line in php("vectors", KEY, SECRET).splitlines()]


@requires_php
def test_every_request_signed_by_php_is_accepted_and_every_answer_verifies_in_php(client):
    vectors = {v["name"]: v for v in php_vectors()}
    assert set(vectors) >= {"seed", "slash-and-cyrillic", "nested", "numbers-vs-strings", "empty-containers",
                            "numeric-keys", "astral-and-controls", "list-shaped"}
    methods = {"call-record": "stats/call-record", "ext-to-phone": "calls/ext-to-phone"}
    expected = {
        "call-record": {"status": "error", "code": 150, "message": "no such call"},
        "ext-to-phone": {"status": "error", "code": 160, "message": "click-to-call is not configured on the PBX"},
        "list-shaped": {"status": "error", "code": 130, "message": "missing parameter: generalCallID"},
    }
    for name, vector in vectors.items():
        path = f"/api/2.0/{methods.get(name, 'stats/call-details')}.json"
        response = client.post(path, data=vector["body"], content_type="application/json")
        answer = json.loads(response.data)
        assert response.status_code == 200
        assert {k: v for k, v in answer.items() if k != "signature"} == \
            expected.get(name, {"status": "success", "callDetails": {}}), name
        assert php_verifies(response.data.decode()) == "ok", name


@requires_php
def test_the_text_signed_is_php_s_for_every_request_made_of_php_arrays():
    for vector in php_vectors():
        body = php_json.decode(vector["body"])
        if vector["name"] == "empty-containers":
            # A PHP object ({}) in the request: PHP signed "{}", which only the lenient
            # object-keeping encoding reproduces.
            assert signature.signed_text(signature.signed_params(body)) != vector["signed"]
            assert vector["signed"] in signature.accepted_texts(signature.signed_params(body))
        else:
            assert signature.signed_text(signature.signed_params(body)) == vector["signed"], vector["name"]
        assert signature.verify(SECRET, body, body["signature"])


@requires_php
def test_a_request_changed_after_signing_is_refused(client):
    seed = next(v for v in php_vectors() if v["name"] == "seed")
    as_string = seed["body"].replace("[744924436]", '["744924436"]')
    other_id = seed["body"].replace("[744924436]", "[744924437]")
    for body in (as_string, other_id):
        response = client.post("/stats/call-details.json", data=body)
        assert json.loads(response.data)["code"] == 120
        assert php_verifies(response.data.decode()) == "ok"


@requires_php
@pytest.mark.parametrize("answer", [
    {"status": "success", "callDetails": {}},
    {"status": "success", "callDetails": {"744924436": {"employeeName": "Наталия Сторожук", "dstNumbers": [],
                                                        "waitsec": 4, "customer": {}}}},
    {"status": "success", "url": "https://pbx.example/recording/1.mp3?Expires=1&Signature=a-b_c"},
    {"status": "error", "code": 120, "message": "quote \" backslash \\ del \x7f emoji 😀 nul \x00"},
    {"status": "success", "callDetails": {"1": {"a": 1}, "0": {"b": 2}}},
])
def test_answers_verify_the_way_the_php_client_checks_them(answer):
    text = signed_response(answer, SECRET).get_data(as_text=True)
    assert php_verifies(text) == "ok"
    assert php_verifies(text, "wrong secret").startswith("mismatch")


_members = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                        | st.sampled_from(["/", "\x7f", "Ж😀", '"']) | st.text(max_size=6),
                        lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.sampled_from(["0", "1", "a/b", "\x7f"]) | st.text(max_size=3), inner,
                                          max_size=3), max_leaves=15)


@settings(max_examples=300, deadline=None)
@example({"1": "b", "0": "a"})
@example({"status": "success", "callDetails": {}})
@given(st.dictionaries(st.sampled_from(["status", "callDetails", "key", "signature", "0", "1", "\x7f", "a/b"])
                       | st.text(max_size=4), _members, max_size=4))
def test_an_answer_written_once_for_text_and_signature_is_the_answer_signed(answer):
    body = dict(answer)
    body["signature"] = signature.sign(SECRET, answer)
    assert signed_answer_text(answer, SECRET) == answer_text(body)


def test_an_empty_call_map_is_sent_as_an_object_and_signed_as_php_reencodes_it():
    answer = {"status": "success", "callDetails": {}}
    assert answer_text(answer) == '{"status":"success","callDetails":{}}'
    assert signature.sign(SECRET, answer) == signature.digest(SECRET, '{"callDetails":[],"status":"success"}')


@pytest.mark.parametrize("encode", [
    lambda p: json.dumps(p, separators=(",", ":"), ensure_ascii=False),  # nothing escaped
    lambda p: json.dumps(p, separators=(",", ":")),                      # no \/
    lambda p: json.dumps(p, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/"),
])
def test_crms_not_written_in_php_may_leave_slashes_and_unicode_unescaped(encode):
    params = {"comment": "Врач / тест", "generalCallID": ["1"]}
    body = dict(params, key=KEY, signature=signature.digest(SECRET, encode(params)))
    assert signature.verify(SECRET, body, body["signature"])


def test_signature_case_does_not_matter_but_everything_else_does():
    params = {"generalCallID": [1]}
    good = signature.sign(SECRET, params)
    assert signature.verify(SECRET, params, good.upper())
    for bad in (good[:-1], good + "0", "z" * 32, "", None, 12, [good], signature.sign(OTHER_SECRET, params)):
        assert not signature.verify(SECRET, params, bad)


def test_key_and_signature_are_not_signed_but_every_other_field_is():
    params = {"generalCallID": [1], "extra": "x"}
    sig = signature.sign(SECRET, params)
    assert signature.verify(SECRET, dict(params, key="anything", signature="ignored"), sig)
    assert not signature.verify(SECRET, {"generalCallID": [1]}, sig)


def test_each_key_has_its_own_secret(client):
    status, answer = post(client, "/stats/call-details", {"generalCallID": [1]}, key=OTHER_KEY, secret=OTHER_SECRET)
    assert answer["status"] == "success"
    status, answer = post(client, "/stats/call-details", {"generalCallID": [1]}, key=OTHER_KEY, secret=SECRET)
    assert answer["code"] == 120
    # The error is signed with the secret of the key that asked.
    assert answer["signature"] == signature.sign(OTHER_SECRET, answer)
