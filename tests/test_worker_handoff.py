"""Script mode with the delivery worker listening (``deliver --forever``, as install.sh
sets it up): each hook stores its events and hands them over (``CLINICA_STATUS=QUEUED``);
the worker sends them at once, in order, each once.  Without a listening worker the hook
sends them itself, as it always did.  And the settings' parse cache the hooks read instead
of running python-dotenv."""

import os
import socket
import subprocess
import sys

from support.faults import environment, wait_until
from support.player import Script, play
from test_script_mode import EXPECTED, recorded_calls

from clinica_asterisk import config
from clinica_asterisk.delivery.wakeup import SOCKET_NAME, WakeupListener, WorkerLink
from clinica_asterisk.delivery.worker import deliver_woken, fresh_calls
from clinica_asterisk.store.database import Store
from clinica_asterisk.store.outbox import Outbox

BIN = os.path.dirname(sys.executable)


def start_worker(env, data_dir):
    proc = subprocess.Popen([os.path.join(BIN, "clinica-asterisk"), "deliver", "--forever"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: (data_dir / SOCKET_NAME).exists() or proc.poll() is not None, "the worker listening")
    assert proc.poll() is None
    return proc


def stop(proc):
    proc.terminate()
    assert proc.wait(20) == 0


def without_ids(pushes):
    for push in pushes:
        push.pop("generalCallID"), push.pop("companyID")
    return pushes


def test_hooks_hand_their_events_to_the_listening_worker(crm, tmp_path):
    env = environment(tmp_path, crm_push_url=crm.url, answer_deadline_ms=2000)
    worker = start_worker(env, tmp_path / "data")
    try:
        played = play(recorded_calls()[0], Script(env))
        assert [p.status for p in played] == ["QUEUED"] * 3
        wait_until(lambda: len(crm.pushes()) >= 3, "the worker's pushes")
    finally:
        stop(worker)
    assert without_ids(crm.pushes()) == EXPECTED[0]  # each once, in order
    for p in played:
        assert p.conversation.returncode == 0
        # The hook loaded no HTTP client: it neither POSTed nor leased.
        assert "outcome=QUEUED" in p.conversation.extra_stderr
        assert "clinica_asterisk.delivery" not in p.conversation.extra_stderr
    assert (tmp_path / "data" / SOCKET_NAME).exists() is False  # the worker took its socket along


def test_a_socket_nobody_listens_on_leaves_the_hook_sending_itself(crm, tmp_path):
    env = environment(tmp_path, crm_push_url=crm.url, answer_deadline_ms=2000)
    (tmp_path / "data").mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(tmp_path / "data" / SOCKET_NAME))  # a worker that died without unlinking it
    dead.close()
    played = play(recorded_calls()[0], Script(env))
    assert [p.status for p in played] == ["SENT"] * 3
    assert without_ids(crm.pushes()) == EXPECTED[0]


def test_a_second_worker_leaves_the_socket_to_the_first(tmp_path):
    path = str(tmp_path / SOCKET_NAME)
    first = WakeupListener.bind(path)
    try:
        assert WakeupListener.bind(path) is None
        link = WorkerLink.connect(path)
        assert link.wake(7) and link.wake(8) and link.wake(7)
        assert first.wait(1.0) == [7, 8]
        link.close()
    finally:
        first.close()
    assert WorkerLink.connect(path) is None
    # A stale socket file (its worker died) is taken over.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)
    stale.close()
    again = WakeupListener.bind(path)
    assert again is not None
    again.close()


class _Sender:
    def __init__(self):
        self.sent = []

    def post(self, payload, limit_s, wait_s=None, on_late=None):
        from clinica_asterisk.delivery.sender import Attempt

        self.sent.append(payload["requestType"])
        return Attempt(True, "HTTP 200", 1)


def test_a_woken_worker_sends_new_events_in_order_and_keeps_the_backoff_of_failed_ones(tmp_path):
    store = Store(str(tmp_path / "clinica.sqlite3"))
    outbox = Outbox(store)
    with store.transaction():
        for n, key in enumerate(("receivedTheCall", "answeredTheCall")):
            outbox.enqueue(1, key, {"requestType": key}, not_before=store.clock() + 60)  # as a hook writes them
        outbox.enqueue(2, "receivedTheCall", {"requestType": "receivedTheCall"}, not_before=store.clock() + 60)
        outbox.enqueue(2, "hangupTheCall", {"requestType": "hangupTheCall"}, not_before=store.clock() + 60)
    failed = outbox.pending_of_call(2)[0]
    assert outbox.claim(failed, "someone:1", store.clock() + 10)
    outbox.mark_failed(failed.id, "HTTP 500", 300)
    sender = _Sender()
    stats = deliver_woken(outbox, sender, [1, 2], 5.0, 300)
    assert sender.sent == ["receivedTheCall", "answeredTheCall"]
    assert (stats.sent, stats.failed) == (2, 0)
    assert [e.request_type for e in outbox.pending_of_call(2)] == ["receivedTheCall", "hangupTheCall"]
    store.close()


def test_calls_handed_over_whose_wake_up_was_lost_are_found(tmp_path):
    store = Store(str(tmp_path / "clinica.sqlite3"))
    outbox = Outbox(store)
    with store.transaction():
        outbox.enqueue(1, "receivedTheCall", {}, not_before=store.clock() + 60)  # handed over
        outbox.enqueue(2, "receivedTheCall", {}, not_before=store.clock() + 60)
        outbox.lease_pending(2, "hook:1", store.clock() + 60)  # a hook sending its own
        outbox.enqueue(3, "receivedTheCall", {}, not_before=store.clock() + 60)
    tried = outbox.pending_of_call(3)[0]
    assert outbox.claim(tried, "worker:1", store.clock() + 10)
    outbox.mark_failed(tried.id, "HTTP 500", 300)  # its backoff stands
    assert fresh_calls(outbox) == [1]
    store.close()


def test_the_parse_cache_spares_python_dotenv_until_the_file_changes(env_file, monkeypatch):
    assert config.load_settings().company_id == "3041"
    cache = config.parse_cache_path(str(env_file))
    assert oct(os.stat(cache).st_mode & 0o777) == "0o600"  # it holds what the file holds: secrets too

    def no_parse(path):
        raise AssertionError("parsed again")

    monkeypatch.setattr(config, "read_env_file", no_parse)
    assert config.load_settings().crm_push_url == "https://crm.example/api/Binotel/Push"
    monkeypatch.undo()
    env_file.write_text("CLINICA_COMPANY_ID=3042\n")
    monkeypatch.setenv("CLINICA_ENV_FILE", str(env_file))
    assert config.load_settings().company_id == "3042"


def test_a_cache_others_may_read_is_not_trusted(env_file, monkeypatch):
    config.load_settings()
    os.chmod(config.parse_cache_path(str(env_file)), 0o644)
    parsed = []
    real = config.read_env_file
    monkeypatch.setattr(config, "read_env_file", lambda path: parsed.append(path) or real(path))
    assert config.load_settings().company_id == "3041"
    assert parsed == [str(env_file)]


def test_the_environment_still_wins_over_a_cached_file(env_file, monkeypatch):
    config.load_settings()
    monkeypatch.setenv("CLINICA_COMPANY_ID", "77")
    assert config.load_settings().company_id == "77"


# What a script hook must not load when it hands its events to the worker: each costs every
# ring, answer and hang-up milliseconds of start-up (issue 13).  Checked in the hook's own
# process, after a whole hook, so that a lazy import on its path counts too.
HEAVY_MODULES = ("http.client", "ssl", "email", "urllib.request", "requests", "logging", "typing",
                 "dataclasses", "inspect", "asterisk.agi", "queue", "dotenv", "threading", "socket", "selectors",
                 # and what the settings cache, _sqlite3, _csv and _signal spare it
                 "urllib.parse", "ipaddress", "sqlite3", "datetime", "csv", "signal", "contextlib", "zlib")
PROBE = ("import sys\n"
         "from clinica_asterisk.hooks.script import main\n"
         "status = main()\n"
         "sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules)) + '\\n')\n"
         "sys.exit(status)\n")


def test_a_hook_handing_its_events_over_loads_no_heavy_module(crm, tmp_path):
    env = environment(tmp_path, crm_push_url=crm.url, answer_deadline_ms=2000)
    worker = start_worker(env, tmp_path / "data")
    try:
        played = play(recorded_calls()[0][:1], Script(env, command=[sys.executable, "-c", PROBE]))
    finally:
        stop(worker)
    assert [p.status for p in played] == ["QUEUED"]
    stderr = played[0].conversation.extra_stderr
    assert "outcome=QUEUED" in stderr  # its log line, written without the logging package
    loaded = set(stderr.split("MODULES ", 1)[1].split())
    assert "clinica_asterisk.hooks.stages" in loaded and "_sqlite3" in loaded
    heavy = sorted(m for m in loaded if m in HEAVY_MODULES or m.split(".")[0] in ("email", "http", "requests"))
    assert heavy == []
