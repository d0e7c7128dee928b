"""The CRM stand-ins take a request only whole: a client that dies between the headers and
the end of the body (a SIGKILLed worker) leaves nothing a web server would pass on, so the
fault tests do not count a truncated event as one the CRM acted on."""

import socket

from support.faults import FaultyCrm

from clinica_asterisk.devtools.crm_sink import CrmSink

WHOLE = b"requestType=hangupTheCall&generalCallID=1796004654009"


def post_and_die(url_port: int, body: bytes, sent: int) -> None:
    with socket.create_connection(("127.0.0.1", url_port), timeout=5) as conn:
        conn.sendall(b"POST /api/Binotel/Push HTTP/1.1\r\nHost: crm\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:sent])
        if sent == len(body):
            conn.recv(1024)  # the answer: the request was taken


def test_the_crm_sink_takes_a_whole_request_only():
    sink = CrmSink().start()
    try:
        port = sink.server_address[1]
        post_and_die(port, WHOLE, 20)
        post_and_die(port, WHOLE, len(WHOLE))
        assert [p["generalCallID"] for p in sink.pushes()] == ["1796004654009"]
    finally:
        sink.stop()


def test_the_faulty_crm_takes_a_whole_request_only():
    crm = FaultyCrm("ok")
    try:
        port = int(crm.url.split(":")[2].split("/")[0])
        post_and_die(port, WHOLE, 20)
        post_and_die(port, WHOLE, len(WHOLE))
        assert list(crm.accepted()) == [("1796004654009", "hangupTheCall")]
    finally:
        crm.close()
