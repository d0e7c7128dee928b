import os
import stat

import pytest

from clinica_asterisk.config import DEFAULTS, ConfigError, build_settings, load_settings, parse_bind


def settings(**values):
    return build_settings({**DEFAULTS, **values})


def test_defaults_are_valid_and_listen_on_loopback_only():
    s = settings()
    assert s.fastagi_bind == ("127.0.0.1", 4574)
    assert s.api_bind == ("127.0.0.1", 8574)
    assert s.hook_deadline_s == 2.0


@pytest.mark.parametrize("key, value, words", [
    ("CLINICA_HOOK_DEADLINE_MS", "soon", "whole number from 100 to 30000"),
    ("CLINICA_HOOK_DEADLINE_MS", "99999", "whole number from 100 to 30000"),
    ("CLINICA_NUMBER_FORMAT", "international", "national, e164, raw"),
    ("CLINICA_CRM_PUSH_URL", "ftp://crm", "http:// or https://"),
    ("CLINICA_COMPANY_ID", "30a1", "digits"),
    ("CLINICA_FASTAGI_BIND", "localhost:4574", "ADDRESS:PORT"),
    ("CLINICA_FASTAGI_ALLOW", "10.0.0.0/33", "addresses or networks"),
    ("CLINICA_LOG_LEVEL", "LOUD", "DEBUG, INFO"),
    ("CLINICA_DEADLINE_MS", "100", "unknown setting"),
])
def test_a_bad_value_names_the_key_and_what_is_allowed(key, value, words):
    with pytest.raises(ConfigError) as error:
        settings(**{key: value})
    assert str(error.value).startswith(f"{key}:") and words in str(error.value)


@pytest.mark.parametrize("text, address", [
    ("127.0.0.1:4574", ("127.0.0.1", 4574)),
    (" 0.0.0.0:0 ", ("0.0.0.0", 0)),  # port 0: any free port
    ("[::1]:8574", ("::1", 8574)),
    ("::1:8574", ("::1", 8574)),
    ("10.0.0.20:65535", ("10.0.0.20", 65535)),
])
def test_an_address_to_listen_on_is_an_ip_and_a_port(text, address):
    assert parse_bind(text, "--bind") == address


@pytest.mark.parametrize("text", ["localhost:4574", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1",
                                  "127.0.0.1:+80", "127.0.0.1:\u0664\u0665", ":4574", "[::1]"])
def test_settings_and_command_line_refuse_the_same_addresses(text):
    """One rule for CLINICA_*_BIND and for --bind / --server."""
    with pytest.raises(ConfigError, match=r"^--bind: must be ADDRESS:PORT with an IP address"):
        parse_bind(text, "--bind")
    with pytest.raises(ConfigError, match=r"^CLINICA_API_BIND: must be ADDRESS:PORT with an IP address"):
        settings(CLINICA_API_BIND=text)


def test_a_bad_bind_on_the_command_line_is_a_configuration_error(capsys):
    from clinica_asterisk.cli import main as cli

    assert cli.main(["crm-sink", "--bind", "localhost:8580"]) == cli.ExitStatus.CONFIG
    assert "--bind: must be ADDRESS:PORT" in capsys.readouterr().err


def test_secrets_never_appear_in_errors_or_repr():
    with pytest.raises(ConfigError) as error:
        settings(CLINICA_API_KEYS="key-without-secret-TOPSECRET")
    assert "TOPSECRET" not in str(error.value)
    s = settings(CLINICA_API_KEYS="k:TOPSECRET", CLINICA_AMI_SECRET="AMISECRET")
    assert s.api_keys == {"k": "TOPSECRET"}
    assert "TOPSECRET" not in repr(s) and "AMISECRET" not in repr(s)


def test_environment_over_file_over_defaults(tmp_path):
    env_file = tmp_path / "clinica.env"
    env_file.write_text("CLINICA_COMPANY_ID=3041\nCLINICA_HOOK_DEADLINE_MS=1500\nOTHER=x\n")
    os.chmod(env_file, stat.S_IRUSR | stat.S_IWUSR)
    s = load_settings({"CLINICA_ENV_FILE": str(env_file), "CLINICA_HOOK_DEADLINE_MS": "800"})
    assert (s.company_id, s.hook_deadline_s, s.number_format) == ("3041", 0.8, "national")
    assert s.source == str(env_file)


def test_a_named_env_file_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="CLINICA_ENV_FILE"):
        load_settings({"CLINICA_ENV_FILE": str(tmp_path / "nope.env")})


def test_example_file_holds_every_setting():
    example = open(os.path.join(os.path.dirname(__file__), "..", ".env.example")).read()
    assert all(key in example for key in DEFAULTS), [k for k in DEFAULTS if k not in example]


def test_trunk_numbers_are_trunk_id_number_pairs():
    values = dict(DEFAULTS, CLINICA_TRUNK_NUMBERS=" 1:0443334000, 2:+380443334001 ")
    assert build_settings(values).trunk_numbers == {"1": "0443334000", "2": "+380443334001"}
    for bad in ("pstn1:0443334000", "1:044-333", "1", "1:0443334000\n2"):
        with pytest.raises(ConfigError, match="CLINICA_TRUNK_NUMBERS"):
            build_settings(dict(DEFAULTS, CLINICA_TRUNK_NUMBERS=bad))
    with pytest.raises(ConfigError, match="CLINICA_PUSH_EXTRA_KEYS"):
        build_settings(dict(DEFAULTS, CLINICA_PUSH_EXTRA_KEYS="maybe"))
