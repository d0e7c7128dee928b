"""``clinica-asterisk serve`` as a real process: what systemd hears from it, SIGTERM with
sessions in flight, SIGHUP, the delivery worker inside it."""

import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.fake_asterisk import FakeCall
from support.fastagi import WAIT_S, GatedCrm, fastagi, status_of

from clinica_asterisk.devtools.crm_sink import CrmSink
from clinica_asterisk.devtools.simulation import ARGS, recorded_calls, with_fresh_ids
from support.net import free_port

CLI = os.path.join(os.path.dirname(sys.executable), "clinica-asterisk")


class Systemd:
    """The notify socket systemd would give the service, and what arrived on it."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(WAIT_S)
        self.messages = []

    def wait_for(self, state: str) -> str:
        """The next message holding ``state`` (e.g. READY=1); fails after WAIT_S."""
        while True:
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                raise AssertionError(f"no {state} from the service; got {self.messages}") from None
            self.messages.append(message)
            if state in message.split("\n"):
                return message

    def close(self):
        self.sock.close()


class Service:
    def __init__(self, tmp_path, env_lines, extra_env=None, args=("--no-api",), preexec_fn=None):
        self.env_file = tmp_path / "service.env"
        self.env_file.write_text("\n".join(env_lines) + "\n")
        self.systemd = Systemd(tmp_path / "notify")
        self.log = tmp_path / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLINICA_", "NOTIFY_", "WATCHDOG_"))}
        env.update(CLINICA_ENV_FILE=str(self.env_file), NOTIFY_SOCKET=self.systemd.path, **(extra_env or {}))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([CLI, "serve", "--bind", "127.0.0.1:0", *args], env=env,
                                         stdout=log, stderr=log, cwd=tmp_path, preexec_fn=preexec_fn)
        ready = self.systemd.wait_for("READY=1")
        status = next(line for line in ready.split("\n") if line.startswith("STATUS="))
        host, port = re.search(r"FastAGI on ([0-9.]+):([0-9]+)", status).groups()
        self.address = (host, int(port))
        api = re.search(r"API on ([0-9.]+):([0-9]+)", status)
        self.api_address = (api.group(1), int(api.group(2))) if api else None
        self.terminated = False

    def signal(self, signum):
        self.terminated = self.terminated or signum == signal.SIGTERM
        self.proc.send_signal(signum)

    def stop(self) -> int:
        if self.proc.poll() is None and not self.terminated:
            self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(WAIT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.systemd.close()

    def logs(self) -> str:
        return self.log.read_text()


@pytest.fixture
def start_service(tmp_path):
    started = []

    def start(env_lines, **kwargs):
        service = Service(tmp_path, [f"CLINICA_DATA_DIR={tmp_path / 'data'}", *env_lines], **kwargs)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def ring(seed):
    return with_fresh_ids(recorded_calls()["in-801"], random.Random(seed))[0]


def test_serve_tells_systemd_it_is_ready_and_feeds_the_watchdog(start_service, crm):
    service = start_service([f"CLINICA_CRM_PUSH_URL={crm.url}"], extra_env={"WATCHDOG_USEC": "200000"})
    service.systemd.wait_for("WATCHDOG=1")
    service.systemd.wait_for("WATCHDOG=1")
    assert status_of(fastagi(service.address, FakeCall(), ring(1), ARGS["ring-in"])) == "SENT"
    service.signal(signal.SIGTERM)
    service.systemd.wait_for("STOPPING=1")
    assert service.stop() == 0
    assert "hook call=" in service.logs() and "outcome=SENT" in service.logs()


def test_sigterm_stops_accepting_and_lets_the_sessions_in_flight_finish(start_service):
    crm = GatedCrm()
    try:
        service = start_service([f"CLINICA_CRM_PUSH_URL={crm.url}", "CLINICA_HOOK_DEADLINE_MS=30000"])
        with ThreadPoolExecutor(3) as asterisk:
            in_flight = [asterisk.submit(fastagi, service.address, FakeCall(), ring(n), ARGS["ring-in"])
                         for n in range(3)]
            crm.wait_for(3)

            service.signal(signal.SIGTERM)
            service.systemd.wait_for("STOPPING=1")
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(service.address, timeout=WAIT_S)
            assert service.proc.poll() is None, "still finishing its sessions"

            crm.open()
            assert [status_of(f.result()) for f in in_flight] == ["SENT"] * 3
        assert service.stop() == 0
        assert len(crm.received) == 3
        assert "3 session(s) in flight" in service.logs()
    finally:
        crm.close()


def test_sighup_reloads_the_configuration_file(start_service, crm, tmp_path):
    other = CrmSink().start()
    try:
        service = start_service([f"CLINICA_CRM_PUSH_URL={crm.url}"])
        assert status_of(fastagi(service.address, FakeCall(), ring(1), ARGS["ring-in"])) == "SENT"

        service.env_file.write_text(f"CLINICA_DATA_DIR={tmp_path / 'data'}\nCLINICA_CRM_PUSH_URL={other.url}\n")
        service.signal(signal.SIGHUP)
        service.systemd.wait_for("RELOADING=1")
        service.systemd.wait_for("READY=1")
        assert status_of(fastagi(service.address, FakeCall(), ring(2), ARGS["ring-in"])) == "SENT"

        assert len(crm.pushes()) == 1 and len(other.pushes()) == 1
    finally:
        other.stop()


def test_sighup_with_an_invalid_file_keeps_the_running_configuration(start_service, crm, tmp_path):
    service = start_service([f"CLINICA_CRM_PUSH_URL={crm.url}"])
    service.env_file.write_text("CLINICA_HOOK_DEADLINE_MS=soon\n")
    service.signal(signal.SIGHUP)
    service.systemd.wait_for("READY=1")
    assert status_of(fastagi(service.address, FakeCall(), ring(1), ARGS["ring-in"])) == "SENT"
    assert service.stop() == 0
    assert "reload refused" in service.logs() and "CLINICA_HOOK_DEADLINE_MS" in service.logs()


def test_events_queued_while_the_crm_was_down_are_sent_when_it_comes_back(start_service, closed_port_url):
    service = start_service([f"CLINICA_CRM_PUSH_URL={closed_port_url}"])
    assert status_of(fastagi(service.address, FakeCall(), ring(1), ARGS["ring-in"])) == "QUEUED"

    arrived = threading.Event()
    port = int(closed_port_url.split(":")[2].split("/")[0])
    back = CrmSink(("127.0.0.1", port), on_push=lambda fields: arrived.set()).start()
    try:
        assert arrived.wait(WAIT_S), "the delivery worker inside serve sent the queued event"
        assert [p["requestType"] for p in back.pushes()] == ["receivedTheCall"]
    finally:
        back.stop()




def test_serve_runs_the_crm_api_beside_the_fastagi_server(start_service, crm):
    service = start_service([f"CLINICA_CRM_PUSH_URL={crm.url}", f"CLINICA_API_BIND=127.0.0.1:{free_port()}",
                             "CLINICA_API_KEYS=k1:s1"], args=())
    host, port = service.api_address
    request = urllib.request.Request(f"http://{host}:{port}/api/2.0/stats/call-details.json", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT_S) as answer:  # unsigned: refused, but by the API
        assert json.loads(answer.read())["status"] == "error"
    assert status_of(fastagi(service.address, FakeCall(), ring(1), ARGS["ring-in"])) == "SENT"
    service.signal(signal.SIGTERM)
    assert service.stop() == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=WAIT_S)


def test_serve_says_which_address_it_cannot_listen_on(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    (tmp_path / "empty.env").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLINICA_", "NOTIFY_"))}
    env.update(CLINICA_ENV_FILE=str(tmp_path / "empty.env"), CLINICA_DATA_DIR=str(tmp_path / "data"))
    try:
        done = subprocess.run([CLI, "serve", "--no-api", "--bind", f"127.0.0.1:{port}"], env=env,
                              capture_output=True, timeout=WAIT_S)
    finally:
        taken.close()
    assert done.returncode == 1
    assert f"cannot listen for FastAGI on 127.0.0.1:{port}" in done.stderr.decode()


def closed_by_server(sock) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:  # closed with our env block unread
        return True


def test_out_of_file_descriptors_refuses_instead_of_leaving_calls_in_the_backlog(start_service, crm):
    """A connection the server has no descriptor for would wait in the backlog while
    Asterisk holds the call; it is taken and closed at once instead."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    service = start_service([f"CLINICA_CRM_PUSH_URL={crm.url}", "CLINICA_FASTAGI_POOL=100",
                             "CLINICA_FASTAGI_SESSION_TIMEOUT_MS=60000"],
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard)))
    stalled = []
    try:
        for _ in range(60):  # more than the server has descriptors for
            sock = socket.create_connection(service.address, timeout=WAIT_S)
            sock.sendall(b"agi_network: yes\n")
            stalled.append(sock)
        refused, _, _ = select.select(stalled, [], [], WAIT_S)
        assert refused, "a connection beyond the descriptors was closed at once"
        assert all(closed_by_server(s) for s in refused)
        assert "out of file descriptors" in service.logs()
    finally:
        for sock in stalled:
            sock.close()
    # With the descriptors back, calls are served again.
    statuses = []
    while "SENT" not in statuses and len(statuses) < 100:
        statuses.append(status_of(fastagi(service.address, FakeCall(), ring(len(statuses)), ARGS["ring-in"])))
    assert statuses[-1] == "SENT"


def test_a_pool_too_large_for_the_agi_channel_stops_start_up(tmp_path):
    from clinica_asterisk.hooks.fastagi import MAX_POOL

    (tmp_path / "empty.env").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLINICA_", "NOTIFY_"))}
    env.update(CLINICA_ENV_FILE=str(tmp_path / "empty.env"), CLINICA_DATA_DIR=str(tmp_path / "data"),
               CLINICA_FASTAGI_POOL=str(MAX_POOL + 1))
    done = subprocess.run([CLI, "serve", "--no-api", "--bind", "127.0.0.1:0"], env=env, capture_output=True,
                          timeout=WAIT_S)
    assert done.returncode == 2
    assert f"CLINICA_FASTAGI_POOL: at most {MAX_POOL}" in done.stderr.decode()
