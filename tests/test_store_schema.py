"""A new store opened by many hooks at once (the first calls after an install)."""

import multiprocessing

from clinica_asterisk.store import Store


def open_and_write(path):
    store = Store(path, busy_timeout_s=5.0)
    with store.transaction():
        store.insert_call({"direction": "in", "started_at": 1.0})
    store.close()


def test_many_processes_opening_a_new_store_together_all_succeed(tmp_path):
    path = str(tmp_path / "new" / "clinica.sqlite3")
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        pool.map(open_and_write, [path] * 32)
    store = Store(path)
    assert store.conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 32
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
