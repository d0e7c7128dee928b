"""``clinica-asterisk``: the admin command.  A thin main: parse, load settings, run one
subcommand, and map failures to exit codes in one place."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from ..config import ConfigError, load_settings
from .exit_status import ExitStatus

# name -> (module in this package, one-line help)
COMMANDS = {
    "deliver": ("deliver", "send the queued push events (once, or as a worker with --forever)"),
    "doctor": ("doctor", "check configuration, CRM, AMI, dialplan, data, outbox and ports; one line each"),
    "serve": ("serve", "run the FastAGI server, the delivery worker and the CRM API"),
    "crm-sink": ("crm_sink", "a local stand-in for the CRM: print every push received"),
    "simulate": ("simulate", "play recorded calls against the FastAGI server as Asterisk would"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clinica-asterisk",
                                     description="Asterisk / FreePBX to Clinica Web bridge.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f".{module_name}", __package__)
        command = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(command)
        command.set_defaults(run=module.run, on_config_error=getattr(module, "report_config_error", None))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        return int(args.run(args, settings) or ExitStatus.OK)
    except ConfigError as exc:
        if args.on_config_error:  # doctor reports it as one of its checks
            args.on_config_error(exc)
        else:
            print(f"clinica-asterisk: configuration error: {exc}", file=sys.stderr)
        return ExitStatus.CONFIG
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    except Exception as exc:
        print(f"clinica-asterisk: {type(exc).__name__}: {exc}", file=sys.stderr)
        return ExitStatus.ERROR


if __name__ == "__main__":
    sys.exit(main())
