"""A configuration that cannot work is reported, by name, and harms nothing else: one bad
byte in the env file, a push URL no HTTP client can use.  The call always goes on."""

import os
import subprocess
import sys

import pytest
from support.settings import make_settings
from support.fake_asterisk import FakeCall, freepbx_calls, run_script
from support.player import our_args

from clinica_asterisk.config import DEFAULTS, ConfigError, build_settings, load_settings

BIN = os.path.dirname(sys.executable)
SCRIPT = [os.path.join(BIN, "clinica-agi")]
RING_IN = freepbx_calls()["in-801"][0]


def environ_with(env_file):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINICA_")}
    env["CLINICA_ENV_FILE"] = str(env_file)
    return env


@pytest.fixture
def latin1_env(tmp_path):
    """An env file that is fine but for one byte that is not UTF-8, in a comment."""
    env_file = tmp_path / "clinica.env"
    env_file.write_bytes(b"# Cl\xednica: the push URL\n"
                         b"CLINICA_DATA_DIR=" + str(tmp_path / "data").encode() + b"\n")
    return env_file


def test_a_byte_that_is_not_utf8_names_the_file_and_the_line(latin1_env):
    with pytest.raises(ConfigError) as raised:
        load_settings(environ_with(latin1_env))
    message = str(raised.value)
    assert str(latin1_env) in message and "line 1" in message and "UTF-8" in message


def test_the_hook_with_a_latin1_env_file_fails_cleanly_and_the_call_goes_on(latin1_env):
    call = FakeCall()
    conv = run_script(SCRIPT, call, RING_IN.with_args(our_args(RING_IN)), environ_with(latin1_env))
    assert conv.returncode == 0
    assert call.status_of(RING_IN.label) == "FAILED"
    verbose = [c for c in conv.commands if c.startswith("VERBOSE")]
    assert verbose and "UTF-8" in verbose[0] and "clinica.env" in verbose[0]
    assert "Traceback" not in conv.extra_stderr


@pytest.mark.parametrize("command", [["deliver"], ["serve", "--bind", "127.0.0.1:0"]])
def test_the_commands_with_a_latin1_env_file_stop_and_name_it(command, latin1_env):
    done = subprocess.run([os.path.join(BIN, "clinica-asterisk"), *command], env=environ_with(latin1_env),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "configuration error" in done.stderr and str(latin1_env) in done.stderr
    assert "Traceback" not in done.stderr


def test_the_doctor_reports_a_latin1_env_file_as_its_failed_check(latin1_env):
    done = subprocess.run([os.path.join(BIN, "clinica-asterisk"), "doctor", "--timeout", "1"],
                          env=environ_with(latin1_env), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout.startswith("FAIL configuration") and "UTF-8" in done.stdout
    assert "Traceback" not in done.stderr


SECRET_PASSWORD, SECRET_TOKEN = "pw-7f3a91", "tok-51c2e8"


@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.1:99999/api/Binotel/Push", "port"),
    ("http://127.0.0.1:abc/api/Binotel/Push", "port"),
    ("http://127.0.0.1:0/api/Binotel/Push", "port"),
    ("http://127.0.0.1:8580/api/Binotel Push", "space"),
    ("http://127.0.0.1:8580/api/Binotel\t/Push", "control"),
    ("http://127.0.0.1:8580/api/Клініка/Push", "ASCII"),
    ("http://клініка.example/api/Binotel/Push", "ASCII"),
    ("http://127.0.0.1:8580/api\x00/Push", "control"),
    ("ftp://127.0.0.1/api/Binotel/Push", "http"),
    ("http:///api/Binotel/Push", "http"),
])
def test_a_push_url_no_http_client_can_use_is_refused(url, why, tmp_path):
    with pytest.raises(ConfigError) as raised:
        make_settings(tmp_path, crm_push_url=url)
    message = str(raised.value)
    assert message.startswith("CLINICA_CRM_PUSH_URL:")
    assert why in message


@pytest.mark.parametrize("url", [
    f"http://clinic:{SECRET_PASSWORD}@127.0.0.1:99999/push?token={SECRET_TOKEN}",
    f"ftp://clinic:{SECRET_PASSWORD}@crm.example/push?token={SECRET_TOKEN}",
    f"http://clinic:{SECRET_PASSWORD}@crm.example/a push?token={SECRET_TOKEN}",
])
def test_a_refused_push_url_is_never_echoed_with_its_secrets(url):
    with pytest.raises(ConfigError) as raised:
        build_settings(dict(DEFAULTS, CLINICA_CRM_PUSH_URL=url))
    message = str(raised.value)
    assert SECRET_PASSWORD not in message and SECRET_TOKEN not in message
    assert message.startswith("CLINICA_CRM_PUSH_URL:")


def test_the_hook_does_not_show_a_refused_push_urls_secrets_on_the_console(tmp_path):
    env_file = tmp_path / "clinica.env"
    env_file.write_text(f"CLINICA_DATA_DIR={tmp_path / 'data'}\n"
                        f"CLINICA_CRM_PUSH_URL=http://clinic:{SECRET_PASSWORD}@127.0.0.1:99999/push?token={SECRET_TOKEN}\n")
    call = FakeCall()
    conv = run_script(SCRIPT, call, RING_IN.with_args(our_args(RING_IN)), environ_with(env_file))
    assert call.status_of(RING_IN.label) == "FAILED"
    shown = "\n".join(conv.commands) + conv.extra_stderr
    assert "CLINICA_CRM_PUSH_URL" in shown
    assert SECRET_PASSWORD not in shown and SECRET_TOKEN not in shown


def test_serve_refuses_to_start_with_a_push_url_it_could_never_use(tmp_path):
    env_file = tmp_path / "clinica.env"
    env_file.write_text(f"CLINICA_DATA_DIR={tmp_path / 'data'}\n"
                        "CLINICA_CRM_PUSH_URL=http://127.0.0.1:99999/api/Binotel/Push\n")
    done = subprocess.run([os.path.join(BIN, "clinica-asterisk"), "serve", "--no-api", "--bind", "127.0.0.1:0"],
                          env=environ_with(env_file), capture_output=True, text=True, timeout=20)
    assert done.returncode == 2 and "CLINICA_CRM_PUSH_URL" in done.stderr


def test_usual_push_urls_are_accepted(tmp_path):
    for url in ("https://crm.example.com/api/Binotel/Push", "http://10.0.0.7:8080/api/Binotel/Push?company=3041",
                "https://clinic:s%40cret@crm.example.com/push", "http://[::1]:8580/api/Binotel/Push",
                "https://xn--80ajfqcbk.example/api/Binotel/Push"):
        assert make_settings(tmp_path, crm_push_url=url).crm_push_url == url
