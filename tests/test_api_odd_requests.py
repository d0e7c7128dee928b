"""Requests a CRM does not make, over real HTTP: OPTIONS on a method, odd Range headers on
a recording link, a link for an id beyond 64 bits with a valid signature.  Each gets a
clear, documented answer, never a 500."""

import http.client
import json
import os
import time

import pytest
from support.api import api_settings, running_server

from clinica_asterisk.api.app import build_context
from clinica_asterisk.api.recordings import LinkSigner, load_link_key
from clinica_asterisk.api.signature import sign
from clinica_asterisk.store.database import Store

AUDIO = b"RIFF" + bytes(range(256)) * 40
STARTED = time.time() - 3600


@pytest.fixture
def api(tmp_path):
    settings = api_settings(tmp_path)
    store = Store(settings.db_path)
    name = "in-0443334000-0670219424-20261126-174453-1.wav"
    folder = os.path.join(settings.recordings_dir, time.strftime("%Y/%m/%d", time.localtime(STARTED)))
    os.makedirs(folder)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(AUDIO)
    with store.transaction():
        call_id = store.insert_call({"direction": "in", "started_at": STARTED, "ended_at": STARTED + 60,
                                     "recording_file": name})
    signer = LinkSigner(load_link_key(settings.data_dir), settings.record_link_ttl_s)
    with running_server(settings, build_context(settings)) as server:
        yield server, signer, call_id


def request(server, method, path, headers=None, body=None):
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def recording(server, signer, call_id, headers=None):
    return request(server, "GET", f"/recording/{call_id}.wav?{signer.query(call_id, 'wav')}", headers)


@pytest.mark.parametrize("path", ["/api/2.0/stats/call-details.json", "/stats/call-record",
                                  "/calls/ext-to-phone.json"])
def test_options_on_a_method_is_405_with_a_signed_error(api, path):
    server, _, _ = api
    status, headers, body = request(server, "OPTIONS", path)
    assert status == 405
    answer = json.loads(body)
    assert (answer["status"], answer["code"]) == ("error", 103)
    assert answer["signature"] == sign(server.settings.api_keys["701151-a3a9ca8"], answer)


def test_options_on_a_recording_link_is_405(api):
    server, signer, call_id = api
    status, _, _ = request(server, "OPTIONS", f"/recording/{call_id}.wav?{signer.query(call_id, 'wav')}")
    assert status == 405


@pytest.mark.parametrize("range_header", [
    "bytes=abc",
    "bytes=5-2",
    "bytes=-",
    "items=0-9",
    "bytes=0-9,20-29",
    ",".join(["bytes=0-0"] + [f"{n}-{n}" for n in range(1, 200)]),
    "bytes=0x10-0x20",
    "bytes=" + "9" * 400 + "-",
])
def test_a_malformed_or_many_part_range_is_ignored(api, range_header):
    server, signer, call_id = api
    status, headers, body = recording(server, signer, call_id, {"Range": range_header})
    assert (status, body) == (200, AUDIO)


def test_a_header_holding_a_nul_is_a_bad_request(api):
    server, signer, call_id = api
    status, _, _ = recording(server, signer, call_id, {"Range": "bytes=0-9\x00"})
    assert status == 400


def test_a_single_range_is_served_and_one_beyond_the_end_is_416(api):
    server, signer, call_id = api
    status, headers, body = recording(server, signer, call_id, {"Range": "bytes=4-13"})
    assert (status, body, headers["Content-Range"]) == (206, AUDIO[4:14], f"bytes 4-13/{len(AUDIO)}")
    status, headers, _ = recording(server, signer, call_id, {"Range": f"bytes={len(AUDIO) + 10}-"})
    assert status == 416


@pytest.mark.parametrize("call_id", [9999999999999999999, 2 ** 63, 0])
def test_a_validly_signed_link_for_an_impossible_id_is_404(api, call_id):
    server, signer, _ = api
    status, _, body = recording(server, signer, call_id)
    assert status == 404 and body == b"no such recording\n"
