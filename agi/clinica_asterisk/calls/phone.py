"""Phone numbers: what a caller id or a dialled number becomes in a push or an answer.

The CRM matches clients by number, so the same number must always come out the same way
whatever the trunk delivered (``+380670219424``, ``380670219424``, ``00380…`` or
``0670219424``).  Pure functions; no I/O.
"""

from __future__ import annotations

MAX_NUMBER_DIGITS = 20
# What Asterisk reports when there is no caller id.
ANONYMOUS = frozenset({"", "unknown", "anonymous", "restricted", "private", "unavailable", "s"})


def is_digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes '²' and other scripts' digits)."""
    return bool(text) and text.isascii() and text.isdigit()


def digits_of(raw: str) -> str:
    """The dialable part of a caller id: digits, with a leading '+' kept.

    Everything else (spaces, dashes, brackets, quotes, letters) is dropped; an anonymous
    or empty caller id becomes ''.  Over-long input is cut rather than rejected, so a
    garbage caller id can never stop a push.
    """
    text = (raw or "").strip()
    if "<" in text and text.endswith(">"):
        text = text[text.rindex("<") + 1:-1]  # '"Room 5" <0670219424>': the number, not the name
    if text.lower() in ANONYMOUS:
        return ""
    plus = text.startswith("+")
    digits = "".join(ch for ch in text if "0" <= ch <= "9")[:MAX_NUMBER_DIGITS]
    if not digits:
        return ""
    return ("+" if plus else "") + digits


def normalize(raw: str, number_format: str = "national", country_code: str = "380", trunk_prefix: str = "0") -> str:
    """Format a number for the CRM.

    national: ``+380670219424`` -> ``0670219424`` (country code replaced by the trunk prefix);
    e164: ``0670219424`` -> ``+380670219424``; raw: digits as received.
    Short numbers (extensions, service numbers) are never touched.
    """
    number = digits_of(raw)
    if not number or number_format == "raw":
        return number
    bare = number.lstrip("+")
    international = None
    if number.startswith("+"):
        international = bare
    elif bare.startswith("00") and len(bare) > 2:  # "00" alone is no number: kept as it is
        international = bare[2:]
    elif bare.startswith(country_code) and len(bare) >= len(country_code) + 9:
        international = bare
    elif trunk_prefix and bare.startswith(trunk_prefix) and len(bare) >= 9:
        international = country_code + bare[len(trunk_prefix):]

    if international is None:
        return bare  # an extension or a short/service number
    if number_format == "e164":
        return "+" + international
    if international.startswith(country_code):
        return trunk_prefix + international[len(country_code):]
    return "+" + international  # foreign number: only E.164 is unambiguous
