"""A new store opened by many hooks at once (the first calls after an install)."""

import multiprocessing

from clinica_asterisk.store.database import Store


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


def test_a_store_of_the_first_version_is_migrated_keeping_its_calls(tmp_path):
    import sqlite3

    from clinica_asterisk.store.database import SCHEMA, SCHEMA_VERSION, StoreError

    path = str(tmp_path / "clinica.sqlite3")
    old = sqlite3.connect(path)
    old.executescript(SCHEMA)  # version 1, as the first release created it
    old.execute("INSERT INTO calls (id, direction, started_at, answered_by) VALUES (7, 'in', 1.0, '801')")
    old.execute("PRAGMA user_version=1")
    old.commit()
    old.close()
    store = Store(path)
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    call = store.call(7)
    assert (call["answered_by"], call["transfers"], call["transferred_to"], call["pre_answered"]) == ("801", 0, "", 0)
    store.close()
    Store(path).close()  # opening it again changes nothing
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    newer.commit()
    newer.close()
    try:
        Store(path)
    except StoreError as exc:
        assert "newer" in str(exc)
    else:
        raise AssertionError("a store from a newer release must be refused, not changed")
