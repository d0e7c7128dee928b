"""The validated settings kept beside the env file (``<env file>.parsed``, config.py): a
hook's next load skips validation (and urllib.parse, ipaddress), yet a change of the file,
of the CLINICA_* environment, of the working directory or of the program is never missed,
invalid settings are refused on every load, and a cache that is not ours is ignored."""

import json
import os
import stat

import pytest

from clinica_asterisk import config
from clinica_asterisk.config import ConfigError, load_settings, parse_cache_path


def cache_of(path) -> dict:
    with open(parse_cache_path(str(path)), encoding="utf-8") as f:
        return json.load(f)


def no_validation(monkeypatch):
    def fail(values, source=""):
        raise AssertionError("validated again")

    monkeypatch.setattr(config, "build_settings", fail)


def test_the_second_load_takes_the_validated_settings_from_the_cache(env_file, monkeypatch):
    first = load_settings()
    assert first.company_id == "3041"
    assert stat.S_IMODE(os.stat(parse_cache_path(str(env_file))).st_mode) == 0o600
    no_validation(monkeypatch)
    again = load_settings()
    assert again == first and again.source == str(env_file)


@pytest.mark.parametrize("values", [
    {},
    {"CLINICA_FASTAGI_ALLOW": "10.0.0.5/24, ::1, fe80::1%eth0/64, 192.168.1.1",
     "CLINICA_FASTAGI_BIND": "[::1]:4574", "CLINICA_API_BIND": "0.0.0.0:0"},
    {"CLINICA_TRUNK_NUMBERS": "1:0443334000,2:+380443334001", "CLINICA_API_KEYS": "crm:s3cret,other:x",
     "CLINICA_STORE_URL": "mysql://clinica:pw@db.example:3307/clinica?ssl_ca=/etc/ca.pem",
     "CLINICA_HOOK_DEADLINE_MS": "1234", "CLINICA_DATA_DIR": "relative/data", "CLINICA_TRANSFER_PAIR": "no",
     "CLINICA_PBX_ID": "Клініка"},
])
def test_cached_settings_equal_freshly_validated_ones(env_file, monkeypatch, values):
    with open(env_file, "a", encoding="utf-8") as f:
        f.writelines(f"{key}='{value}'\n" for key, value in values.items())
    fresh = load_settings()
    no_validation(monkeypatch)
    cached = load_settings()
    assert cached == fresh
    assert [type(getattr(cached, f)) for f in fresh._fields] == [type(getattr(fresh, f)) for f in fresh._fields]
    assert [type(n) for n in cached.fastagi_allow] == [type(n) for n in fresh.fastagi_allow]


def test_a_changed_env_file_is_validated_again(env_file):
    load_settings()
    env_file.write_text("CLINICA_COMPANY_ID=3042\n")
    assert load_settings().company_id == "3042"
    env_file.write_text("CLINICA_COMPANY_ID=many\n")
    with pytest.raises(ConfigError, match="CLINICA_COMPANY_ID"):
        load_settings()


@pytest.mark.parametrize("change", ["add", "change", "remove"])
def test_a_changed_environment_is_validated_again(env_file, monkeypatch, change):
    monkeypatch.setenv("CLINICA_LOG_LEVEL", "DEBUG")
    assert load_settings().log_level == "DEBUG"
    if change == "add":
        monkeypatch.setenv("CLINICA_PBX_ID", "node-2")
        assert load_settings().pbx_id == "node-2"
    elif change == "change":
        monkeypatch.setenv("CLINICA_LOG_LEVEL", "ERROR")
        assert load_settings().log_level == "ERROR"
    else:
        monkeypatch.delenv("CLINICA_LOG_LEVEL")
        assert load_settings().log_level == "INFO"


def test_an_explicit_environment_is_an_input_too(env_file):
    assert load_settings({"CLINICA_ENV_FILE": str(env_file), "CLINICA_COMPANY_ID": "5"}).company_id == "5"
    assert load_settings({"CLINICA_ENV_FILE": str(env_file)}).company_id == "3041"


def test_invalid_settings_are_refused_on_every_load_and_never_cached(env_file, monkeypatch):
    load_settings()
    monkeypatch.setenv("CLINICA_HOOK_DEADLINE_MS", "soon")
    for _ in range(2):
        with pytest.raises(ConfigError, match="CLINICA_HOOK_DEADLINE_MS"):
            load_settings()
    assert "soon" not in json.dumps(cache_of(env_file))
    monkeypatch.setenv("CLINICA_HOOK_DEADLINE_MS", "3000")
    assert load_settings().hook_deadline_s == 3.0


def test_another_working_directory_resolves_relative_paths_again(env_file, monkeypatch, tmp_path):
    monkeypatch.setenv("CLINICA_DATA_DIR", "data")
    assert load_settings().data_dir == str(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_settings().data_dir == str(tmp_path / "elsewhere" / "data")


def test_another_version_of_the_program_validates_again(env_file, monkeypatch, tmp_path):
    load_settings()
    other = tmp_path / "config.py"
    other.write_text("# another version\n")
    monkeypatch.setattr(config, "__file__", str(other))
    validated = []
    real = config.build_settings
    monkeypatch.setattr(config, "build_settings", lambda values, source="": validated.append(1) or real(values, source))
    load_settings()
    assert validated == [1]


@pytest.mark.parametrize("damage", [
    b"\x00\xffnot json",
    b"[1, 2, 3]",
    b'{"state": "0:0:0:0:0", "values": {}}',
    "bad settings",
    "missing field",
    "wrong types",
    "truncated",
])
def test_a_damaged_cache_is_ignored_and_replaced(env_file, monkeypatch, damage):
    good = load_settings()
    cache = parse_cache_path(str(env_file))
    if isinstance(damage, bytes):
        text = damage
    else:
        data = cache_of(env_file)
        fields = data["settings"]["fields"]
        if damage == "bad settings":
            data["settings"] = ["not", "a", "dict"]
        elif damage == "missing field":
            del fields["company_id"]
        elif damage == "wrong types":
            fields.update(fastagi_bind=7, fastagi_allow=["not a network"])
        text = json.dumps(data).encode()
        if damage == "truncated":
            text = text[:len(text) // 2]
    with open(cache, "wb") as f:
        f.write(text)
    assert load_settings() == good
    assert cache_of(env_file)["settings"]["fields"]["company_id"] == "3041"  # written again


def test_a_cache_others_may_read_or_a_link_is_not_trusted(env_file, monkeypatch, tmp_path):
    load_settings()
    cache = parse_cache_path(str(env_file))
    data = cache_of(env_file)
    data["settings"]["fields"]["company_id"] = "999"  # what a foreign cache would say
    decoy = tmp_path / "decoy.json"
    for setup in ("readable", "link"):
        if setup == "readable":
            with open(cache, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.chmod(cache, 0o644)
        else:
            os.unlink(cache)
            decoy.write_text(json.dumps(data))
            decoy.chmod(0o600)
            os.symlink(decoy, cache)
        assert load_settings().company_id == "3041"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give the cache another owner")
def test_a_cache_of_another_user_is_not_trusted(env_file):
    load_settings()
    cache = parse_cache_path(str(env_file))
    data = cache_of(env_file)
    data["settings"]["fields"]["company_id"] = "999"
    with open(cache, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.chown(cache, 65534, 65534)
    assert load_settings().company_id == "3041"


@pytest.mark.parametrize("key", sorted(config.ENV_SECRETS))
def test_a_secret_from_the_environment_is_never_written_to_the_cache(env_file, monkeypatch, key):
    secret = {"CLINICA_API_KEYS": "crm:s3cr3t-value", "CLINICA_AMI_SECRET": "s3cr3t-value",
              "CLINICA_FREEPBX_DB": "mysql://freepbx:s3cr3t-value@127.0.0.1/asterisk",
              "CLINICA_STORE_URL": "mysql://clinica:s3cr3t-value@db.example/clinica",
              "CLINICA_CRM_PUSH_URL": "https://crm:s3cr3t-value@crm.example/api/Binotel/Push"}[key]
    monkeypatch.setenv(key, secret)
    first = load_settings()
    assert load_settings() == first  # validated each time: right, only not kept
    cache = parse_cache_path(str(env_file))
    with open(cache, encoding="utf-8") as f:
        assert "s3cr3t-value" not in f.read()
