"""The AGI command channel over any pair of streams (stdin/stdout of a script, a FastAGI
socket, a pipe in a test): the only module that talks AGI to Asterisk.

Why not pyst2's ``AGI`` class: it cannot be used safely through its public API here.  Its
``__init__`` installs a SIGHUP handler (``signal.signal`` raises off the main thread, where
FastAGI sessions run, and a hook must finish its bookkeeping even when the caller has hung
up) and reads the env block itself, line by line without any limit; its reads have no
timeout; its ``_quote`` lets CR/LF through, so a value could inject a second command; and
it writes debug lines to ``stderr`` (Asterisk's console in script mode).  What the hooks
need of it is four commands (GET VARIABLE, GET FULL VARIABLE, SET VARIABLE, VERBOSE), so
they are written here, and pyst2 is used through its public exception classes
(:mod:`.reply` raises them), which callers catch as ``asterisk.agi.AGIException``.

What every caller gets:

* every read and write waits no longer than the deadline it is given (the channel's, an
  immutable :class:`~clinica_asterisk.deadline.Deadline`; :meth:`AgiChannel.within` gives
  a view of the same session with another one), and lines are bounded, so a stalled or
  chatty peer cannot hold a call;
* the env block is read with limits (:meth:`LineStream.read_request`);
* values written into a command are quoted with CR/LF removed, so no value can inject a
  second command;
* FastAGI's unsolicited ``HANGUP`` line is noted and skipped, never taken for an answer;
  a ``520`` answer's usage text is read to its end, so it cannot pass for later answers;
* answers are parsed by :func:`.reply.parse_reply`, and :meth:`AgiChannel.read` reads a
  stage's variables in one round trip (a ``CSV_QUOTE`` batch: each round trip is a network
  delay when the FastAGI server runs on another host, and costs both sides CPU), one by
  one when Asterisk does not answer the batch as expected.
"""

from __future__ import annotations

import os
import select

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)

from .reply import agi_error, batch_expression, parse_reply, reply_code, split_batch
from .request import (MAX_ENV_BYTES, MAX_ENV_LINES, MAX_LINE_BYTES, AgiRequest, EnvBlockError,
                      parse_env_block, parse_env_line)
from ..deadline import Deadline, DeadlineExceeded
from ..logs import get_logger

if TYPE_CHECKING:
    from typing import Dict, List, Optional, Sequence

    from .reply import Reply


log = get_logger("clinica_asterisk.agi.channel")


class _Once:
    """A flag set once per process (``threading.Event``'s two methods, without loading
    ``threading`` into a script hook)."""

    __slots__ = ("_set",)

    def __init__(self):
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True


_batch_refused = _Once()
# A usage text (520) is read up to this many lines.
MAX_USAGE_LINES = 100


class ChannelClosed(EOFError):
    """Asterisk closed the stream."""


class LineTooLong(ChannelClosed):
    """The peer sent a line longer than any Asterisk sends.  It is not buffered whole, and
    what follows it cannot be read as answers: the session is over (every later read or
    write says so)."""


class LineStream:
    """Bounded line reads and writes over two file descriptors, each within the deadline
    it is given (None: no limit)."""

    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buffer = bytearray()
        self._broken = ""

    @staticmethod
    def _wait(fd: int, for_write: bool, deadline: Optional[Deadline]) -> None:
        # poll, not select: a busy server's descriptors go past select's limit of 1024.
        timeout = deadline.check("waiting for Asterisk") if deadline is not None else None
        poller = select.poll()
        poller.register(fd, select.POLLOUT if for_write else select.POLLIN)
        if not poller.poll(None if timeout is None else max(1, int(timeout * 1000))):
            raise DeadlineExceeded("waiting for Asterisk")

    def _raw_line(self, limit: int, deadline: Optional[Deadline]) -> bytes:
        """The next line with its newline.  Never more than ``limit`` + 1 bytes are held for
        it: a longer line breaks the stream (:class:`LineTooLong`)."""
        if self._broken:
            raise LineTooLong(self._broken)
        while True:
            end = self._buffer.find(b"\n", 0, limit + 1)
            if end >= 0:
                line = bytes(self._buffer[:end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > limit:
                self._broken = f"the peer sent a line longer than {limit} bytes"
                self._buffer = bytearray()
                raise LineTooLong(self._broken)
            self._wait(self.read_fd, False, deadline)
            try:
                chunk = os.read(self.read_fd, min(4096, limit + 1 - len(self._buffer)))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ChannelClosed("Asterisk closed the AGI stream")
            self._buffer += chunk

    def readline(self, deadline: Optional[Deadline], limit: int = MAX_LINE_BYTES) -> str:
        """One line, without its end; :class:`LineTooLong` past ``limit`` bytes."""
        return self._raw_line(limit, deadline).rstrip(b"\n").rstrip(b"\r").decode("utf-8", "replace")

    def write(self, text: str, deadline: Optional[Deadline]) -> None:
        if self._broken:
            raise LineTooLong(self._broken)
        data = memoryview(text.encode("utf-8"))
        while data:
            self._wait(self.write_fd, True, deadline)
            try:
                sent = os.write(self.write_fd, data)
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ChannelClosed("Asterisk closed the AGI stream") from exc
            data = data[sent:]

    def read_request(self, deadline: Optional[Deadline] = None) -> AgiRequest:
        """The env block: ``agi_key: value`` lines up to an empty line.  Each line is
        checked as it comes (garbage ends the session at its first line, not at the session
        timeout), and no more than :data:`MAX_ENV_BYTES` are read in all."""
        lines: List[str] = []
        left = MAX_ENV_BYTES
        while True:
            try:
                raw = self._raw_line(min(MAX_LINE_BYTES, left), deadline)
            except LineTooLong:
                raise EnvBlockError(f"env block longer than {MAX_ENV_BYTES} bytes, or a line longer "
                                    f"than {MAX_LINE_BYTES}") from None
            left -= len(raw)
            line = raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", "replace")
            if line == "":
                return AgiRequest(parse_env_block(lines))
            if len(lines) == MAX_ENV_LINES:
                raise EnvBlockError(f"env block longer than {MAX_ENV_LINES} lines")
            parse_env_line(line)
            lines.append(line)


def one_line(value: object) -> str:
    """``value`` as text that cannot end an AGI command line: CR, LF and NUL become spaces."""
    text = str(value)
    for ch in "\r\n\x00":
        text = text.replace(ch, " ")
    return text


def quote_argument(value: object) -> str:
    """One AGI command argument: :func:`one_line`, quotes and backslashes escaped."""
    return '"' + one_line(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Session:
    """What the views of one AGI session share besides the stream."""

    __slots__ = ("hung_up",)

    def __init__(self):
        self.hung_up = False


class AgiChannel:
    """The commands a hook sends, over a :class:`LineStream`, each within ``deadline``.

    Errors of one command (``510``, ``511``, ``520``: pyst2's ``AGIException``) do not end
    the session; :class:`ChannelClosed` and :class:`DeadlineExceeded` do."""

    def __init__(self, stream: LineStream, deadline: Optional[Deadline] = None,
                 session: Optional[_Session] = None):
        self._stream = stream
        self._deadline = deadline
        self._session = session or _Session()

    @property
    def deadline(self) -> Optional[Deadline]:
        return self._deadline

    @property
    def hung_up(self) -> bool:
        """FastAGI said the caller hung up (commands may still be answered)."""
        return self._session.hung_up

    def within(self, deadline: Deadline) -> "AgiChannel":
        """The same session, its commands bounded by ``deadline`` instead."""
        return AgiChannel(self._stream, deadline, self._session)

    # --- what a hook does with its channel -------------------------------------------

    def read(self, names: Sequence[str]) -> Dict[str, str]:
        """Channel variables (``NAME``) and expressions (``${CDR(billsec)}``), each as
        named; '' when unset.  Several are read in one round trip; if Asterisk does not
        answer that as expected, one by one."""
        return self.run(read_steps(names))

    def set(self, name: str, value: object) -> bool:
        """SET VARIABLE; False when Asterisk refused it."""
        return self.run(set_steps(name, value))

    def say(self, message: str) -> None:
        """A VERBOSE line on the Asterisk console; never fails the hook."""
        self.run(say_steps(message))

    # --- the protocol ------------------------------------------------------------------

    def run(self, steps):
        """Drive command steps (:func:`read_steps` …): each command line they yield is sent
        and its answer sent back in (an error answer raised in them instead)."""
        answer = error = None
        while True:
            try:
                line = steps.send(answer) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value
            answer = error = None
            try:
                answer = self._command(line)
            except agi_error() as exc:
                error = exc

    def _command(self, line: str) -> Reply:
        self._stream.write(line, self._deadline)
        answer = AnswerLines()
        while True:
            reply = answer.feed(self._answer_line())
            if reply is not None:
                return reply

    def _answer_line(self) -> str:
        while True:
            line = self._stream.readline(self._deadline)
            if line.strip() == "HANGUP":
                # FastAGI: the caller hung up.  Commands may still be answered.
                self._session.hung_up = True
                continue
            return line


# --- the commands a hook sends, without I/O ----------------------------------------------------
# Each is a generator that yields the command lines to send and gets each answer (a Reply)
# sent back, or the error answer raised in it: :meth:`AgiChannel.run` drives them over a
# stream, and the FastAGI event loop (:mod:`..hooks.fastagi_loop`) over its sockets.

def command_line(command: str, *args: object, level: Optional[int] = None) -> str:
    words = [command, *map(quote_argument, args), *([str(level)] if level is not None else [])]
    return " ".join(words) + "\n"


class AnswerLines:
    """One answer, line by line: :meth:`feed` gives None until it is whole, then its
    parsed reply (or raises its error).  A ``520-`` usage text is read to its closing
    ``520`` line (bounded), so that it cannot pass for later answers."""

    __slots__ = ("first", "usage")

    def __init__(self):
        self.first: Optional[str] = None
        self.usage: List[str] = []

    def feed(self, line: str) -> Optional[Reply]:
        if self.first is None:
            self.first = line
            if not line.startswith("520-"):
                return parse_reply(line, [])
            return None
        self.usage.append(line)
        if ((reply_code(line) == 520 and not line.startswith("520-"))
                or len(self.usage) >= MAX_USAGE_LINES or sum(map(len, self.usage)) >= MAX_LINE_BYTES):
            return parse_reply(self.first, self.usage)
        return None


def get_steps(command: str, name: str):
    try:
        reply = yield command_line(command, name)
    except agi_error("AGIResultHangup"):
        # ``200 result=1 (hangup)``: the value is the word, as pyst2's get_variable reads it.
        return "hangup"
    return reply["result"][1]


def read_steps(names: Sequence[str]):
    """Read variables and expressions; several in one round trip (a ``CSV_QUOTE`` batch),
    one by one when Asterisk does not answer that as expected."""
    wanted = list(dict.fromkeys(names))
    values: Dict[str, str] = {}
    if len(wanted) > 1:
        try:
            batch = split_batch((yield from get_steps("GET FULL VARIABLE", batch_expression(wanted))), len(wanted))
        except agi_error():
            batch = {}
        if batch is None:
            if not _batch_refused.is_set():
                _batch_refused.set()  # once per process: every hook of this PBX would say it
                log.warning("Asterisk did not answer a CSV_QUOTE batch as expected; reading channel "
                            "variables one by one (is func_strings loaded? `module show like func_strings`)")
        elif batch:
            values = dict(zip(wanted, batch))
    for name in wanted:
        if name not in values:
            values[name] = yield from get_steps("GET FULL VARIABLE" if name.startswith("$") else "GET VARIABLE", name)
    return values


def set_steps(name: str, value: object):
    try:
        yield command_line("SET VARIABLE", name, value)
    except agi_error():
        return False
    return True


def say_steps(message: str):
    try:
        yield command_line("VERBOSE", message, level=1)
    except agi_error():
        pass
