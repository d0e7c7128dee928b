"""One call-store connection per serving thread (SQLite connections are not shared).

The WSGI server has a fixed pool of worker threads, so this holds at most one connection
per worker; :meth:`close_all` closes them when the server stops.
"""

from __future__ import annotations

import threading
from typing import List

from ..store.database import Store


class StorePerThread:
    def __init__(self, path: str, busy_timeout_s: float = 2.0):
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: List[Store] = []

    def get(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            store = Store(self.path, busy_timeout_s=self.busy_timeout_s)
            self._local.store = store
            with self._lock:
                self._opened.append(store)
        return store

    def close_all(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for store in opened:
            try:
                store.close()
            except Exception:  # closing from another thread may be refused; it is going anyway
                pass
