"""Dial options: putting our answer routine into FreePBX's Dial options.  Pure.

FreePBX 16 puts ``M(auto-blkvm)`` there instead: ``M()`` runs before ``U()`` and stays.

Dial runs a single ``U()`` routine on the answering channel; a second ``U()`` replaces the
first.  FreePBX 17 already puts ``U(macro-auto-blkvm)`` (and sometimes ``U(macro-confirm^…)``)
there for group, queue and follow-me calls, so ours takes its place and calls the displaced
routine itself first:  ``U(clinica-answer^<who>^<leg>^<displaced routine>^<its args>)``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import List, Tuple

from .phone import is_digits

ANSWER_ROUTINE = "clinica-answer"
# The legs the routine is put on: one extension; a group's members (the routine names the
# group, the answering channel the member); an attended transfer's consultation; whoever
# the client's channel dials after an employee answered (a blind transfer); a trunk.
EXT, GROUP, CONSULT, BLIND, TRUNK = "ext", "grp", "xfer", "bxfer", "trunk"
LEGS = (EXT, GROUP, CONSULT, BLIND, TRUNK)


def split_options(options: str) -> List[str]:
    """``HhtrU(a^b)I`` -> ['H', 'h', 't', 'r', 'U(a^b)', 'I']; nested parentheses kept."""
    tokens, i = [], 0
    while i < len(options):
        j = i + 1
        if j < len(options) and options[j] == "(":
            depth = 0
            while j < len(options):
                depth += {"(": 1, ")": -1}.get(options[j], 0)
                j += 1
                if depth == 0:
                    break
        tokens.append(options[i:j])
        i = j
    return tokens


def with_answer_routine(options: str, who: str, leg: str) -> str:
    """``options`` with our ``U()`` in place of any other; unchanged when ours is there.

    ``who`` must be digits (it is written into a dial string) and ``leg`` one of LEGS."""
    if not is_digits(who) or leg not in LEGS:
        return options
    tokens = split_options(options or "")
    if any(t.startswith(f"U({ANSWER_ROUTINE}^") for t in tokens):
        return options
    displaced = [t[2:-1] for t in tokens if t.startswith("U(") and t.endswith(")")]
    kept = "".join(t for t in tokens if not t.startswith("U("))
    routine = f"{ANSWER_ROUTINE}^{who}^{leg}"
    if displaced:
        routine += "^" + displaced[-1]
    return f"{kept}U({routine})"


def split_dial_string(ds: str) -> Tuple[str, str, str]:
    """FreePBX's ``ds`` (a ring group's whole Dial argument, as core's dialparties sets it):
    ``IAX2/801/801&PJSIP/802,20,HhtrU(macro-auto-blkvm)`` -> (targets, timeout, options)."""
    targets, _, rest = (ds or "").partition(",")
    timeout, _, options = rest.partition(",")
    return targets, timeout, options


def dial_string_with_answer_routine(ds: str, who: str, leg: str) -> str:
    """``ds`` with our ``U()`` in its options; unchanged when it has no options part to
    hold it (no timeout field) or ``who``/``leg`` are not acceptable."""
    targets, timeout, options = split_dial_string(ds)
    if ds.count(",") < 1:
        return ds
    changed = with_answer_routine(options, who, leg)
    return ds if changed == options else f"{targets},{timeout},{changed}"


def dial_targets(ds: str) -> List[str]:
    """The channels a ``ds`` dials: ``IAX2/801/801&PJSIP/802`` -> ['IAX2/801/801', 'PJSIP/802']."""
    return [t for t in split_dial_string(ds)[0].split("&") if t.strip()]
