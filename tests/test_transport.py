"""The one way of pushing, for hooks and worker alike: kept-alive connections on sender
threads that outlive each attempt, and still a hard time limit per attempt.  (Redirects:
test_push_redirects.py.)"""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clinica_asterisk.delivery.sender import PushSender
from clinica_asterisk.delivery.transport import HttpAnswer, HttpTransport

PAYLOAD = {"requestType": "receivedTheCall", "generalCallID": "42", "externalNumber": "0670219424"}
# Every kind of character a form or JSON body must carry intact.
FIELDS = {"didNumber": "0443334000", "externalNumber": "+380670219424", "internalNumber": "801",
          "generalCallID": "1795715093000", "callType": "0", "companyID": "3041",
          "requestType": "receivedTheCall", "note": "Клієнт & co = 100%"}


class _Recording(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.peers.append(self.client_address[1])
        self.send_response(200)
        self.send_header("Content-Length", "0")
        if self.server.close_after_answer == "header":
            self.send_header("Connection", "close")
        self.end_headers()
        if self.server.close_after_answer:
            self.close_connection = True  # "silent": close without saying so


class RecordingCrm(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, close_after_answer=""):
        super().__init__(("127.0.0.1", 0), _Recording)
        self.peers = []
        self.close_after_answer = close_after_answer
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/api/Binotel/Push"

    def stop(self):
        self.shutdown()
        self.server_close()


@pytest.mark.parametrize("push_format", ["form", "json"])
def test_the_transport_delivers_every_field_intact(push_format, crm):
    sender = PushSender(crm.url, push_format, HttpTransport())
    attempt = sender.post(FIELDS, 5)
    assert attempt.ok and attempt.detail == "HTTP 200"
    assert crm.pushes() == [FIELDS]
    sender.close()


def test_one_sender_keeps_one_connection_to_the_crm():
    crm = RecordingCrm()
    sender = PushSender(crm.url, "form", HttpTransport())
    try:
        assert all(sender.post(PAYLOAD, 5).ok for _ in range(5))
        assert len(set(crm.peers)) == 1
    finally:
        sender.close()
        crm.stop()


@pytest.mark.parametrize("how", ["header", "silent"])
def test_a_connection_the_crm_closed_is_not_reused(how):
    crm = RecordingCrm(close_after_answer=how)
    sender = PushSender(crm.url, "form", HttpTransport())
    try:
        assert [sender.post(PAYLOAD, 5).ok for _ in range(3)] == [True] * 3
        assert len(set(crm.peers)) == 3
    finally:
        sender.close()
        crm.stop()


def test_error_status_and_closed_port_are_failed_attempts(failing_crm, closed_port_url):
    assert PushSender(failing_crm.url, "form", HttpTransport()).post(PAYLOAD, 5).detail == "HTTP 500"
    refused = PushSender(closed_port_url, "form", HttpTransport()).post(PAYLOAD, 5)
    assert not refused.ok and "Connection" in refused.detail


# The worker waits for the whole attempt (on its own thread); a hook stops waiting at its
# deadline (the attempt runs on a sender thread and may go on).
@pytest.mark.parametrize("wait_s", [None, 0.29])
def test_a_crm_that_never_answers_costs_the_limit_and_the_next_push_gets_through(hanging_crm, crm, wait_s):
    sender = PushSender(hanging_crm.url, "form", HttpTransport())
    attempt = sender.post(PAYLOAD, 0.3, wait_s)
    assert not attempt.ok  # the socket's timeout or the wait's, whichever comes first
    assert ("no answer within 0.3 s" in attempt.detail or "timed out" in attempt.detail
            or (wait_s and attempt.in_flight))
    sender.url = crm.url
    assert sender.post(PAYLOAD, 5).ok  # on a new connection: the first was cut, or is still stuck
    sender.close()


class ThreadRecordingTransport:
    def __init__(self):
        self.threads = []

    def post(self, url, body, content_type, timeout_s, cutoff=None):
        self.threads.append(threading.current_thread())
        return HttpAnswer(200)


def test_attempts_reuse_an_idle_sender_thread_and_close_ends_it():
    transport = ThreadRecordingTransport()
    sender = PushSender("http://127.0.0.1:9/", "form", transport)
    assert all(sender.post(PAYLOAD, 5, wait_s=4.9).ok for _ in range(5))
    assert len(set(transport.threads)) == 1 and transport.threads[0] is not threading.current_thread()
    sender.close()
    transport.threads[0].join(5)
    assert not transport.threads[0].is_alive()


def test_a_caller_that_waits_for_the_whole_attempt_sends_on_its_own_thread():
    transport = ThreadRecordingTransport()
    sender = PushSender("http://127.0.0.1:9/", "form", transport)
    assert all(sender.post(PAYLOAD, 5).ok for _ in range(3))
    assert transport.threads == [threading.current_thread()] * 3
    assert sender.wait_idle(0) == 0  # its attempts are counted as ended


def test_no_time_left_means_no_attempt():
    transport = ThreadRecordingTransport()
    assert PushSender("http://127.0.0.1:9/", "form", transport).post(PAYLOAD, 0).detail == "no time left to send"
    assert transport.threads == []


def test_credentials_in_the_url_become_basic_auth():
    seen = []

    class Auth(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Auth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://clinic:s%40cret@127.0.0.1:{server.server_address[1]}/push"
        assert PushSender(url, "form", HttpTransport()).post(PAYLOAD, 5).ok
        assert seen == ["Basic Y2xpbmljOnNAY3JldA=="]
    finally:
        server.shutdown()
        server.server_close()


def test_connections_to_the_crm_send_without_delay(crm):
    """Headers and body are two writes: with Nagle's algorithm the body could wait for the
    CRM's delayed acknowledgement of the headers (40 ms a push on Linux)."""
    import socket

    transport = HttpTransport()
    assert transport.post(crm.url, b"a=1", "application/x-www-form-urlencoded", 5).status == 200
    connection = transport._local.held[1]
    assert connection.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    transport.release()
