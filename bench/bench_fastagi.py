#!/usr/bin/env python3
"""FastAGI throughput on this machine: how many hook sessions a second ``serve`` takes, and
what each one holds the call, with a load generator that is not the bottleneck.

    .venv/bin/python bench/bench_fastagi.py            # about 2 minutes on 2 cores
    .venv/bin/python bench/bench_fastagi.py --quick    # a smoke run

Each session is the recorded ``ring-in`` of a call answered by 801, with fresh ids (a new
call every time): the env block, then an answer to each command, as Asterisk answers.  The
hook stores the call and pushes ``receivedTheCall`` to a CRM stand-in (``bench_hooks``'
lean one, which answers 200 at once, in a process of its own).  Hold: from connecting until the server closes the session.

The load generator (this process) is a ``selectors`` loop over non-blocking sockets; every
session's env block and answers are prepared before the clock starts (each command's
answer is a dictionary lookup).  Its own ceiling is measured in the same run, against an
*instant* server (in a process of its own, the same loop) that sends the very commands the
hook sends and reads the answers, with no store and no push.

Servers, in alternating short rounds so that all meet the same background load:

* ``serve`` with its default engine (the event loop) and default pool;
* ``serve`` with ``CLINICA_FASTAGI_ENGINE=threads`` (a thread per session), pool 160;
* the minimal threaded handler of ``bench_hooks.py`` (read the env block, POST, close),
  the baseline of the earlier figures;
* the instant server (the generator's ceiling).

Columns: sessions/s, hold p50 / p99, sessions refused, and failed (any status but SENT),
the CPU each process spent per session (server, CRM stand-in, generator), and the
server's peak resident memory so far (VmHWM).
"""

from __future__ import annotations

import argparse
import errno
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_hooks as hooks  # noqa: E402  (the CRM stub, serve's start-up, the recorded call)

CONCURRENCIES = (1, 16, 128)
ROUNDS = 4
THREADS_POOL = 160
# Sessions prepared per second of a round: more than any server here takes.
PREPARED_PER_S = 5000


# --- sessions prepared in advance ------------------------------------------------------------

class Prepared:
    """Env blocks and answers for ``n`` sessions, ready to be sent."""

    def __init__(self, calls: "hooks.Calls", commands: List[str], n: int, reuse: bool = False):
        self.reuse = reuse  # servers that store nothing may see a call twice
        self.sessions: List[Tuple[bytes, Dict[bytes, bytes]]] = []
        for _ in range(n):
            variables, env = calls.next(network=True)
            local: Dict[str, str] = {}
            answers = {line.encode(): (hooks.answer(variables, local, line) + "\n").encode() for line in commands}
            self.sessions.append((env, answers))
        self.next = 0

    def take(self) -> Tuple[bytes, Dict[bytes, bytes]]:
        if self.next == len(self.sessions) and not self.reuse:
            raise RuntimeError("more sessions than prepared: raise PREPARED_PER_S")
        session = self.sessions[self.next % len(self.sessions)]
        self.next += 1
        return session


def learn_commands(address, calls: "hooks.Calls") -> List[str]:
    """The command lines a ring-in hook sends (played once, answered by bench_hooks.answer);
    later sessions' lines differ only in the call id set."""
    variables, env = calls.next(network=True)
    local: Dict[str, str] = {}
    lines = []
    with socket.create_connection(address) as sock:
        sock.sendall(env)
        reader = sock.makefile("rb")
        for raw in reader:
            line = raw.decode().rstrip("\r\n")
            lines.append(line)
            sock.sendall((hooks.answer(variables, local, line) + "\n").encode())
    return lines


# --- the load generator ----------------------------------------------------------------------

class Lane:
    __slots__ = ("sock", "answers", "started", "buf", "commands", "status")


def run_load(address, prepared: Prepared, concurrency: int, seconds: float, expect_commands: bool = True):
    """``concurrency`` sessions back to back on one selectors loop; holds and outcomes."""
    sel = selectors.DefaultSelector()
    holds: List[float] = []
    outcomes: Dict[str, int] = {}
    end_at = time.monotonic() + seconds
    status_prefix = b'SET VARIABLE "CLINICA_STATUS" "'

    def start() -> None:
        lane = Lane()
        env, lane.answers = prepared.take()
        lane.buf, lane.commands, lane.status = b"", 0, ""
        sock = lane.sock = socket.socket()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lane.started = time.monotonic()
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            finish(lane, "REFUSED")
            return
        sel.register(sock, selectors.EVENT_WRITE, (lane, env))

    def finish(lane: Lane, status: str) -> None:
        holds.append(time.monotonic() - lane.started)
        outcomes[status] = outcomes.get(status, 0) + 1
        try:
            sel.unregister(lane.sock)
        except (KeyError, ValueError):
            pass
        lane.sock.close()
        if time.monotonic() < end_at:
            start()

    for _ in range(concurrency):
        start()
    while sel.get_map():
        for key, mask in sel.select(1.0):
            lane, env = key.data
            sock = lane.sock
            if env is not None:  # connected (or refused): send the env block
                try:
                    sock.send(env)
                except OSError:
                    finish(lane, "REFUSED")
                    continue
                sel.modify(sock, selectors.EVENT_READ, (lane, None))
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                # Closed before any command: refused (the minimal handler sends none).
                finish(lane, lane.status if lane.commands else ("REFUSED" if expect_commands else "OK"))
                continue
            buf = lane.buf + data
            while True:
                end = buf.find(b"\n")
                if end < 0:
                    break
                line, buf = buf[:end], buf[end + 1:]
                if line == b"HANGUP":
                    continue
                lane.commands += 1
                if line.startswith(status_prefix):
                    lane.status = line[len(status_prefix):-1].decode()
                # Not prepared: a SET of this call's own id, answered "200 result=1".
                sock.send(lane.answers.get(line, b"200 result=1\n"))
            lane.buf = buf
    sel.close()
    return holds, outcomes


# --- the instant server ------------------------------------------------------------------------

def instant_server(commands: List[str]) -> None:
    """Read the env block, send the hook's commands one by one, reading each answer; close."""
    lines = [(line + "\n").encode() for line in commands]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    state: Dict[socket.socket, List] = {}
    while True:
        for key, _ in sel.select():
            if key.data is None:
                for _ in range(64):
                    conn = hooks.accept_nonblocking(listener)
                    if conn is None:
                        break
                    state[conn] = [b"", -1]
                    sel.register(conn, selectors.EVENT_READ, conn)
                continue
            conn = key.data
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            st = state[conn]
            st[0] += data
            done = not data
            while not done:
                if st[1] < 0:  # the env block
                    end = st[0].find(b"\n\n")
                    if end < 0:
                        break
                    st[0], st[1] = st[0][end + 2:], 0
                else:
                    end = st[0].find(b"\n")
                    if end < 0:
                        break
                    st[0], st[1] = st[0][end + 1:], st[1] + 1
                if st[1] == len(lines):
                    done = True
                    break
                conn.send(lines[st[1]])
            if done:
                sel.unregister(conn)
                del state[conn]
                conn.close()


class Instant:
    def __init__(self, commands: List[str]):
        self.proc = subprocess.Popen([sys.executable, __file__, "--instant-server", "\x1f".join(commands)],
                                     stdout=subprocess.PIPE, text=True)
        self.address = ("127.0.0.1", int(self.proc.stdout.readline()))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class Serve(hooks.Serve):
    """``serve`` with its defaults (the engine and pool it ships with), or with ``extra``."""

    def __init__(self, workdir: str, crm_url: str, extra: Optional[Dict[str, str]] = None):
        saved = hooks.clean_env

        def env_with_defaults(workdir, crm_url, **values):
            values.pop("CLINICA_FASTAGI_POOL", None)  # the default pool, unless extra says
            values.update(extra or {})
            return saved(workdir, crm_url, **values)

        hooks.clean_env = env_with_defaults
        try:
            super().__init__(workdir, crm_url)
        finally:
            hooks.clean_env = saved


# --- measuring ------------------------------------------------------------------------------

def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cell:
    def __init__(self):
        self.holds: List[float] = []
        self.outcomes: Dict[str, int] = {}
        self.seconds = 0.0
        self.cpu = {"server": 0.0, "crm": 0.0, "generator": 0.0}

    @property
    def rate(self) -> float:
        return len(self.holds) / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        return hooks.percentile_ms(self.holds, p)

    def per_session_us(self, who: str) -> float:
        return self.cpu[who] / len(self.holds) * 1e6 if self.holds else 0.0


def measure(cell: Cell, address, prepared: Prepared, concurrency: int, seconds: float, server_pid: int,
            crm_pid: int, expect_commands: bool = True) -> None:
    run_load(address, prepared, concurrency, min(0.3, seconds), expect_commands)  # warm-up
    before = (cpu_s(server_pid), cpu_s(crm_pid), time.process_time())
    started = time.monotonic()
    holds, outcomes = run_load(address, prepared, concurrency, seconds, expect_commands)
    cell.seconds += time.monotonic() - started
    after = (cpu_s(server_pid), cpu_s(crm_pid), time.process_time())
    cell.holds += holds
    for status, n in outcomes.items():
        cell.outcomes[status] = cell.outcomes.get(status, 0) + n
    for who, b, a in zip(("server", "crm", "generator"), before, after):
        cell.cpu[who] += a - b


def row(label: str, cell: Cell, ok: Tuple[str, ...], rss: Optional[float]) -> str:
    refused = cell.outcomes.get("REFUSED", 0)
    failed = sum(n for s, n in cell.outcomes.items() if s not in ok and s != "REFUSED")
    memory = f"{rss:.0f}" if rss is not None else "-"
    text = (f"  {label:<34} {cell.rate:>8.0f} {cell.pct(50):>7.1f} {cell.pct(99):>7.1f} {refused:>7} {failed:>6} "
            f"{cell.per_session_us('server'):>7.0f} {cell.per_session_us('crm'):>6.0f} "
            f"{cell.per_session_us('generator'):>6.0f} {memory:>6} {len(cell.holds):>8}")
    if failed:
        text += f"  {dict(sorted(cell.outcomes.items()))}"
    return text


HEADER = (f"  {'':<34} {'sess/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'refused':>7} {'failed':>6} "
          f"{'cpu µs/session: server':>7} {'crm':>6} {'gen':>6} {'RSS MiB':>6} {'sessions':>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each cell (all its rounds)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--instant-server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instant_server is not None:
        instant_server(args.instant_server.split("\x1f"))
        return
    if args.quick:
        args.seconds = 1.0
    started = time.monotonic()
    crm = hooks.CrmStub()
    with tempfile.TemporaryDirectory(prefix="clinica-bench-") as workdir:
        loop = Serve(hooks.mkdir(workdir, "loop"), crm.url)
        threads = Serve(hooks.mkdir(workdir, "threads"), crm.url,
                        {"CLINICA_FASTAGI_ENGINE": "threads", "CLINICA_FASTAGI_POOL": str(THREADS_POOL)})
        baseline = hooks.Baseline(crm.url)
        calls = hooks.Calls()
        commands = learn_commands(loop.address, calls)
        instant = Instant(commands)
        reused = Prepared(calls, commands, 2000, reuse=True)
        print(f"clinica-asterisk FastAGI benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
              f"{args.seconds:g} s per cell in {ROUNDS} rounds; hook deadline {hooks.HOOK_DEADLINE_MS} ms; "
              f"each session: env block + {len(commands)} commands")
        print(f"  commands of a ring-in hook: {' | '.join(c[:60] for c in commands)}")
        servers = [
            ("serve, event loop (default pool)", loop, ("SENT",)),
            (f"serve, threads (pool {THREADS_POOL})", threads, ("SENT",)),
            ("minimal threaded handler", baseline, ("OK",)),
            ("instant server (generator ceiling)", instant, ("SENT",)),
        ]
        try:
            for c in CONCURRENCIES:
                cells = [Cell() for _ in servers]
                for _ in range(ROUNDS):
                    for (label, server, ok), cell in zip(servers, cells):
                        # Fresh call ids for every session (prepared before the clock starts).
                        if server in (baseline, instant):
                            prepared = reused
                        else:
                            prepared = Prepared(calls, commands, int(PREPARED_PER_S * (args.seconds / ROUNDS + 0.3)))
                        measure(cell, server.address, prepared, c, args.seconds / ROUNDS, server.proc.pid,
                                crm.proc.pid, expect_commands=server is not baseline)
                print(f"\n concurrency {c}")
                print(HEADER)
                for (label, server, ok), cell in zip(servers, cells):
                    print(row(label, cell, ok, hooks.peak_rss_mib(server.proc.pid)))
                base, ceiling = cells[2], cells[3]
                for label, cell in (("event loop", cells[0]), ("threads", cells[1])):
                    print(f"  {label}: {cell.rate / base.rate:.2f}x the minimal handler's sessions/s, "
                          f"{cell.rate / ceiling.rate:.2f}x the generator's ceiling; p99 {cell.pct(99) / base.pct(99):.2f}x "
                          f"the minimal handler's", flush=True)
        finally:
            for server in (loop, threads, baseline, instant):
                server.stop()
            crm.stop()
    print(f"\n(benchmark took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
