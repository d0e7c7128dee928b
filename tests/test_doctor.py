"""``clinica-asterisk doctor`` run in-process against real things: a CRM sink over HTTP, a
closed port, the tests' fake AMI on a real socket, a stand-in ``asterisk`` command, a real call
store, listening sockets and a real MariaDB with FreePBX's tables."""

import os
import re
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from clinica_asterisk.cli import main as cli
from clinica_asterisk.cli import doctor
from clinica_asterisk.store.outbox import Outbox
from clinica_asterisk.store.database import Store
from support.fake_ami import FakeAmi
from support.net import free_port
from support.redirecting_crm import RedirectingCrm

# pyst2's threads use names deprecated since Python 3.10.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

AMI_SECRET = "ami-secret-6c1f0e"
API_SECRET = "api-secret-93b2d4"

CONTEXT_LISTING = """[ Context 'clinica-push' created by 'pbx_config' ]
  '_[+0-9].' =>     1. Gosub(clinica-push,incoming,1(${EXTEN}))     [extensions_clinica.conf:46]
  'incoming' =>     1. ExecIf(...)                                  [extensions_clinica.conf:52]

-= 2 extensions (7 priorities) in 1 context. =-
"""
NO_CONTEXT = "There is no existence of 'clinica-push' context\n"
NOT_RUNNING = "Unable to connect to remote asterisk (does /var/run/asterisk/asterisk.ctl exist?)\n"


SHOWN = Path(__file__).resolve().parent / "fixtures" / "dialplan-show"


def globals_listing(agi):
    line = f"   CLINICA_AGI={agi}\n" if agi is not None else ""
    return f"   AMPMGRUSER=admin\n{line}   ASTETCDIR=/etc/asterisk\n\n    -- 3 variable(s)\n"


@pytest.fixture
def ami():
    server = FakeAmi(secret=AMI_SECRET).start()
    yield server
    server.stop()


def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    return sock




@pytest.fixture
def ports():
    fastagi, api = listener(), listener()
    yield fastagi.getsockname()[1], api.getsockname()[1]
    fastagi.close()
    api.close()


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """A directory on PATH (and nothing else) for a stand-in asterisk command."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def stand_in_asterisk(bin_dir, context=CONTEXT_LISTING, agi="agi://127.0.0.1:4574/clinica-agi", status=0,
                      shape="pbx17", from_pstn=None, our_copy=None):
    """``asterisk -rx``: ``dialplan show`` of clinica-push, the globals, and from-pstn and
    clinica-from-pstn as a lab PBX of ``shape`` printed them (or as given)."""
    (bin_dir / "context.txt").write_text(context)
    (bin_dir / "globals.txt").write_text(globals_listing(agi))
    (bin_dir / "from-pstn.txt").write_text(from_pstn or (SHOWN / f"{shape}-from-pstn.txt").read_text())
    (bin_dir / "clinica-from-pstn.txt").write_text(our_copy or (SHOWN / f"{shape}-clinica-from-pstn.txt").read_text())
    # In Python: PATH holds nothing but this directory.
    script = bin_dir / "asterisk"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"with open({str(bin_dir / 'calls.log')!r}, 'a') as log:\n"
        "    log.write(' '.join(sys.argv[1:]) + '\\n')\n"
        "answers = {'dialplan show clinica-push': 'context.txt', 'dialplan show globals': 'globals.txt',\n"
        "           'dialplan show from-pstn': 'from-pstn.txt', 'dialplan show clinica-from-pstn': 'clinica-from-pstn.txt'}\n"
        "if sys.argv[2] in answers:\n"
        f"    sys.stdout.write(open({str(bin_dir)!r} + '/' + answers[sys.argv[2]]).read())\n"
        f"sys.exit({status})\n")
    script.chmod(0o755)
    return script


@pytest.fixture
def setup(tmp_path, monkeypatch, crm, ami, ports, stand_ins):
    """Everything in order; each test breaks one thing."""
    for key in list(os.environ):
        if key.startswith("CLINICA_"):
            monkeypatch.delenv(key)
    stand_in_asterisk(stand_ins)
    data = tmp_path / "data"
    data.mkdir()
    values = {
        "CLINICA_CRM_PUSH_URL": crm.url,
        "CLINICA_DATA_DIR": str(data),
        "CLINICA_AMI_HOST": "127.0.0.1",
        "CLINICA_AMI_PORT": str(ami.port),
        "CLINICA_AMI_USER": "clinica",
        "CLINICA_AMI_SECRET": AMI_SECRET,
        "CLINICA_API_KEYS": f"701151-a3a9ca8:{API_SECRET}",
        "CLINICA_FASTAGI_BIND": f"127.0.0.1:{ports[0]}",
        "CLINICA_API_BIND": f"127.0.0.1:{ports[1]}",
        # Not a FreePBX machine (whatever this one is).
        "CLINICA_FREEPBX_CONF": str(tmp_path / "no-freepbx.conf"),
    }
    env_file = tmp_path / "clinica.env"

    def write(**changes):
        merged = dict(values, **{f"CLINICA_{k.upper()}": v for k, v in changes.items()})
        env_file.write_text("".join(f"{k}={v}\n" for k, v in merged.items() if v is not None))
        env_file.chmod(0o600)

    write()
    monkeypatch.setenv("CLINICA_ENV_FILE", str(env_file))
    return type("Setup", (), {"write": staticmethod(write), "env_file": env_file, "data": data,
                              "bin": stand_ins, "crm": crm, "ami": ami})


def run_doctor(capsys, *args):
    status = cli.main(["doctor", "--timeout", "2", *args])
    out, err = capsys.readouterr()
    lines = {line.split()[1]: line for line in out.splitlines()}
    return status, lines, out + err


def status_of(lines, name):
    return lines[name].split()[0]


# --- all in order -------------------------------------------------------------------------

def test_everything_in_order_gives_one_ok_line_per_check_and_exit_0(setup, capsys):
    status, lines, out = run_doctor(capsys)

    assert list(lines) == ["configuration", "crm", "ami", "dialplan", "from-pstn", "data", "outbox", "fastagi",
                           "api", "freepbx"]
    assert {name: status_of(lines, name) for name in lines} == dict.fromkeys(lines, "OK"), out
    assert status == 0
    assert f"read from {setup.env_file}" in lines["configuration"]
    assert "secrets set: CLINICA_AMI_SECRET, CLINICA_API_KEYS" in lines["configuration"]
    # Whatever the sink answers to HEAD (it takes POST), it is there: the line says what.
    assert re.search(r"reachable: http://127\.0\.0\.1:\d+/api/Binotel/Push answered HTTP \d{3}", lines["crm"])
    assert "logged in as clinica@127.0.0.1" in lines["ami"]
    assert "clinica-push loaded (2 extensions)" in lines["dialplan"]
    assert "FastAGI mode: CLINICA_AGI=agi://127.0.0.1:4574/clinica-agi" in lines["dialplan"]
    assert "nothing waiting" in lines["outbox"] or "no call store yet" in lines["outbox"]
    assert "not read: auto: no " in lines["freepbx"] and "directory file alone" in lines["freepbx"]
    assert setup.crm.pushes() == []  # nothing was pushed
    assert setup.ami.logins() == ["clinica"]


def test_secrets_are_never_shown(setup, capsys):
    setup.write(ami_secret="wrong-" + AMI_SECRET)  # a failing login must not show it either
    _, _, out = run_doctor(capsys)
    assert AMI_SECRET not in out and API_SECRET not in out


# --- configuration ------------------------------------------------------------------------

def test_a_configuration_file_others_can_read_is_a_warning(setup, capsys):
    setup.env_file.chmod(0o644)
    status, lines, _ = run_doctor(capsys)
    assert status_of(lines, "configuration") == "WARN"
    assert f"chmod 600 {setup.env_file}" in lines["configuration"]
    assert status == 0


# --- the CRM ------------------------------------------------------------------------------

def test_crm_down_fails(setup, capsys, closed_port_url):
    setup.write(crm_push_url=closed_port_url)
    status, lines, _ = run_doctor(capsys)
    assert status_of(lines, "crm") == "FAIL"
    assert "cannot connect" in lines["crm"] and "Connection refused" in lines["crm"]
    assert status == 1


def test_crm_that_never_answers_fails_within_the_time_limit(setup, capsys):
    silent = listener()  # accepts the connection, never answers
    try:
        setup.write(crm_push_url=f"http://127.0.0.1:{silent.getsockname()[1]}/api/Binotel/Push")
        status, lines, _ = run_doctor(capsys, "--timeout", "0.3")
    finally:
        silent.close()
    assert status_of(lines, "crm") == "FAIL"
    assert "no answer within 0.3 s" in lines["crm"]


@pytest.mark.parametrize("status, verdict", [(301, "FAIL"), (302, "FAIL"), (303, "FAIL"), (307, "WARN"),
                                             (308, "WARN")])
def test_a_crm_url_that_redirects_is_named_with_where_it_points(setup, capsys, status, verdict):
    moved = RedirectingCrm(status, location="/api/Binotel/Push?token=url-token-77")
    try:
        setup.write(crm_push_url=moved.url)
        _, lines, out = run_doctor(capsys)
    finally:
        moved.stop()
    assert status_of(lines, "crm") == verdict
    assert f"HTTP {status}" in lines["crm"] and f"to {moved.base}/api/Binotel/Push:" in lines["crm"]
    assert "set CLINICA_CRM_PUSH_URL" in lines["crm"] and "url-token-77" not in out
    assert [r.method for r in moved.requests] == ["HEAD"]  # nothing pushed, the redirect not followed


def test_the_example_crm_url_fails_without_asking_anyone(setup, capsys):
    setup.write(crm_push_url="https://clinic.example.com/api/Binotel/Push")
    _, lines, _ = run_doctor(capsys)
    assert status_of(lines, "crm") == "FAIL"
    assert "set CLINICA_CRM_PUSH_URL" in lines["crm"]


def test_a_url_token_is_not_shown(setup, capsys):
    setup.write(crm_push_url=setup.crm.url + "?token=url-token-77")
    _, lines, out = run_doctor(capsys)
    assert status_of(lines, "crm") == "OK"
    assert "url-token-77" not in out


# --- AMI ----------------------------------------------------------------------------------

def test_ami_with_a_wrong_secret_fails(setup, capsys):
    setup.write(ami_secret="not-the-secret")
    status, lines, _ = run_doctor(capsys)
    assert status_of(lines, "ami") == "FAIL"
    assert "login refused (Authentication failed)" in lines["ami"]
    assert status == 1


def test_ami_that_never_greets_fails_within_the_time_limit(setup, capsys):
    silent = FakeAmi("silent").start()
    try:
        setup.write(ami_port=str(silent.port))
        _, lines, _ = run_doctor(capsys, "--timeout", "0.3")
    finally:
        silent.stop()
    assert status_of(lines, "ami") == "FAIL"
    assert "no answer within 0.3 s" in lines["ami"]


def test_ami_not_listening_fails(setup, capsys):
    setup.write(ami_port=str(free_port()))
    _, lines, _ = run_doctor(capsys)
    assert status_of(lines, "ami") == "FAIL"
    assert "cannot connect" in lines["ami"]


def test_without_an_ami_user_click_to_call_is_off_with_a_warning(setup, capsys):
    setup.write(ami_user=None, ami_secret=None)
    status, lines, _ = run_doctor(capsys)
    assert status_of(lines, "ami") == "WARN"
    assert "click-to-call is off" in lines["ami"]
    assert status == 0
    assert setup.ami.logins() == []


# --- dialplan -----------------------------------------------------------------------------

def test_dialplan_not_loaded_fails_and_says_how_to_load_it(setup, capsys):
    stand_in_asterisk(setup.bin, context=NO_CONTEXT)
    status, lines, _ = run_doctor(capsys)
    assert status_of(lines, "dialplan") == "FAIL"
    assert "#include extensions_clinica.conf" in lines["dialplan"] and "fwconsole reload" in lines["dialplan"]
    assert status == 1


def test_asterisk_not_running_fails(setup, capsys):
    stand_in_asterisk(setup.bin, context=NOT_RUNNING, status=1, from_pstn=NOT_RUNNING, our_copy=NOT_RUNNING)
    _, lines, _ = run_doctor(capsys)
    for check in ("dialplan", "from-pstn"):
        assert status_of(lines, check) == "FAIL"
        assert "Unable to connect to remote asterisk" in lines[check]


def test_asterisk_asked_the_right_questions(setup, capsys):
    run_doctor(capsys)
    assert (setup.bin / "calls.log").read_text().splitlines() == [
        "-rx dialplan show clinica-push", "-rx dialplan show globals", "-rx dialplan show from-pstn",
        "-rx dialplan show clinica-from-pstn"]


@pytest.mark.parametrize("shape", ["pbx17", "pbx16"])
def test_our_copy_of_freepbx_s_from_pstn_matches_on_freepbx_17_and_16(setup, capsys, shape):
    stand_in_asterisk(setup.bin, shape=shape)
    _, lines, _ = run_doctor(capsys)
    assert lines["from-pstn"].split(None, 2) == [
        "OK", "from-pstn", "[clinica-from-pstn] matches FreePBX's [from-pstn] (4 includes)"]


@pytest.mark.parametrize("shape", ["pbx17", "pbx16"])
def test_a_from_pstn_that_a_freepbx_update_changed_fails_in_one_clear_line(setup, capsys, shape):
    shown = (SHOWN / f"{shape}-from-pstn.txt").read_text()
    changed = shown.replace("  Include =>        'ext-did-catchall'",
                            "  Include =>        'ext-did-fax'                                 [pbx_config]\n"
                            "  Include =>        'ext-did-catchall'")
    stand_in_asterisk(setup.bin, shape=shape, from_pstn=changed)
    status, lines, out = run_doctor(capsys)
    assert [line for line in out.splitlines() if "from-pstn" in line.split()[1:2]] == [lines["from-pstn"]]
    assert lines["from-pstn"] == (
        "FAIL from-pstn     FreePBX's [from-pstn] includes ext-did, ext-did-post-custom, from-did-direct, "
        "ext-did-fax, ext-did-catchall but [clinica-from-pstn] ext-did, ext-did-post-custom, from-did-direct, "
        "ext-did-catchall: update [clinica-from-pstn] in extensions_clinica.conf to FreePBX's [from-pstn] "
        "without from-pstn-custom, then fwconsole reload")
    assert status == 1


def test_our_copy_not_loaded_fails(setup, capsys):
    stand_in_asterisk(setup.bin, our_copy=(SHOWN / "no-such-context.txt").read_text())
    _, lines, _ = run_doctor(capsys)
    assert status_of(lines, "from-pstn") == "FAIL" and "[clinica-from-pstn] is not loaded" in lines["from-pstn"]


def test_without_asterisk_on_this_host_the_dialplan_is_a_warning(setup, capsys):
    (setup.bin / "asterisk").unlink()
    status, lines, _ = run_doctor(capsys)
    assert status_of(lines, "dialplan") == "WARN"
    assert "not on this host" in lines["dialplan"]
    assert status == 0


def test_script_mode_needs_the_agi_script(setup, capsys, tmp_path, monkeypatch):
    stand_in_asterisk(setup.bin, agi=None)
    monkeypatch.setattr(doctor, "AGI_SCRIPT", str(tmp_path / "agi-bin" / "clinica-agi"))
    _, lines, _ = run_doctor(capsys)
    assert status_of(lines, "dialplan") == "FAIL"
    assert "script mode (CLINICA_AGI unset)" in lines["dialplan"] and "missing" in lines["dialplan"]

    (tmp_path / "agi-bin").mkdir()
    os.symlink(os.path.join(os.path.dirname(sys.executable), "clinica-agi"), tmp_path / "agi-bin" / "clinica-agi")
    _, lines, _ = run_doctor(capsys)
    assert status_of(lines, "dialplan") == "OK"


# --- service ports ------------------------------------------------------------------------

def test_fastagi_not_listening_fails_in_fastagi_mode(setup, capsys):
    setup.write(fastagi_bind=f"127.0.0.1:{free_port()}", api_bind=f"127.0.0.1:{free_port()}")
    status, lines, _ = run_doctor(capsys)
    assert status_of(lines, "fastagi") == "FAIL"
    assert "is the service running?" in lines["fastagi"]
    assert status_of(lines, "api") == "WARN"
    assert status == 1


def test_fastagi_not_listening_is_fine_in_script_mode(setup, capsys, monkeypatch):
    stand_in_asterisk(setup.bin, agi="clinica-agi")
    monkeypatch.setattr(doctor, "AGI_SCRIPT", os.path.join(os.path.dirname(sys.executable), "clinica-agi"))
    setup.write(fastagi_bind=f"127.0.0.1:{free_port()}")
    status, lines, _ = run_doctor(capsys)
    assert status_of(lines, "fastagi") == "OK"
    assert "not needed in script mode" in lines["fastagi"]
    assert status == 0


# --- data and outbox ----------------------------------------------------------------------

def test_data_directory_missing_is_a_warning_when_it_can_be_made(setup, capsys, tmp_path):
    setup.write(data_dir=str(tmp_path / "not-yet"))
    _, lines, _ = run_doctor(capsys)
    assert status_of(lines, "data") == "WARN"
    assert "does not exist yet" in lines["data"]
    assert not (tmp_path / "not-yet").exists()  # the doctor makes nothing


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_file_in_the_data_directory_its_owner_cannot_write_fails(setup, capsys):
    log = setup.data / "clinica-agi.log"
    log.write_text("")
    os.chown(log, 54321, 54321)
    _, lines, _ = run_doctor(capsys)
    assert status_of(lines, "data") == "FAIL"
    assert "clinica-agi.log (54321)" in lines["data"]


def store_with_waiting_events(data, age_s, failures=0):
    created = time.time() - age_s
    store = Store(str(data / "clinica.sqlite3"), clock=lambda: created)
    outbox = Outbox(store)
    with store.transaction():
        first = outbox.enqueue(1, "receivedTheCall", {"requestType": "receivedTheCall"})
        outbox.enqueue(1, "hangupTheCall", {"requestType": "hangupTheCall"})
    for _ in range(failures):
        outbox.mark_failed(first, "HTTP 500", 300)
    store.close()


def test_an_old_backlog_fails_with_count_age_and_last_error(setup, capsys):
    store_with_waiting_events(setup.data, age_s=2 * 3600, failures=3)
    status, lines, _ = run_doctor(capsys)
    assert status_of(lines, "outbox") == "FAIL"
    assert "2 event(s) waiting, the oldest for 2 h (tried 3 times, last error: HTTP 500)" in lines["outbox"]
    assert status == 1


def test_a_recent_backlog_is_fine_and_a_stuck_one_a_warning(setup, capsys):
    store_with_waiting_events(setup.data, age_s=5)
    _, lines, _ = run_doctor(capsys)
    assert status_of(lines, "outbox") == "OK"
    assert "2 event(s) waiting" in lines["outbox"]

    (setup.data / "clinica.sqlite3").unlink()
    store_with_waiting_events(setup.data, age_s=600)
    _, lines, _ = run_doctor(capsys)
    assert status_of(lines, "outbox") == "WARN"
    assert "the oldest for 10 min" in lines["outbox"]


def test_no_call_store_yet_is_fine_and_none_is_made(setup, capsys):
    _, lines, _ = run_doctor(capsys)
    assert "no call store yet" in lines["outbox"]
    assert not (setup.data / "clinica.sqlite3").exists()


# --- time limits --------------------------------------------------------------------------

def test_a_check_that_hangs_is_a_failure_after_its_time_limit():
    never = threading.Event()

    def hangs(ctx):
        never.wait()

    check = doctor.within(0.1, "stuck", hangs, None)
    never.set()
    assert (check.status, check.name, check.detail) == ("FAIL", "stuck", "no answer within 0.1 s")


def test_a_check_that_breaks_is_a_failure_not_a_crash():
    def breaks(ctx):
        raise RuntimeError("boom")

    check = doctor.within(1, "broken", breaks, None)
    assert (check.status, check.detail) == ("FAIL", "RuntimeError: boom")


def test_invalid_configuration_is_the_failed_check(tmp_path, capsys, monkeypatch):
    from clinica_asterisk.cli.main import ExitStatus, main

    env_file = tmp_path / "bad.env"
    env_file.write_text("CLINICA_HOOK_DEADLINE_MS=soon\n")
    monkeypatch.setenv("CLINICA_ENV_FILE", str(env_file))
    assert main(["doctor"]) == ExitStatus.CONFIG
    out = capsys.readouterr().out
    assert out.startswith("FAIL configuration") and "CLINICA_HOOK_DEADLINE_MS" in out


# --- FreePBX's database -------------------------------------------------------------------

def test_freepbx_s_database_read_says_how_much_it_found_and_never_the_password(setup, capsys, freepbx_db):
    from support.mariadb import RO_PASSWORD

    setup.write(freepbx_db=freepbx_db.url())
    status, lines, out = run_doctor(capsys)
    assert status_of(lines, "freepbx") == "OK"
    assert lines["freepbx"].endswith(
        f"clinica@127.0.0.1:{freepbx_db.port}/asterisk (credentials from CLINICA_FREEPBX_DB): "
        "5 extensions (2 named in User Management), 6 inbound routes, 2 trunks with a number")
    assert "secrets set: CLINICA_AMI_SECRET, CLINICA_API_KEYS, CLINICA_FREEPBX_DB" in lines["configuration"]
    assert RO_PASSWORD not in out and "r0%3Ap" not in out
    assert status == 0


def test_freepbx_s_own_credentials_are_used_by_auto(setup, capsys, freepbx_db, tmp_path):
    from support.mariadb import FREEPBX_PASSWORD

    conf = tmp_path / "freepbx.conf"
    conf.write_text(f'<?php\n$amp_conf["AMPDBUSER"] = "freepbxuser";\n$amp_conf["AMPDBPASS"] = "{FREEPBX_PASSWORD}";\n'
                    f'$amp_conf["AMPDBSOCK"] = "{freepbx_db.socket}";\n$amp_conf["AMPDBNAME"] = "asterisk";\n')
    setup.write(freepbx_conf=str(conf))
    _, lines, out = run_doctor(capsys)
    assert status_of(lines, "freepbx") == "OK"
    assert f"freepbxuser@unix:{freepbx_db.socket}/asterisk (credentials from {conf}): 5 extensions" in lines["freepbx"]
    assert FREEPBX_PASSWORD not in out


def test_a_freepbx_database_that_cannot_be_reached_fails(setup, capsys, freepbx_db):
    from support.mariadb import RO_PASSWORD

    port = free_port()
    setup.write(freepbx_db=freepbx_db.url(port=port))
    status, lines, out = run_doctor(capsys)
    assert status_of(lines, "freepbx") == "FAIL"
    assert f"clinica@127.0.0.1:{port}/asterisk (credentials from CLINICA_FREEPBX_DB): cannot read: (2003)" \
        in lines["freepbx"]
    assert RO_PASSWORD not in out
    assert status == 1


def test_a_freepbx_user_without_the_grants_fails_and_says_which(setup, capsys, freepbx_db):
    freepbx_db.execute("CREATE USER IF NOT EXISTS 'partial'@'127.0.0.1' IDENTIFIED BY 'pw'",
                       "GRANT SELECT ON asterisk.users TO 'partial'@'127.0.0.1'", database=None)
    setup.write(freepbx_db=freepbx_db.url(user="partial", password="pw"))
    _, lines, _ = run_doctor(capsys)
    assert status_of(lines, "freepbx") == "FAIL"
    assert "(1142) SELECT command denied" in lines["freepbx"]
    assert lines["freepbx"].endswith("the user needs SELECT on users, userman_users, incoming, trunks")


def test_freepbx_s_database_off_is_only_a_note(setup, capsys):
    setup.write(freepbx_db="off")
    status, lines, _ = run_doctor(capsys)
    assert (status_of(lines, "freepbx"), status) == ("OK", 0)
    assert "not read: off (CLINICA_FREEPBX_DB=off)" in lines["freepbx"]


def test_a_freepbx_conf_the_service_cannot_read_is_a_warning(setup, capsys, tmp_path):
    setup.write(freepbx_conf=str(tmp_path))  # a directory: exists, cannot be read as a file (even by root)
    status, lines, _ = run_doctor(capsys)
    assert (status_of(lines, "freepbx"), status) == ("WARN", 0)
    assert "cannot be read by this user" in lines["freepbx"] and "SupplementaryGroups=asterisk" in lines["freepbx"]


def test_a_freepbx_conf_without_a_database_user_is_a_warning(setup, capsys, tmp_path):
    conf = tmp_path / "freepbx.conf"
    conf.write_text("<?php\nrequire_once('/var/www/html/admin/bootstrap.php');\n")
    setup.write(freepbx_conf=str(conf))
    _, lines, _ = run_doctor(capsys)
    assert status_of(lines, "freepbx") == "WARN"
    assert f"{conf}: no AMPDBUSER" in lines["freepbx"]
