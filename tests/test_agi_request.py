import pytest

from clinica_asterisk.agi.request import MAX_ENV_LINES, AgiRequest, EnvBlockError, parse_env_block, parse_env_line


@pytest.mark.parametrize("line, expected", [
    ("agi_request: clinica-agi", ("agi_request", "clinica-agi")),
    ("agi_accountcode: ", ("agi_accountcode", "")),
    ("agi_arg_2: extra arg", ("agi_arg_2", "extra arg")),
    ("agi_request: agi://127.0.0.1:4574/ring?in", ("agi_request", "agi://127.0.0.1:4574/ring?in")),
    ("agi_calleridname: Клієнт: main", ("agi_calleridname", "Клієнт: main")),
])
def test_env_lines(line, expected):
    assert parse_env_line(line) == expected


@pytest.mark.parametrize("line", ["GET / HTTP/1.1", "agi_request", "no colon here", ": value", "agi key: x"])
def test_garbage_is_refused(line):
    with pytest.raises(EnvBlockError):
        parse_env_line(line)


def test_block_must_name_the_request_and_stay_small():
    with pytest.raises(EnvBlockError):
        parse_env_block(["agi_channel: x"])
    with pytest.raises(EnvBlockError):
        parse_env_block(["agi_request: x"] + [f"agi_arg_{n}: x" for n in range(MAX_ENV_LINES)])


def request(**env):
    return AgiRequest({"agi_request": "clinica-agi", **env})


@pytest.mark.parametrize("env, stage, args", [
    ({"agi_arg_1": "ring-in", "agi_arg_2": "0443334000"}, "ring-in", ("0443334000",)),
    ({"agi_request": "/var/lib/asterisk/agi-bin/clinica-agi", "agi_arg_1": "hangup", "agi_arg_2": "in"}, "hangup", ("in",)),
    ({"agi_network": "yes", "agi_network_script": "ring?in", "agi_arg_1": "801", "agi_arg_2": "extra arg"},
     "ring", ("801", "extra arg")),
    ({"agi_network": "yes", "agi_network_script": "clinica-agi", "agi_arg_1": "answer", "agi_arg_2": "801"},
     "answer", ("801",)),
    ({"agi_network": "yes", "agi_request": "agi://10.0.0.5:4574/hangup"}, "hangup", ()),
    ({}, "", ()),
])
def test_stage_and_arguments(env, stage, args):
    assert request(**env).stage_and_args == (stage, args)
