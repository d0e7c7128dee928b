"""A stand-in for the CRM's push endpoint: print every push received, one line each.

Point CLINICA_CRM_PUSH_URL at it (the default, http://127.0.0.1:8580/api/Binotel/Push,
already is) to watch what the CRM would receive.  --status 500 or --hang make it
misbehave as a broken CRM would, to see the outbox at work."""

from __future__ import annotations

import signal
import sys
import threading
import time

from ..devtools.crm_sink import CrmSink
from ..config import parse_bind

FIRST = ("requestType", "generalCallID", "callType")


def add_arguments(parser) -> None:
    parser.add_argument("--bind", metavar="ADDRESS:PORT", default="127.0.0.1:8580",
                        help="where to listen (default 127.0.0.1:8580)")
    parser.add_argument("--status", type=int, default=200, help="HTTP status to answer with (default 200)")
    parser.add_argument("--hang", action="store_true", help="accept pushes and never answer them")


def format_push(fields) -> str:
    """``12:00:01 receivedTheCall generalCallID=… callType=0 didNumber=…``: one line."""
    ordered = [k for k in FIRST if k in fields] + sorted(k for k in fields if k not in FIRST)
    parts = [fields.get("requestType", "?")] + [f"{k}={fields[k]}" for k in ordered if k != "requestType"]
    line = " ".join(parts).replace("\r", " ").replace("\n", " ")
    return f"{time.strftime('%H:%M:%S')} {line}"


def run(args, settings) -> int:
    host, port = parse_bind(args.bind, "--bind")

    def show(fields) -> None:
        print(format_push(fields), flush=True)

    sink = CrmSink((host, port), status=args.status, behaviour="hang" if args.hang else "ok", on_push=show)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    sink.start()
    print(f"crm-sink: listening on {sink.url}", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sink.stop()
    return 0
