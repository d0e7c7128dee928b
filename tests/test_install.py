"""install.sh run against a fake root: a temporary tree laid out like a FreePBX host
(/etc/asterisk, /var/lib/asterisk/agi-bin, /etc/systemd/system, ...) with stand-in
asterisk / fwconsole / systemctl / useradd / userdel / chown commands on PATH that record
their calls.  Nothing outside the temporary directory is touched.

The package is not built here: ``--use-venv`` links the prefix's virtualenv to the one
running the tests; one test drives the default path with a stand-in python and pip."""

import os
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from clinica_asterisk.config import load_settings

REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent
BEGIN = "; clinica-asterisk: begin (added by install.sh; install.sh --uninstall removes it)"
END = "; clinica-asterisk: end"

EXTENSIONS_CUSTOM = "; FreePBX custom dialplan\n[from-internal-custom]\nexten => 1234,1,Playback(demo-congrats)\n"
# No final newline: uninstall must give it back byte for byte.
MANAGER_CUSTOM = "[monitoring]\nsecret=kept-as-it-is\nread=system"

# Units of the checkout that another part of the project provides; until they exist a
# minimal stand-in lets the installer run (the real file is used as soon as it is there).
PLACEHOLDERS = {
    "systemd/clinica-asterisk.service": (
        "[Unit]\nDescription=clinica-asterisk (stand-in)\n\n[Service]\nType=notify\nUser=clinica-asterisk\n"
        "ExecStart=/opt/clinica-asterisk/venv/bin/clinica-asterisk serve\n"
        "ReadWritePaths=/var/lib/clinica-asterisk\n\n[Install]\nWantedBy=multi-user.target\n"),
}
CHECKOUT_FILES = [
    "install.sh", ".env.example", "setup.cfg", "pyproject.toml", "dialplan/extensions_clinica.conf",
    "systemd/clinica-asterisk.service", "systemd/clinica-asterisk-deliver.service",
    "packaging/logrotate/clinica-asterisk",
]

def recorder(name):
    return '#!/bin/sh\nprintf "%%s\\n" "%s $*" >> "$CALLS_LOG"\n' % name


USERADD = recorder("useradd") + r'''
prefix= comment= name=
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) prefix=$2; shift 2 ;;
        --comment) comment=$2; shift 2 ;;
        --home-dir|--groups|--shell) shift 2 ;;
        -*) shift ;;
        *) name=$1; shift ;;
    esac
done
[ -n "$prefix" ] || { echo "stand-in useradd: refusing to touch this machine" >&2; exit 9; }
echo "$name:x:$(id -u):$(id -g):$comment:/var/lib/clinica-asterisk:/usr/sbin/nologin" >> "$prefix/etc/passwd"
echo "$name:x:$(id -g):" >> "$prefix/etc/group"
'''
USERDEL = recorder("userdel") + r'''
[ "$1" = --prefix ] || { echo "stand-in userdel: refusing to touch this machine" >&2; exit 9; }
for f in "$2/etc/passwd" "$2/etc/group"; do
    grep -v "^$3:" "$f" > "$f.new" || true
    cat "$f.new" > "$f"; rm -f "$f.new"
done
'''


@pytest.fixture
def checkout(tmp_path):
    """A copy of the files install.sh installs from, with the package's sources."""
    dest = tmp_path / "checkout"
    for name in CHECKOUT_FILES:
        source, target = REPO / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.exists():
            target.write_bytes(source.read_bytes())
        else:
            target.write_text(PLACEHOLDERS[name])
    (dest / "install.sh").chmod(0o755)
    package = dest / "agi" / "clinica_asterisk"
    package.mkdir(parents=True)
    for source in (REPO / "agi" / "clinica_asterisk").glob("*.py"):
        (package / source.name).write_bytes(source.read_bytes())
    return dest


def make_root(path, asterisk_ids=None):
    uid, gid = asterisk_ids or (os.getuid(), os.getgid())
    for d in ("etc/asterisk", "etc/systemd/system", "etc/logrotate.d", "var/lib/asterisk/agi-bin",
              "opt", "usr/local/bin", "var/spool/asterisk/monitor"):
        (path / d).mkdir(parents=True)
    (path / "etc/passwd").write_text(f"root:x:0:0:root:/root:/bin/bash\nasterisk:x:{uid}:{gid}:Asterisk:/home/asterisk:/bin/bash\n")
    (path / "etc/group").write_text(f"root:x:0:\nasterisk:x:{gid}:\n")
    (path / "etc/freepbx.conf").write_text("<?php\n")
    (path / "etc/asterisk/extensions_custom.conf").write_text(EXTENSIONS_CUSTOM)
    (path / "etc/asterisk/manager_custom.conf").write_text(MANAGER_CUSTOM)
    (path / "var/lib/asterisk/agi-bin/other.agi").write_text("#!/bin/sh\n")
    return path


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path / "root")


class Installer:
    def __init__(self, checkout, root, tmp_path, fwconsole=True):
        self.checkout, self.root = checkout, root
        self.bin = tmp_path / "stand-ins"
        self.bin.mkdir(exist_ok=True)
        self.calls_log = tmp_path / "calls.log"
        names = ["asterisk", "systemctl", "chown"] + (["fwconsole"] if fwconsole else [])
        for name in names:
            self.stand_in(name, recorder(name))
        self.stand_in("useradd", USERADD)
        self.stand_in("userdel", USERDEL)

    def stand_in(self, name, text):
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)

    def run(self, *args, use_venv=True, env=None):
        self.calls_log.write_text("")
        command = ["bash", str(self.checkout / "install.sh"), "--root", str(self.root), *args]
        if use_venv:
            command += ["--use-venv", str(VENV)]
        environ = {k: v for k, v in os.environ.items() if k != "PYTHON"}
        environ.update(PATH=f"{self.bin}:{os.environ['PATH']}", CALLS_LOG=str(self.calls_log), **(env or {}))
        done = subprocess.run(command, capture_output=True, text=True, env=environ, timeout=120)
        self.calls = self.calls_log.read_text().splitlines()
        return done

    def ok(self, *args, **kwargs):
        done = self.run(*args, **kwargs)
        assert done.returncode == 0, done.stderr + done.stdout
        return done


@pytest.fixture
def installer(checkout, root, tmp_path):
    return Installer(checkout, root, tmp_path)


def snapshot(root, strict=False):
    """Every path under root: its kind, mode, content or link target (and, strict, the
    modification times, so that a file rewritten with the same bytes shows)."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                tree[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                tree[rel] = ("dir", stat.S_IMODE(st.st_mode)) + ((st.st_mtime_ns,) if strict else ())
            else:
                tree[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes()) + ((st.st_mtime_ns,) if strict else ())
    return tree


def block(*lines):
    return "\n".join([BEGIN, *lines, END]) + "\n"


def read(root, path):
    return (root / path.lstrip("/")).read_text()


def settings_of(root):
    return load_settings({"CLINICA_ENV_FILE": str(root / "etc/clinica-asterisk/.env")})


# --- what each mode writes ----------------------------------------------------------------

def test_script_mode_links_the_hook_adds_the_dialplan_and_the_worker(installer, root, checkout):
    done = installer.ok("--mode", "script")

    assert os.readlink(root / "var/lib/asterisk/agi-bin/clinica-agi") == "/opt/clinica-asterisk/venv/bin/clinica-agi"
    assert os.readlink(root / "opt/clinica-asterisk/venv") == str(VENV)
    assert os.readlink(root / "usr/local/bin/clinica-asterisk") == "/opt/clinica-asterisk/venv/bin/clinica-asterisk"
    assert read(root, "/etc/asterisk/extensions_clinica.conf") == (checkout / "dialplan/extensions_clinica.conf").read_text()
    assert read(root, "/etc/asterisk/extensions_custom.conf") == EXTENSIONS_CUSTOM + block("#include extensions_clinica.conf")
    assert read(root, "/etc/asterisk/globals_custom.conf") == block("CLINICA_AGI = clinica-agi")
    assert read(root, "/etc/systemd/system/clinica-asterisk-deliver.service") == \
        (checkout / "systemd/clinica-asterisk-deliver.service").read_text()
    assert "/var/lib/clinica-asterisk/clinica-agi.log {" in read(root, "/etc/logrotate.d/clinica-asterisk")
    assert not (root / "etc/systemd/system/clinica-asterisk.service").exists()
    # Untouched: other people's files.
    assert read(root, "/etc/asterisk/manager_custom.conf") == MANAGER_CUSTOM
    assert read(root, "/var/lib/asterisk/agi-bin/other.agi") == "#!/bin/sh\n"

    env_file = root / "etc/clinica-asterisk/.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_text() == (checkout / ".env.example").read_text()
    assert settings_of(root).data_dir == "/var/lib/clinica-asterisk"
    assert stat.S_IMODE((root / "var/lib/clinica-asterisk").stat().st_mode) == 0o750

    # The asterisk user already owns what it needs here, so no chown; no user is made.
    assert installer.calls == ["fwconsole reload",
                               f"systemctl --root={root} enable clinica-asterisk-deliver.service"]
    assert "CLINICA_CRM_PUSH_URL" in done.stdout  # the next step is named


def test_script_mode_gives_configuration_and_data_to_the_asterisk_user(checkout, tmp_path):
    root = make_root(tmp_path / "root", asterisk_ids=(4242, 4343))
    installer = Installer(checkout, root, tmp_path)
    installer.ok("--mode", "script")
    assert f"chown 4242:4343 {root}/etc/clinica-asterisk/.env" in installer.calls
    assert f"chown -R 4242:4343 {root}/var/lib/clinica-asterisk" in installer.calls
    assert not any(c.startswith("useradd") for c in installer.calls)


def test_fastagi_mode_points_the_dialplan_at_the_local_service(installer, root, checkout):
    installer.ok("--mode", "fastagi")

    assert read(root, "/etc/asterisk/globals_custom.conf") == block("CLINICA_AGI = agi://127.0.0.1:4574/clinica-agi")
    assert read(root, "/etc/asterisk/extensions_custom.conf") == EXTENSIONS_CUSTOM + block("#include extensions_clinica.conf")
    assert read(root, "/etc/systemd/system/clinica-asterisk.service") == \
        (checkout / "systemd/clinica-asterisk.service").read_text()
    for script_only in ("var/lib/asterisk/agi-bin/clinica-agi", "etc/systemd/system/clinica-asterisk-deliver.service",
                        "etc/logrotate.d/clinica-asterisk"):
        assert not os.path.lexists(root / script_only)
    assert installer.calls == [
        f"useradd --prefix {root} --system --user-group --groups asterisk --home-dir /var/lib/clinica-asterisk "
        "--no-create-home --shell /usr/sbin/nologin --comment clinica-asterisk service (install.sh) clinica-asterisk",
        "fwconsole reload",
        f"systemctl --root={root} enable clinica-asterisk.service",
    ]
    assert "clinica-asterisk:x:" in read(root, "/etc/passwd")


def test_fastagi_mode_reaches_the_service_where_the_configuration_binds_it(installer, root):
    (root / "etc/clinica-asterisk").mkdir()
    env_file = root / "etc/clinica-asterisk/.env"
    env_file.write_text("CLINICA_CRM_PUSH_URL=https://crm.test/api/Binotel/Push\nCLINICA_FASTAGI_BIND=127.0.0.1:4600\n")
    installer.ok("--mode", "fastagi")
    assert read(root, "/etc/asterisk/globals_custom.conf") == block("CLINICA_AGI = agi://127.0.0.1:4600/clinica-agi")
    assert env_file.read_text().endswith("CLINICA_FASTAGI_BIND=127.0.0.1:4600\n")  # kept as it was


def test_vm_mode_installs_the_service_only_and_prints_the_pbx_lines(installer, root):
    (root / "etc/asterisk/extensions_custom.conf").unlink()
    (root / "etc/asterisk/manager_custom.conf").unlink()
    (root / "etc/asterisk").rmdir()

    done = installer.ok("--mode", "vm", "--pbx", "10.0.0.5")

    assert (root / "etc/systemd/system/clinica-asterisk.service").exists()
    assert not (root / "etc/asterisk").exists()
    settings = settings_of(root)
    assert settings.fastagi_bind == ("0.0.0.0", 4574)
    assert [str(n) for n in settings.fastagi_allow] == ["10.0.0.5/32"]
    assert "#include extensions_clinica.conf" in done.stdout
    assert "CLINICA_AGI = agi://" in done.stdout and ":4574/clinica-agi" in done.stdout
    assert "fwconsole reload" in done.stdout
    assert installer.calls[0].startswith(f"useradd --prefix {root} --system --user-group --home-dir")
    assert installer.calls[1:] == [f"systemctl --root={root} enable clinica-asterisk.service"]


def test_vm_mode_without_the_pbx_address_warns_that_anyone_may_connect(installer, root):
    done = installer.ok("--mode", "vm")
    assert "CLINICA_FASTAGI_ALLOW" in done.stdout
    assert settings_of(root).fastagi_allow == ()


def test_vm_mode_on_a_shared_store_sets_its_url_with_a_password_of_its_own_and_prints_the_sql(
        installer, root, tmp_path):
    ca = tmp_path / "db-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")

    done = installer.ok("--mode", "vm", "--pbx", "10.0.0.5", "--store", "10.0.0.20:3307", "--store-ca", str(ca))

    settings = settings_of(root)
    url = urlsplit(settings.store_url)
    assert (url.scheme, url.username, url.hostname, url.port, url.path) == ("mysql", "clinica", "10.0.0.20", 3307,
                                                                            "/clinica")
    assert url.query == "ssl_ca=/etc/clinica-asterisk/db-ca.pem"
    assert read(root, "/etc/clinica-asterisk/db-ca.pem") == ca.read_text()
    password = url.password
    assert len(password) >= 32
    assert password not in done.stdout + done.stderr  # only in the .env (0600)
    assert stat.S_IMODE((root / "etc/clinica-asterisk/.env").stat().st_mode) == 0o600
    # The SQL for the database server: the database, this VM's user (TLS required), the grants.
    assert "CREATE DATABASE IF NOT EXISTS clinica CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;" in done.stdout
    assert "IDENTIFIED BY '<the password in CLINICA_STORE_URL of /etc/clinica-asterisk/.env>' REQUIRE SSL;" in done.stdout
    assert "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX ON clinica.* TO 'clinica'@'" in done.stdout
    # Run again (an upgrade, another --store port): the password stays.
    installer.ok("--mode", "vm", "--store", "10.0.0.20")
    again = urlsplit(settings_of(root).store_url)
    assert again.password == password and again.port == 3306 and again.query == ""


def test_a_shared_store_goes_with_vm_mode(installer, root, tmp_path):
    done = installer.run("--mode", "fastagi", "--store", "10.0.0.20")
    assert done.returncode != 0 and "--store goes with --mode vm" in done.stderr
    done = installer.run("--mode", "vm", "--store", "db;rm -rf /")
    assert done.returncode != 0 and "--store takes HOST or HOST:PORT" in done.stderr


def test_a_prefix_is_written_into_links_and_units(installer, root):
    assert "no " + str(root / "srv") in installer.run("--mode", "script", "--prefix", "/srv/clinica").stderr
    (root / "srv").mkdir()
    installer.ok("--mode", "script", "--prefix", "/srv/clinica")
    assert os.readlink(root / "var/lib/asterisk/agi-bin/clinica-agi") == "/srv/clinica/venv/bin/clinica-agi"
    unit = read(root, "/etc/systemd/system/clinica-asterisk-deliver.service")
    assert "ExecStart=/srv/clinica/venv/bin/clinica-asterisk deliver --forever" in unit
    assert "/opt/clinica-asterisk" not in unit
    assert "prefix=/srv/clinica\n" in read(root, "/etc/clinica-asterisk/install.state")
    assert not (root / "opt/clinica-asterisk").exists()


def test_upgrade_and_uninstall_find_the_prefix_by_themselves(installer, root):
    (root / "srv").mkdir()
    before = snapshot(root)
    installer.ok("--mode", "script", "--prefix", "/srv/clinica")
    assert installer.ok().stdout.count("Nothing to change") == 1
    moved = installer.run("--prefix", "/opt/elsewhere")
    assert moved.returncode != 0 and "installed in /srv/clinica" in moved.stderr
    installer.ok("--uninstall", "--purge")
    assert snapshot(root) == before


def test_refuses_a_virtualenv_directory_that_is_something_else(installer, root):
    (root / "opt/clinica-asterisk/venv").mkdir(parents=True)
    (root / "opt/clinica-asterisk/venv/notes.txt").write_text("mine\n")
    done = installer.run("--mode", "script", use_venv=False)
    assert done.returncode != 0
    assert "is not a virtualenv" in done.stderr


def test_without_fwconsole_the_dialplan_is_reloaded_through_asterisk(checkout, root, tmp_path):
    installer = Installer(checkout, root, tmp_path, fwconsole=False)
    installer.ok("--mode", "script")
    assert "asterisk -rx dialplan reload" in installer.calls


def test_an_include_already_there_is_left_alone(installer, root):
    custom = EXTENSIONS_CUSTOM + "#include extensions_clinica.conf\n"
    (root / "etc/asterisk/extensions_custom.conf").write_text(custom)
    installer.ok("--mode", "script")
    assert read(root, "/etc/asterisk/extensions_custom.conf") == custom
    installer.ok("--uninstall")
    assert read(root, "/etc/asterisk/extensions_custom.conf") == custom


def test_the_default_path_builds_a_virtualenv_and_installs_the_checkout(installer, root, checkout, tmp_path):
    # A python that makes a stand-in virtualenv whose pip records what it is asked.
    pip = recorder("pip") + (
        'here=$(dirname "$0")\n'
        'for s in clinica-agi clinica-asterisk; do printf "#!/bin/sh\\n" > "$here/$s"; chmod +x "$here/$s"; done\n')
    python = tmp_path / "python-standin"
    python.write_text(
        recorder("python") +
        'if [ "$1" = -m ] && [ "$2" = venv ]; then\n'
        '    mkdir -p "$3/bin" && ln -s "%s" "$3/bin/python" && : > "$3/pyvenv.cfg"\n'
        "    cat > \"$3/bin/pip\" <<'EOF'\n%sEOF\n"
        '    chmod +x "$3/bin/pip"; exit 0\n'
        'fi\n'
        'exec "%s" "$@"\n' % (sys.executable, pip, sys.executable))
    python.chmod(0o755)
    env = {"PYTHON": str(python)}

    installer.ok("--mode", "script", use_venv=False, env=env)
    venv = root / "opt/clinica-asterisk/venv"
    made = [c for c in installer.calls if c.startswith(("python -m", "pip"))]
    assert made == [f"python -m venv {venv}", f"pip install --quiet {checkout}"]

    installer.ok(use_venv=False, env=env)
    assert not [c for c in installer.calls if c.startswith(("python -m", "pip"))]

    # A changed checkout is an upgrade: installed again.
    (checkout / "agi/clinica_asterisk/__init__.py").write_text('__version__ = "0.1.1"\n')
    installer.ok(use_venv=False, env=env)
    assert [c for c in installer.calls if c.startswith("pip")] == [f"pip install --quiet {checkout}"]


# --- idempotence, uninstall, purge, dry run -----------------------------------------------

MODES = [("script", "--ami"), ("fastagi", "--ami"), ("vm", "--ami")]


@pytest.mark.parametrize("mode,extra", MODES)
def test_a_second_run_changes_nothing(installer, root, mode, extra):
    installer.ok("--mode", mode, extra)
    before = snapshot(root, strict=True)

    done = installer.ok("--mode", mode, extra)

    assert snapshot(root, strict=True) == before
    assert installer.calls == []
    assert "Nothing to change" in done.stdout


@pytest.mark.parametrize("mode,extra", MODES)
def test_uninstall_removes_what_it_added_and_keeps_configuration_and_data(installer, root, mode, extra):
    before = snapshot(root)
    installer.ok("--mode", mode, extra)

    done = installer.ok("--uninstall")

    after = snapshot(root)
    kept = {"etc/clinica-asterisk", "etc/clinica-asterisk/.env", "var/lib/clinica-asterisk"}
    assert kept <= set(after)
    if mode != "script":  # the service user stays with its data
        kept |= {"etc/passwd", "etc/group"}
        assert "clinica-asterisk:x:" in read(root, "/etc/passwd")
    assert {k: v for k, v in after.items() if k not in kept} == {k: v for k, v in before.items() if k not in kept}
    assert "--purge" in done.stdout
    unit = "clinica-asterisk-deliver.service" if mode == "script" else "clinica-asterisk.service"
    assert f"systemctl --root={root} disable {unit}" in installer.calls
    if mode != "vm":
        assert installer.calls[:2] == ["fwconsole reload", "asterisk -rx manager reload"]


@pytest.mark.parametrize("mode,extra", MODES)
def test_purge_gives_back_the_tree_as_it_was(installer, root, mode, extra):
    before = snapshot(root)
    installer.ok("--mode", mode, extra)

    installer.ok("--uninstall", "--purge")

    assert snapshot(root) == before
    assert any(c.startswith("userdel") for c in installer.calls) == (mode != "script")


def test_purge_after_uninstall_still_removes_configuration_data_and_user(installer, root):
    before = snapshot(root)
    installer.ok("--mode", "fastagi")
    installer.ok("--uninstall")
    done = installer.ok("--uninstall", "--purge")
    assert "No installation found" in done.stdout
    assert snapshot(root) == before


def test_dry_run_of_an_install_touches_nothing(installer, root):
    before = snapshot(root, strict=True)
    done = installer.ok("--mode", "fastagi", "--ami", "--dry-run")
    assert snapshot(root, strict=True) == before
    assert installer.calls == []
    assert "would create" in done.stdout and "would run: useradd" in done.stdout
    assert "would run: fwconsole reload" in done.stdout


@pytest.mark.parametrize("args", [("--mode", "vm"), ("--uninstall",), ("--uninstall", "--purge")])
def test_dry_run_on_an_installed_system_touches_nothing(installer, root, args):
    installer.ok("--mode", "script", "--ami")
    before = snapshot(root, strict=True)
    done = installer.ok(*args, "--dry-run")
    assert snapshot(root, strict=True) == before
    assert installer.calls == []
    assert "would " in done.stdout


# --- configuration, AMI, changes of mode ---------------------------------------------------

def test_configuration_is_never_overwritten(installer, root):
    installer.ok("--mode", "script")
    env_file = root / "etc/clinica-asterisk/.env"
    edited = env_file.read_text().replace("https://clinic.example.com", "https://crm.test") + "CLINICA_COMPANY_ID=3041\n"
    env_file.write_text(edited)
    env_file.chmod(0o644)

    installer.ok("--mode", "fastagi")

    assert env_file.read_text() == edited
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


def test_ami_user_is_made_for_click_to_call_and_its_secret_never_shown(installer, root):
    done = installer.ok("--mode", "script", "--ami")

    manager = read(root, "/etc/asterisk/manager_custom.conf")
    assert manager.startswith(MANAGER_CUSTOM + "\n" + BEGIN + "\n[clinica]\nsecret=")
    secret = manager.split("secret=")[2].split("\n")[0]
    assert len(secret) >= 32
    assert manager.endswith("\ndeny=0.0.0.0/0.0.0.0\npermit=127.0.0.1/255.255.255.255\nread=call\nwrite=originate,reporting,call\n" + END + "\n")
    settings = settings_of(root)
    assert (settings.ami_user, settings.ami_secret) == ("clinica", secret)
    assert secret not in done.stdout + done.stderr
    assert "asterisk -rx manager reload" in installer.calls

    again = installer.ok("--ami")
    assert read(root, "/etc/asterisk/manager_custom.conf") == manager
    assert secret not in again.stdout + again.stderr


def test_an_ami_user_of_the_admin_is_left_alone(installer, root):
    mine = "[clinica]\nsecret=admins-own\nwrite=originate\n"
    (root / "etc/asterisk/manager_custom.conf").write_text(mine)
    done = installer.ok("--mode", "fastagi", "--ami")
    assert read(root, "/etc/asterisk/manager_custom.conf") == mine
    assert "[clinica]" in done.stderr
    assert "admins-own" not in done.stdout + done.stderr


def test_switching_from_script_to_fastagi_takes_the_script_hook_away(installer, root):
    installer.ok("--mode", "script")
    installer.ok("--mode", "fastagi")

    assert not os.path.lexists(root / "var/lib/asterisk/agi-bin/clinica-agi")
    assert not (root / "etc/systemd/system/clinica-asterisk-deliver.service").exists()
    assert not (root / "etc/logrotate.d/clinica-asterisk").exists()
    assert read(root, "/etc/asterisk/globals_custom.conf") == block("CLINICA_AGI = agi://127.0.0.1:4574/clinica-agi")
    assert f"systemctl --root={root} disable clinica-asterisk-deliver.service" in installer.calls
    assert f"systemctl --root={root} enable clinica-asterisk.service" in installer.calls
    assert "fwconsole reload" in installer.calls


def test_an_upgrade_keeps_the_installed_mode(installer, root):
    installer.ok("--mode", "fastagi")
    done = installer.ok()
    assert "(fastagi mode)" in done.stdout
    assert installer.calls == []


# --- refusals -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["script", "fastagi"])
def test_refuses_a_freepbx_mode_without_asterisk(installer, root, mode):
    for f in (root / "etc/asterisk").iterdir():
        f.unlink()
    (root / "etc/asterisk").rmdir()
    before = snapshot(root, strict=True)

    done = installer.run("--mode", mode)

    assert done.returncode != 0
    assert "/etc/asterisk" in done.stderr and "--mode vm" in done.stderr
    assert snapshot(root, strict=True) == before
    assert installer.calls == []


def test_refuses_python_older_than_3_9_and_says_what_to_do(installer, root, tmp_path):
    python36 = tmp_path / "python3"
    python36.write_text('#!/bin/sh\ncase "$*" in *print*) echo 3.6.8; exit 0 ;; esac\nexit 1\n')
    python36.chmod(0o755)
    before = snapshot(root, strict=True)

    done = installer.run("--mode", "script", use_venv=False, env={"PYTHON": str(python36)})

    assert done.returncode != 0
    assert "Python 3.9 or newer is needed" in done.stderr and "(3.6.8)" in done.stderr
    assert "FreePBX 16" in done.stderr and "--mode vm" in done.stderr
    assert snapshot(root, strict=True) == before


def test_refuses_a_python_without_the_venv_module(installer, root, tmp_path):
    python = tmp_path / "python3"
    python.write_text('#!/bin/sh\ncase "$*" in *ensurepip*) exit 1 ;; esac\nexec "%s" "$@"\n' % sys.executable)
    python.chmod(0o755)
    done = installer.run("--mode", "script", use_venv=False, env={"PYTHON": str(python)})
    assert done.returncode != 0
    assert "python3-venv" in done.stderr


def test_refuses_script_mode_without_the_asterisk_user(installer, root):
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    done = installer.run("--mode", "script")
    assert done.returncode != 0
    assert "no user asterisk" in done.stderr


def test_a_first_install_needs_a_mode(installer):
    done = installer.run()
    assert done.returncode != 0
    assert "choose --mode" in done.stderr


def test_help_lists_the_options(installer):
    done = installer.ok("--help")
    for option in ("--mode script|fastagi|vm", "--root DIR", "--dry-run", "--uninstall", "--prefix DIR",
                   "--purge", "--ami", "--help"):
        assert option in done.stdout


def test_a_prefix_directory_that_was_there_stays_with_what_it_holds(installer, root):
    (root / "opt/clinica-asterisk").mkdir()
    (root / "opt/clinica-asterisk/README.local").write_text("site notes\n")
    before = snapshot(root)
    installer.ok("--mode", "script")
    installer.ok("--uninstall", "--purge")
    assert snapshot(root) == before


def test_run_by_sh_it_switches_to_bash(installer):
    done = subprocess.run(["sh", str(installer.checkout / "install.sh"), "--help"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and "--mode script|fastagi|vm" in done.stdout
