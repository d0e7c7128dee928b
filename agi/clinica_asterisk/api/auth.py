"""From the raw body of a request to its authenticated parameters.  Pure.

Order of checks: JSON object → ``key`` and ``signature`` present → the key is known → the
signature verifies.  Which secret signs the answer is decided here too: the secret of the
key that asked when it is known, else the first configured key's (so a CRM with a typo in
its key still reads a verifiable error), else an empty secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping

from . import php_json
from . import signature
from .errors import ApiError, Code


@dataclass(frozen=True)
class SignedRequest:
    key: str
    secret: str
    params: Dict[str, Any]


def parse_body(raw: bytes) -> Dict[str, Any]:
    try:
        body = php_json.decode(raw)
    except php_json.JsonError:
        raise ApiError(Code.BAD_JSON, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(Code.BAD_JSON, "the body must be a JSON object")
    return body


def answer_secret(keys: Mapping[str, str], key: Any) -> str:
    if isinstance(key, str) and key in keys:
        return keys[key]
    return next(iter(keys.values()), "")


def authenticate(body: Mapping[str, Any], keys: Mapping[str, str]) -> SignedRequest:
    if not keys:
        raise ApiError(Code.NO_KEYS, "the API has no keys configured")
    key, sig = body.get("key"), body.get("signature")
    if not isinstance(key, str) or not key:
        raise ApiError(Code.MISSING_KEY, "missing parameter: key")
    if not isinstance(sig, str) or not sig:
        raise ApiError(Code.MISSING_KEY, "missing parameter: signature")
    secret = keys.get(key)
    if secret is None:
        raise ApiError(Code.UNKNOWN_KEY, "unknown key")
    if not signature.verify(secret, body, sig):
        raise ApiError(Code.BAD_SIGNATURE, "bad signature")
    return SignedRequest(key, secret, signature.signed_params(body))
