"""Asterisk's side of an AGI session, played from sessions recorded on a real Asterisk 22.

Used by ``clinica-asterisk simulate`` (calls played against the FastAGI server without a
PBX), by the benchmark and by the tests.  It answers commands the way the recordings show
Asterisk answering them: variables from the recorded values, ``200 result=0`` for an unset
variable, ``200 result=1 ()`` for an empty expression (an expression is substituted the
way Asterisk does it, inner ``${…}`` first, ``CSV_QUOTE`` included), ``510`` for an unknown command,
``511`` for channel commands on a dead channel; a ``SET VARIABLE __NAME`` is inherited by
the call's later sessions (as the recordings show for ``__CLINICA_TEST``).  Commands are
split into arguments the way Asterisk's parser does (double quotes, backslash escapes).
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Mapping, Optional, Sequence

# Both read the same field of the channel.
ALIASES = {"${CDR(linkedid)}": "${CHANNEL(linkedid)}"}
DEAD_CHANNEL = "511 Command Not Permitted on a dead channel or intercept routine"
UNKNOWN_COMMAND = "510 Invalid or unknown command"


def split_command(line: str) -> List[str]:
    """Arguments of an AGI command line, as Asterisk's parse_args splits them."""
    args, current, quoted, escaped, started = [], [], False, False, False
    for ch in line:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped, started = True, True
        elif ch == '"':
            quoted, started = not quoted, True
        elif ch.isspace() and not quoted:
            if started:
                args.append("".join(current))
                current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        args.append("".join(current))
    return args


def substitute(text: str, value_of: Callable[[str], str]) -> str:
    """``text`` with each ``${…}`` replaced, as Asterisk substitutes an expression: the
    inner ones first, then ``CSV_QUOTE(…)`` quoted as Asterisk's function quotes (doubled
    quotes, whole value in quotes), any other ``${X}`` by ``value_of("${X}")``."""
    out, i = [], 0
    while True:
        start = text.find("${", i)
        if start < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:start])
        depth, j = 1, start + 2
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth:  # not closed: Asterisk leaves it as it is
            out.append(text[start:])
            return "".join(out)
        inner = text[start + 2:j - 1]
        if "${" in inner:
            inner = substitute(inner, value_of)
        if inner.startswith("CSV_QUOTE(") and inner.endswith(")"):
            out.append('"' + inner[len("CSV_QUOTE("):-1].replace('"', '""') + '"')
        else:
            out.append(value_of("${" + inner + "}"))
        i = j


def parse_answer_value(answer: str) -> Optional[str]:
    """``200 result=1 (x)`` -> 'x'; ``200 result=0`` -> None."""
    if answer.startswith("200 result=1 (") and answer.endswith(")"):
        return answer[len("200 result=1 ("):-1]
    return None


@dataclass
class RecordedSession:
    """One AGI session: its env block, what the channel knew, and how it ended.

    ``unsolicited_hangup_after``: Asterisk sends ``HANGUP`` (``hangup_lines`` times) just
    before answering the command with this index, as it does when the caller hangs up
    while a FastAGI script holds the session."""

    env: List[str]
    variables: Dict[str, Optional[str]]
    dead: bool = False
    channel_status: str = "200 result=6"
    unsolicited_hangup_after: Optional[int] = None
    label: str = ""
    extra: dict = field(default_factory=dict)
    hangup_lines: int = 1

    def with_args(self, args: Sequence[str]) -> "RecordedSession":
        """The same session as if the dialplan had passed ``args`` to the AGI."""
        env = [line for line in self.env if not line.startswith("agi_arg_")]
        env += [f"agi_arg_{n}: {value}" for n, value in enumerate(args, 1)]
        return replace(self, env=env, variables=dict(self.variables))

    def over_fastagi(self, host: str, port: int, script: str = "clinica-agi") -> "RecordedSession":
        """The same session as Asterisk starts it for ``AGI(agi://host:port/script,…)``."""
        kept = [line for line in self.env if not line.startswith(("agi_network", "agi_request:"))]
        env = ["agi_network: yes", f"agi_network_script: {script}",
               f"agi_request: agi://{host}:{port}/{script}", *kept]
        return replace(self, env=env, variables=dict(self.variables))

    def env_value(self, key: str) -> str:
        for line in self.env:
            name, _, value = line.partition(": ")
            if name == key:
                return value
        return ""


def session_from_recording(data: Mapping) -> RecordedSession:
    """A recorder's JSON line (``env``, ``argv``, ``conv``) as a session to replay."""
    variables: Dict[str, Optional[str]] = {}
    channel_status, dead, hangup_after = "200 result=6", False, None
    for n, (command, answer) in enumerate(data["conv"]):
        if command == "<unsolicited>" and answer == "HANGUP":
            hangup_after = n
            continue
        if command.startswith("<"):
            continue
        args = split_command(command)
        if args[:2] == ["GET", "VARIABLE"]:
            variables[args[2]] = parse_answer_value(answer)
        elif args[:3] == ["GET", "FULL", "VARIABLE"]:
            variables[ALIASES.get(args[3], args[3])] = parse_answer_value(answer) or ""
        elif args[:2] == ["CHANNEL", "STATUS"]:
            channel_status, dead = answer, answer.startswith("511")
    label = (data.get("argv") or [""])[0] or data["env"][1].partition(": ")[2]
    return RecordedSession(list(data["env"]), variables, dead, channel_status, hangup_after, label)


class AsteriskCall:
    """Asterisk's answers for the sessions of one call; inherited variables carry over."""

    def __init__(self):
        self.inherited: Dict[str, str] = {}
        self.set_on_channel: List[tuple] = []

    def _lookup(self, session: RecordedSession, name: str, local: Dict[str, str]) -> Optional[str]:
        return local.get(name, self.inherited.get(name, session.variables.get(name)))

    def answer(self, session: RecordedSession, line: str, local: Dict[str, str]) -> str:
        args = split_command(line)
        upper = [a.upper() for a in args[:3]]
        if upper[:2] == ["GET", "VARIABLE"] and len(args) == 3:
            value = self._lookup(session, args[2], local)
            return "200 result=0" if value is None else f"200 result=1 ({value})"
        if upper[:3] == ["GET", "FULL", "VARIABLE"] and len(args) in (4, 5):
            def value_of(expression: str) -> str:
                expression = ALIASES.get(expression, expression)
                if expression in session.variables:
                    return session.variables[expression] or ""
                return self._lookup(session, expression[2:-1], local) or ""

            return f"200 result=1 ({substitute(args[3], value_of)})"
        if upper[:2] == ["SET", "VARIABLE"] and len(args) == 4:
            name, value = args[2], args[3]
            self.set_on_channel.append((session.label, name, value))
            bare = name.lstrip("_")
            if name.startswith("_"):
                self.inherited[bare] = value
            local[bare] = value
            return "200 result=1"
        if upper[:1] == ["VERBOSE"] and len(args) in (2, 3):
            return "200 result=1"
        if upper[:2] == ["CHANNEL", "STATUS"]:
            return session.channel_status
        if session.dead and upper[:1] in (["ANSWER"], ["STREAM"], ["WAIT"]):
            return DEAD_CHANNEL
        return UNKNOWN_COMMAND

    def status_of(self, label: str) -> str:
        """The last CLINICA_STATUS a session with this label left on its channel."""
        found = [value for who, name, value in self.set_on_channel if who == label and name == "CLINICA_STATUS"]
        return found[-1] if found else ""


@dataclass
class Conversation:
    commands: List[str] = field(default_factory=list)
    answers: List[str] = field(default_factory=list)
    local: Dict[str, str] = field(default_factory=dict)
    closed_by_script: bool = False


class PeerStalled(TimeoutError):
    """The script (or server) said nothing for longer than the peer's timeout."""


def serve_session(call: AsteriskCall, session: RecordedSession, read_fd: int, write_fd: int,
                  timeout_s: float = 10.0) -> Conversation:
    """Play Asterisk's side over two file descriptors until the script ends the session.

    Works on pipes (script AGI) and on one connected socket's descriptor (FastAGI).  A
    reset connection counts as the script closing it."""
    conv = Conversation()
    _write_all(write_fd, ("\n".join(session.env) + "\n\n").encode("utf-8"))
    buffer = b""
    poller = select.poll()  # not select(): a busy load generator has descriptors above 1023
    poller.register(read_fd, select.POLLIN)
    while True:
        if not poller.poll(timeout_s * 1000):
            raise PeerStalled(f"the script stalled after {conv.commands[-3:]}")
        try:
            chunk = os.read(read_fd, 65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            conv.closed_by_script = True
            return conv
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.decode("utf-8")
            conv.commands.append(line)
            out = b""
            if session.unsolicited_hangup_after is not None and len(conv.commands) - 1 == session.unsolicited_hangup_after:
                out += b"HANGUP\n" * session.hangup_lines
            answer = call.answer(session, line, conv.local)
            conv.answers.append(answer)
            try:
                _write_all(write_fd, out + (answer + "\n").encode("utf-8"))
            except (BrokenPipeError, ConnectionResetError):
                conv.closed_by_script = True
                return conv


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
