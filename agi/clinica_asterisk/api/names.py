"""Who and what the CRM is told about: employeeName / employeeEmail per extension, didName
per DID, trunkNumber per trunk, and which extensions exist.

Two sources, the administrator's over FreePBX's: the directory file (``CLINICA_DIRECTORY_FILE``)
and FreePBX's own database (:mod:`.freepbx_db`).  A field the file gives (not empty) wins;
an empty one, or an extension the file does not list, is filled from FreePBX.  The number
a trunk presents: ``CLINICA_TRUNK_NUMBERS`` over the trunk's Outbound CallerID in FreePBX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Optional, Sequence

from .directory import Directory, Employee
from .freepbx_db import FreePbxSource
from .inbound_routes import InboundRoute, route_name


class MergedEmployees(Mapping):
    """The directory file's entries over FreePBX's, field by field."""

    def __init__(self, from_file: Mapping[str, Employee], from_freepbx: Mapping[str, Employee]):
        self._file = from_file
        self._freepbx = from_freepbx

    def __getitem__(self, extension: str) -> Employee:
        listed, known = self._file.get(extension), self._freepbx.get(extension)
        if listed is None and known is None:
            raise KeyError(extension)
        if known is None:
            return listed
        if listed is None:
            return known
        return Employee(listed.name or known.name, listed.email or known.email)

    def __iter__(self) -> Iterator[str]:
        yield from self._file
        yield from (e for e in self._freepbx if e not in self._file)

    def __len__(self) -> int:
        return len(self._file) + sum(1 for e in self._freepbx if e not in self._file)


@dataclass(frozen=True)
class Names:
    """One request's view of both sources (each looked at once)."""

    employees: Mapping[str, Employee]
    routes: Sequence[InboundRoute] = ()
    country_code: str = "380"
    trunk_prefix: str = "0"
    trunks: Mapping[str, str] = field(default_factory=dict)  # trunk id -> its number, formatted

    def did_name(self, did: str, caller: str) -> str:
        return route_name(self.routes, did, caller, self.country_code, self.trunk_prefix) if self.routes else ""

    def trunk_number(self, trunk_id: str) -> str:
        """The number the trunk presents; '' when nobody said (never the trunk's id)."""
        return self.trunks.get(trunk_id or "", "")


def trunk_numbers(configured: Mapping[str, str], from_freepbx: Mapping[str, str],
                  fmt: Callable[[str], str]) -> Mapping[str, str]:
    """Trunk id -> number: the setting's pairs over FreePBX's, in the API's number format."""
    merged = {**from_freepbx, **configured}
    return {trunk: fmt(number) for trunk, number in merged.items()}


def current_names(directory: Optional[Directory], freepbx: Optional[FreePbxSource], country_code: str = "380",
                  trunk_prefix: str = "0", configured_trunks: Mapping[str, str] = {},
                  fmt: Callable[[str], str] = str) -> Names:
    from_file = directory.entries() if directory is not None else {}
    data = freepbx.current() if freepbx is not None else None
    if data is None:
        return Names(from_file, (), country_code, trunk_prefix, trunk_numbers(configured_trunks, {}, fmt))
    return Names(MergedEmployees(from_file, data.employees), data.routes, country_code, trunk_prefix,
                 trunk_numbers(configured_trunks, data.trunks, fmt))


def extension_exists(extension: str, directory: Optional[Directory],
                     freepbx: Optional[FreePbxSource]) -> Optional[bool]:
    """Whether the extension exists: per FreePBX's users table once it has been read, else
    per the directory file when there is one; None when there is nothing to ask."""
    data = freepbx.current() if freepbx is not None else None
    if data is not None:
        return data.has_extension(extension)
    if directory is not None and directory.configured:
        return extension in directory
    return None
