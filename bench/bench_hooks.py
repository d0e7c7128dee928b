#!/usr/bin/env python3
"""How long a hook holds a call, and how many hooks per second the bridge takes.

    .venv/bin/python bench/bench_hooks.py            # about 90 s on 2 cores
    .venv/bin/python bench/bench_hooks.py --quick    # a smoke run
    .venv/bin/python bench/bench_hooks.py --script-only   # script mode alone

Each hook session is the recorded ``ring-in`` of a call answered by 801 (a fresh call each
time), played as Asterisk plays it: the env block, then an answer to every command.  The
hook stores the call and pushes receivedTheCall to a CRM stub (in a process of its own, a
``selectors`` loop that answers every request 200 at once).  Hold time is what Asterisk waits: from connecting (FastAGI) or starting the
process (script mode) until the session ends.

Modes, each next to a baseline measured in the same run, at concurrency 1, 16 and 128:

* FastAGI: ``clinica-asterisk serve`` against a minimal FastAGI handler that only reads
  the env block and POSTs one event with a kept-alive ``requests.Session`` (both with a
  listen backlog of 1024);
* script: the ``clinica-agi`` executable, one process per session, against a bare
  ``python -c pass``: with the delivery worker listening, as install.sh sets it up (the
  hook stores the events and hands them over: ``QUEUED``), and without one (the hook
  sends them itself: ``SENT``).  Bytecode is compiled first, as pip does on install.

For FastAGI the rows also give each server process's peak resident memory so far
(``VmHWM`` in ``/proc/<pid>/status``).

Product and baseline alternate in short rounds, so that both meet the same background
load.  Then: the hold time when the CRM accepts the request and never answers (it must be
the hook deadline, not more), and how fast the outbox drains once a CRM that was down
comes back, next to a bare kept-alive client sending the same bodies with no store.  Load generator, servers and CRM stub share this machine's cores; the load
generator answers like Asterisk at the least cost it can (callbacks, a lookup per
command), since what it spends is taken from what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from clinica_asterisk.devtools.asterisk_peer import substitute

BIN = os.path.dirname(sys.executable)
SERVE = [os.path.join(BIN, "clinica-asterisk"), "serve", "--no-api", "--bind", "127.0.0.1:0"]
SCRIPT = [os.path.join(BIN, "clinica-agi")]
BARE_PYTHON = [sys.executable, "-c", "pass"]
POOL, BACKLOG = 160, 1024
HOOK_DEADLINE_MS = 2000
HANG_DEADLINE_MS = 1000
CONCURRENCIES = (1, 16, 128)
ROUNDS = 6


# --- the CRM stub, in a process of its own ---------------------------------------------------

# What a CRM that answers at once says to every push.
OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK"


def accept_nonblocking(listener: socket.socket) -> Optional[socket.socket]:
    """A connection waiting on ``listener`` (non-blocking), set non-blocking and without
    Nagle's delay; None when there is none."""
    try:
        conn, _ = listener.accept()
    except OSError:
        return None
    conn.setblocking(False)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _lean_sink_main(port: int, ready, count, first_at, last_at) -> None:
    """A CRM that answers at once: one thread, one ``selectors`` loop, each request read to
    the end of its body (Content-Length) and answered 200 with prepared bytes, kept alive.
    So that the stub's own cost is small next to what it measures."""
    import selectors

    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # SIGTERM ends it
    count, first_at, last_at = count.get_obj(), first_at.get_obj(), last_at.get_obj()  # one writer: no lock
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    ready.send(listener.getsockname()[1])
    while True:
        for key, _ in selector.select():
            if key.data is None:
                conn = accept_nonblocking(listener)
                if conn is not None:
                    selector.register(conn, selectors.EVENT_READ, bytearray())
                continue
            conn, buffer = key.fileobj, key.data
            try:
                data = conn.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                selector.unregister(conn)
                conn.close()
                continue
            buffer += data
            answers = 0
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                length = 0
                for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(buffer) < end + 4 + length:
                    break
                del buffer[:end + 4 + length]
                answers += 1
            if answers:
                now = time.time()
                if not first_at.value:
                    first_at.value = now
                last_at.value = now
                count.value += answers
                try:
                    conn.sendall(OK_ANSWER * answers)
                except OSError:
                    selector.unregister(conn)
                    conn.close()


def _sink_main(port: int, behaviour: str, ready, count, first_at, last_at) -> None:
    if behaviour == "ok":
        return _lean_sink_main(port, ready, count, first_at, last_at)
    from clinica_asterisk.devtools.crm_sink import CrmSink

    def on_push(fields):
        now = time.time()
        with count.get_lock():
            count.value += 1
            if first_at.value == 0:
                first_at.value = now
            last_at.value = now

    sink = CrmSink(("127.0.0.1", port), behaviour=behaviour, on_push=on_push)
    sink.received = _Discard()  # the count is enough; keep memory flat
    # Headers and body in one write: in two, a kept-alive client would wait for the
    # delayed ACK (Nagle), 40 ms a push, and the stub would measure itself.
    sink.RequestHandlerClass.wbufsize = 1 << 16
    sink.handle_error = lambda request, client_address: None  # a hook that gave up resets its request
    sink.start()
    ready.send(sink.server_address[1])
    signal.sigwait({signal.SIGTERM})


class _Discard(list):
    def append(self, item):
        pass


class CrmStub:
    """A CRM stand-in in a child process: 'ok' answers 200 at once (:func:`_lean_sink_main`),
    'hang' (a ``CrmSink``) never answers."""

    def __init__(self, behaviour: str = "ok", port: int = 0):
        ctx = multiprocessing.get_context("spawn")
        self.count = ctx.Value("i", 0)
        self.first_at = ctx.Value("d", 0.0)
        self.last_at = ctx.Value("d", 0.0)
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_sink_main, daemon=True,
                                args=(port, behaviour, child, self.count, self.first_at, self.last_at))
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # inherited: sigwait() takes it
        self.proc.start()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        self.port = parent.recv()
        self.url = f"http://127.0.0.1:{self.port}/api/Binotel/Push"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


# --- the servers under test ----------------------------------------------------------------

class Serve:
    """``clinica-asterisk serve`` in its own process; the port comes from its READY."""

    def __init__(self, workdir: str, crm_url: str, deadline_ms: int = HOOK_DEADLINE_MS):
        notify_path = os.path.join(workdir, f"notify-{time.monotonic_ns()}")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(30)
        # Logs to stderr, as under systemd (the unit sets CLINICA_LOG_FILE=-), kept in a file.
        env = clean_env(workdir, crm_url, CLINICA_HOOK_DEADLINE_MS=str(deadline_ms),
                        CLINICA_FASTAGI_POOL=str(POOL), CLINICA_FASTAGI_BACKLOG=str(BACKLOG),
                        NOTIFY_SOCKET=notify_path, CLINICA_LOG_FILE="-")
        with open(os.path.join(workdir, "serve.log"), "ab") as log:
            self.proc = subprocess.Popen(SERVE, env=env, stdout=subprocess.DEVNULL, stderr=log)
        while True:
            message = notify.recv(4096).decode()
            if "READY=1" in message.split("\n"):
                break
        notify.close()
        host, port = re.search(r"FastAGI on ([0-9.]+):([0-9]+)", message).groups()
        self.address = (host, int(port))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


class Baseline:
    """The minimal FastAGI handler (see :func:`baseline_server`) in its own process."""

    def __init__(self, crm_url: str):
        self.proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", crm_url],
                                     stdout=subprocess.PIPE, text=True)
        self.address = ("127.0.0.1", int(self.proc.stdout.readline()))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def baseline_server(crm_url: str) -> None:
    """Read the env block, POST one event with a kept-alive session, close: nothing else."""
    import socketserver

    import requests

    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=POOL))

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            env = {}
            for raw in self.rfile:
                line = raw.decode().rstrip("\n")
                if not line:
                    break
                key, _, value = line.partition(": ")
                env[key] = value
            session.post(crm_url, data={"requestType": "receivedTheCall", "callType": "0",
                                        "externalNumber": env.get("agi_callerid", ""),
                                        "generalCallID": env.get("agi_uniqueid", "")}, timeout=5).close()

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = BACKLOG

        def handle_error(self, request, client_address):
            pass  # a failed POST shows as a failed session in the table

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def clean_env(workdir: str, crm_url: str, **extra) -> Dict[str, str]:
    """The environment of a process under test.  Its settings are in an env file, as
    install.sh writes them (Asterisk's environment, which a script hook inherits, holds
    none); ``extra`` settings come through the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLINICA_", "NOTIFY_", "WATCHDOG_"))}
    path = os.path.join(workdir, "clinica.env")
    settings = {"CLINICA_DATA_DIR": os.path.join(workdir, "data"), "CLINICA_CRM_PUSH_URL": crm_url,
                "CLINICA_LOG_FILE": os.path.join(workdir, "hooks.log")}
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.writelines(f"{key}={value}\n" for key, value in settings.items())
    env.update(CLINICA_ENV_FILE=path)
    env.update(extra)
    return env


# --- Asterisk's side -------------------------------------------------------------------------

class Calls:
    """A fresh copy of the recorded ring-in for every session."""

    def __init__(self):
        from clinica_asterisk.devtools.simulation import ARGS, recorded_calls

        ring = recorded_calls()["in-801"][0].with_args(ARGS["ring-in"])
        self.variables = dict(ring.variables)
        self.script_env = "\n".join(ring.env) + "\n\n"
        self.network_env = "\n".join(ring.over_fastagi("127.0.0.1", 4574).env) + "\n\n"
        self.old_uniqueid = ring.env_value("agi_uniqueid")
        self.epoch = int(time.time())
        self.n = 0

    def next(self, network: bool):
        self.n += 1
        linkedid, uniqueid = f"{self.epoch}.{2 * self.n}", f"{self.epoch}.{2 * self.n + 1}"
        variables = dict(self.variables, UNIQUEID=uniqueid)
        variables["${CHANNEL(linkedid)}"] = linkedid
        env = (self.network_env if network else self.script_env).replace(
            f"agi_uniqueid: {self.old_uniqueid}", f"agi_uniqueid: {uniqueid}")
        return variables, env.encode()


def answer(variables: Dict[str, Optional[str]], local: Dict[str, str], line: str) -> str:

    """What Asterisk answers (as :class:`asterisk_peer.AsteriskCall` does for these
    commands), at a cost nearer Asterisk's own: the load generator shares the cores."""
    if line.startswith("GET VARIABLE "):
        name = line[13:].strip('"')
        value = local.get(name, variables.get(name))
        return "200 result=0" if value is None else f"200 result=1 ({value})"
    if line.startswith("GET FULL VARIABLE "):
        def value_of(expression: str) -> str:
            expression = "${CHANNEL(linkedid)}" if expression == "${CDR(linkedid)}" else expression
            if expression in variables:
                return variables[expression] or ""
            return local.get(expression[2:-1], variables.get(expression[2:-1])) or ""

        expression = line[18:].strip('"')
        return f"200 result=1 ({substitute(expression, value_of)})"
    if line.startswith("SET VARIABLE "):
        name, _, value = line[13:].partition('" "')
        local[name.strip('"').lstrip("_")] = value.rstrip('"')
        return "200 result=1"
    if line.startswith("VERBOSE "):
        return "200 result=1"
    return "510 Invalid or unknown command"


async def converse(reader, writer, variables) -> str:
    """Answer commands until the other side ends the session; the CLINICA_STATUS it left."""
    local: Dict[str, str] = {}
    while True:
        line = await reader.readline()
        if not line:
            return local.get("CLINICA_STATUS", "")
        text = line.decode().rstrip("\r\n")
        if text == "HANGUP":
            continue
        writer.write(answer(variables, local, text).encode() + b"\n")


class AsteriskSide(asyncio.Protocol):
    """One FastAGI session from Asterisk's side, as callbacks (cheaper than streams: the
    load generator shares the cores with what it measures)."""

    def __init__(self, env: bytes, variables, done: "asyncio.Future"):
        self.env, self.variables, self.done = env, variables, done
        self.local: Dict[str, str] = {}
        self.buffer = b""
        self.commands = 0
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.env)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            text = line.decode().rstrip("\r")
            if text != "HANGUP":
                self.commands += 1
                self.transport.write(answer(self.variables, self.local, text).encode() + b"\n")

    def connection_lost(self, exc) -> None:
        if not self.done.done():  # closed without a single command: refused (or a baseline)
            self.done.set_result(self.local.get("CLINICA_STATUS", "") if self.commands else "REFUSED")


async def fastagi_session(address, calls: Calls, expect_status: bool = True) -> str:
    variables, env = calls.next(network=True)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    try:
        transport, _ = await loop.create_connection(lambda: AsteriskSide(env, variables, done), *address)
    except OSError:
        return "REFUSED"
    try:
        status = await done
    finally:
        transport.close()
    return status if expect_status else "OK"  # the minimal handler sends no command at all


async def script_session(env_vars, calls: Calls) -> str:
    variables, env = calls.next(network=False)
    proc = await asyncio.create_subprocess_exec(*SCRIPT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL, env=env_vars)
    proc.stdin.write(env)
    status = await converse(proc.stdout, proc.stdin, variables)
    proc.stdin.close()
    await proc.wait()
    return status


async def bare_python() -> str:
    proc = await asyncio.create_subprocess_exec(*BARE_PYTHON)
    return "OK" if await proc.wait() == 0 else "FAILED"


def percentile_ms(holds, p: float) -> float:
    """The ``p``-th percentile of hold times in seconds, in milliseconds (0 with none)."""
    ordered = sorted(holds)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000 if ordered else 0.0


@dataclass
class Cell:
    holds: List[float] = field(default_factory=list)
    statuses: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, other: "Cell") -> None:
        self.holds += other.holds
        self.seconds += other.seconds
        for status, n in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n

    @property
    def rate(self) -> float:
        return len(self.holds) / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        return percentile_ms(self.holds, p)

    def bad(self, ok=("SENT", "OK")) -> Tuple[int, int, int]:
        """Sessions refused, queued (the hook's deadline came first) and failed otherwise."""
        refused = self.statuses.get("REFUSED", 0)
        queued = 0 if "QUEUED" in ok else self.statuses.get("QUEUED", 0)  # handed to the worker: the aim
        return refused, queued, sum(n for s, n in self.statuses.items() if s not in (*ok, "REFUSED", "QUEUED"))


async def measure(session, concurrency: int, seconds: Optional[float] = None, count: Optional[int] = None,
                  warmup: int = 0) -> Cell:
    """``concurrency`` Asterisk channels running hooks back to back, for ``seconds`` or
    until ``count`` sessions have started."""
    for _ in range(warmup):
        await asyncio.gather(*(session() for _ in range(concurrency)))
    cell = Cell()
    started = time.monotonic()
    stop_at = started + seconds if seconds else None
    budget = [count]

    async def lane():
        while True:
            if stop_at is not None and time.monotonic() >= stop_at:
                return
            if budget[0] is not None:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            t0 = time.monotonic()
            status = await session()
            cell.holds.append(time.monotonic() - t0)
            cell.statuses[status] = cell.statuses.get(status, 0) + 1

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    cell.seconds = time.monotonic() - started
    return cell


# --- report ----------------------------------------------------------------------------------

def peak_rss_mib(pid: int) -> Optional[float]:
    """The most memory the process has held resident since it started (VmHWM; VmRSS where
    the kernel does not keep the peak), in MiB; None once it has gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    value = fields.get("VmHWM") or fields.get("VmRSS")
    return int(value.split()[0]) / 1024 if value else None


def row(label: str, cell: Cell, ok=("SENT", "OK"), rss: Optional[float] = None) -> str:
    refused, queued, failed = cell.bad(ok)
    memory = f"{rss:.1f}" if rss is not None else "-"
    text = (f"  {label:<30} {cell.rate:>9.1f} {cell.pct(50):>9.1f} {cell.pct(99):>9.1f} "
            f"{refused:>8} {queued:>7} {failed:>7} {len(cell.holds):>9} {memory:>9}")
    if failed:
        text += f"  {dict(sorted(cell.statuses.items()))}"
    return text


def ratios(product: Cell, base: Cell, concurrency: int, targets: bool, ok=("SENT", "OK")) -> str:
    thr = product.rate / base.rate if base.rate else 0.0
    p50 = product.pct(50) / base.pct(50) if base.pct(50) else 0.0
    p99 = product.pct(99) / base.pct(99) if base.pct(99) else 0.0
    text = f"  {'ratio product/baseline':<30} {thr:>8.2f}x {p50:>8.2f}x {p99:>8.2f}x"
    if targets == "script":
        # Issue 13: p50 within 3x a bare interpreter at c=1; 40 hooks/s with no hook at its
        # deadline; none failed.
        refused, queued, failed = product.bad(ok)
        longest = max(product.holds, default=0.0) * 1000
        verdict = longest < HOOK_DEADLINE_MS and refused == queued == failed == 0
        goal = f"longest hold {longest:.0f} ms < deadline, none failed"
        if concurrency == 1:
            verdict, goal = verdict and p50 <= 3.0, "p50 within 3x, " + goal
        else:
            verdict, goal = verdict and product.rate >= 40, f">= 40 hooks/s ({product.rate:.0f}), " + goal
        text += f"   target ({goal}): {'met' if verdict else 'MISSED'}"
    elif targets:
        refused, queued, failed = product.bad()
        if concurrency == 1:
            verdict = p50 <= 1.5
            goal = "p50 within 1.5x"
        else:
            verdict = thr >= 0.7 and p99 <= 2.0
            goal = "throughput >= 0.7x, p99 within 2x"
        verdict = verdict and refused == queued == failed == 0
        text += f"   target ({goal}, none refused, queued or failed): {'met' if verdict else 'MISSED'}"
    return text


HEADER = (f"  {'':<30} {'sessions/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'refused':>8} {'queued':>7} "
          f"{'failed':>7} {'sessions':>9} {'peak RSS MiB':>9}")


async def run(args, workdir: str) -> None:
    calls = Calls()
    crm = None if args.drain_only else CrmStub()
    print(f"clinica-asterisk hook benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"{args.seconds:g} s per FastAGI cell; hook deadline {HOOK_DEADLINE_MS} ms; pool {POOL}, backlog {BACKLOG}")
    if args.drain_only:
        await outbox_drain(args, workdir, calls)
        return
    if args.script_only:
        try:
            await script_mode(args, workdir, crm, calls)
        finally:
            crm.stop()
        return
    try:
        serve = Serve(mkdir(workdir, "fastagi"), crm.url)
        baseline = Baseline(crm.url)
        print("\nFastAGI mode: clinica-asterisk serve vs a minimal handler (read env block, POST, close)")
        print(HEADER)
        try:
            for c in CONCURRENCIES:
                # Alternating short rounds: both sides meet the same background load.
                product, base = Cell(), Cell()
                for _ in range(ROUNDS):
                    product.add(await measure(lambda: fastagi_session(serve.address, calls), c,
                                              args.seconds / ROUNDS, warmup=1))
                    base.add(await measure(lambda: fastagi_session(baseline.address, calls, expect_status=False),
                                           c, args.seconds / ROUNDS, warmup=1))
                # The peak resident memory of each server process so far (it runs every
                # concurrency in turn, so the last row is its peak under the whole load).
                print(f" concurrency {c}")
                print(row("clinica-asterisk serve", product, rss=peak_rss_mib(serve.proc.pid)))
                print(row("minimal handler (baseline)", base, rss=peak_rss_mib(baseline.proc.pid)))
                print(ratios(product, base, c, targets=True), flush=True)
        finally:
            serve.stop()
            baseline.stop()

        await script_mode(args, workdir, crm, calls)
    finally:
        crm.stop()

    await crm_never_answers(args, workdir, calls)
    await outbox_drain(args, workdir, calls)


class Worker:
    """``clinica-asterisk deliver --forever``, as install.sh runs it beside script mode;
    ready once it listens for the hooks (delivery.wakeup)."""

    def __init__(self, env: Dict[str, str], data_dir: str):
        from clinica_asterisk.delivery.wakeup import socket_path

        self.proc = subprocess.Popen([os.path.join(BIN, "clinica-asterisk"), "deliver", "--forever"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        path, until = socket_path(data_dir), time.monotonic() + 30
        while not os.path.exists(path):
            if self.proc.poll() is not None or time.monotonic() > until:
                raise RuntimeError("the delivery worker did not start listening")
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def compile_bytecode() -> None:
    """Script mode runs from bytecode compiled at install time (pip does it); a checkout
    may have none, or stale files (PYTHONDONTWRITEBYTECODE), and would measure compiling."""
    import compileall

    import clinica_asterisk

    compileall.compile_dir(os.path.dirname(clinica_asterisk.__file__), quiet=1)


async def script_mode(args, workdir: str, crm: CrmStub, calls: Calls) -> None:
    """clinica-agi with the delivery worker listening (the hook stores the events and hands
    them over: QUEUED), and without one (the hook sends them itself: SENT)."""
    compile_bytecode()
    print("\nScript mode: clinica-agi, one process per session, vs `python -c pass`")
    print(HEADER)
    handing = mkdir(workdir, "script")
    env = clean_env(handing, crm.url)
    alone = clean_env(mkdir(workdir, "script-alone"), crm.url)
    worker = Worker(dict(env, CLINICA_LOG_FILE=os.path.join(handing, "worker.log")),
                    os.path.join(handing, "data"))
    received_before, expected = crm.count.value, 0
    try:
        for c in CONCURRENCIES:
            n = args.script_sessions(c)
            product = await measure(lambda: script_session(env, calls), c, count=n)
            itself = await measure(lambda: script_session(alone, calls), c, count=n)
            expected += product.statuses.get("QUEUED", 0) + itself.statuses.get("SENT", 0)
            base = await measure(bare_python, c, count=n)
            print(f" concurrency {c}")
            print(row("clinica-agi, worker listening", product, ok=("QUEUED",)))
            print(row("clinica-agi, sending itself", itself))
            print(row("python -c pass (baseline)", base))
            print(ratios(product, base, c, targets="script", ok=("QUEUED",)), flush=True)
        until = time.monotonic() + 30
        while crm.count.value - received_before < expected and time.monotonic() < until:
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
    print(f"  the CRM received {crm.count.value - received_before} pushes; {expected} hooks said they stored one "
          "(QUEUED or SENT; hooks cut off by the overload may have stored theirs too)")


async def crm_never_answers(args, workdir: str, calls: Calls) -> None:
    hanging = CrmStub("hang")
    serve = Serve(mkdir(workdir, "hang"), hanging.url, deadline_ms=HANG_DEADLINE_MS)
    try:
        cell = await measure(lambda: fastagi_session(serve.address, calls), 16, count=args.hang_sessions)
    finally:
        serve.stop()
        hanging.stop()
    print(f"\nCRM that accepts and never answers (hook deadline {HANG_DEADLINE_MS} ms), "
          f"{len(cell.holds)} sessions at concurrency 16:")
    print(f"  hold p50 {cell.pct(50):.0f} ms, p99 {cell.pct(99):.0f} ms, max {max(cell.holds) * 1000:.0f} ms "
          f"(max - deadline: {max(cell.holds) * 1000 - HANG_DEADLINE_MS:+.0f} ms); outcomes {cell.statuses}")


def free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


async def queue_while_crm_down(workdir: str, url: str, calls: Calls, events: int) -> Tuple[Serve, Cell]:
    serve = Serve(workdir, url)
    return serve, await measure(lambda: fastagi_session(serve.address, calls), 16, count=events)


async def wait_for_pushes(crm: CrmStub, expected: int, limit_s: float = 60.0) -> None:
    until = time.monotonic() + limit_s
    while crm.count.value < expected and time.monotonic() < until:
        await asyncio.sleep(0.05)


async def outbox_drain(args, workdir: str, calls: Calls) -> None:
    # 1. The worker inside serve, with its retry backoff, as in production.
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/Binotel/Push"
    serve, queued = await queue_while_crm_down(mkdir(workdir, "drain"), url, calls, args.drain_events)
    waiting = queued.statuses.get("QUEUED", 0)
    try:
        back_at = time.time()
        crm = CrmStub(port=port)
        try:
            await wait_for_pushes(crm, waiting)
            n, first, last = crm.count.value, crm.first_at.value, crm.last_at.value
        finally:
            crm.stop()
    finally:
        serve.stop()
    print(f"\nOutbox drain: {waiting} events queued while the CRM was down (outcomes {queued.statuses})")
    print(f"  serve's delivery worker: first event {first - back_at:.1f} s after the CRM came back "
          f"(retry backoff), all {n} after {last - back_at:.1f} s")

    # 2. The same once every event is due: `clinica-asterisk deliver`, one pass, between
    # two runs of the baseline: a bare kept-alive client POSTing the same bodies, one after
    # the other, with no store (what one connection to this CRM stand-in can carry).
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/Binotel/Push"
    directory = mkdir(workdir, "pass")
    serve, queued = await queue_while_crm_down(directory, url, calls, args.drain_events)
    serve.stop()
    waiting = queued.statuses.get("QUEUED", 0)
    bodies = queued_bodies(os.path.join(directory, "data", "clinica.sqlite3"))
    crm = CrmStub(port=port)
    try:
        ceiling = [bare_client_rate(url, bodies)]
        crm.count.value, crm.first_at.value = 0, 0.0
        started = time.time()
        subprocess.run([os.path.join(BIN, "clinica-asterisk"), "deliver"], env=clean_env(directory, url),
                       stdout=subprocess.DEVNULL, check=False, timeout=120)
        ended = time.time()
        n, first, last = crm.count.value, crm.first_at.value, crm.last_at.value
        ceiling.append(bare_client_rate(url, bodies))
    finally:
        crm.stop()
    rate = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    baseline = sum(ceiling) / len(ceiling)
    print(f"  one delivery pass (clinica-asterisk deliver): {n} of {waiting} events in {ended - started:.1f} s "
          f"with start-up; {rate:.0f} events/s once sending")
    print(f"  baseline, a bare kept-alive client with no store: {ceiling[0]:.0f} and {ceiling[1]:.0f} POSTs/s "
          f"(before and after); the pass makes {rate / baseline:.2f}x of it")
    print(f"  target (>= 2000 events/s, all {waiting} delivered): "
          f"{'met' if rate >= 2000 and n == waiting else 'MISSED'}")


def queued_bodies(db_path: str) -> List[bytes]:
    """The form bodies of the events waiting in the outbox at ``db_path``, in order."""
    import json
    import sqlite3

    from clinica_asterisk.delivery.sender import encode_body

    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT payload FROM outbox WHERE delivered_at IS NULL ORDER BY id").fetchall()
    return [encode_body(json.loads(payload), "form")[0] for (payload,) in rows]


def bare_client_rate(url: str, bodies: List[bytes]) -> float:
    """POSTs/s of one kept-alive ``http.client`` connection sending ``bodies`` in turn."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "clinica-asterisk"}
    try:
        started = time.perf_counter()
        for body in bodies:
            connection.request("POST", parts.path, body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"the CRM stand-in answered {answer.status}")
        return len(bodies) / (time.perf_counter() - started)
    finally:
        connection.close()


def mkdir(parent: str, name: str) -> str:
    path = os.path.join(parent, name)
    os.makedirs(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each FastAGI cell")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--script-only", action="store_true", help="script mode only (about 30 s)")
    parser.add_argument("--drain-only", action="store_true", help="the outbox drain only (about 10 s)")
    parser.add_argument("--baseline-server", metavar="CRM_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        baseline_server(args.baseline_server)
        return
    if args.quick:
        args.seconds = 0.5
    args.script_sessions = (lambda c: max(8, c)) if args.quick else (lambda c: max(40, 2 * c))
    args.hang_sessions = 16 if args.quick else 32
    args.drain_events = 200 if args.quick else 3000
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clinica-bench-") as workdir:
        asyncio.run(run(args, workdir))
    print(f"\n(benchmark took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
