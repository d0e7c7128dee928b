"""Check the installation, one line per check: OK, WARN or FAIL and what was found.

Checks the configuration, the CRM's push URL, the AMI login, the dialplan loaded in
Asterisk (and that our copy of FreePBX's [from-pstn] still matches it), the data
directory, the outbox backlog, the service's ports and FreePBX's database (three
SELECTs).  Each check has a time limit (--timeout).  The CRM gets a HEAD
request only; the only write is a probe file in the data directory, removed at once.
Secrets are never shown.  The exit status is 1 when a check FAILed."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional
from urllib.parse import urlsplit

from .exit_status import ExitStatus
from ..config import DEFAULTS, SECRET_KEYS, Settings, read_env_file
from ..redact import scrub, shown_url

OK, WARN, FAIL = "OK", "WARN", "FAIL"

# Where Asterisk looks for AGI scripts (astagidir) on FreePBX.
AGI_SCRIPT = "/var/lib/asterisk/agi-bin/clinica-agi"
EXAMPLE_CRM_HOST = "clinic.example.com"  # the URL .env.example ships with
BACKLOG_WARN_S = 300
BACKLOG_FAIL_S = 3600


@dataclass(frozen=True)
class Check:
    status: str
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name:<13} {self.detail}"


@dataclass
class Context:
    settings: Settings
    timeout_s: float
    environ: dict
    # Filled in by the dialplan check: CLINICA_AGI as Asterisk has it ("" when unset),
    # None when Asterisk could not be asked.
    agi_target: Optional[str] = None
    notes: List[str] = field(default_factory=list)


def add_arguments(parser) -> None:
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="time limit of each check (default 5)")


def run(args, settings) -> int:
    timeout_s = min(max(args.timeout, 0.1), 60.0)
    failed = False
    for check in run_checks(Context(settings, timeout_s, dict(os.environ))):
        print(check.line(), flush=True)
        failed = failed or check.status == FAIL
    return ExitStatus.ERROR if failed else ExitStatus.OK


def report_config_error(error) -> None:
    """The settings could not be loaded: that is the check that failed (the others need them)."""
    print(Check(FAIL, "configuration", str(error)).line(), flush=True)


def run_checks(ctx: Context) -> Iterator[Check]:
    for name, check in CHECKS:
        yield within(ctx.timeout_s, name, check, ctx)


def within(timeout_s: float, name: str, check: Callable[[Context], Check], ctx: Context) -> Check:
    """Run one check on its own thread and stop waiting for it at the time limit (a
    library call without a timeout of its own cannot hold the doctor)."""
    box: List[Check] = []

    def attempt():
        try:
            box.append(check(ctx))
        except Exception as exc:  # a check that breaks is a failed check, not a crash
            box.append(Check(FAIL, name, f"{type(exc).__name__}: {exc}"))

    worker = threading.Thread(target=attempt, name=f"doctor-{name}", daemon=True)
    worker.start()
    # Checks with their own time limits get a moment more to report them.
    worker.join(timeout_s + 0.5)
    return box[0] if box else Check(FAIL, name, f"no answer within {timeout_s:g} s")


# --- the checks -------------------------------------------------------------------------

def check_configuration(ctx: Context) -> Check:
    s = ctx.settings
    overrides = sorted(k for k in ctx.environ if k.startswith("CLINICA_") and k in DEFAULTS)
    secrets = [k for k in sorted(SECRET_KEYS) if _secret_set(s, k)]
    parts = []
    status = OK
    if s.source:
        mode = stat.S_IMODE(os.stat(s.source).st_mode)
        parts.append(f"read from {s.source}")
        in_file = {k for k, v in read_env_file(s.source).items() if _holds_secret(k, v)}
        if mode & 0o077 and SECRET_KEYS & in_file:
            status = WARN
            parts.append(f"mode {mode:o} lets others read its secrets: chmod 600 {s.source}")
    else:
        status = WARN
        parts.append("no configuration file found (CLINICA_ENV_FILE, ./.env, /etc/clinica-asterisk/.env): defaults")
    if overrides:
        parts.append("from the environment: " + ", ".join(overrides))
    parts.append("secrets set: " + (", ".join(secrets) if secrets else "none"))
    return Check(status, "configuration", "; ".join(parts))


def _secret_set(settings: Settings, key: str) -> bool:
    if key == "CLINICA_API_KEYS":
        return bool(settings.api_keys)
    if key == "CLINICA_FREEPBX_DB":
        return _holds_secret(key, settings.freepbx_db)
    if key == "CLINICA_STORE_URL":
        return bool(settings.store_url) and _holds_secret(key, settings.store_url)
    return bool(settings.ami_secret)


def _holds_secret(key: str, value: str) -> bool:
    if key == "CLINICA_FREEPBX_DB":  # auto and off are not secrets; a URL holds a password
        return "://" in (value or "")
    return bool(value)


def check_crm(ctx: Context) -> Check:
    url = ctx.settings.crm_push_url
    shown = shown_url(url)
    if urlsplit(url).hostname == EXAMPLE_CRM_HOST:
        return Check(FAIL, "crm", f"{shown} is the example from .env.example: set CLINICA_CRM_PUSH_URL")
    import requests

    try:
        response = requests.head(url, timeout=ctx.timeout_s, allow_redirects=False)
        response.close()
    except requests.Timeout:
        return Check(FAIL, "crm", f"{shown}: no answer within {ctx.timeout_s:g} s")
    except requests.RequestException as exc:
        return Check(FAIL, "crm", f"{shown}: cannot connect ({_reason(exc)})")
    code = response.status_code
    answered = f"{shown} answered HTTP {code} {response.reason or ''} to HEAD".rstrip()
    default = " (the default: a local crm-sink, not the CRM)" if url == DEFAULTS["CLINICA_CRM_PUSH_URL"] else ""
    if 300 <= code < 400:
        from ..delivery.transport import redirect_target

        target, why_not = redirect_target(url, code, response.headers.get("Location"), 0)
        where = f" to {scrub(shown_url(target), url)}" if target else ""
        if why_not:  # the pushes fail until the URL is the new one
            return Check(FAIL, "crm", f"{answered}{where}: a push is not delivered to a redirect ({why_not}); "
                                      "set CLINICA_CRM_PUSH_URL to where the CRM is now")
        return Check(WARN, "crm", f"{answered}{where}: pushes follow it; set CLINICA_CRM_PUSH_URL to it")
    if code == 404:
        return Check(WARN, "crm", f"{answered}: is the path right?{default}")
    # A push endpoint need not take HEAD (405, 501): the server is there, which is the point.
    if code >= 500 and code != 501:
        return Check(WARN, "crm", f"{answered}: the CRM has a problem{default}")
    return Check(WARN if default else OK, "crm", f"reachable: {answered}{default}")


def _reason(exc: Exception) -> str:
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] [^'\")]+", r"Connection refused", r"Name or service not known"):
        found = re.search(pattern, text)
        if found:
            return found.group(0).strip()
    return type(exc).__name__


def check_ami(ctx: Context) -> Check:
    s = ctx.settings
    if not s.ami_user:
        return Check(WARN, "ami", "no AMI user configured (CLINICA_AMI_USER): click-to-call is off")
    from ..pbx.ami import AmiClient, AmiConnectFailed, AmiError, AmiLoginFailed, AmiTimeout

    where = f"{s.ami_user}@{s.ami_host}:{s.ami_port}"
    client = AmiClient(s.ami_host, s.ami_port, s.ami_user, s.ami_secret, timeout_s=ctx.timeout_s)
    try:
        greeting = client.greet()
    except AmiLoginFailed as exc:
        return Check(FAIL, "ami", f"{where}: login refused ({exc.reason or exc}); "
                                  "compare the secret with manager_custom.conf")
    except AmiTimeout as exc:
        return Check(FAIL, "ami", f"{where}: no answer within {ctx.timeout_s:g} s ({exc})")
    except AmiConnectFailed as exc:
        return Check(FAIL, "ami", f"{where}: cannot connect ({exc.reason or exc})")
    except AmiError as exc:
        return Check(FAIL, "ami", f"{where}: {exc}")
    return Check(OK, "ami", f"logged in as {where} ({greeting})")


def asterisk_rx(command: str, timeout_s: float) -> subprocess.CompletedProcess:
    exe = shutil.which("asterisk")
    if exe is None:
        raise FileNotFoundError("asterisk")
    return subprocess.run([exe, "-rx", command], capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL)


def check_dialplan(ctx: Context) -> Check:
    started = time.monotonic()
    try:
        shown = asterisk_rx("dialplan show clinica-push", ctx.timeout_s)
    except FileNotFoundError:
        return Check(WARN, "dialplan", "asterisk is not on this host (a separate VM?): on the PBX, "
                                       "asterisk -rx \"dialplan show clinica-push\" must list the context")
    except subprocess.TimeoutExpired:
        return Check(FAIL, "dialplan", f"asterisk -rx gave no answer within {ctx.timeout_s:g} s")
    output = (shown.stdout + shown.stderr).strip()
    if "no existence of 'clinica-push'" in output:
        return Check(FAIL, "dialplan", "context clinica-push is not loaded: is '#include extensions_clinica.conf' "
                                       "in extensions_custom.conf? then fwconsole reload")
    counted = re.search(r"-= (\d+) extensions? \((\d+) priorit", output)
    if shown.returncode != 0 or not counted:
        first = output.splitlines()[0] if output else f"exit status {shown.returncode}"
        return Check(FAIL, "dialplan", f"Asterisk did not answer: {first}")
    detail = f"clinica-push loaded ({counted.group(1)} extensions)"

    try:
        left = max(0.1, ctx.timeout_s - (time.monotonic() - started))
        globals_ = asterisk_rx("dialplan show globals", left).stdout
    except (OSError, subprocess.TimeoutExpired):
        return Check(OK, "dialplan", detail)
    target = re.search(r"^\s*CLINICA_AGI=(.*)$", globals_, re.M)
    ctx.agi_target = target.group(1).strip() if target else ""
    if ctx.agi_target.startswith("agi://"):
        return Check(OK, "dialplan", f"{detail}; FastAGI mode: CLINICA_AGI={ctx.agi_target}")
    mode = f"script mode: CLINICA_AGI={ctx.agi_target}" if ctx.agi_target else "script mode (CLINICA_AGI unset)"
    if not os.access(AGI_SCRIPT, os.X_OK):
        return Check(FAIL, "dialplan", f"{detail}; {mode}, but {AGI_SCRIPT} is missing or not executable")
    return Check(OK, "dialplan", f"{detail}; {mode}")


def check_from_pstn(ctx: Context) -> Check:
    """[clinica-from-pstn] is our copy of FreePBX's [from-pstn]: a FreePBX update that
    changes the original must not leave incoming calls routed the old way unnoticed."""
    from ..pbx.dialplan import FREEPBX_CONTEXT, OUR_COPY, context_in_listing, from_pstn_drift

    started = time.monotonic()
    listings = {}
    for name in (FREEPBX_CONTEXT, OUR_COPY):
        try:
            left = max(0.1, ctx.timeout_s - (time.monotonic() - started))
            shown = asterisk_rx(f"dialplan show {name}", left)
        except FileNotFoundError:
            return Check(WARN, "from-pstn", f"asterisk is not on this host: on the PBX, compare "
                                            f"asterisk -rx \"dialplan show {FREEPBX_CONTEXT}\" with "
                                            f"\"dialplan show {OUR_COPY}\" (the same, less from-pstn-custom)")
        except subprocess.TimeoutExpired:
            return Check(FAIL, "from-pstn", f"asterisk -rx gave no answer within {ctx.timeout_s:g} s")
        output = (shown.stdout + shown.stderr).strip()
        listings[name] = context_in_listing(output, name)
        if listings[name] is None and "no existence of" not in output:
            first = output.splitlines()[0] if output else f"exit status {shown.returncode}"
            return Check(FAIL, "from-pstn", f"Asterisk did not answer: {first}")
    freepbx, ours = listings[FREEPBX_CONTEXT], listings[OUR_COPY]
    if freepbx is None:
        return Check(WARN, "from-pstn", f"Asterisk has no [{FREEPBX_CONTEXT}]: not a FreePBX dialplan?")
    if ours is None:
        return Check(FAIL, "from-pstn", f"[{OUR_COPY}] is not loaded: incoming calls stop after the ring-in "
                                        "hook; install extensions_clinica.conf, then fwconsole reload")
    drift = from_pstn_drift(freepbx, ours)
    if drift:
        return Check(FAIL, "from-pstn", f"{drift}: update [{OUR_COPY}] in extensions_clinica.conf to FreePBX's "
                                        f"[{FREEPBX_CONTEXT}] without from-pstn-custom, then fwconsole reload")
    return Check(OK, "from-pstn", f"[{OUR_COPY}] matches FreePBX's [{FREEPBX_CONTEXT}] "
                                  f"({len(ours.includes)} includes)")


def check_data_dir(ctx: Context) -> Check:
    directory = ctx.settings.data_dir
    if not os.path.isdir(directory):
        parent = os.path.dirname(directory.rstrip("/")) or "/"
        if os.access(parent, os.W_OK):
            return Check(WARN, "data", f"{directory} does not exist yet (made on the first call)")
        return Check(FAIL, "data", f"{directory} does not exist and {parent} is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".doctor-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return Check(FAIL, "data", f"{directory} is not writable by {_user(os.geteuid())}: {exc.strerror}")
    owner = os.stat(directory).st_uid
    detail = f"{directory} writable, owned by {_user(owner)}"
    # Files the owner cannot write (made by root, say) break the hooks that run as it.
    strangers = []
    for name in ("clinica.sqlite3", "clinica.sqlite3-wal", "clinica.sqlite3-shm", "clinica-agi.log"):
        path = os.path.join(directory, name)
        if os.path.exists(path) and os.stat(path).st_uid != owner:
            strangers.append(f"{name} ({_user(os.stat(path).st_uid)})")
    if strangers:
        return Check(FAIL, "data", f"{detail}; not owned by {_user(owner)}: {', '.join(strangers)}: "
                                   f"chown {_user(owner)}: {directory}/*")
    free_mb = shutil.disk_usage(directory).free // (1 << 20)
    if free_mb < 100:
        return Check(WARN, "data", f"{detail}; only {free_mb} MB free")
    return Check(OK, "data", detail)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_outbox(ctx: Context) -> Check:
    """The call store (which one, its schema version) and what waits in its outbox."""
    settings = ctx.settings
    path = settings.store_location
    if not settings.store_url and not os.path.exists(path):
        return Check(OK, "outbox", "no call store yet (no call handled so far)")
    from ..store.database import Store, StoreError
    from ..store.engine import node_number, parse_store_url
    from ..store.outbox import Outbox

    if settings.store_url:
        where = parse_store_url(settings.store_url).shown  # never the password
    else:
        where = f"SQLite {path}"
    try:
        store = Store(path, busy_timeout_s=ctx.timeout_s, spool_path=settings.spool_path)
        try:
            version = store.schema_version()
            waiting, oldest = Outbox(store).backlog()
            row = store.conn.execute("SELECT attempts, last_error FROM outbox WHERE delivered_at IS NULL "
                                     "ORDER BY id LIMIT 1").fetchone() if waiting else None
        finally:
            store.close()
    except StoreError as exc:
        return Check(FAIL, "outbox", f"{where}: {exc}")
    where += f", schema version {version}"
    if settings.store_url:
        where += f", this host is node {node_number(socket.gethostname())}"
        if settings.spool_path and os.path.exists(settings.spool_path + ".pending"):
            where += "; calls wait in the local spool (the worker merges them)"
    if not waiting:
        return Check(OK, "outbox", f"nothing waiting to be sent ({where})")
    age = max(0, int(time.time() - oldest))
    detail = f"{waiting} event(s) waiting, the oldest for {_duration(age)}"
    if row["attempts"]:
        detail += f" (tried {row['attempts']} times, last error: {row['last_error']})"
    detail += f" ({where})"
    if age >= BACKLOG_FAIL_S:
        return Check(FAIL, "outbox", f"{detail}: is the delivery worker running, and the CRM reachable?")
    if age >= BACKLOG_WARN_S:
        return Check(WARN, "outbox", detail)
    return Check(OK, "outbox", detail)


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _listening(host: str, port: int, timeout_s: float) -> bool:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_fastagi(ctx: Context) -> Check:
    host, port = ctx.settings.fastagi_bind
    where = f"{host}:{port}"
    if _listening(host, port, ctx.timeout_s):
        return Check(OK, "fastagi", f"listening on {where}")
    if ctx.agi_target is not None and not ctx.agi_target.startswith("agi://"):
        return Check(OK, "fastagi", f"nothing on {where}: not needed in script mode")
    return Check(FAIL, "fastagi", f"nothing listens on {where}: is the service running? "
                                  "(systemctl status clinica-asterisk)")


def check_api(ctx: Context) -> Check:
    host, port = ctx.settings.api_bind
    where = f"{host}:{port}"
    if _listening(host, port, ctx.timeout_s):
        return Check(OK, "api", f"listening on {where}")
    return Check(WARN, "api", f"nothing listens on {where}: the CRM cannot ask for call details, "
                              "recordings or click-to-call (clinica-asterisk serve)")


def check_freepbx(ctx: Context) -> Check:
    from ..api import freepbx_db

    s = ctx.settings
    try:
        target, why_not = freepbx_db.resolve_target(s.freepbx_db, s.freepbx_conf)
    except freepbx_db.FreePbxError as exc:
        return Check(WARN, "freepbx", f"not read: {exc}: employee names come from the directory file alone")
    if target is None:
        if "cannot be read" in why_not:
            return Check(WARN, "freepbx", f"not read: {why_not}: give the service user the asterisk group "
                                          "(SupplementaryGroups=asterisk), or set CLINICA_FREEPBX_DB")
        return Check(OK, "freepbx", f"not read: {why_not}; employee names come from the directory file alone")
    where = f"{target.shown()} (credentials from {target.origin})"
    try:
        data = freepbx_db.read_freepbx(target, ctx.timeout_s, ctx.timeout_s)
    except freepbx_db.FreePbxError as exc:
        hint = ""
        if "command denied" in str(exc):
            hint = "; the user needs SELECT on " + ", ".join(freepbx_db.TABLES)
        return Check(FAIL, "freepbx", f"{where}: cannot read: {exc}{hint}")
    return Check(OK, "freepbx", f"{where}: {len(data.employees)} extensions "
                                f"({data.named_by_userman} named in User Management), "
                                f"{len(data.routes)} inbound routes, {len(data.trunks)} trunks with a number")


CHECKS = (
    ("configuration", check_configuration),
    ("crm", check_crm),
    ("ami", check_ami),
    ("dialplan", check_dialplan),
    ("from-pstn", check_from_pstn),
    ("data", check_data_dir),
    ("outbox", check_outbox),
    ("fastagi", check_fastagi),
    ("api", check_api),
    ("freepbx", check_freepbx),
)
