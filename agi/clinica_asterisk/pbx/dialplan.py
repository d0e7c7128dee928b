"""What a dialplan context holds, read from Asterisk's ``dialplan show <context>`` or from an
``extensions.conf``, and the one comparison ``doctor`` makes with it.  Pure.

``[clinica-from-pstn]`` (``dialplan/extensions_clinica.conf``) is a copy of FreePBX's
``[from-pstn]`` without its ``include => from-pstn-custom``: once the ring-in hook ran in
``[clinica-push]`` (which ``[from-pstn-custom]`` includes), the call must go on to FreePBX's
DID routing without meeting the hook again, and an include cannot be skipped.  Should a
FreePBX update change ``[from-pstn]``, the copy would route incoming calls the old way
without anyone noticing: :func:`from_pstn_drift` says how the two differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import FrozenSet, List, Optional, Tuple

FREEPBX_CONTEXT, OUR_COPY, LEFT_OUT = "from-pstn", "clinica-from-pstn", "from-pstn-custom"

_SHOW_HEADER = re.compile(r"^\[ Context '(?P<name>[^']+)' created by '[^']*' \]$")
_SHOW_INCLUDE = re.compile(r"^\s+Include =>\s+'(?P<name>[^']+)'")
_SHOW_EXTEN = re.compile(r"^\s+'(?P<exten>[^']+)' (?:\(CID match '[^']*'\) )?=>")
_CONF_SECTION = re.compile(r"^\[(?P<name>[^\]]+)\]")


@dataclass(frozen=True)
class Context:
    """The parts of a context that decide where a call goes: its includes, in order, and
    the names of its own extensions."""

    includes: Tuple[str, ...] = ()
    extensions: FrozenSet[str] = frozenset()


def context_in_listing(text: str, name: str) -> Optional[Context]:
    """``name`` in the output of ``dialplan show <name>``; None when it is not loaded."""
    includes: List[str] = []
    extensions = set()
    inside = found = False
    for line in text.splitlines():
        header = _SHOW_HEADER.match(line)
        if header:
            inside = header["name"] == name
            found = found or inside
            continue
        if not inside:
            continue
        include = _SHOW_INCLUDE.match(line)
        if include:
            includes.append(include["name"])
            continue
        exten = _SHOW_EXTEN.match(line)
        if exten:
            extensions.add(exten["exten"])
    return Context(tuple(includes), frozenset(extensions)) if found else None


def context_in_conf(text: str, name: str) -> Optional[Context]:
    """``[name]`` in an extensions.conf (every section of that name, as Asterisk merges
    them); None when the file has none."""
    includes: List[str] = []
    extensions = set()
    inside = found = False
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        section = _CONF_SECTION.match(line)
        if section:
            inside = section["name"].strip() == name
            found = found or inside
            continue
        if not inside or "=>" not in line and "=" not in line:
            continue
        key, _, value = line.partition("=>") if "=>" in line else line.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "include":
            includes.append(value.split(",", 1)[0].strip())
        elif key == "exten":
            extensions.add(value.split(",", 1)[0].strip().split("/", 1)[0])
    return Context(tuple(includes), frozenset(extensions)) if found else None


def from_pstn_drift(freepbx: Context, ours: Context) -> Optional[str]:
    """How our copy differs from FreePBX's ``[from-pstn]`` (less ``from-pstn-custom``), in
    one sentence; None when it does not."""
    expected = tuple(i for i in freepbx.includes if i != LEFT_OUT)
    problems = []
    if expected != ours.includes:
        problems.append(f"FreePBX's [{FREEPBX_CONTEXT}] includes {_names(expected)} "
                        f"but [{OUR_COPY}] {_names(ours.includes)}")
    if freepbx.extensions != ours.extensions:
        problems.append(f"FreePBX's [{FREEPBX_CONTEXT}] has extensions {_names(sorted(freepbx.extensions))} "
                        f"but [{OUR_COPY}] {_names(sorted(ours.extensions))}")
    return "; ".join(problems) or None


def _names(names) -> str:
    return ", ".join(names) if names else "none"
