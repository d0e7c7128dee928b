"""Asterisk's answer to one AGI command, parsed by one pure function.

An answer is ``<code> result=<value> [(<data>)] [key=value …]``: ``200 result=1 (801)``,
``200 result=0``, ``200 result=0 endpos=8000``, ``510 Invalid or unknown command``,
``511 Command Not Permitted on a dead channel or intercept routine``, or ``520-…`` lines
ending in ``520 End of proper usage.``.  The data runs to the *last* closing parenthesis,
since a variable's value may itself hold one (``Клієнт (VIP)``).

:func:`parse_reply` gives pyst2's shape (``{'result': (value, data), …}``) and raises
pyst2's public exceptions (``asterisk.agi.AGIException`` and its kinds), so that code
written against pyst2 reads our answers the same way (:mod:`.channel` says why pyst2's
``AGI`` class itself is not used).

Several values in one round trip (:func:`batch_expression`, :func:`split_batch`): one
``GET FULL VARIABLE`` of ``${CSV_QUOTE(…)},${CSV_QUOTE(…)},…``.  ``CSV_QUOTE`` (Asterisk
1.8 and later) quotes each value, so a caller id holding commas or quotes cannot shift the
fields; a first, constant field proves that the function ran (an Asterisk without it
would answer empty fields, which must not pass for empty variables).
"""

from __future__ import annotations

import _csv  # csv.reader itself; csv.py (dialects, DictReader, Sniffer) costs every hook start-up

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)

import sys


def _pyst2():
    """pyst2's ``asterisk.agi``, loaded with the first error answer (it costs a script hook
    a good part of its start-up, and a hook whose commands succeed never needs it)."""
    import asterisk.agi

    return asterisk.agi


def agi_error(name: str = "AGIException"):
    """pyst2's exception class ``name`` for an ``except`` clause; ``()`` (catches nothing)
    while pyst2 is not loaded, when none of its exceptions can have been raised."""
    module = sys.modules.get("asterisk.agi")
    return getattr(module, name) if module is not None else ()

if TYPE_CHECKING:
    from typing import Dict, List, Optional, Sequence, Tuple

    Reply = Dict[str, Tuple[str, str]]

BATCH_MARK = "clinica"


def reply_code(line: str) -> int:
    """The numeric code an answer line starts with (``520-`` usage lines included); 0 if none."""
    digits = line[:3]
    if len(digits) == 3 and digits.isdigit() and line[3:4] in ("", " ", "-"):
        return int(digits)
    return 0


def parse_reply(line: str, usage: Sequence[str] = ()) -> Reply:
    """One answer line as pyst2's result dict; pyst2's exception for anything but success.

    ``usage``: for a ``520`` answer, the lines that followed it (the command's usage)."""
    line = line.strip()
    code = reply_code(line)
    rest = line[4:] if code else line
    if code == 200:
        return _fields(rest)
    if code == 510:
        raise _pyst2().AGIInvalidCommand(rest)
    if code == 520:
        raise _pyst2().AGIUsageError("\n".join([line, *usage]) + "\n")
    raise _pyst2().AGIUnknownError(code, f"Unhandled code or undefined response: {line[:200]!r}")


def _fields(text: str) -> Reply:
    fields: Reply = {"result": ("", "")}
    while text:
        key, eq, text = text.partition("=")
        if not eq:
            break
        value, _, text = text.partition(" ")
        data = ""
        text = text.lstrip(" ")
        if text.startswith("("):
            close = text.rfind(")")
            if close > 0:
                data, text = text[1:close], text[close + 1:].lstrip(" ")
        fields[key.strip()] = (value, data)
        if data == "hangup":
            raise _pyst2().AGIResultHangup("User hungup during execution")
        if key.strip() == "result" and value == "-1":
            raise _pyst2().AGIAppError("Error executing application, or hangup")
    return fields


def as_expression(name: str) -> str:
    """``NAME`` -> ``${NAME}``; an expression (``${CDR(billsec)}``) stays as it is."""
    return name if name.startswith("${") else "${" + name + "}"


def batch_expression(names: Sequence[str]) -> str:
    """One expression whose value holds every one of ``names``, quoted."""
    return ",".join(f"${{CSV_QUOTE({item})}}" for item in [BATCH_MARK, *map(as_expression, names)])


def split_batch(value: str, count: int) -> Optional[List[str]]:
    """The ``count`` values of a :func:`batch_expression`, or None when Asterisk did not
    quote them as expected (then read them one by one)."""
    try:
        rows = list(_csv.reader([value], strict=True))
    except _csv.Error:
        return None
    if len(rows) != 1 or len(rows[0]) != count + 1 or rows[0][0] != BATCH_MARK:
        return None
    return rows[0][1:]
