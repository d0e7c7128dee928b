"""Benchmark: stats/call-details for 100 ids on a store of one million calls.

    .venv/bin/python bench/bench_call_details.py [--calls 1000000] [--requests 200] [--ids 100]

Builds the store in a temporary directory (one transaction of executemany; --data-dir
keeps and reuses it), then times the same random sets of ids five ways, after a warm-up,
in turns (each set of ids goes through every way before the next set), so that all meet
the same background load:

1. baseline: the raw SQLite ``SELECT * FROM calls WHERE id IN (…)`` of those ids;
2. query: the method's one statement (the rows and, per call, whether its number was
   seen before, for isNewCall);
3. method: the whole signed answer in-process (query, fields, directory, md5 signature,
   JSON text), no HTTP;
4. http: a signed POST to the real server (waitress on a loopback port), keep-alive;
5. http floor: the same client and requests against waitress answering a prepared body
   of the same size at once: what the load generator and the HTTP exchange cost.

The requests are signed before timing starts, and the answers checked after it, so the
load generator spends only the send and the read of each.  Prints median and p99 of
each, in milliseconds, and their ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Callable, List

from waitress.server import create_server

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agi"))

from clinica_asterisk.api import call_details  # noqa: E402
from clinica_asterisk.api.app import signed_answer_text  # noqa: E402
from clinica_asterisk.api.directory import Directory  # noqa: E402
from clinica_asterisk.api.names import current_names  # noqa: E402
from clinica_asterisk.api.server import THREADS, ApiServer  # noqa: E402
from clinica_asterisk.api.signature import sign  # noqa: E402
from clinica_asterisk.config import DEFAULTS, build_settings  # noqa: E402
from clinica_asterisk.store.database import Store  # noqa: E402

KEY, SECRET = "bench", "bench-secret"
FIRST_ID = 1_700_000_000_000
CLIENT_NUMBERS = 200_000
EXTENSIONS = [str(n) for n in range(801, 861)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(count: int, rng: random.Random):
    started = 1_700_000_000.0
    for n in range(count):
        started += rng.uniform(0.5, 60)
        incoming = n % 3 != 0
        extension = rng.choice(EXTENSIONS)
        number = f"067{rng.randrange(CLIENT_NUMBERS):07d}"
        answered = rng.random() < 0.7
        wait = rng.uniform(1, 30)
        talk = int(rng.uniform(5, 600)) if answered else 0
        yield (FIRST_ID + n, "pbx1", f"{started:.3f}.{n}", "in" if incoming else "out", "pbx", started,
               number, number, "0443334000" if incoming else "", extension, json.dumps([extension]),
               extension if answered else None, started + wait if answered else None, started + wait + talk,
               talk, "ANSWER" if answered else rng.choice(["NOANSWER", "BUSY", "CANCEL"]),
               f"{'in' if incoming else 'out'}-{number}-{n}.wav", "" if incoming else "1")


def build_store(path: str, count: int) -> None:
    store = Store(path)
    have = store.conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    if have == count:
        print(f"store: reusing {path} ({count} calls)")
        return
    if have:
        raise SystemExit(f"{path} holds {have} calls, not {count}: use another --data-dir")
    began = time.monotonic()
    store.conn.execute("PRAGMA synchronous=OFF")
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO calls (id, pbx, linkedid, direction, origin, started_at, src_number, external_number,"
            " did, internal_number, dst_numbers, answered_by, answered_at, ended_at, billsec, disposition,"
            " recording_file, trunk) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows(count, random.Random(1)))
    store.conn.execute("ANALYZE")
    store.close()
    print(f"store: {count} calls built in {time.monotonic() - began:.1f} s ({os.path.getsize(path) >> 20} MiB)")


def timed_in_turns(ways: List[Callable[[int], object]], count: int, warmup: int = 20) -> List[List[float]]:
    """Milliseconds of each way for requests 0 … count-1, the ways taking turns on each
    request (after ``warmup`` requests of each, not timed).  The way that goes first
    changes from one request to the next, so that none is always the first to read a
    request's calls."""
    for n in range(min(warmup, count)):
        for way in ways:
            way(n)
    out: List[List[float]] = [[] for _ in ways]
    for n in range(count):
        for k in range(len(ways)):
            turn = (n + k) % len(ways)
            began = time.perf_counter()
            ways[turn](n)
            out[turn].append((time.perf_counter() - began) * 1000)
    return out


class KeptAliveClient:
    """The load generator: one kept-alive connection that sends requests written in advance
    and reads each answer by its Content-Length, at the least cost it can (http.client
    would parse every answer's headers with the email package, in the time it measures)."""

    def __init__(self, address):
        self.sock = socket.create_connection(address, timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = bytearray()

    @staticmethod
    def request(path: str, body: bytes) -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("ascii") + body

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.pending += chunk

    def exchange(self, request: bytes) -> bytes:
        """Send ``request``; the body of the answer (which must be 200)."""
        self.sock.sendall(request)
        while (end := self.pending.find(b"\r\n\r\n")) < 0:
            self._more()
        head = bytes(self.pending[:end])
        if not head.startswith(b"HTTP/1.1 200 "):
            raise AssertionError(head.decode("latin-1"))
        length = int(re.search(rb"\r\ncontent-length: *([0-9]+)", head, re.IGNORECASE).group(1))
        while len(self.pending) < end + 4 + length:
            self._more()
        body = bytes(self.pending[end + 4:end + 4 + length])
        del self.pending[:end + 4 + length]
        return body

    def close(self) -> None:
        self.sock.close()


class PreparedAnswer:
    """A WSGI application that answers every request with the same body at once (after
    reading the request): the floor of an HTTP exchange with waitress."""

    def __init__(self, body: bytes):
        self.body = body

    def __call__(self, environ, start_response):
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(self.body)))])
        return [self.body]


def bench_settings(data_dir: str, **extra: str):
    """The settings of an API benchmark in ``data_dir``: its key, a free port, a company id
    and a directory file naming every extension (``extra``: more CLINICA_ values)."""
    os.makedirs(data_dir, exist_ok=True)
    directory_file = os.path.join(data_dir, "directory.csv")
    with open(directory_file, "w", encoding="utf-8") as f:
        f.writelines(f"{e},Співробітник {e},{e}@clinic.example\n" for e in EXTENSIONS)
    return build_settings(dict(DEFAULTS, CLINICA_DATA_DIR=data_dir, CLINICA_API_KEYS=f"{KEY}:{SECRET}",
                               CLINICA_API_BIND=f"127.0.0.1:{free_port()}", CLINICA_COMPANY_ID="10881",
                               CLINICA_DIRECTORY_FILE=directory_file, **extra))


def p99(values: List[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--ids", type=int, default=100)
    parser.add_argument("--data-dir", help="keep the store here (default: a temporary directory, removed)")
    args = parser.parse_args(argv)

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="clinica-bench-")
    settings = bench_settings(data_dir)
    try:
        build_store(settings.db_path, args.calls)
        rng = random.Random(2)
        id_sets = [[FIRST_ID + rng.randrange(args.calls) for _ in range(args.ids)] for _ in range(args.requests)]

        # A connection for each in-process way, as the server has one for each worker: each
        # finds the pages of a request's calls in the operating system's cache, none in its
        # own (the ids are random), so none is favoured by the order of the turns.
        stores = [Store(settings.db_path) for _ in range(3)]
        directory = Directory(settings.directory_file)

        def baseline(n):
            ids = id_sets[n]
            marks = ",".join("?" * len(ids))
            return stores[0].conn.execute(f"SELECT * FROM calls WHERE id IN ({marks})", ids).fetchall()

        def query(n):
            return call_details.fetch(stores[1].conn, id_sets[n])

        def method(n):
            answer = call_details.call_details(stores[2].conn, {"generalCallID": id_sets[n]},
                                               lambda: current_names(directory, None), "10881", time.time())
            return signed_answer_text(answer, SECRET)

        requests = []
        for ids in id_sets:
            params = {"generalCallID": [str(i) for i in ids]}
            body = json.dumps(dict(params, signature=sign(SECRET, params), key=KEY)).encode()
            requests.append(KeptAliveClient.request("/api/2.0/stats/call-details.json", body))
        answers: List[bytes] = [b""] * len(id_sets)

        server = ApiServer(settings)
        server.start()
        client = KeptAliveClient(server.address)
        floor_server = create_server(PreparedAnswer(method(0).encode()), host="127.0.0.1", port=0,
                                     threads=THREADS, asyncore_use_poll=True)
        threading.Thread(target=floor_server.run, daemon=True).start()
        floor_client = KeptAliveClient(("127.0.0.1", floor_server.effective_port))

        def over_http(n):
            answers[n] = client.exchange(requests[n])

        def http_floor(n):
            floor_client.exchange(requests[n])

        ways = [("baseline: raw SELECT by id", baseline), ("query: rows + isNewCall", query),
                ("method: signed answer, no HTTP", method), ("http: POST to waitress", over_http),
                ("http floor: prepared answer", http_floor)]
        try:
            times = timed_in_turns([way for _, way in ways], len(id_sets))
        finally:
            client.close()
            floor_client.close()
            floor_server.close()
            server.stop()
            for store in stores:
                store.close()
        for ids, text in zip(id_sets, answers):
            answer = json.loads(text)
            assert answer["status"] == "success" and len(answer["callDetails"]) == len(set(ids)), answer
            assert answer.pop("signature") == sign(SECRET, answer)
        results = [(name, values) for (name, _), values in zip(ways, times)]

        base_median, base_p99 = statistics.median(results[0][1]), p99(results[0][1])
        print(f"\ncall-details, {args.ids} ids a request, {args.requests} requests, {args.calls} calls stored")
        print(f"{'':34} {'median ms':>10} {'p99 ms':>10} {'x median':>9} {'x p99':>9}")
        for name, values in results:
            median, tail = statistics.median(values), p99(values)
            print(f"{name:34} {median:10.2f} {tail:10.2f} {median / base_median:9.1f} {tail / base_p99:9.1f}")
    finally:
        if not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
