"""Benchmark: the stats methods that list calls, on a store of one million calls.

    .venv/bin/python bench/bench_stats.py [--calls 1000000] [--requests 40] [--data-dir DIR]

Builds the store as bench_call_details.py does (one call every 0.5-60 s, about a year of a
very busy PBX: some 2 900 calls a day, 200 000 client numbers, 60 extensions), leaves the
last 20 calls up, and times each method over random parameters three ways, each after a
warm-up:

1. baseline: the raw SQLite ``SELECT *`` of the same rows by the same index (what the
   method cannot do without);
2. method: the whole signed answer in-process (query with isNewCall, entries with their
   dstNumbers, names, md5 signature, JSON text), no HTTP;
3. http: a signed POST to the real server (waitress on a loopback port), keep-alive.

Prints, per method, the calls an answer held (median), median and p99 of each way in
milliseconds, and the method's and HTTP's ratios to the baseline of the same run.  Also
times the refusal of a period too large (error 133 after reading 2 001 rows).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
from typing import Any, Callable, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "agi"))
sys.path.insert(0, HERE)

from bench_call_details import (CLIENT_NUMBERS, EXTENSIONS, KEY, SECRET, bench_settings, build_store,  # noqa: E402
                               p99, timed)

from clinica_asterisk.api import stats  # noqa: E402
from clinica_asterisk.api.app import answer_text, build_context  # noqa: E402
from clinica_asterisk.api.directory import Directory  # noqa: E402
from clinica_asterisk.api.names import current_names  # noqa: E402
from clinica_asterisk.api.server import ApiServer  # noqa: E402
from clinica_asterisk.api.signature import sign  # noqa: E402
from clinica_asterisk.store.database import Store  # noqa: E402

OPEN_CALLS = 20
HOUR = 3600

Params = Dict[str, Any]


def leave_calls_up(path: str) -> Tuple[float, float]:
    """The last OPEN_CALLS calls still up; the first and last start in the store."""
    store = Store(path)
    first, last = store.conn.execute("SELECT MIN(started_at), MAX(started_at) FROM calls").fetchone()
    with store.transaction() as conn:
        conn.execute("UPDATE calls SET ended_at = NULL, billsec = NULL, disposition = NULL "
                     "WHERE id IN (SELECT id FROM calls ORDER BY id DESC LIMIT ?)", (OPEN_CALLS,))
    store.close()
    return first, last


def cases(first: float, last: float, rng: random.Random, count: int) -> List[Tuple[str, str, Callable[[], Params],
                                                                                str, Callable[[Params], tuple]]]:
    """(label, method, parameters, baseline SQL, its arguments) per method."""
    def moment(span: float) -> int:
        return int(rng.uniform(first, last - span))

    def period(span):
        def make():
            start = moment(span)
            return {"startTime": start, "stopTime": start + int(span) - 1}
        return make

    def by_extension():
        start = moment(7 * 24 * HOUR)
        return {"internalNumber": rng.choice(EXTENSIONS), "startTime": start, "stopTime": start + 7 * 24 * HOUR - 1}

    def numbers():
        return {"number": [f"+38067{rng.randrange(CLIENT_NUMBERS):07d}" for _ in range(3)]}

    range_args = lambda p: (p["startTime"], p["stopTime"] + 1)  # noqa: E731
    return [
        ("incoming-calls-for-period, 12 h", "stats/incoming-calls-for-period", period(12 * HOUR),
         "SELECT * FROM calls WHERE direction = 'in' AND started_at >= ? AND started_at < ?", range_args),
        ("outgoing-calls-for-period, 24 h", "stats/outgoing-calls-for-period", period(24 * HOUR),
         "SELECT * FROM calls WHERE direction = 'out' AND started_at >= ? AND started_at < ?", range_args),
        ("all-incoming-calls-since, 12 h", "stats/all-incoming-calls-since",
         lambda: {"timestamp": int(last) - 12 * HOUR},
         "SELECT * FROM calls WHERE direction = 'in' AND started_at >= ?", lambda p: (p["timestamp"],)),
        ("list-of-calls-per-day", "stats/list-of-calls-per-day", lambda: {"dayInTimestamp": moment(24 * HOUR)},
         "SELECT * FROM calls WHERE started_at >= ? AND started_at < ?",
         lambda p: stats.day_bounds(p["dayInTimestamp"])),
        ("calls-by-internal-number, 7 days", "stats/list-of-calls-by-internal-number-for-period", by_extension,
         "SELECT * FROM calls WHERE started_at >= ? AND started_at < ? AND (internal_number = ? OR answered_by = ?)",
         lambda p: (p["startTime"], p["stopTime"] + 1, p["internalNumber"], p["internalNumber"])),
        ("online-calls (20 up)", "stats/online-calls", lambda: {},
         "SELECT * FROM calls WHERE ended_at IS NULL", lambda p: ()),
        ("list-of-lost-calls-today", "stats/list-of-lost-calls-today", lambda: {},
         "SELECT * FROM calls WHERE direction = 'in' AND started_at >= ? AND started_at < ? AND answered_at IS NULL",
         lambda p: stats.day_bounds(last)),
        ("history-by-number, 3 numbers", "stats/history-by-number", numbers,
         "SELECT * FROM calls WHERE external_number IN (?, ?, ?)",
         lambda p: tuple("0" + n[4:] for n in p["number"])),
        ("refused: 31 days incoming (133)", "stats/incoming-calls-for-period", period(31 * 24 * HOUR - 1),
         "SELECT * FROM calls WHERE direction = 'in' AND started_at >= ? AND started_at < ? LIMIT 2001", range_args),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--data-dir", help="keep the store here (default: a temporary directory, removed)")
    args = parser.parse_args(argv)

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="clinica-bench-")
    settings = bench_settings(data_dir, CLINICA_TRUNK_NUMBERS="1:0443334000", CLINICA_FREEPBX_DB="off")
    try:
        build_store(settings.db_path, args.calls)
        first, last = leave_calls_up(settings.db_path)
        now = last + 60
        store = Store(settings.db_path)
        conn = store.conn
        names = current_names(Directory(settings.directory_file), None, "380", "0", settings.trunk_numbers)

        def method_of(name):
            def run(params):
                ctx = stats.StatsContext(conn, lambda: names, "10881", now)
                try:
                    answer = stats.METHODS[name](ctx, params)
                except stats.ApiError as exc:
                    answer = exc.answer()
                answer["signature"] = sign(SECRET, answer)
                return answer_text(answer)
            return run

        server = ApiServer(settings, build_context(settings, clock=lambda: now))
        server.start()
        client = http.client.HTTPConnection(*server.address, timeout=60)

        def http_of(name, sizes):
            def run(params):
                body = json.dumps(dict(params, signature=sign(SECRET, params), key=KEY))
                client.request("POST", f"/api/2.0/{name}.json", body=body, headers={"Content-Type": "application/json"})
                answer = json.loads(client.getresponse().read())
                sizes.append(len(answer.get("callDetails", ())) if answer["status"] == "success"
                             else f"error {answer['code']}")
                return answer
            return run

        rng = random.Random(3)
        rows = []
        try:
            for label, name, make, sql, sql_args in cases(first, last, rng, args.requests):
                params = [make() for _ in range(args.requests)]
                sizes: List[Any] = []
                base = timed(lambda p: conn.execute(sql, sql_args(p)).fetchall(), params, warmup=5)
                in_process = timed(method_of(name), params, warmup=5)
                over_http = timed(http_of(name, sizes), params, warmup=5)
                numeric = [s for s in sizes if isinstance(s, int)]
                held = str(int(statistics.median(numeric))) if numeric else sizes[-1]
                rows.append((label, held, base, in_process, over_http))
        finally:
            client.close()
            server.stop()
            store.close()

        print(f"\nstats methods, {args.requests} requests each, {args.calls} calls stored")
        print(f"{'':34} {'calls':>6} {'base ms':>8} {'method ms':>18} {'http ms':>18} {'x base (method/http)':>22}")
        print(f"{'':34} {'':>6} {'median':>8} {'median':>8} {'p99':>9} {'median':>8} {'p99':>9} {'median':>10} {'p99':>11}")
        for label, held, base, in_process, over_http in rows:
            bm, bp = statistics.median(base), p99(base)
            mm, mp, hm, hp = statistics.median(in_process), p99(in_process), statistics.median(over_http), p99(over_http)
            print(f"{label:34} {held:>6} {bm:8.2f} {mm:8.2f} {mp:9.2f} {hm:8.2f} {hp:9.2f} "
                  f"{mm / bm:4.1f}/{hm / bm:<5.1f} {mp / bp:4.1f}/{hp / bp:<5.1f}")
    finally:
        if not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
