"""Real calls on a real Asterisk: one FreePBX-shaped PBX, its "world" (desk phones, trunks'
far ends, callers), clinica-asterisk installed on it as a user installs it, and a CRM
stand-in that keeps every push it receives.

One *combination* is an Asterisk version (22 or 20), a PBX shape (``pbx17``: FreePBX 17,
hooks entered with Gosub; ``pbx16``: FreePBX 16, hooks entered with Macro) and a mode
(``script``: Asterisk runs ``clinica-agi``; ``fastagi``: the hooks go to
``clinica-asterisk serve``).  :func:`run_combination` starts everything, places every
scenario's call (:data:`SCENARIOS`), waits for the calls and the outbox to finish, and
returns what happened as one JSON-able dict::

    {"<scenario>": {"pushes": [...], "details": {...}, "call_ids": [...], "lab": {...}},
     ...,
     "_run": {"combination": ..., "unclaimed": {...}, "duplicates": [...], "logs": {...}, ...}}

``pushes`` are the form fields the CRM stand-in received for the scenario's call(s), in
arrival order; ``details`` is what ``stats/call-details`` (a signed API call) answers for
them; ``lab`` is what the PBX's own log and voicemail spool say happened (did the transfer
take place, was a message recorded), to tell a lab problem from a product one.

Where it can (root and ``unshare``), the whole combination runs in a network namespace of
its own, so that combinations run side by side and nothing clashes with another Asterisk
on this machine (the lab uses fixed ports).  Elsewhere it runs in the current namespace,
and combinations must run one after another.

Asterisk is found through ``ASTERISK_PREFIX_22`` / ``ASTERISK_PREFIX_20`` (an installed
prefix with ``sbin/asterisk``), else the tarballs ``<repo>/../shared/asterisk/asterisk-<N>.tar.xz``,
extracted once into ``~/.cache/clinica-asterisk-tests/``.

Benchmarks reuse the pieces (``bench/bench_real_calls.py``): :func:`start_lab` starts one
lab in the current namespace (mode ``none``: the PBX without our dialplan, no serve; extra
files for either instance, e.g. a logger.conf), :func:`run_isolated` runs a child process
in a namespace of its own and cleans up after it.

As a script (prints the JSON)::

    .venv/bin/python tests/support/real_pbx.py --asterisk 22 --shape pbx17 --mode script
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from .net import free_port

HERE = Path(__file__).resolve().parent.parent  # tests/
REPO = HERE.parent
LAB = HERE / "lab"
DIALPLAN = REPO / "dialplan" / "extensions_clinica.conf"
SHARED_ASTERISK = REPO.parent / "shared" / "asterisk"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clinica-asterisk-tests"

SHAPES = {"pbx17": "22", "pbx16": "20"}  # the Asterisk each FreePBX shape runs on
MODES = ("script", "fastagi")
NO_HOOKS = "none"  # the same PBX without our #include (benchmarks' baseline; start_lab only)

API_KEY, API_SECRET = "lab-crm", "lab-crm-secret"
AMI_PORT, AMI_USER, AMI_SECRET = 15038, "clinica", "clinicasecret"

# Every wait is bounded.
BOOT_TIMEOUT_S = 30        # an Asterisk instance, or serve, starting
CALLS_TIMEOUT_S = 120      # every call over, after the last one was placed
OUTBOX_TIMEOUT_S = 20      # everything queued delivered, after the calls
HTTP_TIMEOUT_S = 15
STAGGER_S = 1.5            # between two calls (script mode spawns Python per hook)
COMBINATION_TIMEOUT_S = 300


@dataclass(frozen=True)
class Scenario:
    """How a scenario's call is placed and recognised.

    ``caller``: the world's extension in context ``callers`` (``channel originate
    Local/<caller>@callers ...``); ``talk``: the caller's side plays a tone instead of
    staying silent (``extension talk@callers``).  ``c2c``: a click-to-call request to the
    API instead.  ``number``: the client's number as the pushes should carry it
    (externalNumber), with ``call_type`` ("0" incoming, "1" outgoing): how the pushes are
    matched to the scenario (click-to-call: by the generalCallID the API answered)."""

    name: str
    number: str
    call_type: str
    caller: str = ""
    talk: bool = False
    c2c: Optional[Mapping[str, Any]] = None
    did: str = ""


# In the order they are placed: the longest calls first, so that all end about together.
SCENARIOS: Tuple[Scenario, ...] = (
    Scenario("in-vm-msg", "0670219435", "0", caller="in-vm-msg", talk=True, did="0443334010"),
    Scenario("in-vm-nomsg", "0670219434", "0", caller="in-vm-nomsg", did="0443334010"),
    Scenario("in-xfer-att", "0670219433", "0", caller="in-xfer-att", did="0443334009"),
    Scenario("in-xfer-blind", "0670219432", "0", caller="in-xfer-blind", did="0443334008"),
    Scenario("in-xfer-group", "0670219437", "0", caller="in-xfer-group", did="0443334011"),
    Scenario("in-hunt", "0670219439", "0", caller="in-hunt", did="0443334013"),
    Scenario("in-group-ext", "0670219440", "0", caller="in-group-ext", did="0443334014"),
    Scenario("in-xfer-out", "0670219438", "0", caller="in-xfer-out", did="0443334012"),
    Scenario("in-ivr", "0670219430", "0", caller="in-ivr", did="0443334006"),
    Scenario("c2c-answer", "0670219424", "1", c2c={"ext_number": "801", "phone_number": "0670219424"}),
    Scenario("c2c-limit", "0670219496", "1",
             c2c={"ext_number": "805", "phone_number": "0670219496", "limitCallTime": 2}),
    Scenario("c2c-noanswer", "0670219436", "1",
             c2c={"ext_number": "803", "phone_number": "0670219436", "callTimeToExt": 6}),
    Scenario("in-801", "0670219420", "0", caller="in-801", did="0443334000"),
    Scenario("in-queue", "0670219427", "0", caller="in-queue", did="0443334003"),
    Scenario("out-noanswer", "0671111111", "1", caller="out-noanswer"),
    Scenario("in-miss", "0670219426", "0", caller="in-miss", did="0443334002"),
    Scenario("in-group", "0670219425", "0", caller="in-group", did="0443334001"),
    Scenario("in-ivr-abandon", "0670219431", "0", caller="in-ivr-abandon", did="0443334006"),
    Scenario("out-answer", "0670219424", "1", caller="out-answer"),
    Scenario("out-failover", "0993333333", "1", caller="out-failover"),
    Scenario("in-busy", "0670219428", "0", caller="in-busy", did="0443334004"),
    Scenario("out-busy", "0672222222", "1", caller="out-busy"),
)
SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)


class LabError(RuntimeError):
    """The lab could not be set up or run (not a product failure)."""


def log(message: str) -> None:
    sys.stderr.write(f"[real_pbx {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# ---- finding Asterisk ------------------------------------------------------------------

def find_asterisk(version: str) -> Optional[Path]:
    """An installed prefix of Asterisk ``version`` (22 or 20), or None.

    ``ASTERISK_PREFIX_<version>`` if set (it must hold sbin/asterisk), else the tarball in
    ``../shared/asterisk/`` extracted once into the cache (to a temporary directory, then
    renamed, so that two runs at once never see half an extraction)."""
    named = os.environ.get(f"ASTERISK_PREFIX_{version}")
    if named:
        prefix = Path(named)
        if not (prefix / "sbin" / "asterisk").is_file():
            raise LabError(f"ASTERISK_PREFIX_{version}={named} has no sbin/asterisk")
        return prefix
    tarball = SHARED_ASTERISK / f"asterisk-{version}.tar.xz"
    if not tarball.is_file():
        return None
    target = CACHE_ROOT / f"{version}-{int(tarball.stat().st_mtime)}"
    if (target / "sbin" / "asterisk").is_file():
        return target
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=CACHE_ROOT))
    try:
        with tarfile.open(tarball) as archive:
            members = archive.getmembers()
            for member in members:  # nothing may land outside the scratch directory
                if member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise LabError(f"{tarball}: unsafe path {member.name!r}")
            if hasattr(tarfile, "tar_filter"):  # Python 3.12+ (and 3.8.17+ / 3.11.4+ backports)
                archive.extractall(scratch, members, filter="tar")
            else:
                archive.extractall(scratch, members)
        found = [p.parent.parent for p in scratch.glob("*/sbin/asterisk")] or \
                ([scratch] if (scratch / "sbin" / "asterisk").is_file() else [])
        if not found:
            raise LabError(f"{tarball} holds no */sbin/asterisk")
        try:
            os.rename(found[0], target)
        except OSError:
            if not (target / "sbin" / "asterisk").is_file():  # not another run's extraction
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def asterisk_unavailable_reason(versions: Sequence[str]) -> Optional[str]:
    """Why the real-call tests cannot run here, or None when they can."""
    missing = []
    for version in versions:
        try:
            if find_asterisk(version) is None:
                missing.append(version)
        except (LabError, OSError, tarfile.TarError) as exc:
            return f"Asterisk {version}: {exc}"
    if missing:
        return (f"no Asterisk {', '.join(missing)}: set ASTERISK_PREFIX_<N> to an installed prefix "
                f"or provide {SHARED_ASTERISK}/asterisk-<N>.tar.xz")
    if shutil.which("bash") is None:
        return "bash is needed to run tests/lab/lab.sh"
    return None


# ---- network namespaces -----------------------------------------------------------------

_NETNS: Optional[bool] = None


def namespaces_available() -> bool:
    """True when this process may run a combination in a network namespace of its own."""
    global _NETNS
    if _NETNS is None:
        unshare = shutil.which("unshare")
        _NETNS = False
        if unshare and hasattr(os, "geteuid") and os.geteuid() == 0:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                _NETNS = subprocess.run([unshare, "-n", "true"], timeout=10,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    return _NETNS


def bring_loopback_up() -> None:
    """``ip link set lo up`` in a fresh namespace; 127.0.0.0/8 then answers on lo, so the
    lab's 127.0.0.x addresses need no adding."""
    ip = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if os.path.exists(p)), None)
    if ip and subprocess.run([ip, "link", "set", "lo", "up"], timeout=10).returncode == 0:
        return
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), siocgifflags, request))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


# ---- small helpers ----------------------------------------------------------------------



def wait_for_port(port: int, timeout_s: float, proc: Optional[subprocess.Popen] = None) -> None:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if proc is not None and proc.poll() is not None:
            raise LabError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise LabError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


def national(number: str) -> str:
    """A Ukrainian number in national form, whatever form it came in (for matching)."""
    digits = re.sub(r"\D", "", number or "")
    if digits.startswith("380") and len(digits) == 12:
        return "0" + digits[3:]
    return digits


def tail(path: Path, lines: int = 80) -> List[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200_000))
            return f.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return []


def clean_environ() -> Dict[str, str]:
    """This process's environment without any CLINICA_ setting of the caller's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CLINICA_")}


def venv_program(name: str) -> Optional[Path]:
    candidate = Path(sys.executable).parent / name
    return candidate if candidate.exists() else None


# ---- one Asterisk instance --------------------------------------------------------------

class Instance:
    """One lab Asterisk (world or pbx) driven through tests/lab/lab.sh."""

    def __init__(self, prefix: Path, directory: Path, confdir: Path, files: Sequence[Path], env: Mapping[str, str]):
        self.prefix, self.dir, self.confdir, self.files = prefix, directory, confdir, list(files)
        self.env = dict(env, AST=str(prefix))

    def lab(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(LAB / "lab.sh"), *args], env=self.env, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def start(self) -> None:
        done = self.lab("start", str(self.dir), str(self.confdir), *map(str, self.files), timeout=BOOT_TIMEOUT_S + 10)
        if done.returncode != 0:
            raise LabError(f"Asterisk {self.dir.name} did not start: {done.stdout.strip()} {done.stderr.strip()} "
                           f"{' | '.join(tail(self.dir / 'log' / 'console.log', 5))}")

    def cli(self, command: str, timeout: float = 15) -> str:
        done = self.lab("cli", str(self.dir), command, timeout=timeout)
        return done.stdout

    def active_channels(self) -> Optional[int]:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            match = re.search(r"^(\d+) active channels?", self.cli("core show channels count"), re.M)
            if match:
                return int(match.group(1))
        return None

    def pid(self) -> Optional[int]:
        with contextlib.suppress(OSError, ValueError):
            return int((self.dir / "run" / "asterisk.pid").read_text().strip())
        return None

    def stop(self) -> None:
        pid = self.pid()
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.lab("stop", str(self.dir), timeout=15)
        with contextlib.suppress(OSError):  # still running after "core stop now": end it
            if pid and str(self.dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                kill_pid(pid, grace_s=5)

    @property
    def messages(self) -> Path:
        return self.dir / "log" / "messages"


def kill_pid(pid: int, grace_s: float = 5) -> None:
    """End one process we started, by its id: SIGTERM, then SIGKILL after the grace time."""
    def alive() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        with contextlib.suppress(OSError):  # a zombie of ours is as good as gone
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                return False
        return True

    if not alive():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    until = time.monotonic() + grace_s
    while time.monotonic() < until and alive():
        time.sleep(0.1)
    if alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ---- the API, as the CRM calls it ---------------------------------------------------------

def api_request(port: int, method: str, params: Mapping[str, Any]) -> Dict[str, Any]:
    from clinica_asterisk.api.signature import sign

    body = dict(params)
    body["signature"] = sign(API_SECRET, params)
    body["key"] = API_KEY
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/{method}.json",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        return json.loads(response.read().decode("utf-8"))


# ---- what the lab itself says happened ----------------------------------------------------

_CALL_TAG = re.compile(r"\[(C-[0-9a-f]+)\]")
_CALLFILE = re.compile(r'__CALLFILENAME=(?:in|out|exten|rg|q)-[^-"]*-\+?(\d+)-')


def lab_facts(pbx: Instance, scenarios: Sequence[Scenario]) -> Dict[str, Dict[str, Any]]:
    """Per incoming scenario, what the PBX's log and voicemail spool show, independent of
    clinica-asterisk: IVR digit taken, transfers started and completed, voicemail reached,
    messages recorded.  Log lines are tied to a scenario through Asterisk's call tag
    [C-…] and the client number in the recording file name FreePBX's sub-record-check
    builds at the inbound route."""
    by_number = {national(s.number): s.name for s in scenarios if s.call_type == "0"}
    lines_of: Dict[str, List[str]] = {}
    tag_scenario: Dict[str, str] = {}
    try:
        text = pbx.messages.read_text("utf-8", "replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        tag = _CALL_TAG.search(line)
        if not tag:
            continue
        lines_of.setdefault(tag.group(1), []).append(line)
        number = _CALLFILE.search(line)
        if number and tag.group(1) not in tag_scenario and national(number.group(1)) in by_number:
            tag_scenario[tag.group(1)] = by_number[national(number.group(1))]
    facts: Dict[str, Dict[str, Any]] = {}
    for tag, name in tag_scenario.items():
        lines = lines_of.get(tag, [])
        joined = [m.group(1) for m in (re.search(r"Channel (\S+) joined", l) for l in lines) if m]
        fact = facts.setdefault(name, {"calls": 0})
        fact["calls"] += 1
        fact.update({
            "ivr_digit_1": any("Executing [1@ivr-1:1]" in l for l in lines),
            "blind_transfer_started": any("Started DTMF blind transfer" in l for l in lines),
            "attended_transfer_started": any("Started DTMF attended transfer" in l for l in lines),
            # the consultation channel joins its own bridge, then the caller's on completion
            "attended_transfer_completed": sum(bool(re.match(r"Local/805@from-internal-xfer-[^;]+;1$", c)) for c in joined) >= 2,
            "transferee_sent_to_805": any(re.search(r"Executing \[805@from-internal-xfer:1\] \S+\(\"IAX2/pstn1", l) for l in lines),
            "phones_answered": sorted({re.sub(r"-\w+$", "", c) for c in joined if re.match(r"IAX2/8\d\d-", c)}),
            "voicemail_started": any("VoiceMail(" in l for l in lines),
            "voicemail_recording": any("Recording the message" in l for l in lines),
        })
    spool = pbx.dir / "var" / "spool" / "voicemail" / "default" / "808" / "INBOX"
    for txt in sorted(spool.glob("msg*.txt")):
        with contextlib.suppress(OSError):
            content = txt.read_text("utf-8", "replace")
            caller = re.search(r"^callerid=.*<\+?(\d+)>", content, re.M)
            duration = re.search(r"^duration=(\d+)", content, re.M)
            name = by_number.get(national(caller.group(1))) if caller else None
            if name:
                fact = facts.setdefault(name, {"calls": 0})
                fact.setdefault("voicemail_messages", []).append(
                    {"file": txt.name, "duration": int(duration.group(1)) if duration else None})
    for name in by_number.values():
        facts.setdefault(name, {"calls": 0}).setdefault("voicemail_messages", [])
    return facts


# ---- matching pushes to scenarios ----------------------------------------------------------

def group_pushes(pushes: Sequence[Mapping[str, str]], scenarios: Sequence[Scenario],
                 c2c_ids: Mapping[str, str]) -> Tuple[Dict[str, List[str]], Dict[str, str]]:
    """(scenario -> its generalCallIDs in order of first push, unclaimed id -> why)."""
    keys = {(s.call_type, national(s.number)): s.name for s in scenarios if not s.c2c}
    first_seen: List[str] = []
    facts: Dict[str, Dict[str, str]] = {}
    for push in pushes:
        call_id = str(push.get("generalCallID", ""))
        if call_id not in facts:
            first_seen.append(call_id)
            facts[call_id] = {}
        for k in ("externalNumber", "callType"):
            if push.get(k) and not facts[call_id].get(k):
                facts[call_id][k] = str(push[k])
    by_scenario: Dict[str, List[str]] = {s.name: [] for s in scenarios}
    unclaimed: Dict[str, str] = {}
    for call_id in first_seen:
        if call_id in c2c_ids:
            by_scenario[c2c_ids[call_id]].append(call_id)
            continue
        f = facts[call_id]
        name = keys.get((f.get("callType", ""), national(f.get("externalNumber", ""))))
        if name is None:  # callType missing or odd: the number alone, if it is unambiguous
            names = {n for (t, num), n in keys.items() if num == national(f.get("externalNumber", ""))}
            name = names.pop() if len(names) == 1 else None
        if name is None:
            unclaimed[call_id] = f"no scenario has callType={f.get('callType')!r} externalNumber={f.get('externalNumber')!r}"
        else:
            by_scenario[name].append(call_id)
    return by_scenario, unclaimed


def duplicates(pushes: Sequence[Mapping[str, str]]) -> List[Mapping[str, str]]:
    seen, twice = set(), []
    for push in pushes:
        key = json.dumps(push, sort_keys=True)
        if key in seen:
            twice.append(push)
        seen.add(key)
    return twice


# ---- one combination, in this process and namespace -----------------------------------------

@dataclass
class Combination:
    asterisk: str
    shape: str
    mode: str

    @property
    def name(self) -> str:
        return f"{self.asterisk}-{self.shape}-{self.mode}"

    def check(self) -> None:
        if self.shape not in SHAPES:
            raise LabError(f"unknown shape {self.shape!r} (pbx17, pbx16)")
        if self.mode not in (*MODES, NO_HOOKS):
            raise LabError(f"unknown mode {self.mode!r} (script, fastagi, none)")
        if self.asterisk not in ("20", "22"):
            raise LabError(f"unknown Asterisk {self.asterisk!r} (22, 20)")
        if self.shape == "pbx16" and self.asterisk != "20":
            raise LabError("pbx16 needs app_macro, i.e. Asterisk 20")


@dataclass
class Run:
    """Everything one combination started; :meth:`stop` ends all of it."""

    combo: Combination
    workdir: Path
    sink: Any = None
    serve: Optional[subprocess.Popen] = None
    deliver: Optional[subprocess.Popen] = None  # script mode's delivery worker, as install.sh runs it
    instances: List[Instance] = field(default_factory=list)

    def stop(self) -> None:
        for instance in reversed(self.instances):
            with contextlib.suppress(Exception):
                instance.stop()
        if self.deliver is not None and self.deliver.poll() is None:
            self.deliver.send_signal(signal.SIGTERM)
            try:
                self.deliver.wait(10)
            except subprocess.TimeoutExpired:
                self.deliver.kill()
                self.deliver.wait(5)
        if self.serve is not None and self.serve.poll() is None:
            self.serve.send_signal(signal.SIGTERM)
            try:
                self.serve.wait(10)
            except subprocess.TimeoutExpired:
                self.serve.kill()
                self.serve.wait(5)
        if self.sink is not None:
            with contextlib.suppress(Exception):
                self.sink.stop()


def _write_env(path: Path, values: Mapping[str, str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# written by tests/support/real_pbx.py for one lab run\n")
        for key, value in values.items():
            f.write(f"{key}={value}\n")
    os.chmod(path, 0o600)


def outbox_rows(data_dir: Path, sql: str, params: Sequence[Any] = ()) -> Optional[List[Any]]:
    """The rows of ``sql`` on the lab's store (a read-only look), None when unknown."""
    for db in glob.glob(str(data_dir / "*.sqlite3")):
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
    return None


def outbox_waiting(data_dir: Path) -> Optional[int]:
    """Events not delivered yet, None when unknown."""
    rows = outbox_rows(data_dir, "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")
    return None if rows is None else int(rows[0][0])


@dataclass
class Lab:
    """A started lab (see :func:`start_lab`); everything in it is also in the Run that stops it."""

    world: Instance
    pbx: Instance
    data_dir: Path
    env: Dict[str, str]
    log_file: Path
    api_port: int
    fastagi_port: int


def start_lab(combo: Combination, run: Run, on_push=None, extra_pbx_files: Sequence[Path] = (),
              extra_world_files: Sequence[Path] = ()) -> Lab:
    """Start one combination's lab in this process's network namespace, into ``run`` (whose
    :meth:`Run.stop` ends it all): the CRM stand-in (``on_push`` is called per push), the
    world, the PBX with clinica-asterisk installed as a user installs it (mode ``none``:
    without it, and without serve), and ``clinica-asterisk serve``.  ``extra_pbx_files``
    and ``extra_world_files`` are copied into the instance's etc last (e.g. a logger.conf)."""
    from clinica_asterisk.devtools.crm_sink import CrmSink

    combo.check()
    prefix = find_asterisk(combo.asterisk)
    if prefix is None:
        raise LabError(f"no Asterisk {combo.asterisk} (set ASTERISK_PREFIX_{combo.asterisk})")
    workdir = run.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    # The CRM stand-in: a real HTTP server, in this process.
    run.sink = CrmSink(on_push=on_push).start()
    data_dir, pbx_dir, world_dir = workdir / "data", workdir / "pbx", workdir / "world"
    data_dir.mkdir(exist_ok=True)
    fastagi_port = free_port()
    api_port = free_port()
    while api_port == fastagi_port:
        api_port = free_port()
    env_file = workdir / "clinica.env"
    log_file = workdir / "clinica.log"
    _write_env(env_file, {
        "CLINICA_DATA_DIR": str(data_dir),
        "CLINICA_CRM_PUSH_URL": run.sink.url,
        "CLINICA_LOG_FILE": str(log_file),
        "CLINICA_FREEPBX_DB": "off",
        "CLINICA_API_KEYS": f"{API_KEY}:{API_SECRET}",
        "CLINICA_AMI_HOST": "127.0.0.1",
        "CLINICA_AMI_PORT": str(AMI_PORT),
        "CLINICA_AMI_USER": AMI_USER,
        "CLINICA_AMI_SECRET": AMI_SECRET,
        "CLINICA_FASTAGI_BIND": f"127.0.0.1:{fastagi_port}",
        "CLINICA_API_BIND": f"127.0.0.1:{api_port}",
        "CLINICA_RECORDINGS_DIR": str(pbx_dir / "monitor"),
        "CLINICA_PBX_ID": f"lab-{combo.name}",
    })
    env = clean_environ()
    env["CLINICA_ENV_FILE"] = str(env_file)

    # Our dialplan, installed as a user installs it.
    pbx_files = workdir / "pbx-files"
    pbx_files.mkdir(exist_ok=True)
    installed: List[Path] = []
    if combo.mode != NO_HOOKS:
        (pbx_files / "extensions_custom.conf").write_text("#include extensions_clinica.conf\n")
        shutil.copyfile(DIALPLAN, pbx_files / "extensions_clinica.conf")
        globals_custom = "; FreePBX reads this file into [globals]\n"
        if combo.mode == "fastagi":
            globals_custom += f"CLINICA_AGI = agi://127.0.0.1:{fastagi_port}/clinica-agi\n"
        (pbx_files / "globals_custom.conf").write_text(globals_custom)
        installed = [pbx_files / "extensions_custom.conf", pbx_files / "globals_custom.conf",
                     pbx_files / "extensions_clinica.conf"]
    (pbx_dir / "agi-bin").mkdir(parents=True, exist_ok=True)
    if combo.mode == "script":
        agi = venv_program("clinica-agi")
        if agi is None:
            raise LabError(f"no clinica-agi next to {sys.executable} (pip install -e .)")
        os.symlink(agi, pbx_dir / "agi-bin" / "clinica-agi")

    world = Instance(prefix, world_dir, LAB / "world", list(extra_world_files), env)
    pbx = Instance(prefix, pbx_dir, LAB / combo.shape, [*installed, *extra_pbx_files], env)
    run.instances += [world]
    world.start()
    run.instances += [pbx]
    pbx.start()

    # clinica-asterisk serve: the API (click-to-call) always, the FastAGI server too.
    # Started once the PBX is up, so that it finds the manager at once.
    if combo.mode != NO_HOOKS:
        program = venv_program("clinica-asterisk")
        command = [str(program)] if program else [sys.executable, "-m", "clinica_asterisk"]
        serve_log = open(workdir / "serve.log", "wb")
        run.serve = subprocess.Popen([*command, "serve"], env=env, stdout=serve_log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(workdir))
        serve_log.close()
        (workdir / "serve.pid").write_text(str(run.serve.pid))

        wait_for_port(api_port, BOOT_TIMEOUT_S, run.serve)
        if combo.mode == "fastagi":
            wait_for_port(fastagi_port, BOOT_TIMEOUT_S, run.serve)
        else:
            # Script mode as install.sh sets it up: the hooks hand their events to this
            # worker (delivery.wakeup), which sends them at once.
            deliver_log = open(workdir / "deliver.log", "wb")
            run.deliver = subprocess.Popen([*command, "deliver", "--forever"], env=env, stdout=deliver_log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(workdir))
            deliver_log.close()
            (workdir / "deliver.pid").write_text(str(run.deliver.pid))
            until = time.monotonic() + BOOT_TIMEOUT_S
            while not (data_dir / "worker.sock").exists():
                if run.deliver.poll() is not None or time.monotonic() > until:
                    raise LabError(f"the delivery worker did not start listening; see {workdir / 'deliver.log'}")
                time.sleep(0.05)
    return Lab(world, pbx, data_dir, env, log_file, api_port, fastagi_port)


def run_here(combo: Combination, workdir: Path) -> Dict[str, Any]:
    """Run one combination in this process's network namespace; the result dict."""
    combo.check()
    started = time.monotonic()
    prefix = find_asterisk(combo.asterisk)
    if prefix is None:
        raise LabError(f"no Asterisk {combo.asterisk} (set ASTERISK_PREFIX_{combo.asterisk})")
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(combo, workdir)
    arrivals: List[float] = []
    timings: Dict[str, float] = {}
    try:
        lab = start_lab(combo, run, on_push=lambda fields: arrivals.append(round(time.monotonic() - started, 2)))
        world, pbx, data_dir, log_file, api_port = lab.world, lab.pbx, lab.data_dir, lab.log_file, lab.api_port
        timings["ready_s"] = round(time.monotonic() - started, 1)
        log(f"{combo.name}: ready in {timings['ready_s']} s ({workdir})")

        # Place the calls.
        c2c_ids: Dict[str, str] = {}
        placed: Dict[str, Any] = {}
        for i, scenario in enumerate(SCENARIOS):
            if i:
                time.sleep(STAGGER_S)
            at = round(time.monotonic() - started, 2)
            if scenario.c2c:
                try:
                    answer = api_request(api_port, "calls/ext-to-phone", scenario.c2c)
                except OSError as exc:
                    answer = {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
                if answer.get("generalCallID"):
                    c2c_ids[str(answer["generalCallID"])] = scenario.name
                placed[scenario.name] = {"at_s": at, "api_answer": answer}
            else:
                then = "extension talk@callers" if scenario.talk else "application Wait 90"
                out = world.cli(f"channel originate Local/{scenario.caller}@callers {then}")
                placed[scenario.name] = {"at_s": at, "cli": out.strip()}
        timings["placed_s"] = round(time.monotonic() - started, 1)

        # Wait for every call to end on both instances, then for the outbox to drain.
        until = time.monotonic() + CALLS_TIMEOUT_S
        calls_done = False
        time.sleep(2)
        while time.monotonic() < until:
            if pbx.active_channels() == 0 and world.active_channels() == 0:
                calls_done = True
                break
            time.sleep(1)
        timings["calls_done_s"] = round(time.monotonic() - started, 1)
        until = time.monotonic() + OUTBOX_TIMEOUT_S
        waiting = outbox_waiting(data_dir)
        while time.monotonic() < until and waiting != 0:
            time.sleep(0.5)
            waiting = outbox_waiting(data_dir)
        if waiting is None:
            time.sleep(3)  # no way to look: give the worker a moment
        time.sleep(1)  # a push in flight when the outbox emptied
        timings["outbox_done_s"] = round(time.monotonic() - started, 1)

        pushes = [dict(p) for p in run.sink.pushes()]
        by_scenario, unclaimed = group_pushes(pushes, SCENARIOS, c2c_ids)
        all_ids = sorted({i for ids in by_scenario.values() for i in ids} | set(c2c_ids) | set(unclaimed))
        details: Dict[str, Any] = {}
        details_error = ""
        if all_ids:
            try:
                answer = api_request(api_port, "stats/call-details",
                                     {"generalCallID": [int(i) if i.isdigit() else i for i in all_ids]})
                details = answer.get("callDetails") or {}
                if answer.get("status") != "success":
                    details_error = json.dumps(answer)
            except OSError as exc:
                details_error = f"{type(exc).__name__}: {exc}"
        facts = lab_facts(pbx, SCENARIOS)

        result: Dict[str, Any] = {}
        for scenario in SCENARIOS:
            ids = list(by_scenario[scenario.name])
            if scenario.c2c:  # the id the API gave, even if no push carries it
                ids = list(dict.fromkeys([*[i for i, n in c2c_ids.items() if n == scenario.name], *ids]))
            result[scenario.name] = {
                "call_ids": ids,
                "pushes": [p for p in pushes if str(p.get("generalCallID", "")) in ids],
                "details": {i: details[i] for i in ids if i in details},
                "placed": placed.get(scenario.name),
                "lab": facts.get(scenario.name, {}),
            }
        result["_run"] = {
            "combination": {"asterisk": combo.asterisk, "shape": combo.shape, "mode": combo.mode,
                            "prefix": str(prefix), "namespace": _IN_NAMESPACE},
            "calls_done": calls_done,
            "outbox_waiting": waiting,
            "pushes_total": len(pushes),
            "push_arrivals_s": arrivals,
            "unclaimed": {i: {"why": why, "pushes": [p for p in pushes if str(p.get("generalCallID", "")) == i],
                              "details": details.get(i)} for i, why in unclaimed.items()},
            "duplicates": duplicates(pushes),
            "details_error": details_error,
            "timings": timings,
            "logs": {
                "workdir": str(workdir),
                "agi_log": str(log_file),
                "serve_log": str(workdir / "serve.log"),
                "pbx_messages": str(pbx.messages),
                "world_messages": str(world.messages),
                # when something looks wrong from here: calls left up, pushes of no scenario,
                # a call that should have pushes without any
                "pbx_messages_tail": tail(pbx.messages, 60) if (
                    not calls_done or unclaimed
                    or any(not by_scenario[s.name] for s in SCENARIOS if not s.c2c)) else [],
                "clinica_log_problems": [l for l in tail(log_file, 2000)
                                         if re.search(r"WARNING|ERROR|outcome=(FAILED|NOTFOUND)", l)][-40:],
            },
        }
        return result
    finally:
        run.stop()
        timings["stopped_s"] = round(time.monotonic() - started, 1)
        log(f"{combo.name}: done in {timings['stopped_s']} s")


# ---- one combination, in a child process (in a namespace of its own when possible) ------------

_IN_NAMESPACE = False
_CHILDREN: Dict[int, subprocess.Popen] = {}  # combinations running now, by pid
_SPAWN_LOCK = threading.Lock()
_CHILDREN_LOCK = threading.Lock()


def stop_children() -> None:
    """Ask every combination still running to stop (each then stops what it started)."""
    with _CHILDREN_LOCK:
        children = list(_CHILDREN.values())
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)


def _pids_started_under(workdir: Path) -> List[int]:
    """The Asterisks and serve a run in ``workdir`` started and that still run: their pid
    files, checked against the process (its command line or environment names the
    workdir), so that a recycled pid is never taken for ours."""
    pids = []
    for pidfile in [*workdir.glob("*/run/asterisk.pid"), workdir / "serve.pid", workdir / "deliver.pid"]:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            proc = Path(f"/proc/{pid}")
            marks = proc.joinpath("cmdline").read_bytes() + proc.joinpath("environ").read_bytes()
            if str(workdir).encode() in marks:
                pids.append(pid)
    return pids


def run_isolated(args: Sequence[str], workdir: Path, label: str, namespace: Optional[bool] = None,
                 timeout_s: float = COMBINATION_TIMEOUT_S) -> int:
    """Run ``python <args>`` as a child process, in a network namespace of its own
    (``unshare -n``, ``--in-namespace`` appended to ``args``) when ``namespace`` or, by
    default, when available; its output goes to ``workdir/driver.log``.  Waits at most
    ``timeout_s``, then stops it; afterwards ends any Asterisk or serve it left behind
    under ``workdir``.  Returns its exit code; raises LabError on a timeout."""
    use_ns = namespaces_available() if namespace is None else namespace
    command = [sys.executable, *args]
    if use_ns:
        command = [shutil.which("unshare") or "unshare", "-n", *command, "--in-namespace"]
    errors = open(workdir / "driver.log", "wb")
    # Two combinations start from two threads: spawning one at a time keeps CPython's
    # vfork() from ever racing another thread (seen as "OSError: [Errno 14] Bad address").
    with _SPAWN_LOCK:
        child = subprocess.Popen(command, stdout=errors, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True,  # tests/ importable: ``-m support.real_pbx``
                                 env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                     filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))))
    errors.close()
    with _CHILDREN_LOCK:
        _CHILDREN[child.pid] = child
    try:
        child.wait(timeout_s)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGTERM)  # the child's finally stops its Asterisks and serve
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
        for pid in _pids_started_under(workdir):
            kill_pid(pid, grace_s=3)
        raise LabError(f"{label}: no result within {timeout_s:.0f} s; see {workdir}/driver.log")
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        with _CHILDREN_LOCK:
            _CHILDREN.pop(child.pid, None)
        for pid in _pids_started_under(workdir):  # normally gone already
            kill_pid(pid, grace_s=3)
    return child.returncode


def run_combination(asterisk: str, shape: str, mode: str, workdir: Optional[Path] = None,
                    namespace: Optional[bool] = None, timeout_s: float = COMBINATION_TIMEOUT_S) -> Dict[str, Any]:
    """Run one combination in a child process (``unshare -n`` when ``namespace`` or, by
    default, when available) and return its result.  Always stops what it started, also on
    a timeout.  Raises LabError when the lab could not run."""
    combo = Combination(str(asterisk), shape, mode)
    combo.check()
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix=f"clinica-real-{combo.name}-"))
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "result.json"
    returncode = run_isolated(["-m", "support.real_pbx", "--asterisk", combo.asterisk, "--shape", shape,
                               "--mode", mode, "--workdir", str(workdir), "--child", str(out)],
                              workdir, combo.name, namespace, timeout_s)
    if returncode != 0 or not out.is_file():
        raise LabError(f"{combo.name}: the driver failed (exit {returncode}): "
                       + " | ".join(tail(workdir / "driver.log", 15)))
    return json.loads(out.read_text())


def _child_main(args) -> int:
    global _IN_NAMESPACE
    _IN_NAMESPACE = bool(args.in_namespace)
    if _IN_NAMESPACE:
        bring_loopback_up()

    def stop(signum, frame):  # SIGTERM from the parent: unwind, so that finally cleans up
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    combo = Combination(args.asterisk, args.shape, args.mode)
    try:
        result = run_here(combo, Path(args.workdir))
    except LabError as exc:
        log(f"lab error: {exc}")
        return 3
    tmp = Path(args.child + ".tmp")
    tmp.write_text(json.dumps(result, ensure_ascii=False, indent=1))
    os.replace(tmp, args.child)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--asterisk", choices=("22", "20"), default=None)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="pbx17")
    parser.add_argument("--mode", choices=MODES, default="script")
    parser.add_argument("--workdir", default=None, help="where the run keeps its files (default: a new temp dir)")
    parser.add_argument("--no-namespace", action="store_true", help="run in the current network namespace")
    parser.add_argument("--timeout", type=float, default=COMBINATION_TIMEOUT_S)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.asterisk = args.asterisk or SHAPES[args.shape]
    if args.child:
        return _child_main(args)
    try:
        result = run_combination(args.asterisk, args.shape, args.mode,
                                 Path(args.workdir) if args.workdir else None,
                                 namespace=False if args.no_namespace else None, timeout_s=args.timeout)
    except LabError as exc:
        print(f"real_pbx: {exc}", file=sys.stderr)
        return 3
    json.dump(result, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
