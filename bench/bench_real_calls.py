#!/usr/bin/env python3
"""What a real call waits at each hook, and how many calls a second the PBX takes.

    .venv/bin/python bench/bench_real_calls.py            # about 4 minutes on 2 cores
    .venv/bin/python bench/bench_real_calls.py --quick    # a smoke run, about 2 minutes

Real calls on a real Asterisk (22 with the FreePBX-17-shaped dialplan of ``tests/lab/``, or
``--asterisk 20 --shape pbx16``), started by ``tests/support/real_pbx.py`` in a network namespace of
its own, once per mode:

* ``none``: the same PBX without our ``#include`` (FreePBX's empty hook stubs): the baseline;
* ``fastagi``: the hooks go to ``clinica-asterisk serve``;
* ``script``: Asterisk runs ``clinica-agi`` per hook.

The world instance places the calls (AMI Originate of ``Local/in-801@callers``: a client
calls DID 0443334000, extension 801 answers after 2 s, the client hangs up 1 s later); the
CRM stand-in answers every push at once.

Everything is timed by Asterisk itself: the PBX's logger writes microsecond timestamps
(``dateformat=%F %T.%6q``) and each wait is the time between two lines of the PBX's own log
that both dialplans have, so that the no-hooks PBX is measured the same way:

  ring-in    the call's first dialplan step (from-trunk) -> the inbound route's first step
  dial       Gosub to a ring predial hook -> the Dial that rings the phone
  ring-out   Gosub to the trunk predial hook -> the Dial of the trunk
  answer     "<phone> answered <caller>" -> "Channel <caller> joined" the bridge (dead air)
  hangup     the caller's dialplan ends ("Spawn extension ... exited") -> "Hungup '<caller>'"
  transfer   the transferer's leg (807, attended *2) leaves its last bridge -> it is hung up
  ring delay the call's first dialplan step -> the Dial that rings the phone (ring-in + dial)

and every ``AGI(`` is paired with the channel's next dialplan step (the hook's whole hold,
compared with the hook deadline, 2000 ms by default).

Phases per mode: a warm-up (2 calls); a latency phase (12 calls to 801 one every 1.25 s,
plus 2 outgoing calls for ring-out and 2 attended transfers); then a ramp: calls to 801 at
4, 8, 16, ... 256 a second, 5 s each, until a step fails: a call that never bridged, a
hook that held its call longer than the deadline, a hook that left its event QUEUED or
FAILED or a FastAGI session serve REFUSED (our log; in script mode, whose hooks hand their
events to the delivery worker and say QUEUED: an event that reached the CRM more than the
deadline after it was stored, as the store records both, or not at all), or a warning in
either log; then one step at the geometric middle of the last good rate and the failing
one (or at half the first rate, when that failed).  A step passes on what it shows within
5 s, so a rate a little over what the PBX sustains can pass as a burst
(the backlog needs time to grow past the deadline).  The modes run one after another, each
in a fresh lab; every ratio is against the no-hooks PBX of the same run.  The world (the
load generator), the PBX, serve, the hooks and the CRM stand-in share the machine's cores;
the CPU each took is reported, and so is what processes outside the benchmark took
meanwhile (other engineers' tests on a shared machine show there).

Skipped (exit 0, with the reason) when no Asterisk is found or no network namespace can be
made (root and ``unshare``); ``--no-namespace`` runs in the current one instead (the lab's
fixed ports must then be free).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support import real_pbx  # noqa: E402  (tests/support/real_pbx.py: finding Asterisk, namespaces, the lab)

MODES = ("none", "fastagi", "script")
MODE_LABEL = {"none": "no hooks", "fastagi": "FastAGI", "script": "script"}
STAGES = ("ring-in", "dial", "answer", "hangup", "ring-out", "transfer", "ring delay")
DEADLINE_MS = 2000.0           # CLINICA_HOOK_DEADLINE_MS: the lab runs the default
WORLD_AMI = ("127.0.0.1", 15039, "lab", "labsecret")  # tests/lab/world/manager.conf
LOGGER_CONF = """[general]
dateformat=%F %T.%6q
[logfiles]
messages => notice,warning,error,verbose
"""
QUIET_TIMEOUT_S = 30           # after a phase: every channel gone on both instances
# IAX2 keeps a call number ~60 s after the call and allows 2048 per remote address: the
# lab's two instances (the world makes two IAX2 calls per call, both with 127.0.0.1) would
# run out near 1000 calls a minute, a limit of the lab's transport, not of the PBX.
IAX_GENERAL = "maxcallnumbers=16000\nmaxcallnumbers_nonvalidated=16000\n"


def iax_conf(confdir: Path) -> str:
    """The lab's iax.conf with room for more call numbers."""
    text = (confdir / "iax.conf").read_text()
    if "[general]\n" not in text:
        raise real_pbx.LabError(f"{confdir}/iax.conf has no [general]")
    return text.replace("[general]\n", "[general]\n" + IAX_GENERAL, 1)


# ---- the child: one mode's lab, in its namespace ------------------------------------------

class WorldAmi:
    """The world's manager, just enough to originate calls (events off; responses drained)."""

    def __init__(self) -> None:
        host, port, user, secret = WORLD_AMI
        self.sock = socket.create_connection((host, port), timeout=10)
        self.errors = 0
        self.sent = 0
        self.lock = threading.Lock()
        self.sock.recv(256)  # the banner
        self._send({"Action": "Login", "Username": user, "Secret": secret, "Events": "off"})
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += self.sock.recv(4096)
        if b"Success" not in reply:
            raise real_pbx.LabError(f"world AMI login refused: {reply!r}")
        self.sock.settimeout(None)
        threading.Thread(target=self._drain, daemon=True).start()

    def _send(self, fields: Dict[str, str]) -> None:
        data = "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        with self.lock:
            self.sock.sendall(data.encode())

    def _drain(self) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                *blocks, buffer = buffer.split(b"\r\n\r\n")
                self.errors += sum(b"Response: Error" in b for b in blocks)

    def originate(self, caller: str, then: Tuple[str, str] = ("Wait", "1")) -> None:
        """``Local/<caller>@callers``; its own side runs ``then`` once the call is answered."""
        self.sent += 1
        self._send({"Action": "Originate", "ActionID": str(self.sent), "Channel": f"Local/{caller}@callers",
                    "Application": then[0], "Data": then[1], "Async": "true", "Timeout": "30000"})


def proc_cpu(pid: Optional[int]) -> Tuple[float, float]:
    """(own, reaped children's) CPU seconds of a process; script-mode hooks are Asterisk's children."""
    if not pid:
        return 0.0, 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def machine_busy() -> float:
    """CPU seconds this machine's cores were busy (/proc/stat: user to softirq, no steal)."""
    with contextlib.suppress(OSError, ValueError):
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(values[:7]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


class Child:
    """Places one mode's calls and notes when each phase ran and the CPU it took."""

    def __init__(self, args, combo: real_pbx.Combination, lab: real_pbx.Lab, run: real_pbx.Run):
        self.args, self.combo, self.lab, self.run = args, combo, lab, run
        self.ami = WorldAmi()
        self.phases: List[Dict[str, Any]] = []

    def cpu(self) -> Dict[str, float]:
        pbx_own, hooks = proc_cpu(self.lab.pbx.pid())
        world_own, world_children = proc_cpu(self.lab.world.pid())
        serve_own, serve_children = proc_cpu(self.run.serve.pid if self.run.serve else None)
        me = os.times()
        return {"pbx": pbx_own, "script_hooks": hooks, "world": world_own + world_children,
                "serve": serve_own + serve_children, "driver": me.user + me.system,
                "driver_children": me.children_user + me.children_system,
                "machine": machine_busy(), "wall": time.time()}

    def quiet(self, timeout_s: float = QUIET_TIMEOUT_S) -> bool:
        """Wait until no channel is up on either instance."""
        until = time.monotonic() + timeout_s
        time.sleep(1.0)
        while time.monotonic() < until:
            if self.lab.pbx.active_channels() == 0 and self.lab.world.active_channels() == 0:
                return True
            time.sleep(0.5)
        return False

    def phase(self, name: str, plan: Sequence[Tuple[float, str, Tuple[str, str]]], rate: float = 0.0) -> Dict[str, Any]:
        """Originate each (offset s, caller, then) of ``plan`` on time; wait for quiet."""
        plan = sorted(plan, key=lambda item: item[0])
        cpu0 = self.cpu()
        start = time.time()
        t0 = time.monotonic()
        late = 0.0
        for offset, caller, then in plan:
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late = max(late, -delay)
            self.ami.originate(caller, then)
        placed_end = time.time()
        cpu1 = self.cpu()  # the CPU of the placing window (the calls' bulk), before the drain
        quiet = self.quiet()
        cpu2 = self.cpu()
        end = time.time()
        record = {"name": name, "rate": rate, "start": start, "placed_end": placed_end, "end": end,
                  "delivery": delivery(self.lab.data_dir, start, end), "hands_off": self.run.deliver is not None,
                  "callers": [c for _, c, _ in plan], "late_s": round(late, 3), "quiet": quiet,
                  "cpu_placing": {k: cpu1[k] - cpu0[k] for k in cpu0}, "cpu": {k: cpu2[k] - cpu0[k] for k in cpu0},
                  "ami_errors": self.ami.errors}
        self.phases.append(record)
        real_pbx.log(f"{self.combo.mode}: {name} done ({len(plan)} calls, quiet={quiet}, late {late:.2f} s)")
        return record

    def main(self) -> None:
        args = self.args
        hang_up_after = ("Wait", "1")
        self.phase("warm-up", [(i * 1.0, "in-801", hang_up_after) for i in range(2)])
        # The long calls first (attended transfer: ~16 s; outgoing), then the short ones.
        plan = [(t, caller, ("Wait", "90")) for t in (0.0, 4.0) for caller in ("in-xfer-att", "out-answer")]
        plan += [(1.0 + i * args.interval, "in-801", hang_up_after) for i in range(args.latency_calls)]
        self.phase("latency", plan)

        good: Optional[float] = None
        rates = list(args.rates)
        tried_between = False
        deadline = time.monotonic() + args.ramp_budget
        while rates and time.monotonic() < deadline:
            rate = rates.pop(0)
            n = max(2, int(round(rate * args.step_seconds)))
            record = self.phase(f"ramp {rate:g}/s", [(i / rate, "in-801", hang_up_after) for i in range(n)], rate)
            verdict = step_verdict(analyse(self.lab.pbx.messages, self.lab.log_file, record), record)
            record["verdict"] = verdict
            if verdict["ok"]:
                good = rate
                continue
            real_pbx.log(f"{self.combo.mode}: {rate:g} calls/s failed: {verdict['why']}")
            if not record["quiet"]:
                break  # calls still up: anything after would measure the backlog
            if good is not None and not tried_between and rate / good > 1.3:
                tried_between = True
                rates = [round((good * rate) ** 0.5, 1)]  # once, between the last good and this
                continue
            if good is None and not tried_between and rate > 1:
                tried_between = True
                rates = [rate / 2]  # the first step failed: once, half of it
                continue
            break


def child_main(args) -> int:
    if args.in_namespace:
        real_pbx.bring_loopback_up()

    def stop(signum, frame):  # SIGTERM from the parent: unwind, so that finally cleans up
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    workdir = Path(args.workdir)
    combo = real_pbx.Combination(args.asterisk, args.shape, args.child)
    run = real_pbx.Run(combo, workdir)
    extra = workdir / "bench-files"
    extra.mkdir(parents=True, exist_ok=True)
    (extra / "logger.conf").write_text(LOGGER_CONF)
    (extra / "pbx").mkdir(exist_ok=True)
    (extra / "world").mkdir(exist_ok=True)
    (extra / "pbx" / "iax.conf").write_text(iax_conf(real_pbx.LAB / args.shape))
    (extra / "world" / "iax.conf").write_text(iax_conf(real_pbx.LAB / "world"))
    try:
        lab = real_pbx.start_lab(combo, run, extra_pbx_files=[extra / "logger.conf", extra / "pbx" / "iax.conf"],
                                 extra_world_files=[extra / "world" / "iax.conf"])
        child = Child(args, combo, lab, run)
        child.main()
        result = {"mode": combo.mode, "phases": child.phases, "pbx_log": str(lab.pbx.messages),
                  "hook_log": str(lab.log_file), "pushes": len(run.sink.pushes()) if run.sink else 0}
    except real_pbx.LabError as exc:
        real_pbx.log(f"lab error: {exc}")
        return 3
    finally:
        run.stop()
    (workdir / "bench.json").write_text(json.dumps(result, indent=1))
    return 0


# ---- reading the PBX's log -----------------------------------------------------------------

_LINE = re.compile(r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\] (?P<level>\w+)\[\d+\](?:\[(?P<tag>C-[0-9a-f]+)\])? "
                   r"(?P<src>[\w.]+): (?P<msg>.*)$")
_EXEC = re.compile(r'^Executing \[(?P<exten>.*?)@(?P<ctx>[^:\]]+):(?P<pri>\d+)\] (?P<app>\w+)\("(?P<chan>[^"]*)", '
                   r'"(?P<data>.*)"\) in new stack$')
_ANSWERED = re.compile(r"^(?P<peer>\S+) answered (?P<chan>\S+)$")
_JOINED = re.compile(r"^Channel (?P<chan>\S+) (?P<what>joined|left) '")
_SPAWN_END = re.compile(r"^(?:Spawn extension \(.*\) exited non-zero on '(?P<a>[^']+)'|"
                        r"Auto fallthrough, channel '(?P<b>[^']+)')")
_HUNGUP = re.compile(r"^Hungup '(?P<chan>[^']+)'")
_PREDIAL = re.compile(r"(?:macro-|sub-)?(dialout-one|dial-ringall|dial-hunt|dialout-trunk)-predial-hook")
_LOG_TS = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) (?P<level>[A-Z]+) ")
_HOOK_LINE = re.compile(r"^.* hook call=\S+ stage=(?P<stage>\S+) outcome=(?P<outcome>\w*)")
ENTRY_CONTEXTS = {"from-trunk": "in", "from-internal": "out"}


def _epoch(text: str) -> float:
    return datetime.strptime(text.replace(",", "."), "%Y-%m-%d %H:%M:%S.%f").timestamp()


@dataclass
class Call:
    """What the PBX's log says about one call (one Asterisk call tag with an entering channel)."""

    tag: str
    entered: float = 0.0
    direction: str = ""
    channel: str = ""
    bridged: bool = False
    waits: Dict[str, List[float]] = field(default_factory=dict)  # stage -> ms
    agi: List[Tuple[str, float]] = field(default_factory=list)   # (stage, ms) per AGI()


def parse_calls(path: Path, offset: int = 0) -> List[Call]:
    """Every call in the PBX's log (from byte ``offset``), with its waits."""
    by_tag: Dict[str, List[Tuple[float, str, str]]] = {}
    with open(path, "rb") as f:
        f.seek(offset)
        for raw in f:
            m = _LINE.match(raw.decode("utf-8", "replace").rstrip("\n"))
            if m and m.group("tag"):
                by_tag.setdefault(m.group("tag"), []).append((_epoch(m.group("ts")), m.group("src"), m.group("msg")))
    calls = []
    for tag, lines in by_tag.items():
        call = _one_call(tag, lines)
        if call is not None:
            calls.append(call)
    return sorted(calls, key=lambda c: c.entered)


def _one_call(tag: str, lines: List[Tuple[float, str, str]]) -> Optional[Call]:
    call = Call(tag)
    first_exec: Dict[str, Tuple[float, str]] = {}
    pending_agi: Dict[str, Tuple[float, str]] = {}
    pending_predial: Dict[str, Tuple[float, str]] = {}
    pending_answer: Dict[str, float] = {}
    spawn_end: Dict[str, float] = {}
    last_left: Dict[str, float] = {}
    ring_in_done = set()
    dialled = set()

    def add(stage: str, ms: float) -> None:
        call.waits.setdefault(stage, []).append(ms)

    for ts, src, msg in lines:
        m = _EXEC.match(msg)
        if m:
            chan, app, data, ctx = m.group("chan"), m.group("app"), m.group("data"), m.group("ctx")
            if chan not in first_exec:
                first_exec[chan] = (ts, ctx)
                if not call.channel and not chan.startswith("Local/") and ctx in ENTRY_CONTEXTS:
                    call.channel, call.entered, call.direction = chan, ts, ENTRY_CONTEXTS[ctx]
            if chan in pending_agi:
                t0, stage = pending_agi.pop(chan)
                call.agi.append((stage, (ts - t0) * 1000))
            if app == "AGI":
                parts = data.split(",")
                pending_agi[chan] = (ts, parts[1] if len(parts) > 1 else "?")
            if chan == call.channel and call.direction == "in" and chan not in ring_in_done \
                    and app == "Set" and data.startswith("__DIRECTION="):
                ring_in_done.add(chan)
                add("ring-in", (ts - call.entered) * 1000)
            if app in ("Gosub", "Macro"):
                hook = _PREDIAL.search(data)
                if hook:
                    pending_predial[chan] = (ts, "ring-out" if hook.group(1) == "dialout-trunk" else "dial")
            if app == "Dial":
                if chan in pending_predial:
                    t0, stage = pending_predial.pop(chan)
                    add(stage, (ts - t0) * 1000)
                if chan == call.channel and chan not in dialled:
                    dialled.add(chan)
                    add("ring delay", (ts - call.entered) * 1000)
            continue
        m = _ANSWERED.match(msg)
        if m and src == "app_dial.c":
            pending_answer[m.group("chan")] = ts
            continue
        m = _JOINED.match(msg)
        if m:
            chan = m.group("chan")
            if m.group("what") == "joined":
                if chan == call.channel:
                    call.bridged = True
                if chan in pending_answer:
                    add("answer", (ts - pending_answer.pop(chan)) * 1000)
            else:
                last_left[chan] = ts
            continue
        m = _SPAWN_END.match(msg)
        if m and src == "pbx.c":
            spawn_end.setdefault(m.group("a") or m.group("b"), ts)
            continue
        m = _HUNGUP.match(msg)
        if m:
            chan = m.group("chan")
            if chan == call.channel and chan in spawn_end:
                add("hangup", (ts - spawn_end[chan]) * 1000)
            elif chan.startswith("IAX2/807-") and chan in last_left:
                add("transfer", (ts - last_left[chan]) * 1000)
    return call if call.channel else None


def hook_log(path: Path, start: float, end: float) -> Tuple[Dict[str, int], List[str]]:
    """What our log says between ``start`` and ``end`` (epoch s): the hooks' outcomes (and
    FastAGI sessions refused, as REFUSED), and its warnings and errors."""
    counts: Dict[str, int] = {}
    problems: List[str] = []
    with contextlib.suppress(OSError):
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                m = _LOG_TS.match(line)
                if not m or not start <= _epoch(m.group("ts")) < end:
                    continue
                hook = _HOOK_LINE.match(line)
                if hook:
                    outcome = hook.group("outcome") or "-"
                    counts[outcome] = counts.get(outcome, 0) + 1
                elif "session " in line and "outcome=REFUSED" in line:
                    counts["REFUSED"] = counts.get("REFUSED", 0) + 1
                if m.group("level") in ("WARNING", "ERROR", "CRITICAL"):
                    problems.append(line.strip()[:200])
    return counts, problems


def warnings_between(path: Path, start: float, end: float) -> List[str]:
    found = []
    with contextlib.suppress(OSError):
        with open(path, "rb") as f:
            for raw in f:
                if b"WARNING[" not in raw and b"ERROR[" not in raw:
                    continue
                m = _LINE.match(raw.decode("utf-8", "replace").rstrip("\n"))
                if m and start <= _epoch(m.group("ts")) < end:
                    found.append(f"{m.group('src')}: {m.group('msg')}"[:200])
    return found


def delivery(data_dir: Path, start: float, end: float) -> Dict[str, Any]:
    """The events stored between ``start`` and ``end`` (epoch s), read from the store:
    how many are not delivered yet, and for each delivered one the time from stored to
    delivered (ms): what the CRM's users wait, whoever sent it (the hook, or the worker it
    handed the event to)."""
    rows = real_pbx.outbox_rows(data_dir, "SELECT created_at, delivered_at FROM outbox"
                                " WHERE created_at >= ? AND created_at < ?", (start, end)) or []
    return {"undelivered": sum(done is None for _, done in rows),
            "lags_ms": sorted((done - made) * 1000 for made, done in rows if done is not None)}


@dataclass
class Window:
    """The calls of one phase and what happened to them."""

    calls: List[Call]
    placed: int
    outcomes: Dict[str, int]
    warnings: List[str]       # the PBX's
    our_problems: List[str]   # our log's warnings and errors
    delivery: Dict[str, Any]  # see delivery()
    hands_off: bool           # script mode with the delivery worker: QUEUED is the hooks' way

    def waits(self, stage: str) -> List[float]:
        return [w for c in self.calls for w in c.waits.get(stage, [])]

    def agi(self) -> List[float]:
        return [ms for c in self.calls for _, ms in c.agi]

    @property
    def entered_rate(self) -> float:
        """Calls a second that reached the PBX (first to last)."""
        times = [c.entered for c in self.calls]
        return (len(times) - 1) / (max(times) - min(times)) if len(times) > 1 and max(times) > min(times) else 0.0

    @property
    def failed(self) -> int:
        return self.placed - sum(c.bridged for c in self.calls)

    @property
    def over_deadline(self) -> int:
        return sum(ms > DEADLINE_MS for ms in self.agi())

    @property
    def missed_outcomes(self) -> Dict[str, int]:
        """Hooks that did not deliver their event: FAILED, REFUSED by serve, or QUEUED (left
        for the worker after the deadline), unless handing over is how the hooks work."""
        counted = ("FAILED", "REFUSED") if self.hands_off else ("QUEUED", "FAILED", "REFUSED")
        return {o: n for o, n in sorted(self.outcomes.items()) if o in counted}

    @property
    def late(self) -> int:
        """Events not at the CRM within the hook deadline of being stored (or not at all)."""
        return self.delivery["undelivered"] + sum(ms > DEADLINE_MS for ms in self.delivery["lags_ms"])

    @property
    def missed(self) -> int:
        return sum(self.missed_outcomes.values()) + (self.late if self.hands_off else 0)


def analyse(pbx_log: Path, hook_log_path: Path, phase: Dict[str, Any], calls: Optional[List[Call]] = None) -> Window:
    if calls is None:
        calls = parse_calls(pbx_log)
    mine = [c for c in calls if phase["start"] <= c.entered < phase["end"]]
    outcomes, problems = hook_log(hook_log_path, phase["start"], phase["end"])
    return Window(mine, len(phase["callers"]), outcomes, warnings_between(pbx_log, phase["start"], phase["end"]),
                  problems, phase["delivery"], phase["hands_off"])


def step_verdict(window: Window, phase: Dict[str, Any]) -> Dict[str, Any]:
    why = []
    if window.failed:
        why.append(f"{window.failed} of {window.placed} calls never bridged")
    if window.over_deadline:
        why.append(f"{window.over_deadline} hooks held the call over {DEADLINE_MS:.0f} ms")
    if window.missed_outcomes:
        parts = ", ".join(f"{n} {o}" for o, n in window.missed_outcomes.items())
        why.append(f"hooks missed: {parts}")
    if window.hands_off and window.late:
        why.append(f"{window.late} events handed to the worker reached the CRM over {DEADLINE_MS:.0f} ms after "
                   "they were stored, or not at all")
    if window.warnings:
        why.append(f"{len(window.warnings)} PBX warnings ({window.warnings[0][:70]})")
    others = [p for p in window.our_problems if "outcome=REFUSED" not in p]
    if others:
        why.append(f"{len(others)} warnings in our log ({others[0][24:100]})")
    if not phase["quiet"]:
        why.append(f"calls still up {QUIET_TIMEOUT_S} s after the last was placed")
    return {"ok": not why, "why": "; ".join(why)}


# ---- the parent: run the modes, print the tables ------------------------------------------

def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def fmt_ms(v: float) -> str:
    if v != v:  # nan
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def vs_base(value: float, base: float) -> str:
    if value != value or base != base:
        return ""
    added = f"{value - base:+.1f} ms" if abs(value - base) < 100 else f"{value - base:+.0f} ms"
    if base >= 0.05:
        ratio = value / base
        return f"{ratio:.1f}x ({added})" if ratio < 100 else f"{ratio:.0f}x ({added})"
    return f"({added}; nothing runs there without hooks)"


def run_mode(args, mode: str, root: Path) -> Dict[str, Any]:
    workdir = root / mode
    workdir.mkdir(parents=True)
    command = [str(Path(__file__).resolve()), "--child", mode, "--workdir", str(workdir),
               "--asterisk", args.asterisk, "--shape", args.shape, "--interval", str(args.interval),
               "--latency-calls", str(args.latency_calls), "--step-seconds", str(args.step_seconds),
               "--ramp-budget", str(args.ramp_budget), "--rates", ",".join(f"{r:g}" for r in args.rates)]
    load_before = os.getloadavg()
    returncode = real_pbx.run_isolated(command, workdir, f"bench {mode}", namespace=not args.no_namespace,
                                       timeout_s=args.ramp_budget + 180)
    out = workdir / "bench.json"
    if returncode != 0 or not out.is_file():
        raise real_pbx.LabError(f"{mode}: the driver failed (exit {returncode}): "
                                + " | ".join(real_pbx.tail(workdir / "driver.log", 15)))
    result = json.loads(out.read_text())
    calls = parse_calls(Path(result["pbx_log"]))
    result["windows"] = {p["name"]: analyse(Path(result["pbx_log"]), Path(result["hook_log"]), p, calls)
                         for p in result["phases"]}
    result["load"] = (load_before, os.getloadavg())
    return result


def cpu_ms_per_call(phase: Dict[str, Any], key: str = "cpu") -> Dict[str, float]:
    cpu, n = phase[key], max(1, len(phase["callers"]))
    ours = cpu["pbx"] + cpu["script_hooks"] + cpu["world"] + cpu["serve"] + cpu["driver"] + cpu["driver_children"]
    return {"pbx": cpu["pbx"] * 1000 / n, "hooks": (cpu["script_hooks"] + cpu["serve"]) * 1000 / n,
            "world": cpu["world"] * 1000 / n, "other_pct": 100 * max(0.0, cpu["machine"] - ours) / cpu["wall"] / os.cpu_count(),
            "machine_pct": 100 * cpu["machine"] / cpu["wall"] / os.cpu_count()}


def report(args, results: Dict[str, Dict[str, Any]]) -> None:
    modes = [m for m in MODES if m in results]
    base = results.get("none")
    print(f"\nWhat a call waits at each hook point, measured by Asterisk (latency phase: {args.latency_calls} calls "
          f"client -> DID -> 801, one every {args.interval:g} s, + 2 outgoing calls and 2 attended transfers), ms:")
    print(f"  {'stage':<11} {'mode':<9} {'n':>4} {'p50':>8} {'p95':>8} {'max':>8}   p50 vs no hooks")
    for stage in STAGES:
        for mode in modes:
            values = results[mode]["windows"]["latency"].waits(stage)
            if not values and stage == "ring-out":
                continue
            b = pct(base["windows"]["latency"].waits(stage), 50) if base and mode != "none" else float("nan")
            print(f"  {stage if mode == modes[0] else '':<11} {MODE_LABEL[mode]:<9} {len(values):>4} "
                  f"{fmt_ms(pct(values, 50)):>8} {fmt_ms(pct(values, 95)):>8} {fmt_ms(max(values) if values else float('nan')):>8}"
                  f"   {vs_base(pct(values, 50), b)}")
    print("\n  Each hook's whole hold (AGI() to the next dialplan step), latency phase, ms:")
    for mode in modes:
        if mode == "none":
            continue
        window = results[mode]["windows"]["latency"]
        by_stage: Dict[str, List[float]] = {}
        for c in window.calls:
            for stage, ms in c.agi:
                by_stage.setdefault(stage, []).append(ms)
        parts = [f"{s} {fmt_ms(pct(v, 50))}/{fmt_ms(pct(v, 95))}/{fmt_ms(max(v))} (n={len(v)})"
                 for s, v in sorted(by_stage.items())]
        print(f"  {MODE_LABEL[mode]:<9} p50/p95/max: " + "; ".join(parts))
        print(f"  {'':<9} hook outcomes (our log): {dict(sorted(window.outcomes.items()))}")
        lags = window.delivery["lags_ms"]
        print(f"  {'':<9} stored -> at the CRM p50/p95/max: {fmt_ms(pct(lags, 50))}/{fmt_ms(pct(lags, 95))}/"
              f"{fmt_ms(max(lags) if lags else float('nan'))} ms (n={len(lags)}, not delivered "
              f"{window.delivery['undelivered']})")
    print("\n  CPU per call in the latency phase (ms; world = the load generator's Asterisk):")
    for mode in modes:
        c = cpu_ms_per_call(next(p for p in results[mode]["phases"] if p["name"] == "latency"))
        print(f"  {MODE_LABEL[mode]:<9} PBX Asterisk {c['pbx']:6.1f}   hooks {c['hooks']:6.1f}   world {c['world']:6.1f}"
              f"   machine busy {c['machine_pct']:4.0f} %, of it other processes {c['other_pct']:4.1f} %")

    print(f"\nCalls a second the PBX takes (each step: calls client -> DID -> 801 at the rate for {args.step_seconds:g} s; "
          f"a call lasts ~3 s; hook deadline {DEADLINE_MS:.0f} ms):")
    print(f"  {'':<9} {'':>7} {'':>7} {'':>5} {'':>6} {'':>5} {'':>4} {'':>4} {'hook hold, ms':^23} {'wait p95, ms':^17}"
          f" {'to CRM':>7} {'CPU ms/call':^11} {'cores busy':^11}")
    print(f"  {'mode':<9} {'calls/s':>7} {'reached':>7} {'calls':>5} {'failed':>6} {'hooks':>5} {'>dl':>4} {'miss':>4} "
          f"{'p50':>7} {'p95':>7} {'max':>7} {'ring-in':>8} {'answer':>8} {'p95 ms':>7} {'PBX':>5} {'hooks':>5} {'all':>5} "
          f"{'other':>5}  verdict")
    sustained: Dict[str, Tuple[Optional[float], str]] = {}
    for mode in modes:
        good, first_bad = None, ""
        ramp = [p for p in results[mode]["phases"] if p["name"].startswith("ramp")]
        for p in sorted(ramp, key=lambda p: p["rate"]):
            w = results[mode]["windows"][p["name"]]
            verdict = step_verdict(w, p)
            agi = w.agi()
            c = cpu_ms_per_call(p)
            placing = p["cpu_placing"]
            busy = 100 * placing["machine"] / placing["wall"] / os.cpu_count()
            print(f"  {MODE_LABEL[mode]:<9} {p['rate']:>7g} {w.entered_rate:>7.1f} {len(p['callers']):>5} {w.failed:>6} {len(agi):>5} "
                  f"{w.over_deadline:>4} {w.missed:>4} {fmt_ms(pct(agi, 50)):>7} {fmt_ms(pct(agi, 95)):>7} "
                  f"{fmt_ms(max(agi) if agi else float('nan')):>7} {fmt_ms(pct(w.waits('ring-in'), 95)):>8} "
                  f"{fmt_ms(pct(w.waits('answer'), 95)):>8} {fmt_ms(pct(w.delivery['lags_ms'], 95)):>7} "
                  f"{c['pbx']:>5.0f} {c['hooks']:>5.0f} "
                  f"{busy:>4.0f}% {c['other_pct']:>4.0f}%  {'ok' if verdict['ok'] else verdict['why']}")
            if verdict["ok"] and not first_bad:
                good = max(good or 0.0, p["rate"])
            elif not verdict["ok"] and not first_bad:
                first_bad = f"{p['rate']:g}/s: {verdict['why']}"
            elif verdict["ok"] and first_bad and p["rate"] > (good or 0):
                good = p["rate"]  # the step tried between the last good rate and the first bad one
        top = max((p["rate"] for p in ramp), default=0)
        sustained[mode] = (good, first_bad or f"none up to {top:g}/s (the limit is higher)")
    print("  (reached: calls a second that reached the PBX; >dl: hooks that held the call longer than the deadline; miss: hooks that left their event QUEUED or "
          "FAILED, or were REFUSED by serve (script mode, whose hooks hand their events to the delivery worker: events that reached the CRM "
          "over the deadline after they were stored, or not at all, and FAILED); wait p95: the ring-in and answer waits as above; "
          "to CRM: from an event stored to it delivered; CPU per call: the PBX's Asterisk, the hooks "
          "(serve, or the script processes); cores busy: the whole machine while the calls were placed, and the "
          "share of it taken by processes outside the benchmark)")
    print("\nSustained calls/s (every call bridged, no hook over its deadline, no miss, no warning):")
    base_rate = sustained.get("none", (None, ""))[0]
    for mode in modes:
        good, bad = sustained[mode]
        ratio = ""
        if good and base_rate and mode != "none":
            capped, base_capped = bad.startswith("none up to"), sustained["none"][1].startswith("none up to")
            bound = "" if not (capped or base_capped) else ">= " if capped and not base_capped else \
                "<= " if base_capped and not capped else None
            ratio = f"  ({bound}{good / base_rate:.2f}x no hooks)" if bound is not None else "  (both passed every step)"
        lowest = min((p["rate"] for p in results[mode]["phases"] if p["name"].startswith("ramp")), default=0)
        print(f"  {MODE_LABEL[mode]:<9} {f'{good:g}' if good is not None else f'< {lowest:g}':>6}{ratio};"
              f" first failing step: {bad}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--asterisk", choices=("22", "20"), default=None)
    parser.add_argument("--shape", choices=tuple(real_pbx.SHAPES), default="pbx17")
    parser.add_argument("--modes", default=",".join(MODES), help="which of none,fastagi,script (default: all)")
    parser.add_argument("--interval", type=float, default=1.25, help="seconds between calls in the latency phase")
    parser.add_argument("--latency-calls", type=int, default=12)
    parser.add_argument("--step-seconds", type=float, default=5.0, help="length of each ramp step")
    parser.add_argument("--rates", default=None, help="ramp steps, calls a second (default 4,8,16,...,256)")
    parser.add_argument("--ramp-budget", type=float, default=90.0, help="no ramp step starts after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) and say where")
    parser.add_argument("--no-namespace", action="store_true", help="run in the current network namespace")
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.asterisk = args.asterisk or real_pbx.SHAPES[args.shape]
    if args.quick:
        args.latency_calls, args.step_seconds, args.ramp_budget = 4, 2.0, 30.0
        args.rates = args.rates or "4,32"
    args.rates = [float(r) for r in str(args.rates or "4,8,16,32,64,128,256").split(",") if r]
    if args.child:
        return child_main(args)

    reason = real_pbx.asterisk_unavailable_reason([args.asterisk])
    if reason is None and not args.no_namespace and not real_pbx.namespaces_available():
        reason = "no network namespace for the lab (needs root and unshare -n); --no-namespace runs without one"
    if reason:
        print(f"bench_real_calls: skipped: {reason}")
        return 0
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")
    started = time.monotonic()
    print(f"clinica-asterisk on a real Asterisk {args.asterisk} ({args.shape} dialplan): {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}; modes {', '.join(modes)}, one after another; "
          f"load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    root = Path(tempfile.mkdtemp(prefix="clinica-bench-calls-"))
    results: Dict[str, Dict[str, Any]] = {}
    try:
        for mode in modes:
            t = time.monotonic()
            results[mode] = run_mode(args, mode, root)
            (l0, l1) = results[mode]["load"]
            print(f"  {MODE_LABEL[mode]}: {time.monotonic() - t:.0f} s (load average {l0[0]:.2f} -> {l1[0]:.2f})",
                  flush=True)
    except real_pbx.LabError as exc:
        print(f"bench_real_calls: lab error: {exc}", file=sys.stderr)
        args.keep = True
        return 3
    finally:
        real_pbx.stop_children()
        if args.keep:
            print(f"(work directory kept: {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report(args, results)
    print(f"\n(benchmark took {time.monotonic() - started:.0f} s; load average at the end "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
