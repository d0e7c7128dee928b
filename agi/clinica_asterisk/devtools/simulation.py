"""Recorded calls played against a FastAGI server exactly as Asterisk would play them.

Four calls recorded on a real Asterisk 22 (``recorded_calls.json``): an incoming call
answered by 801, one to a ring group answered by 802, a missed one, an outgoing one.  Each
hook session connects over TCP, sends the env block Asterisk sent (as FastAGI sends it:
``agi_network``, ``agi_network_script``, the ``agi://`` request, the arguments our
dialplan passes), then answers every command with what Asterisk answered; variables set
with ``__`` are seen by the call's later sessions.  Every play gets fresh unique ids, so
the calls are new calls each time.
"""

from __future__ import annotations

import json
import random
import re
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .asterisk_peer import AsteriskCall, PeerStalled, RecordedSession, serve_session

# The recorded sessions, shipped as data so that `simulate` works without the fixtures;
# tests/test_simulate.py checks (and regenerates) them from the recordings.
RECORDED_CALLS = Path(__file__).with_name("recorded_calls.json")

UNIQUEID = re.compile(r"^\d{9,11}\.\d+$")

# What a plain dialplan passes at each recorded point (FreePBX's passes the same stages):
#   AGI(agi://…/clinica-agi,ring-in,${EXTEN},<target>)   …,answer)
#   …,ring-out,${CALLERID(num)},${EXTEN})                 …,hangup,in|out)
ARGS = {
    "ring-in": ("ring-in", "0443334000", "801"),
    "ring-group": ("ring-in", "0443334001", "600"),
    "ring-miss": ("ring-in", "0443334002", "803"),
    "ring-out": ("ring-out", "904", "0670219424"),
    "answer": ("answer",),
    "hangup-in": ("hangup", "in"),
    "hangup-out": ("hangup", "out"),
}

# call name -> (what happens, label of its first session)
CALLS = {
    "in-801": ("incoming 0670219424 -> DID 0443334000, answered by 801", "ring-in"),
    "in-group": ("incoming 0670219425 -> DID 0443334001, ring group 600, answered by 802", "ring-group"),
    "in-miss": ("incoming 0670219426 -> DID 0443334002, 803 rings, the caller gives up", "ring-miss"),
    "out": ("outgoing 904 -> 0670219424, answered", "ring-out"),
}

OK_STATUSES = ("SENT", "QUEUED", "SKIPPED")


def recorded_calls() -> Dict[str, List[RecordedSession]]:
    """The recorded sessions grouped into calls (by linkedid), named as in :data:`CALLS`."""
    by_linkedid: Dict[str, List[RecordedSession]] = {}
    for data in json.loads(RECORDED_CALLS.read_text(encoding="utf-8")):
        session = RecordedSession(list(data["env"]), dict(data["variables"]), data["dead"],
                                  data["channel_status"], label=data["label"])
        by_linkedid.setdefault(session.variables["${CHANNEL(linkedid)}"], []).append(session)
    names = {first: name for name, (_, first) in CALLS.items()}
    return {names[sessions[0].label]: sessions for sessions in by_linkedid.values()}


def with_fresh_ids(sessions: Sequence[RecordedSession], rng: random.Random,
                   now: Optional[float] = None) -> List[RecordedSession]:
    """The same call with new uniqueids and linkedid (their order kept), so that the store
    takes it for a new call."""
    old = set()
    for s in sessions:
        old.update(v for v in [s.env_value("agi_uniqueid"), *s.variables.values()] if v and UNIQUEID.match(v))
    ordered = sorted(old, key=lambda v: tuple(int(p) for p in v.split(".")))
    epoch, first = int(now if now is not None else time.time()), rng.randrange(1, 10**8)
    new = {value: f"{epoch}.{first + n}" for n, value in enumerate(ordered)}
    renamed = []
    for s in sessions:
        env = [f"agi_uniqueid: {new[s.env_value('agi_uniqueid')]}" if line.startswith("agi_uniqueid: ")
               and s.env_value("agi_uniqueid") in new else line for line in s.env]
        variables = {k: new.get(v, v) if v else v for k, v in s.variables.items()}
        renamed.append(replace(s, env=env, variables=variables))
    return renamed


@dataclass
class Played:
    call: str
    stage: str
    status: str  # CLINICA_STATUS as the hook left it, or what went wrong
    ms: int
    commands: List[str]

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES


def play_session(address: Tuple[str, int], call: AsteriskCall, session: RecordedSession,
                 timeout_s: float = 10.0) -> Tuple[str, int, List[str]]:
    """One FastAGI session: (CLINICA_STATUS or what went wrong, hold time in ms, commands)."""
    host, port = address
    started = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        return f"NO SERVER ({exc.strerror or exc})", 0, []
    try:
        sock.setblocking(True)
        conv = serve_session(call, session, sock.fileno(), sock.fileno(), timeout_s)
    except PeerStalled:
        return "STALLED", int((time.monotonic() - started) * 1000), []
    except (BrokenPipeError, ConnectionResetError):
        return "REFUSED", int((time.monotonic() - started) * 1000), []
    finally:
        sock.close()
    ms = int((time.monotonic() - started) * 1000)
    return conv.local.get("CLINICA_STATUS") or ("REFUSED" if not conv.commands else "NO STATUS"), ms, conv.commands


def play_call(address: Tuple[str, int], name: str, sessions: Sequence[RecordedSession],
              script: str = "clinica-agi", timeout_s: float = 10.0) -> List[Played]:
    """The sessions of one call, in order, as ``AGI(agi://host:port/<script>,<stage>,…)``."""
    call = AsteriskCall()
    played = []
    host, port = address
    for session in sessions:
        args = ARGS[session.label]
        session = session.with_args(args).over_fastagi(host, port, script)
        status, ms, commands = play_session(address, call, session, timeout_s)
        played.append(Played(name, args[0], status, ms, commands))
    return played


def simulate(address: Tuple[str, int], names: Sequence[str] = tuple(CALLS), rng: Optional[random.Random] = None,
             timeout_s: float = 10.0) -> List[Played]:
    rng = rng or random.Random()
    calls = recorded_calls()
    results = []
    for name in names:
        results += play_call(address, name, with_fresh_ids(calls[name], rng), timeout_s=timeout_s)
    return results
