"""didName: the name FreePBX's administrator gave the inbound route a call came in by.

FreePBX keeps inbound routes in its ``incoming`` table: ``extension`` is the DID the route
matches (empty: any DID; a leading ``_`` makes it an Asterisk pattern such as
``_04433340XX``), ``cidnum`` the caller id it is limited to (empty: any caller) and
``description`` the route's name.  Trunks deliver the same number as ``+380443334001``,
``380443334001`` or ``0443334001``, and the call store keeps it in the configured number
format, so numbers are compared the way :mod:`clinica_asterisk.calls.phone` normalises them.

Which route names the DID: a route for exactly that number, else the most specific
pattern that matches it, else the catch-all (empty DID); in each of these, a route for
any caller before one limited to the caller's number, and a route limited to another
caller never.  Pure functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, List, Optional, Sequence, Tuple

from ..calls.phone import digits_of, normalize


@dataclass(frozen=True)
class InboundRoute:
    did: str
    cidnum: str
    description: str


def canonical(raw: str, country_code: str, trunk_prefix: str) -> str:
    """One spelling per number: international with ``+`` when it is one, else its digits."""
    return normalize(raw, "e164", country_code, trunk_prefix)


def spellings(raw: str, country_code: str, trunk_prefix: str) -> Tuple[str, ...]:
    """The ways a trunk may have delivered the number (what an Asterisk pattern was
    written against): as stored, national, international with and without ``+``."""
    digits = digits_of(raw)
    if not digits:
        return ()
    forms = [digits, digits.lstrip("+"), normalize(digits, "national", country_code, trunk_prefix)]
    international = canonical(digits, country_code, trunk_prefix)
    forms += [international, international.lstrip("+")]
    return tuple(dict.fromkeys(f for f in forms if f))


@lru_cache(maxsize=256)
def _pattern(text: str) -> Optional["re.Pattern[str]"]:
    """An Asterisk extension pattern (``_`` already removed) as a regular expression:
    X any digit, Z 1-9, N 2-9, [..] a set, ``.`` one or more of anything, ``!`` zero or more."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        upper = ch.upper()
        if upper == "X":
            out.append("[0-9]")
        elif upper == "Z":
            out.append("[1-9]")
        elif upper == "N":
            out.append("[2-9]")
        elif ch == ".":
            out.append(".+")
        elif ch == "!":
            out.append(".*")
        elif ch == "[":
            end = text.find("]", i)
            if end < 0:
                return None
            members = text[i + 1:end]
            if not members or not re.fullmatch(r"[0-9+*#\-]+", members):
                return None
            out.append("[" + members.replace("*", r"\*").replace("+", r"\+") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _specificity(pattern: str) -> Tuple[int, int, int]:
    """Higher is more specific: no open end (``.``/``!``), more literal digits, longer."""
    body = pattern[1:]
    return (0 if ("." in body or "!" in body) else 1, sum(ch.isdigit() for ch in re.sub(r"\[[^]]*\]", "", body)),
            len(body))


def _matches(wanted: str, number: str, forms: Sequence[str], country_code: str, trunk_prefix: str) -> bool:
    """Does a route's DID or cidnum (``wanted``) match this number?"""
    wanted = wanted.strip()
    if wanted.startswith("_"):
        compiled = _pattern(wanted[1:])
        return compiled is not None and any(compiled.match(form) for form in forms)
    key = canonical(number, country_code, trunk_prefix)
    return bool(key) and canonical(wanted, country_code, trunk_prefix) == key


def route_name(routes: Iterable[InboundRoute], did: str, caller: str, country_code: str = "380",
               trunk_prefix: str = "0") -> str:
    """The description of the route that names ``did`` for a call from ``caller`` ('' when none)."""
    if not digits_of(did):
        return ""
    did_forms = spellings(did, country_code, trunk_prefix)
    caller_forms = spellings(caller, country_code, trunk_prefix)
    exact: List[InboundRoute] = []
    patterns: List[InboundRoute] = []
    catch_all: List[InboundRoute] = []
    for route in routes:
        cidnum = route.cidnum.strip()
        if cidnum and not _matches(cidnum, caller, caller_forms, country_code, trunk_prefix):
            continue  # a route for another caller
        wanted = route.did.strip()
        if not wanted:
            catch_all.append(route)
        elif _matches(wanted, did, did_forms, country_code, trunk_prefix):
            (patterns if wanted.startswith("_") else exact).append(route)
    patterns.sort(key=lambda r: _specificity(r.did.strip()), reverse=True)  # stable: table order on ties
    for group in (exact, patterns, catch_all):
        if group:
            # A route for any caller names the number; one for a single caller names a case.
            return min(group, key=lambda r: bool(r.cidnum.strip())).description.strip()
    return ""
