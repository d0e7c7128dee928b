"""The extension directory: who sits behind each extension (employeeName, employeeEmail).

A CSV file the administrator maintains, named by ``CLINICA_DIRECTORY_FILE``, UTF-8, one
extension a line: ``extension,name,email``.  Fields may be quoted the CSV way (a name with
a comma: ``801,"Сторожук, Наталия",n@example.com``); the e-mail may be left empty; blank
lines and lines starting with ``#`` are ignored, and so is a first line
``extension,name,email``.  The file is read again whenever it changes, so editing it needs
no restart.  A line that is not valid is skipped and logged with its number.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

log = logging.getLogger("clinica_asterisk.api.directory")

_EXTENSION = re.compile(r"[0-9]{1,8}\Z")


@dataclass(frozen=True)
class Employee:
    name: str
    email: str


def parse_directory(lines: Iterable[str]) -> Tuple[Dict[str, Employee], List[str]]:
    """Entries by extension, and one message per line that was skipped."""
    entries: Dict[str, Employee] = {}
    problems: List[str] = []
    for number, row in enumerate(csv.reader(lines), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in row]
        if number == 1 and fields[0].lstrip("\ufeff").lower() == "extension":
            continue
        extension = fields[0].lstrip("\ufeff")
        if len(fields) > 3 or not _EXTENSION.match(extension):
            problems.append(f"line {number}: expected extension,name,email with a numeric extension")
            continue
        name = fields[1] if len(fields) > 1 else ""
        email = fields[2] if len(fields) > 2 else ""
        entries[extension] = Employee(name, email)
    return entries, problems


class Directory:
    """The directory file, re-read when its size or modification time changes."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: Optional[tuple] = None
        self._entries: Dict[str, Employee] = {}

    @property
    def configured(self) -> bool:
        return bool(self.path)

    def _current(self) -> Dict[str, Employee]:
        if not self.path:
            return {}
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError as exc:
            stamp = ("missing", exc.errno)
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                self._entries = self._load()
            return self._entries

    def _load(self) -> Dict[str, Employee]:
        try:
            with open(self.path, encoding="utf-8-sig", newline="") as f:
                entries, problems = parse_directory(f)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            log.warning("directory %s not read: %s", self.path, exc)
            return {}
        for problem in problems:
            log.warning("directory %s: %s (skipped)", self.path, problem)
        log.info("directory %s: %d extensions", self.path, len(entries))
        return entries

    def entries(self) -> Mapping[str, Employee]:
        """Every entry as of now (one look at the file; take it once per request)."""
        return self._current()

    def __contains__(self, extension: str) -> bool:
        return (extension or "") in self._current()
