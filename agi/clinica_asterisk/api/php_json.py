"""JSON the way PHP sees it.  Pure functions, no I/O.

Binotel's signature is ``md5(secret . json_encode(ksort(params)))`` computed in PHP, and the
PHP client checks an answer by ``json_decode($answer, true)`` then encoding it again.  So
both directions depend on PHP's model of JSON, which differs from Python's:

* ``json_decode(..., true)`` turns every object into a PHP array.  Keys that are canonical
  decimal integers (``"7"``, ``"-3"``, not ``"07"`` or ``"-0"``) become integer keys.
* ``json_encode`` writes an array whose keys are exactly ``0, 1, … n-1`` in order as a JSON
  list, so an empty object comes back as ``[]`` and ``{"0":"a","1":"b"}`` as ``["a","b"]``.
* default flags: no spaces, ``/`` as ``\\/``, every non-ASCII character as lowercase
  ``\\uXXXX`` (astral characters as a surrogate pair), floats in PHP's own notation
  (``1.0e+25``, ``10`` for ``10.0``), integers beyond 64 bits decoded as floats.
* ``ksort`` (PHP 8.2 and later) orders keys with PHP's comparison: integers and numeric
  strings by value, everything else byte-wise, and an integer against a non-numeric string
  as the integer's decimal text.

:func:`php_array` builds the PHP model from decoded JSON; :func:`encode` writes it (or
plain decoded JSON) back the way ``json_encode`` does; :func:`ksort` sorts a top level.
"""

from __future__ import annotations

import functools
import json
import math
import re
from decimal import Decimal
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import ujson

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
# PHP stops decoding at this nesting depth; so do we (it also bounds our recursion).
MAX_DEPTH = 512

Key = Union[int, str]

_CANONICAL_INT = re.compile(r"(?:0|-?[1-9][0-9]*)\Z")
# PHP 8's numeric strings: optional leading and trailing whitespace, a sign, digits with an
# optional fraction (or a bare fraction), an optional exponent.  No hex, no inf/nan.
_NUMERIC = re.compile(r"[ \t\n\r\v\f]*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)[ \t\n\r\v\f]*\Z")
_SURROGATE = re.compile("[\ud800-\udfff]")
# \u007f not preceded by an escaped backslash
_ESCAPED_DEL = re.compile(r"(?<!\\)((?:\\\\)*)\\u007f")


class JsonError(ValueError):
    """The text is not JSON that PHP's json_decode would accept."""


# --- decoding -------------------------------------------------------------------------

def _reject_constant(name: str):
    raise JsonError(f"{name} is not JSON")


def decode(text: Union[str, bytes]) -> Any:
    """Parse JSON text as PHP's ``json_decode`` would accept it: UTF-8, no NaN/Infinity,
    no unpaired surrogate escapes, at most :data:`MAX_DEPTH` levels.  Objects become dicts
    in the order written; a key written twice keeps its first place and its last value
    (as in a PHP array)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonError("the body is not UTF-8") from exc
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except JsonError:
        raise
    except RecursionError as exc:
        raise JsonError("nested too deeply") from exc
    except ValueError as exc:  # json.JSONDecodeError, or an integer of thousands of digits
        raise JsonError(str(exc).split(":")[0]) from exc
    _check(value, 1)
    return value


def _check(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise JsonError("nested too deeply")
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise JsonError("single unpaired UTF-16 surrogate")
    elif isinstance(value, dict):
        for key, item in value.items():
            if _SURROGATE.search(key):
                raise JsonError("single unpaired UTF-16 surrogate")
            _check(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check(item, depth + 1)


# --- the PHP model --------------------------------------------------------------------

def php_key(key: str) -> Key:
    """The key a PHP array stores for the JSON object key ``key``."""
    if _CANONICAL_INT.match(key):
        number = int(key)
        if INT64_MIN <= number <= INT64_MAX:
            return number
    return key


def php_array(value: Any) -> Any:
    """What ``json_decode($json, true)`` holds for decoded JSON ``value``: objects as dicts
    with PHP keys, integers beyond 64 bits as floats."""
    if isinstance(value, dict):
        return {php_key(k): php_array(v) for k, v in value.items()}
    if isinstance(value, list):
        return [php_array(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        return float(value)
    return value


# --- ksort ----------------------------------------------------------------------------

def _numeric(text: str):
    """PHP's is_numeric_string: an int or float for a numeric string, else None."""
    match = _NUMERIC.match(text)
    if not match:
        return None
    body = match.group(1)
    if re.fullmatch(r"[+-]?[0-9]+", body):
        number = int(body)
        if INT64_MIN <= number <= INT64_MAX:
            return number
    return float(body)


def _three_way(a, b) -> int:
    return (a > b) - (a < b)


def _strcmp(a: str, b: str) -> int:
    # Byte-wise on UTF-8; code point order is the same order.
    return _three_way(a, b)


def compare_keys(a: Key, b: Key) -> int:
    """PHP 8.2+ ``ksort`` (SORT_REGULAR) comparison of two array keys."""
    if isinstance(a, int) and isinstance(b, int):
        return _three_way(a, b)
    if isinstance(a, str) and isinstance(b, str):
        na, nb = _numeric(a), _numeric(b)
        if na is not None and nb is not None:
            return _three_way(na, nb)
        return _strcmp(a, b)
    if isinstance(a, int):
        nb = _numeric(b)
        return _three_way(a, nb) if nb is not None else _strcmp(str(a), b)
    return -compare_keys(b, a)


def _as_key(name: Key) -> Key:
    return name if isinstance(name, int) else php_key(name)


def ksort(pairs: Iterable[Tuple[Key, Any]]) -> List[Tuple[Key, Any]]:
    """The (key, value) pairs in PHP ``ksort`` order; a JSON object key is compared as the
    key PHP stores for it.  Ties keep their order (PHP 8's sort is stable)."""
    order = functools.cmp_to_key(lambda x, y: compare_keys(_as_key(x[0]), _as_key(y[0])))
    return sorted(pairs, key=order)


# --- encoding -------------------------------------------------------------------------

def php_float(number: float) -> str:
    """A float as PHP's json_encode writes it (serialize_precision -1)."""
    if math.isnan(number) or math.isinf(number):
        raise JsonError("Inf and NaN cannot be JSON encoded")
    if number == 0:
        return "-0" if math.copysign(1.0, number) < 0 else "0"
    sign = "-" if number < 0 else ""
    digits_tuple = Decimal(repr(abs(number))).normalize().as_tuple()
    digits = "".join(map(str, digits_tuple.digits))
    exponent = len(digits) - 1 + digits_tuple.exponent  # of the first digit
    if exponent < -4 or exponent >= 17:
        mantissa = digits[0] + "." + (digits[1:] or "0")
        return f"{sign}{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"
    point = exponent + 1  # digits before the decimal point
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    if point > 0:
        return sign + digits[:point] + "." + digits[point:]
    return sign + "0." + "0" * (-point) + digits


def _escapes(encoded: str, escape_slashes: bool) -> str:
    # Python's escaper matches PHP's for quotes, backslashes, control characters (short
    # forms and lowercase \u00XX) and non-ASCII (lowercase \uXXXX, surrogate pairs); but
    # it escapes DEL, which PHP writes as is, and it leaves "/" alone.  Both fixes are
    # safe on a whole document: "/" and "\u007f" only ever occur inside strings.
    if "\\u007f" in encoded:
        encoded = _ESCAPED_DEL.sub("\\1\x7f", encoded)
    return encoded.replace("/", "\\/") if escape_slashes else encoded


def php_string(text: str, escape_slashes: bool = True, escape_unicode: bool = True) -> str:
    return _escapes(json.dumps(text, ensure_ascii=escape_unicode), escape_slashes)


def is_list(array: Dict[Any, Any]) -> bool:
    """True when PHP's json_encode writes this array (a dict, JSON or PHP keys) as a list."""
    return all(_as_key(key) == index for index, key in enumerate(array))


def encode(value: Any, escape_slashes: bool = True, escape_unicode: bool = True, php_arrays: bool = True) -> str:
    """``json_encode`` of ``value`` (decoded JSON, or the PHP model of it) with PHP's
    default flags, or without the two escapes.

    With ``php_arrays`` every dict is a PHP array: a JSON list when its keys are 0..n-1 (so
    ``{}`` is written ``[]``), and integers beyond 64 bits are floats.  Without, dicts stay
    JSON objects (a PHP ``stdClass``).

    The usual document (strings, integers, lists, objects) is written in one pass by ujson
    (:func:`php_text`); one with PHP lists among its objects through Python's C encoder once
    they are found; one with floats through a slower writer of PHP's float notation."""
    text = php_text(value, escape_slashes, escape_unicode, php_arrays)
    if text is not None:
        return text
    try:
        prepared = _prepare(value, php_arrays, 1)
    except _NeedsPhpWriter:
        parts: List[str] = []
        _encode(value, parts, escape_slashes, escape_unicode, php_arrays, 1)
        return "".join(parts)
    return _escapes(json.dumps(prepared, ensure_ascii=escape_unicode, separators=(",", ":")), escape_slashes)


def php_text(value: Any, escape_slashes: bool = True, escape_unicode: bool = True,
             php_arrays: bool = True) -> Optional[str]:
    """``json_encode`` of ``value`` as :func:`encode` writes it, in one pass of ujson's C
    encoder, when ``value`` holds only strings, integers (within 64 bits for
    ``php_arrays``), booleans, nulls, lists and objects (with ``php_arrays``, none empty or
    with 0 for a first key, which PHP might write as a list), at most :data:`MAX_DEPTH`
    levels deep; else None.  Keys are strings or integers, as in decoded JSON and the PHP
    model.  For such a document ujson writes PHP's text: no spaces, the same escapes
    (lowercase ``\\uXXXX``, surrogate pairs, DEL as is, ``/`` as ``\\/`` when asked).
    Deciding takes a check of types that builds nothing, a third of the time of Python's
    encoder on a typical answer; ujson writes it in under half that time."""
    if not _written_alike(value, php_arrays, 1):
        return None
    return ujson.dumps(value, ensure_ascii=escape_unicode, escape_forward_slashes=escape_slashes)


def _written_alike(value: Any, php_arrays: bool, depth: int) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return not php_arrays or INT64_MIN <= value <= INT64_MAX
    if depth > MAX_DEPTH:
        return False
    if kind is dict:
        # "0" or 0 first: maybe a PHP list (is_list decides; the slow way asks it).
        if php_arrays and (not value or next(iter(value)) in ("0", 0)):
            return False
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return False
    # Strings (most of a document) and small integers without a call.
    for item in items:
        kind = type(item)
        if kind is str or (kind is int and (not php_arrays or INT64_MIN <= item <= INT64_MAX)):
            continue
        if not _written_alike(item, php_arrays, depth + 1):
            return False
    return True


class _NeedsPhpWriter(Exception):
    pass


def _prepare(value, php_arrays, depth):
    """``value`` with PHP's lists made lists, for the C encoder; raises when a float (or a
    number PHP holds as one) needs PHP's own notation."""
    if depth > MAX_DEPTH + 1:
        raise JsonError("nested too deeply")
    if isinstance(value, str) or value is None or value is True or value is False:
        return value
    if isinstance(value, int):
        if php_arrays and not INT64_MIN <= value <= INT64_MAX:
            raise _NeedsPhpWriter
        return value
    # Strings are most of a document and need nothing: they skip the call.
    if isinstance(value, dict):
        if php_arrays and is_list(value):
            return [v if type(v) is str else _prepare(v, php_arrays, depth + 1) for v in value.values()]
        return {str(k): v if type(v) is str else _prepare(v, php_arrays, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [v if type(v) is str else _prepare(v, php_arrays, depth + 1) for v in value]
    if isinstance(value, float):
        raise _NeedsPhpWriter
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _encode(value, out, slashes, unicode, php_arrays, depth):
    if depth > MAX_DEPTH + 1:
        raise JsonError("nested too deeply")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        big = php_arrays and not INT64_MIN <= value <= INT64_MAX
        out.append(php_float(float(value)) if big else str(value))
    elif isinstance(value, float):
        out.append(php_float(value))
    elif isinstance(value, str):
        out.append(php_string(value, slashes, unicode))
    elif isinstance(value, (list, tuple)) or (php_arrays and isinstance(value, dict) and is_list(value)):
        items = value.values() if isinstance(value, dict) else value
        out.append("[")
        for n, item in enumerate(items):
            if n:
                out.append(",")
            _encode(item, out, slashes, unicode, php_arrays, depth + 1)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        for n, (key, item) in enumerate(value.items()):
            if n:
                out.append(",")
            out.append(php_string(str(key), slashes, unicode))
            out.append(":")
            _encode(item, out, slashes, unicode, php_arrays, depth + 1)
        out.append("}")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")
