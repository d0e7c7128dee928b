"""Benchmark: stats/call-details for 100 ids on a store of one million calls.

    .venv/bin/python bench/bench_call_details.py [--calls 1000000] [--requests 200] [--ids 100]

Builds the store in a temporary directory (one transaction of executemany; --data-dir
keeps and reuses it), then times the same random sets of ids four ways, each after a
warm-up:

1. baseline: the raw SQLite ``SELECT * FROM calls WHERE id IN (…)`` of those ids;
2. query: the method's one statement (the rows and, per call, whether its number was
   seen before, for isNewCall);
3. method: the whole signed answer in-process (query, fields, directory, md5 signature,
   JSON text), no HTTP;
4. http: a signed POST to the real server (waitress on a loopback port), keep-alive.

Prints median and p99 of each, in milliseconds, and their ratio to the baseline.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agi"))

from clinica_asterisk.api import call_details  # noqa: E402
from clinica_asterisk.api.app import answer_text  # noqa: E402
from clinica_asterisk.api.directory import Directory  # noqa: E402
from clinica_asterisk.api.names import current_names  # noqa: E402
from clinica_asterisk.api.server import ApiServer  # noqa: E402
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


def timed(fn: Callable[[Any], object], id_sets: List[Any], warmup: int = 20) -> List[float]:
    for ids in id_sets[:warmup]:
        fn(ids)
    out = []
    for ids in id_sets:
        began = time.perf_counter()
        fn(ids)
        out.append((time.perf_counter() - began) * 1000)
    return out


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

        store = Store(settings.db_path)
        conn = store.conn
        directory = Directory(settings.directory_file)

        def baseline(ids):
            marks = ",".join("?" * len(ids))
            return conn.execute(f"SELECT * FROM calls WHERE id IN ({marks})", ids).fetchall()

        def query(ids):
            return call_details.fetch(conn, ids)

        def method(ids):
            answer = call_details.call_details(conn, {"generalCallID": ids}, lambda: current_names(directory, None),
                                               "10881", time.time())
            answer["signature"] = sign(SECRET, answer)
            return answer_text(answer)

        server = ApiServer(settings)
        server.start()
        client = http.client.HTTPConnection(*server.address, timeout=30)

        def over_http(ids):
            params = {"generalCallID": [str(i) for i in ids]}
            body = json.dumps(dict(params, signature=sign(SECRET, params), key=KEY))
            client.request("POST", "/api/2.0/stats/call-details.json", body=body,
                           headers={"Content-Type": "application/json"})
            answer = json.loads(client.getresponse().read())
            assert answer["status"] == "success" and len(answer["callDetails"]) == len(set(ids)), answer
            return answer

        try:
            results = [("baseline: raw SELECT by id", timed(baseline, id_sets)),
                       ("query: rows + isNewCall", timed(query, id_sets)),
                       ("method: signed answer, no HTTP", timed(method, id_sets)),
                       ("http: POST to waitress", timed(over_http, id_sets))]
        finally:
            client.close()
            server.stop()
            store.close()

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
