"""Play recorded calls against the running FastAGI server, exactly as Asterisk would.

Four calls recorded on a real Asterisk 22: incoming answered by 801 (in-801), ring group
answered by 802 (in-group), missed (in-miss), outgoing (out).  Each hook of each call is
one FastAGI session to `clinica-asterisk serve`; the pushes go wherever the server sends
them (run `clinica-asterisk crm-sink` to see them).  Exit status 0 when every hook left
SENT, QUEUED or SKIPPED in CLINICA_STATUS."""

from __future__ import annotations

from .exit_status import ExitStatus
from ..devtools.simulation import CALLS, simulate
from ..config import parse_bind


def add_arguments(parser) -> None:
    parser.add_argument("--server", metavar="ADDRESS:PORT",
                        help="the FastAGI server (default: CLINICA_FASTAGI_BIND, 127.0.0.1 for a wildcard)")
    parser.add_argument("--call", dest="calls", action="append", choices=sorted(CALLS),
                        help="play only this call (repeatable; default: all four)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="play the calls N times")


def server_address(args, settings):
    if args.server:
        return parse_bind(args.server, "--server")
    host, port = settings.fastagi_bind
    return ("127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else host), port


def run(args, settings) -> int:
    address = server_address(args, settings)
    names = args.calls or list(CALLS)
    failed = 0
    for _ in range(max(1, args.repeat)):
        for name in names:
            print(f"{name}: {CALLS[name][0]}", flush=True)
            for played in simulate(address, [name]):
                failed += not played.ok
                print(f"  {played.stage:<9} {played.status:<8} {played.ms:>5} ms", flush=True)
                if played.status.startswith("NO SERVER"):
                    print(f"nothing answers FastAGI on {address[0]}:{address[1]}: is `clinica-asterisk serve` running?")
                    return ExitStatus.ERROR
    return ExitStatus.OK if not failed else ExitStatus.ERROR
