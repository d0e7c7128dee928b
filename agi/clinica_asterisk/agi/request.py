"""The AGI request: the env block Asterisk sends first, parsed with limits into an
immutable object.  Kept apart from the command channel (which talks back to Asterisk).

Pure: lines in, :class:`AgiRequest` out, or :class:`EnvBlockError` for garbage.
"""

from __future__ import annotations

import posixpath

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import Dict, Iterable, Tuple

from ..values import Value

MAX_ENV_LINES = 128
MAX_LINE_BYTES = 16384
MAX_ENV_BYTES = 32 * 1024
# The script name under which the stage comes as the first argument.
GENERIC_SCRIPT = "clinica-agi"


class EnvBlockError(ValueError):
    """The peer did not send a well-formed AGI env block."""


def parse_env_line(line: str) -> Tuple[str, str]:
    key, sep, value = line.partition(":")
    key = key.strip()
    if not sep or not key.startswith("agi_") or not key.replace("_", "").isalnum():
        raise EnvBlockError(f"not an AGI env line: {line[:60]!r}")
    # Asterisk writes "agi_key: value"; the value may itself contain ': '.
    return key, value[1:] if value.startswith(" ") else value


def parse_env_block(lines: Iterable[str]) -> Dict[str, str]:
    """Lines up to (not including) the empty line that ends the block."""
    env: Dict[str, str] = {}
    for count, line in enumerate(lines, 1):
        if count > MAX_ENV_LINES:
            raise EnvBlockError(f"env block longer than {MAX_ENV_LINES} lines")
        key, value = parse_env_line(line)
        env[key] = value
    if "agi_request" not in env:
        raise EnvBlockError("env block without agi_request")
    return env


class AgiRequest(Value):
    """The env block Asterisk sends first (``agi_*`` lines), immutable."""

    __slots__ = ("env",)  # Mapping[str, str]

    @property
    def network(self) -> bool:
        return self.env.get("agi_network") == "yes"

    @property
    def args(self) -> Tuple[str, ...]:
        found = []
        n = 1
        while f"agi_arg_{n}" in self.env:
            found.append(self.env[f"agi_arg_{n}"])
            n += 1
        return tuple(found)

    @property
    def script(self) -> str:
        """The script name: FastAGI's path without the query, or the AGI file name."""
        if self.network:
            path = self.env.get("agi_network_script", "")
            if not path:
                from urllib.parse import urlsplit  # here: script hooks never need it, and it costs them

                path = urlsplit(self.env.get("agi_request", "")).path
            path = path.split("?", 1)[0]
        else:
            path = self.env.get("agi_request", "")
        return posixpath.basename(path.rstrip("/"))

    @property
    def stage_and_args(self) -> Tuple[str, Tuple[str, ...]]:
        """The stage is the first argument (``AGI(clinica-agi,ring-in,…)`` and
        ``AGI(agi://host:port/clinica-agi,ring-in,…)``), or the FastAGI script name
        itself (``AGI(agi://host:port/ring-in,…)``)."""
        if self.network and self.script not in (GENERIC_SCRIPT, ""):
            return self.script, self.args
        args = self.args
        return (args[0] if args else ""), args[1:]
