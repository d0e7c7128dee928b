"""The real server (waitress on a free loopback port), end to end, with PHP as the CRM."""

import http.client
import json
import os
import socket
import threading
import time

import pytest
from support.api import KEY, SECRET, api_settings, base_url, php, php_verifies, requires_php, running_server, \
    signed_body
from support.fake_ami import FakeAmi

from clinica_asterisk.api.errors import Code
from clinica_asterisk.api.server import ApiServer
from clinica_asterisk.store.database import Store

AUDIO = b"RIFF" + bytes(range(256)) * 64


def raw_post(server, path, body: bytes, headers=None):
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get(url, headers=None):
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, port = hostport.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/" + path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def stored_call(settings, **fields):
    store = Store(settings.db_path)
    with store.transaction():
        call_id = store.insert_call(dict({"direction": "in", "started_at": time.time() - 120}, **fields))
    store.close()
    return call_id


def test_the_server_listens_on_loopback_serves_and_stops(tmp_path):
    settings = api_settings(tmp_path)
    server = ApiServer(settings)
    assert not server.healthy()
    server.start()
    try:
        assert server.healthy()
        assert server.address == settings.api_bind
        body = json.dumps(signed_body({"generalCallID": [1]})).encode()
        status, answer = raw_post(server, "/api/2.0/stats/call-details.json", body)
        assert (status, json.loads(answer)["status"]) == (200, "success")
    finally:
        server.stop()
    assert not server.healthy()
    server.stop()  # twice is harmless
    with pytest.raises(OSError):
        socket.create_connection(settings.api_bind, timeout=1)


def test_default_bind_is_loopback_port_8574(tmp_path):
    from support.settings import make_settings

    assert make_settings(tmp_path).api_bind == ("127.0.0.1", 8574)


def test_a_port_already_taken_fails_at_start(tmp_path):
    settings = api_settings(tmp_path)
    with running_server(settings):
        with pytest.raises(OSError):
            ApiServer(settings).start()


def test_bodies_over_the_limit_are_refused_by_the_app_or_by_waitress(tmp_path):
    settings = api_settings(tmp_path, api_max_body=4096)
    with running_server(settings) as server:
        status, answer = raw_post(server, "/stats/call-details.json", b"{" + b" " * 5000 + b"}")
        assert status == 413 and json.loads(answer)["code"] == Code.BODY_TOO_LARGE
        # Announced far over the limit: waitress answers before reading any of it.
        with socket.create_connection(server.address, timeout=10) as s:
            s.sendall(b"POST /stats/call-details.json HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 5242880\r\n\r\n{")
            assert s.recv(4096).startswith(b"HTTP/1.1 413 ")
        # Chunked bodies are measured too.
        host, port = server.address
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("POST", "/stats/call-details.json", body=iter([b"{", b" " * 5000, b"}"]),
                     encode_chunked=True, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 413
        conn.close()
        # And the server still serves.
        body = json.dumps(signed_body({"generalCallID": [1]})).encode()
        assert json.loads(raw_post(server, "/stats/call-details.json", body)[1])["status"] == "success"


def test_many_requests_at_once_each_get_their_answer(tmp_path):
    settings = api_settings(tmp_path)
    ids = [stored_call(settings, external_number=f"06700000{n:02d}") for n in range(30)]
    answers = {}
    with running_server(settings) as server:
        def ask(call_id):
            body = json.dumps(signed_body({"generalCallID": [call_id]})).encode()
            answers[call_id] = json.loads(raw_post(server, "/api/2.0/stats/call-details.json", body)[1])

        threads = [threading.Thread(target=ask, args=(i,)) for i in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert all(list(answers[i]["callDetails"]) == [str(i)] for i in ids)


def test_a_proxy_on_the_pbx_decides_the_scheme_and_host_of_recording_links(tmp_path):
    settings = api_settings(tmp_path)
    now = time.time()
    folder = os.path.join(settings.recordings_dir, time.strftime("%Y/%m/%d", time.localtime(now - 120)))
    os.makedirs(folder)
    with open(os.path.join(folder, "r.wav"), "wb") as f:
        f.write(AUDIO)
    call_id = stored_call(settings, recording_file="r.wav")
    body = json.dumps(signed_body({"callID": call_id})).encode()
    with running_server(settings) as server:
        status, answer = raw_post(server, "/clinica/stats/call-record.json", body,
                                  {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pbx.example.com"})
    assert json.loads(answer)["url"].startswith(f"https://pbx.example.com/clinica/recording/{call_id}.wav?")


@requires_php
def test_php_client_end_to_end_call_details_recording_and_click_to_call(tmp_path):
    ami = FakeAmi().start()
    settings = api_settings(tmp_path, ami_user="clinica", ami_secret="ami-secret", ami_port=ami.port,
                            company_id="10881")
    now = time.time()
    folder = os.path.join(settings.recordings_dir, time.strftime("%Y/%m/%d", time.localtime(now - 120)))
    os.makedirs(folder)
    with open(os.path.join(folder, "in-1.wav"), "wb") as f:
        f.write(AUDIO)
    call_id = stored_call(settings, external_number="0670219424", internal_number="801", answered_by="801",
                          answered_at=now - 110, ended_at=now - 50, billsec=60, disposition="ANSWER",
                          recording_file="in-1.wav", did="0443334000")
    try:
        with running_server(settings) as server:
            def client(method, params):
                out = php("post", base_url(server), KEY, SECRET, stdin=json.dumps({"method": method, "params": params}))
                return json.loads(out)

            details = client("stats/call-details", {"generalCallID": [str(call_id), "1"]})
            assert (details["http"], details["verified"]) == (200, True)
            entry = details["answer"]["callDetails"][str(call_id)]
            assert (entry["companyID"], entry["disposition"], entry["billsec"], entry["waitsec"]) == \
                ("10881", "ANSWER", "60", 10)

            record = client("stats/call-record", {"callID": str(call_id)})
            assert (record["http"], record["verified"], record["answer"]["status"]) == (200, True, "success")
            status, headers, data = get(record["answer"]["url"], {"Range": "bytes=4-9"})
            assert (status, headers["Content-Type"], headers["Content-Range"], data) == \
                (206, "audio/wav", f"bytes 4-9/{len(AUDIO)}", AUDIO[4:10])

            call = client("calls/ext-to-phone", {"ext_number": "902", "phone_number": "0639798793"})
            assert (call["http"], call["verified"], call["answer"]["status"]) == (200, True, "success")
            (originate,) = ami.originates()
            assert ("Variable", f"__CLINICA_CALLID={call['answer']['generalCallID']}") in originate

            refused = client("stats/call-record", {"callID": "1"})
            assert (refused["http"], refused["verified"], refused["answer"]["code"]) == (200, True, 150)
    finally:
        ami.stop()


@requires_php
def test_malformed_and_unsigned_requests_get_answers_php_can_verify(tmp_path):
    settings = api_settings(tmp_path)
    with running_server(settings) as server:
        for body in (b"{not json", b'{"generalCallID":[1]}', b'{"generalCallID":[1],"key":"x","signature":"y"}'):
            status, answer = raw_post(server, "/api/2.0/stats/call-details.json", body)
            assert status == 200 and json.loads(answer)["status"] == "error"
            assert php_verifies(answer.decode()) == "ok"
