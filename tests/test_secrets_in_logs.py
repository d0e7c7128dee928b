"""No secret (CLINICA_API_KEYS, CLINICA_AMI_SECRET, the password in a CLINICA_FREEPBX_DB URL)
reaches a log, the AGI stream or the output of the commands: the AGI script's log file at
DEBUG level while the CRM fails, the delivery worker's journal output, a broken
configuration, the doctor."""

import os
import re
import subprocess
import sys

import pytest

from clinica_asterisk.config import DEFAULTS, SECRET_KEYS, build_settings

BIN = os.path.dirname(sys.executable)
AMI_SECRET = "ami-secret-5d0c2a9e"
API_SECRET = "api-secret-81f4b7c3"
DB_SECRET = "db-secret-2e9a6f10"
SECRETS = (AMI_SECRET, API_SECRET, DB_SECRET)

ENV_BLOCK = (
    "agi_request: clinica-agi\nagi_channel: PJSIP/trunk-00000001\nagi_language: en\n"
    "agi_type: PJSIP\nagi_uniqueid: 1700000000.1\nagi_version: 22.0.0\nagi_callerid: 0670219424\n"
    "agi_calleridname: unknown\nagi_dnid: 0443334000\nagi_context: from-pstn\nagi_extension: 0443334000\n"
    "agi_priority: 2\nagi_enhanced: 0.0\nagi_accountcode: \nagi_threadid: 140\n"
    "agi_arg_1: ring-in\nagi_arg_2: 0443334000\nagi_arg_3: 801\n\n"
)
KNOWN = {"${CHANNEL(linkedid)}": "1700000000.1", "${CALLERID(num)}": "0670219424"}


def play_ring_in(env):
    """Asterisk's side of one ring-in session, answering every command plainly."""
    hook = subprocess.Popen([os.path.join(BIN, "clinica-agi")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True, bufsize=1)
    hook.stdin.write(ENV_BLOCK)
    hook.stdin.flush()
    commands = []
    for line in hook.stdout:
        commands.append(line.rstrip("\n"))
        asked = re.match(r'GET (?:FULL )?VARIABLE "?([^"\s]+)"?', line)
        if asked:
            value = KNOWN.get(asked.group(1))
            hook.stdin.write(f"200 result=1 ({value})\n" if value else "200 result=0\n")
        else:
            hook.stdin.write("200 result=1\n")
        hook.stdin.flush()
    hook.stdin.close()
    stderr = hook.stderr.read()
    assert hook.wait(timeout=30) == 0
    return commands, stderr


@pytest.fixture
def env(tmp_path, failing_crm):
    env_file = tmp_path / "clinica.env"
    env_file.write_text(
        f"CLINICA_CRM_PUSH_URL={failing_crm.url}\nCLINICA_DATA_DIR={tmp_path / 'data'}\nCLINICA_LOG_LEVEL=DEBUG\n"
        f"CLINICA_AMI_USER=clinica\nCLINICA_AMI_SECRET={AMI_SECRET}\nCLINICA_API_KEYS=701151-a3a9ca8:{API_SECRET}\n"
        # a FreePBX database that is not there: the doctor's failure must not show the password
        f"CLINICA_FREEPBX_DB=mysql://clinica:{DB_SECRET}@127.0.0.1:1/asterisk\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CLINICA_")}
    environ["CLINICA_ENV_FILE"] = str(env_file)
    return environ


def assert_no_secret(*texts):
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_the_hook_log_holds_the_event_line_and_no_secret(env, tmp_path, failing_crm):
    commands, stderr = play_ring_in(env)

    log = (tmp_path / "data" / "clinica-agi.log").read_text()
    assert re.search(r"hook call=\d+ stage=ring-in outcome=\w+ ms=\d+", log), log
    assert failing_crm.refused >= 1  # the CRM answered 500: the failure is logged too
    assert_no_secret(log, stderr, "\n".join(commands))


def test_the_delivery_worker_output_holds_no_secret(env, tmp_path):
    play_ring_in(env)
    done = subprocess.run([os.path.join(BIN, "clinica-asterisk"), "deliver"], env=dict(env, CLINICA_LOG_FILE="-"),
                          capture_output=True, text=True, timeout=60)
    assert "push call=" in done.stderr
    assert_no_secret(done.stdout, done.stderr)


def test_a_broken_secret_setting_is_named_but_never_echoed(env, tmp_path):
    broken = dict(env, CLINICA_API_KEYS=f"no-colon-{API_SECRET}")
    commands, stderr = play_ring_in(broken)
    assert any("CLINICA_API_KEYS" in c for c in commands)  # the VERBOSE names the key
    done = subprocess.run([os.path.join(BIN, "clinica-asterisk"), "deliver"], env=broken,
                          capture_output=True, text=True, timeout=60)
    assert "CLINICA_API_KEYS" in done.stderr
    assert_no_secret("\n".join(commands), stderr, done.stdout, done.stderr)


def test_the_doctor_shows_which_secrets_are_set_not_their_values(env):
    done = subprocess.run([os.path.join(BIN, "clinica-asterisk"), "doctor", "--timeout", "1"],
                          env=dict(env, PATH=""), capture_output=True, text=True, timeout=60)
    assert "secrets set: CLINICA_AMI_SECRET, CLINICA_API_KEYS, CLINICA_FREEPBX_DB" in done.stdout
    assert "FAIL freepbx" in done.stdout
    assert_no_secret(done.stdout, done.stderr)


def test_settings_do_not_show_secrets_in_their_repr():
    values = dict(DEFAULTS, CLINICA_AMI_SECRET=AMI_SECRET, CLINICA_API_KEYS=f"k:{API_SECRET}",
                  CLINICA_FREEPBX_DB=f"mysql://clinica:{DB_SECRET}@10.0.0.5/asterisk")
    assert SECRET_KEYS == {"CLINICA_AMI_SECRET", "CLINICA_API_KEYS", "CLINICA_FREEPBX_DB", "CLINICA_STORE_URL"}
    assert_no_secret(repr(build_settings(values)))
