"""A push URL may carry a password (``https://user:password@crm/…``) or a token in its
query: neither reaches a log line, the outbox's last error or the doctor's output, however
the CRM fails."""

import os
import sqlite3
import subprocess
import sys

import pytest
from support.fake_asterisk import freepbx_calls
from support.player import play_freepbx_call

from clinica_asterisk.devtools.crm_sink import CrmSink
from clinica_asterisk.delivery.sender import PushSender
from clinica_asterisk.hooks.stages import HookServices

BIN = os.path.dirname(sys.executable)
PASSWORD, TOKEN = "pw-9d41c7e0", "tok-3b8e52aa"
PAYLOAD = {"requestType": "receivedTheCall", "generalCallID": "42"}


def secret_url(base: str) -> str:
    """``base`` (http://127.0.0.1:port/path) with a password and a token in it."""
    scheme, rest = base.split("://", 1)
    return f"{scheme}://clinic:{PASSWORD}@{rest}?token={TOKEN}"


def assert_no_secret(*texts):
    for text in texts:
        assert PASSWORD not in text and TOKEN not in text, text


@pytest.fixture
def crm_states(request, closed_port_url):
    """The CRM down, hung, or closing the connection without a word."""
    sinks = []

    def make(state):
        if state == "down":
            return closed_port_url
        sink = CrmSink(behaviour="hang", hang_s=0.05 if state == "closing" else 3600).start()
        sinks.append(sink)
        return sink.url

    yield make
    for sink in sinks:
        sink.stop()


@pytest.mark.parametrize("state", ["down", "hung", "closing"])
def test_a_failed_attempt_says_why_without_the_urls_secrets(state, crm_states):
    attempt = PushSender(secret_url(crm_states(state)), "form").post(PAYLOAD, 0.5)
    assert not attempt.ok and attempt.detail
    assert_no_secret(attempt.detail)


def test_deliver_doctor_and_the_outbox_keep_the_urls_secrets(tmp_path, closed_port_url, settings_for):
    url = secret_url(closed_port_url)
    services = HookServices.open(settings_for(url, hook_deadline_ms=300))
    play_freepbx_call(services, freepbx_calls()["in-miss"])

    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINICA_")}
    env_file = tmp_path / "clinica.env"
    env_file.write_text(f"CLINICA_CRM_PUSH_URL={url}\nCLINICA_DATA_DIR={tmp_path / 'data'}\n"
                        "CLINICA_LOG_LEVEL=DEBUG\nCLINICA_LOG_FILE=-\nCLINICA_FREEPBX_DB=off\n")
    env["CLINICA_ENV_FILE"] = str(env_file)
    deliver = subprocess.run([os.path.join(BIN, "clinica-asterisk"), "deliver"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert deliver.returncode == 3 and "push call=" in deliver.stderr
    doctor = subprocess.run([os.path.join(BIN, "clinica-asterisk"), "doctor", "--timeout", "1"],
                            env=dict(env, PATH=""), capture_output=True, text=True, timeout=60)
    assert "last error" in doctor.stdout
    with sqlite3.connect(tmp_path / "data" / "clinica.sqlite3") as conn:
        errors = [row[0] for row in conn.execute("SELECT last_error FROM outbox WHERE last_error IS NOT NULL")]
    assert errors
    assert_no_secret(deliver.stdout, deliver.stderr, doctor.stdout, doctor.stderr, *errors)
    hook_log = (tmp_path / "data" / "clinica-agi.log")
    assert_no_secret(hook_log.read_text() if hook_log.exists() else "")
