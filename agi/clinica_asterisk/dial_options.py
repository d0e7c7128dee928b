"""Dial options: putting our answer routine into FreePBX's Dial options.  Pure.

Dial runs a single ``U()`` routine on the answering channel; a second ``U()`` replaces the
first.  FreePBX 17 already puts ``U(macro-auto-blkvm)`` (and sometimes ``U(macro-confirm^…)``)
there for group, queue and follow-me calls, so ours takes its place and calls the displaced
routine itself first:  ``U(clinica-answer^<who>^<leg>^<displaced routine>^<its args>)``.
"""

from __future__ import annotations

from typing import List

ANSWER_ROUTINE = "clinica-answer"
LEGS = ("ext", "trunk")


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
    if not who.isdigit() or leg not in LEGS:
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
