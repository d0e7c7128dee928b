"""Benchmark: events per second through the shared store (MariaDB) with one and with two
nodes, next to SQLite on one node, as ratios against the SQLite figure of the same run.

    .venv/bin/python bench/bench_store.py [--calls 2000] [--rounds 2]

Needs mariadbd (Debian's mariadb-server); without it, it says so and exits 0.  Starts a
private server (tests/support/mariadb.py) and a CRM stand-in on loopback that answers at
once, then, per round and per store:

1. **write**: the hooks' side.  ``--calls`` calls, each written as the hooks write it: one
   transaction per event (the call's row changed, the event queued), three events a call,
   by one writer process, or by two at once (two nodes, half the calls each).
2. **deliver**: the worker's side.  Those events sent to the CRM by the delivery worker
   (``clinica-asterisk deliver --forever``: lease a call's head, POST, mark it
   delivered), one process, or two at once (two nodes sharing the outbox).  Timed from the CRM's first POST to its last,
   so that Python's start-up is not counted; every event must arrive exactly once.

Prints events/s (the median of the rounds) and the ratio to SQLite on one node.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "agi"))
sys.path.insert(0, str(REPO / "tests"))

from support.faults import BIN, FaultyCrm, environment  # noqa: E402  (the CRM stand-in, commands' env)
from support.mariadb import MariaDb, find_program  # noqa: E402  (a private mariadbd)

from clinica_asterisk.store.database import Store  # noqa: E402
from clinica_asterisk.store.outbox import Outbox  # noqa: E402

EVENTS = ("receivedTheCall", "answeredTheCall", "hangupTheCall")


def write_calls(location: str, node: str, first: int, count: int) -> None:
    """As the hooks do: per event one transaction that changes the call and queues it."""
    store = Store(location, busy_timeout_s=10.0)
    outbox = Outbox(store)
    for n in range(first, first + count):
        call_id = None
        for step, key in enumerate(EVENTS):
            with store.transaction():
                now = time.time()
                if call_id is None:
                    call_id = store.insert_call({"pbx": node, "linkedid": f"{node}-{n}", "direction": "in",
                                                 "started_at": now, "dst_numbers": ["801"]})
                else:
                    store.call(call_id)
                    store.update_call(call_id, {"answered_at": now} if step == 1 else {"ended_at": now})
                outbox.enqueue(call_id, key, {"requestType": key, "generalCallID": str(call_id)})
    store.close()


def timed_writes(location: str, calls: int, nodes: int) -> float:
    """Events written per second by ``nodes`` writer processes."""
    context = multiprocessing.get_context("spawn")
    share = calls // nodes
    procs = [context.Process(target=write_calls, args=(location, f"node{i}", i * share, share))
             for i in range(nodes)]
    began = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    return share * nodes * len(EVENTS) / (time.monotonic() - began)


def timed_delivery(crm: FaultyCrm, envs, events: int) -> float:
    """Events delivered per second by one worker (``deliver --forever``) per environment,
    all at once, stopped once the CRM has every event."""
    with crm.lock:
        crm.posts.clear()
    logs = [tempfile.TemporaryFile() for _ in envs]
    procs = [subprocess.Popen([os.path.join(BIN, "clinica-asterisk"), "deliver", "--forever"], env=env,
                              stdout=subprocess.DEVNULL, stderr=log) for env, log in zip(envs, logs)]
    try:
        crm.wait_for(lambda c: len({p.key for p in c.posts if p.accepted}) >= events, f"{events} events delivered",
                     timeout_s=600)
    finally:
        for p in procs:
            p.terminate()
            p.wait(60)
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read().decode("utf-8", "replace"))
            log.close()
    with crm.lock:
        posts = list(crm.posts)
    accepted = crm.accepted()
    assert len(accepted) == events and all(n == 1 for n in accepted.values()), \
        (f"{len(accepted)} of {events} events, {sum(accepted.values()) - len(accepted)} duplicates",
         [o[-3000:] for o in outputs])
    span = max(p.ended or p.arrived for p in posts) - min(p.arrived for p in posts)
    return events / span


def run(args) -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-store-"))
    server = MariaDb(base / "mdb")
    (base / "mdb").mkdir()
    server.start()
    crm = FaultyCrm("ok")
    results = {}
    try:
        for round_ in range(args.rounds):
            for label, nodes, shared in (("SQLite, 1 node", 1, False), ("MariaDB, 1 node", 1, True),
                                         ("MariaDB, 2 nodes", 2, True)):
                work = base / f"r{round_}-{nodes}-{int(shared)}"
                envs, location = [], None
                url = server.create_store(f"b{round_}_{nodes}") if shared else ""
                for i in range(nodes):
                    (work / f"n{i}").mkdir(parents=True)
                    settings = dict(crm_push_url=crm.url, reconcile_s=0, deliver_timeout_ms=5000)
                    if shared:
                        settings["store_url"] = url
                    else:
                        settings["data_dir"] = str(work / "data")
                    envs.append(environment(work / f"n{i}", **settings))
                location = url or str(work / "data" / "clinica.sqlite3")
                written = timed_writes(location, args.calls, nodes)
                delivered = timed_delivery(crm, envs, args.calls // nodes * nodes * len(EVENTS))
                results.setdefault(label, []).append((written, delivered))
                print(f"round {round_ + 1}: {label}: write {written:.0f} events/s, deliver {delivered:.0f} events/s",
                      flush=True)
    finally:
        crm.close()
        server.stop()
    base_write = statistics.median(w for w, _ in results["SQLite, 1 node"])
    base_deliver = statistics.median(d for _, d in results["SQLite, 1 node"])
    print()
    print(f"{args.calls} calls, {args.calls * len(EVENTS)} events; median of {args.rounds} rounds; "
          f"{os.cpu_count()} cores")
    print("| store, nodes | write (one transaction per event) | vs SQLite | deliver (lease, POST, mark) | vs SQLite |")
    print("|---|---|---|---|---|")
    for label, figures in results.items():
        write = statistics.median(w for w, _ in figures)
        deliver = statistics.median(d for _, d in figures)
        print(f"| {label} | {write:.0f} events/s | {write / base_write:.2f}x | {deliver:.0f} events/s | "
              f"{deliver / base_deliver:.2f}x |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not (find_program("mariadbd") and find_program("mariadb-install-db")):
        print("mariadbd is not installed (apt-get install mariadb-server): nothing measured")
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
