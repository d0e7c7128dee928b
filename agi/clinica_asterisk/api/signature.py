"""Binotel's signatures.  Pure.

A request is signed ``md5(secret + json)`` where ``json`` is PHP's ``json_encode`` of the
body without ``key`` and ``signature``, its top level ``ksort``-ed (see :mod:`php_json`).
An answer is signed the same way over the whole answer without ``signature``, as the PHP
client recomputes it from ``json_decode($answer, true)``.

Verification is lenient about encodings a CRM not written in PHP may produce: ``/`` not
escaped, non-ASCII not escaped, nested objects kept as objects (``{}`` rather than ``[]``),
in every combination.  The key order is always PHP's ``ksort``.  Every candidate is
compared in constant time, and all of them are compared.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
from typing import Any, List, Mapping

from .php_json import encode, ksort, php_text

EXCLUDED = frozenset({"key", "signature"})
_HEX32 = re.compile(r"[0-9a-fA-F]{32}\Z")


def signed_params(body: Mapping[str, Any]) -> dict:
    """The part of a request or answer that its signature covers."""
    return {k: v for k, v in body.items() if k not in EXCLUDED}


def signed_text(params: Mapping[str, Any], escape_slashes: bool = True, escape_unicode: bool = True,
                php_arrays: bool = True) -> str:
    """The JSON text the signature is computed over; the defaults are PHP's."""
    # ksort compares keys as PHP stores them and keeps them as written; encode() treats
    # every dict as a PHP array when php_arrays is set.
    return encode(dict(ksort(params.items())), escape_slashes, escape_unicode, php_arrays)


def digest(secret: str, text: str) -> str:
    return hashlib.md5((secret + text).encode("utf-8")).hexdigest()


def sign(secret: str, body: Mapping[str, Any]) -> str:
    """The signature PHP computes for ``body`` (``key`` and ``signature`` left out)."""
    return digest(secret, signed_text(signed_params(body)))


def accepted_texts(params: Mapping[str, Any]) -> List[str]:
    """Every encoding a valid request may have been signed over, PHP's first."""
    ordered = dict(ksort(params.items()))
    combinations = list(itertools.product((True, False), repeat=3))
    if php_text(ordered) is not None:
        # The usual request (strings and numbers) is written alike whether its objects are
        # PHP arrays or not: the first four (PHP arrays) are all there are.
        combinations = combinations[:4]
    texts: List[str] = []
    for php_arrays, slashes, unicode in combinations:
        text = encode(ordered, slashes, unicode, php_arrays)
        if text not in texts:
            texts.append(text)
    return texts


def verify(secret: str, body: Mapping[str, Any], signature: Any) -> bool:
    """True when ``signature`` signs ``body`` with ``secret`` in any accepted encoding."""
    if not isinstance(signature, str) or not _HEX32.match(signature):
        return False
    given = signature.lower().encode("ascii")
    matched = False
    for text in accepted_texts(signed_params(body)):
        matched |= hmac.compare_digest(digest(secret, text).encode("ascii"), given)
    return matched
