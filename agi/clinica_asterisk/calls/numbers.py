"""How this PBX writes a client's number in pushes and answers (``CLINICA_NUMBER_FORMAT``,
``CLINICA_COUNTRY_CODE``, ``CLINICA_TRUNK_PREFIX``), as one value to pass around.  Pure."""

from __future__ import annotations

from dataclasses import dataclass

from .phone import normalize


@dataclass(frozen=True)
class NumberFormat:
    """How phone numbers are written in the pushes and the API (CLINICA_NUMBER_FORMAT …)."""

    number_format: str = "national"
    country_code: str = "380"
    trunk_prefix: str = "0"

    def __call__(self, raw: str) -> str:
        return normalize(raw, self.number_format, self.country_code, self.trunk_prefix)
