"""How this PBX writes a client's number in pushes and answers (``CLINICA_NUMBER_FORMAT``,
``CLINICA_COUNTRY_CODE``, ``CLINICA_TRUNK_PREFIX``), as one value to pass around.  Pure."""

from __future__ import annotations

from .phone import normalize
from ..values import Value


class NumberFormat(Value):
    """How phone numbers are written in the pushes and the API (CLINICA_NUMBER_FORMAT …)."""

    __slots__ = ("number_format", "country_code", "trunk_prefix")
    _defaults = {"number_format": "national", "country_code": "380", "trunk_prefix": "0"}

    def __call__(self, raw: str) -> str:
        return normalize(raw, self.number_format, self.country_code, self.trunk_prefix)
